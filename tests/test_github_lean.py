"""GitHub calls on pooled keep-alive connections (`GitHubApp._exchange`), and where PyGithub's
Requester still carries them. Retries, timeouts and error statuses are held by the contract
tier (tests/contract/test_contract_github_faults.py), which goes through the same path."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from doubles.github_api import GitHubDouble
from doubles.tls import self_signed

from bot.github import GitHubApp, answer_headers, query_string

REPO = "acme/ml-models"
SHA = "a" * 40
PULL = rf"^/repos/{REPO}/pulls/7$"


@pytest.fixture
def gh() -> Iterator[GitHubDouble]:
    double = GitHubDouble().start()
    double.add_repo(REPO, installation_id=5)
    double.add_pull(REPO, 7, head_sha=SHA, labels=["needs-review"])
    try:
        yield double
    finally:
        double.stop()
    assert double.unknown_routes == [] and double.server_errors == []


def _app(gh: GitHubDouble, **kwargs: Any) -> GitHubApp:
    """As the bridge builds it (no pause between requests), against the double."""
    key, url = gh.private_key_pem, gh.url
    return GitHubApp(app_id=gh.app_id, private_key=key, base_url=url, timeout=3, **kwargs)


def test_calls_share_one_connection_and_carry_the_installation_token(gh: GitHubDouble) -> None:
    app = _app(gh)
    for _ in range(3):
        assert app.get_pull(REPO, 7).head_sha == SHA
    app.add_label(REPO, 7, "evaluate")
    app.remove_label(REPO, 7, "needs-review")

    assert gh.labels(REPO, 7) == ["evaluate"]
    pool = app._pool
    assert pool is not None and pool.connections_opened == 1
    (token,) = gh.tokens_issued  # minted once by PyGithub's auth, then reused
    calls = [*gh.requests_to("GET", PULL), *gh.requests_to("*", r"/issues/7/labels")]
    assert len(calls) == 5
    for call in calls:
        assert call.headers["Authorization"] == f"token {token}"
        assert call.headers["User-Agent"] == "chatops-bridge"
    (post,) = gh.requests_to("POST", r"/issues/7/labels$")
    assert post.headers["Content-Type"] == "application/json"
    assert post.body == {"labels": ["evaluate"]}


def test_an_expired_token_is_minted_again_for_the_next_call(gh: GitHubDouble) -> None:
    app = _app(gh)
    app.get_pull(REPO, 7)
    gh.expire_tokens()  # GitHub answers 401 Bad credentials: one more try with a fresh client
    assert app.get_pull(REPO, 7).head_sha == SHA
    assert len(gh.tokens_issued) == 2
    assert [r.status for r in gh.requests_to("GET", PULL)] == [200, 401, 200]


def test_query_is_written_as_pygithub_writes_it(gh: GitHubDouble) -> None:
    assert query_string({"per_page": 100, "since": "2026-12-01T00:00:00Z"}) == (
        "per_page=100&since=2026-12-01T00%3A00%3A00Z"
    )
    assert query_string({"b": True, "a": ["x", "y"]}) == "a=x&a=y&b=true"
    app = _app(gh)
    app.list_comments(REPO, 7, since="2026-12-01T00:00:00Z")
    (call,) = gh.requests_to("GET", r"/issues/7/comments$")
    assert call.query == {"per_page": "100", "since": "2026-12-01T00:00:00Z"}


def test_answer_headers_are_lower_case_and_repeats_joined() -> None:
    assert answer_headers([("ETag", '"a"'), ("Link", "<x>"), ("link", "<y>")]) == {
        "etag": '"a"',
        "link": "<x>, <y>",
    }


def test_a_proxy_or_a_pause_leaves_every_call_to_pygithub(
    gh: GitHubDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    assert _app(gh)._pool is None  # requests would go through the proxy: so does the call
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert _app(gh)._pool is not None  # the proxy does not apply to this host
    monkeypatch.delenv("HTTP_PROXY")

    paced = _app(gh, seconds_between_requests=0.01)
    assert paced._pool is None
    assert paced.get_pull(REPO, 7).head_sha == SHA  # through the Requester, which paces it
    (call,) = gh.requests_to("GET", PULL)
    assert call.headers["User-Agent"].startswith("PyGithub")


def test_a_read_answered_202_is_left_to_pygithub(gh: GitHubDouble) -> None:
    """GitHub answers 202 to a read it is still computing; PyGithub waits and asks again (and
    follows a redirect, such as a renamed repository's 301): the lean exchange hands it over."""
    gh.fail("GET", PULL, 202, body={})
    app = _app(gh)
    assert app.get_pull(REPO, 7).head_sha == SHA
    first, second = gh.requests_to("GET", PULL)
    assert (first.status, second.status) == (202, 200)
    assert first.headers["User-Agent"] == "chatops-bridge"
    assert second.headers["User-Agent"].startswith("PyGithub")


def test_a_moved_repository_is_followed_by_pygithub(gh: GitHubDouble) -> None:
    """A renamed repository answers 301 with its new address: PyGithub follows it on the same
    host, as it did for every call before the lean exchange."""
    app = _app(gh)
    _, _, pull = app._raw(REPO, "read", "GET", f"/repos/{REPO}/pulls/7")
    moved = f"{gh.url}/repositories/5/pulls/7"
    gh.fail(
        "GET",
        PULL,
        301,
        body={"message": "Moved Permanently"},
        headers={"Location": moved},
        times=2,
    )
    gh.fail("GET", r"^/repositories/5/pulls/7$", 200, body=pull)
    assert app.get_pull(REPO, 7).head_sha == SHA
    lean, sdk = gh.requests_to("GET", PULL)[1:]  # after the first, unmoved read
    assert (lean.status, sdk.status) == (301, 301)
    assert lean.headers["User-Agent"] == "chatops-bridge"
    assert sdk.headers["User-Agent"].startswith("PyGithub")
    (followed,) = gh.requests_to("GET", r"^/repositories/5/pulls/7$")
    assert followed.status == 200


def test_tls_trust_is_what_requests_gave_pygithub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gh: GitHubDouble
) -> None:
    """certifi's bundle, or REQUESTS_CA_BUNDLE (a GitHub Enterprise Server behind a private CA)."""
    cert, _ = self_signed(str(tmp_path))
    ours = ssl._ssl._test_decode_cert(str(cert))["serialNumber"]  # type: ignore[attr-defined]

    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    default = [c["serialNumber"] for c in _app(gh)._context().get_ca_certs()]
    assert len(default) > 50 and ours not in default

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    app = _app(gh)
    assert [c["serialNumber"] for c in app._context().get_ca_certs()] == [ours]
    assert app._context() is app._context()  # built once


def test_a_write_that_could_not_be_sent_is_tried_again_and_made_once(
    gh: GitHubDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that could not be made (or a request not sent whole: URLError) cannot have
    reached GitHub, so a write goes again, up to `read_retries` times, as urllib3 retried
    connect errors; when every try fails the caller gets Unavailable, an outage to wait out."""
    from urllib.error import URLError

    from bot.github_errors import Unavailable

    app = _app(gh)
    app.get_pull(REPO, 7)  # the token and the pool are in place
    pool = app._pool
    assert pool is not None
    real = pool.exchange
    failing = [2]  # the next two attempts fail to connect
    attempts: list[str] = []

    def exchange(verb: str, *args: Any) -> Any:
        attempts.append(verb)
        if failing[0]:
            failing[0] -= 1
            raise URLError(ConnectionRefusedError(111, "refused"))
        return real(verb, *args)

    monkeypatch.setattr(pool, "exchange", exchange)
    monkeypatch.setattr("bot.github.time.sleep", lambda seconds: None)
    app.add_label(REPO, 7, "evaluate")
    assert attempts == ["POST"] * 3
    assert len(gh.requests_to("POST", r"/issues/7/labels$")) == 1
    assert "evaluate" in gh.labels(REPO, 7)

    attempts.clear()
    failing[0] = 3  # one more than the retries
    with pytest.raises(Unavailable):
        app.add_label(REPO, 7, "again")
    assert attempts == ["POST"] * 3
    assert len(gh.requests_to("POST", r"/issues/7/labels$")) == 1
