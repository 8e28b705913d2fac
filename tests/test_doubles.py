"""The Slack and GitHub doubles, driven by the real clients (slack_sdk, PyGithub)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from doubles import GitHubDouble, SlackDouble, validate_blocks
from github import Auth, Github, GithubException, GithubIntegration
from github.GithubException import (
    BadCredentialsException,
    RateLimitExceededException,
    UnknownObjectException,
)
from github.PullRequest import PullRequest
from github.Repository import Repository
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    HeaderBlock,
    MarkdownBlock,
    SectionBlock,
    TableBlock,
)
from slack_sdk.webhook import WebhookClient

REPO = "acme/ml"
SHA = "a" * 40


# ---------------------------------------------------------------------------- Slack
@pytest.fixture
def slack() -> Iterator[SlackDouble]:
    with SlackDouble() as double:
        yield double
        assert double.server_errors == []


@pytest.fixture
def client(slack: SlackDouble) -> WebClient:
    return WebClient(token="xoxb-test-token", base_url=slack.url, timeout=5)


def _table(rows: int = 2, cells: int = 2) -> dict[str, Any]:
    return {
        "type": "table",
        "rows": [
            [{"type": "raw_text", "text": f"{r}:{c}"} for c in range(cells)] for r in range(rows)
        ],
    }


def test_slack_auth_test_and_recording(slack: SlackDouble, client: WebClient) -> None:
    answer = client.auth_test()
    assert answer["user_id"] == SlackDouble.bot_user_id == "UBOTBRIDGE"
    assert answer["team_id"] == "T0001"
    (call,) = slack.wait_for("auth.test")
    assert call.headers["Authorization"] == "Bearer xoxb-test-token"
    assert call.at <= time.time()


def test_slack_post_reply_update(slack: SlackDouble, client: WebClient) -> None:
    root = client.chat_postMessage(channel="C1", text="evaluating")
    reply = client.chat_postMessage(channel="C1", text="step 1", thread_ts=root["ts"])
    assert root["channel"] == "C1"
    assert float(reply["ts"]) > float(root["ts"])
    assert reply["message"]["thread_ts"] == root["ts"]
    updated = client.chat_update(channel="C1", ts=root["ts"], text="done")
    assert updated["ok"] and updated["ts"] == root["ts"] and updated["text"] == "done"
    assert [m["text"] for m in slack.thread_replies("C1", root["ts"])] == ["step 1"]
    assert slack.messages[("C1", root["ts"])]["text"] == "done"
    posted = slack.calls_to("chat.postMessage")
    assert [c.params["text"] for c in posted] == ["evaluating", "step 1"]
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts="1.000000", text="x")
    assert err.value.response["error"] == "message_not_found"
    assert slack.violations == []


def test_slack_valid_blocks_are_accepted(slack: SlackDouble, client: WebClient) -> None:
    blocks = [
        HeaderBlock(text="Evaluation #7"),
        SectionBlock(text="*accuracy* 0.93"),
        MarkdownBlock(text="**bold** and a [link](https://example.com)"),
        TableBlock(rows=_table(3, 4)["rows"]),
        ActionsBlock(elements=[ButtonElement(text="Re-run", action_id="rerun", value="7")]),
    ]
    answer = client.chat_postMessage(channel="C1", text="Evaluation #7", blocks=blocks)
    assert answer["ok"]
    (call,) = slack.calls_to("chat.postMessage")
    assert [b["type"] for b in call.params["blocks"]] == [
        "header",
        "section",
        "markdown",
        "table",
        "actions",
    ]
    client.chat_postEphemeral(channel="C1", user="U1", text="only you", blocks=blocks[:2])
    assert slack.violations == []


@pytest.mark.parametrize(
    ("blocks", "fragment"),
    [
        ([_table(), _table()], "2 table blocks"),
        ([_table(rows=101)], "101 rows"),
        ([_table(cells=21)], "21 cells"),
        ([{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}], "3000"),
        ([{"type": "markdown", "text": "x" * 12_001}], "12000"),
        ([{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}], "150"),
        ([{"type": "divider"}] * 51, "51 blocks"),
        ([{"type": "no_such_block"}], "unknown block type"),
        ([{"type": "divider", "colour": "red"}], "unknown properties"),
        ([{"type": "divider", "block_id": "a"}, {"type": "divider", "block_id": "a"}], "dup"),
    ],
)
def test_slack_invalid_blocks_are_violations(
    slack: SlackDouble, client: WebClient, blocks: list[dict[str, Any]], fragment: str
) -> None:
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="fallback", blocks=blocks)
    assert err.value.response["error"] == "invalid_blocks"
    assert len(slack.violations) >= 1
    assert any(fragment in v for v in slack.violations), slack.violations
    assert slack.violations[0].startswith("chat.postMessage: ")


def test_slack_blocks_need_fallback_text(
    slack: SlackDouble, client: WebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKIP_SLACK_SDK_WARNING", "1")  # else slack_sdk warns (= error in pytest)
    with pytest.raises(SlackApiError):
        client.chat_postMessage(channel="C1", blocks=[SectionBlock(text="hi")])
    assert slack.violations == ["chat.postMessage: message has blocks but no fallback `text`"]


def test_validate_blocks_directly() -> None:
    assert validate_blocks([{"type": "divider"}] * 100, surface="view") == []
    assert validate_blocks([{"type": "divider"}] * 51) != []
    assert validate_blocks("[]") == ["blocks must be a JSON array, got str"]


def test_slack_form_encoded_blocks_are_decoded(slack: SlackDouble) -> None:
    body = "channel=C1&text=hi&blocks=" + urllib.request.quote(json.dumps([_table(), _table()]))
    request = urllib.request.Request(
        slack.url + "chat.postMessage",
        data=body.encode(),
        headers={
            "Authorization": "Bearer xoxb-1",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.loads(response.read())
    assert answer["error"] == "invalid_blocks"
    (call,) = slack.calls_to("chat.postMessage")
    assert isinstance(call.params["blocks"], list) and call.params["text"] == "hi"
    slack.violations.clear()


def test_slack_rate_limit_then_retry_handler_succeeds(slack: SlackDouble) -> None:
    client = WebClient(
        token="xoxb-1",
        base_url=slack.url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)],
    )
    slack.fail_next("chat.postMessage", status=429, retry_after=0)
    started = time.monotonic()
    answer = client.chat_postMessage(channel="C1", text="hi")
    assert answer["ok"]
    assert len(slack.calls_to("chat.postMessage")) == 2
    assert time.monotonic() - started < 2  # Retry-After 0 + the handler's < 1 s jitter


def test_slack_rate_limit_without_handler_raises(slack: SlackDouble, client: WebClient) -> None:
    slack.fail_next("chat.update", status=429, retry_after=30)
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts="1.0", text="x")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "30"
    assert err.value.response["error"] == "ratelimited"


def test_slack_fail_next_error_then_recovers(slack: SlackDouble, client: WebClient) -> None:
    slack.fail_next("chat.postMessage", "fatal_error", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            client.chat_postMessage(channel="C1", text="hi")
        assert err.value.response["error"] == "fatal_error"
    assert client.chat_postMessage(channel="C1", text="hi")["ok"]


def test_slack_auth_and_channel_errors(slack: SlackDouble, client: WebClient) -> None:
    for token, error in ((None, "not_authed"), ("garbage", "invalid_auth")):
        with pytest.raises(SlackApiError) as err:
            WebClient(token=token, base_url=slack.url).auth_test()
        assert err.value.response["error"] == error
    slack.missing_channels.add("CGONE")
    slack.not_member.add("CPRIV")
    cases = [
        ({"channel": "CGONE", "text": "x"}, "channel_not_found"),
        ({"channel": "CPRIV", "text": "x"}, "not_in_channel"),
        ({"channel": "C1", "text": "x" * 40_001}, "msg_too_long"),
    ]
    for kwargs, error in cases:
        with pytest.raises(SlackApiError) as err:
            client.chat_postMessage(**kwargs)
        assert err.value.response["error"] == error
    with pytest.raises(SlackApiError) as err:
        client.api_call("chat.postMessage", json={"text": "no channel"})
    assert err.value.response["error"] == "channel_not_found"
    client.conversations_join(channel="CPRIV")
    assert client.chat_postMessage(channel="CPRIV", text="x")["ok"]
    with pytest.raises(SlackApiError) as err:
        client.api_call("made.up")
    assert err.value.response["error"] == "unknown_method"
    assert "made.up" in [c.method for c in slack.calls]


def test_slack_lookups(slack: SlackDouble, client: WebClient) -> None:
    slack.usergroups["S0DEPLOY"] = ["U1", "U2"]
    assert client.usergroups_users_list(usergroup="S0DEPLOY")["users"] == ["U1", "U2"]
    with pytest.raises(SlackApiError) as err:
        client.usergroups_users_list(usergroup="S0NOPE")
    assert err.value.response["error"] == "no_such_subteam"
    user = client.users_info(user="U1")["user"]
    assert user["id"] == "U1" and user["tz"] == "UTC"
    assert client.conversations_info(channel="C1")["channel"]["id"] == "C1"
    slack.socket_mode_url = "ws://127.0.0.1:1/link/?ticket=1"
    app_client = WebClient(token="xapp-1-A1-1-x", base_url=slack.url)
    assert app_client.apps_connections_open(app_token="xapp-1-A1-1-x")["url"] == (
        "ws://127.0.0.1:1/link/?ticket=1"
    )
    # users.info / usergroups.users.list are sent as GET with a query string
    assert slack.calls_to("users.info")[0].params["user"] == "U1"


def test_slack_views(slack: SlackDouble, client: WebClient) -> None:
    view = {
        "type": "home",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}],
    }
    answer = client.views_publish(user_id="U1", view=view)
    assert answer["view"]["id"].startswith("V")
    assert slack.violations == []
    with pytest.raises(SlackApiError) as err:
        client.views_publish(user_id="U1", view={"type": "home", "blocks": [{"type": "x"}]})
    assert err.value.response["error"] == "invalid_arguments"  # what Slack answers for views
    assert slack.violations and slack.violations[0].startswith("views.publish: ")
    slack.violations.clear()


def test_slack_response_url(slack: SlackDouble) -> None:
    url = slack.response_url("cmd-1")
    assert url.endswith("/response/cmd-1")
    webhook = WebhookClient(url)
    ok = webhook.send(text="working on it", response_type="ephemeral")
    assert (ok.status_code, ok.body) == (200, "ok")
    bad = webhook.send(text="x", blocks=[_table(), _table()])
    assert (bad.status_code, bad.body) == (400, "invalid_blocks")
    assert slack.violations and slack.violations[0].startswith("response_url: ")
    slack.violations.clear()
    for _ in range(3):
        webhook.send(text="again")
    assert webhook.send(text="sixth").status_code == 404  # 5 uses per response_url
    calls = slack.wait_for("response_url", count=6)
    assert calls[0].params == {"text": "working on it", "response_type": "ephemeral"}


def test_slack_wait_for_times_out_with_what_was_received(
    slack: SlackDouble, client: WebClient
) -> None:
    client.auth_test()
    with pytest.raises(AssertionError, match=r"chat.postMessage.*received: \['auth.test'\]"):
        slack.wait_for("chat.postMessage", timeout=0.05)
    slack.reset()
    assert slack.calls == []


# ---------------------------------------------------------------------------- GitHub
@pytest.fixture
def gh() -> Iterator[GitHubDouble]:
    with GitHubDouble() as double:
        double.add_repo(REPO, installation_id=11)
        double.add_pull(REPO, 7, head_sha=SHA, labels=["needs-review"])
        yield double
        assert double.server_errors == []


def _integration(gh: GitHubDouble, private_key: str | None = None) -> GithubIntegration:
    return GithubIntegration(
        auth=Auth.AppAuth(gh.app_id, private_key or gh.private_key_pem),
        base_url=gh.url,
        seconds_between_requests=0,
        seconds_between_writes=0,
        lazy=True,  # get_repo(..., lazy=True) is deprecated in PyGithub 2.10
    )


def _pull(repo: Repository, number: int) -> PullRequest:
    """get_pull under lazy=True fetches on first attribute access; force it."""
    pull = repo.get_pull(number)
    _ = pull.title
    return pull


@pytest.fixture
def github(gh: GitHubDouble) -> Github:
    gi = _integration(gh)
    installation = gi.get_repo_installation("acme", "ml")
    return gi.get_github_for_installation(installation.id)


def test_github_app_flow_and_labels(gh: GitHubDouble) -> None:
    gi = _integration(gh)
    installation = gi.get_repo_installation("acme", "ml")
    assert installation.id == 11
    github = gi.get_github_for_installation(installation.id)
    repo = github.get_repo(REPO)
    pr = repo.get_pull(7)
    assert pr.head.sha == SHA and pr.title == "Improve model"
    pr.add_to_labels("evaluate", "gpu large")
    pr.remove_from_labels("needs-review")
    pr.remove_from_labels("gpu large")  # a name that needs quoting in the URL
    assert gh.labels(REPO, 7) == ["evaluate"]

    assert len(gh.jwt_claims) >= 1
    for claims in gh.jwt_claims:
        assert claims["iss"] == str(gh.app_id)
        assert claims["exp"] - claims["iat"] <= 600
    (token,) = gh.tokens_issued
    assert token.startswith("ghs_") and len(token) == 504
    (post,) = gh.requests_to("POST", r"^/repos/acme/ml/issues/7/labels$")
    assert post.body == ["evaluate", "gpu large"]
    assert post.headers["Authorization"] == f"token {token}"
    assert gh.requests_to("POST", r"/access_tokens$")[0].status == 201
    assert gh.unknown_routes == []


def test_github_pull_as_issue_and_labels_api(gh: GitHubDouble, github: Github) -> None:
    repo = github.get_repo(REPO)
    issue = repo.get_issue(7)
    assert issue.pull_request is not None  # lazy: the first attribute access fetches
    assert issue.html_url == "https://github.com/acme/ml/pull/7"
    assert [label.name for label in issue.get_labels()] == ["needs-review"]
    issue.set_labels("a", "b")
    assert gh.labels(REPO, 7) == ["a", "b"]
    with pytest.raises(UnknownObjectException):  # lazy: raised on first attribute access
        _ = repo.get_pull(99).title
    with pytest.raises(GithubException) as err:  # GitHub's wording is not "Not Found"
        _pull(repo, 7).remove_from_labels("absent")
    assert err.value.status == 404
    assert err.value.data["message"] == "Label does not exist"
    assert gh.unknown_routes == []


def test_github_repository_dispatch_is_validated(gh: GitHubDouble, github: Github) -> None:
    repo = github.get_repo(REPO)
    assert repo.create_repository_dispatch("evaluate", {"request_id": "r-1", "pr": 7})
    assert gh.dispatches == [
        {"repo": REPO, "event_type": "evaluate", "client_payload": {"request_id": "r-1", "pr": 7}}
    ]
    too_many = {f"k{i}": i for i in range(11)}
    # PyGithub returns False (it does not raise) on 422
    assert repo.create_repository_dispatch("evaluate", too_many) is False
    assert repo.create_repository_dispatch("x" * 101) is False
    assert repo.create_repository_dispatch("") is False
    rejected = gh.requests_to("POST", r"/dispatches$")[1:]
    assert [r.status for r in rejected] == [422, 422, 422]
    assert len(gh.dispatches) == 1


def test_github_runs_etag_round_trip(gh: GitHubDouble, github: Github) -> None:
    run = gh.add_run(REPO, {"head_sha": SHA, "display_title": "eval r-1"})
    repo = github.get_repo(REPO)
    fetched = repo.get_workflow_run(run["id"])
    assert fetched.status == "queued" and fetched.display_title == "eval r-1"
    assert fetched.html_url == f"https://github.com/acme/ml/actions/runs/{run['id']}"
    assert fetched.update() is False  # If-None-Match → 304
    assert gh.not_modified == 1
    run.update(status="completed", conclusion="success")
    assert fetched.update() is True
    assert fetched.conclusion == "success"

    url = f"{gh.url}/repos/{REPO}/actions/runs"
    status, headers, _ = github.requester.requestJson("GET", url, parameters={"head_sha": SHA})
    assert status == 200
    remaining = int(headers["x-ratelimit-remaining"])
    status, headers, body = github.requester.requestJson(
        "GET", url, parameters={"head_sha": SHA}, headers={"If-None-Match": headers["etag"]}
    )
    assert status == 304 and not body
    assert int(headers["x-ratelimit-remaining"]) == remaining  # 304s are free
    assert gh.not_modified == 2


def test_github_run_filters_and_paging(gh: GitHubDouble, github: Github) -> None:
    for i in range(5):
        gh.add_run(REPO, {"head_sha": SHA if i % 2 == 0 else "b" * 40, "display_title": f"r{i}"})
    gh.add_run(REPO, {"status": "completed", "conclusion": "failure", "event": "push"})
    old = gh.add_run(REPO, {"created_at": "2020-01-01T00:00:00Z"})
    repo = github.get_repo(REPO)
    runs = repo.get_workflow_runs(head_sha=SHA)
    assert runs.totalCount == 3
    assert [r.display_title for r in runs] == ["r4", "r2", "r0"]  # newest first
    assert repo.get_workflow_runs(status="failure").totalCount == 1
    assert repo.get_workflow_runs(event="push").totalCount == 1
    assert [r.id for r in repo.get_workflow_runs(created="<2021-01-01")] == [old["id"]]
    assert repo.get_workflow_runs(created="2020-01-01").totalCount == 1
    paged = Github(
        auth=github.requester.auth,
        base_url=gh.url,
        per_page=2,
        seconds_between_requests=0,
        lazy=True,
    )
    titles = [r.display_title for r in paged.get_repo(REPO).get_workflow_runs()]
    assert len(titles) == 7
    assert len(gh.requests_to("GET", r"/actions/runs$")) >= 4 + 4  # Link rel="next" followed
    jobs = list(repo.get_workflow_run(old["id"]).jobs())
    assert jobs[0].run_id == old["id"]
    assert gh.unknown_routes == []


def test_github_comments_since_and_post(gh: GitHubDouble, github: Github) -> None:
    first = gh.add_comment(REPO, 7, "eval started")
    first["updated_at"] = first["created_at"] = "2020-01-01T00:00:00Z"
    gh.add_comment(REPO, 7, "eval finished")
    issue = github.get_repo(REPO).get_issue(7)
    assert [c.body for c in issue.get_comments()] == ["eval started", "eval finished"]
    since = issue.get_comments(since=datetime(2021, 1, 1, tzinfo=UTC))
    assert [c.body for c in since] == ["eval finished"]
    posted = issue.create_comment("from the bot")
    assert posted.user.login == "chatops-bridge[bot]" and posted.user.type == "Bot"
    assert [c["body"] for c in gh.comments(REPO, 7)][-1] == "from the bot"
    url = f"{gh.url}/repos/{REPO}/issues/7/comments"
    _, headers, _ = github.requester.requestJson("GET", url)
    status, _, _ = github.requester.requestJson(
        "GET", url, headers={"If-None-Match": headers["etag"]}
    )
    assert status == 304


def test_github_collaborator_permission(gh: GitHubDouble, github: Github) -> None:
    gh.set_permission(REPO, "alice", "maintain")
    gh.set_permission(REPO, "bob", "triage")
    repo = github.get_repo(REPO)
    assert repo.get_collaborator_permission("alice") == "write"  # legacy field
    assert repo.get_collaborator_role_name("alice") == "maintain"
    assert repo.get_collaborator_permission("bob") == "read"
    with pytest.raises(UnknownObjectException):
        repo.get_collaborator_permission("mallory")


def test_github_fault_injection(gh: GitHubDouble, github: Github) -> None:
    repo = github.get_repo(REPO)
    gh.fail("POST", r"/dispatches$", 502)
    assert repo.create_repository_dispatch("evaluate", {"id": 1}) is False
    assert repo.create_repository_dispatch("evaluate", {"id": 1}) is True
    assert len(gh.dispatches) == 1

    gh.fail("POST", r"/dispatches$", 502, applied=True)  # accepted, but the answer is lost
    assert repo.create_repository_dispatch("evaluate", {"id": 2}) is False
    assert [d["client_payload"]["id"] for d in gh.dispatches] == [1, 2]

    gh.fail("GET", r"/pulls/7$", 403, headers={"X-RateLimit-Remaining": "0"})
    with pytest.raises(RateLimitExceededException):
        _pull(repo, 7)

    gh.fail("GET", r"/pulls/7$", 429, headers={"Retry-After": "7"})
    with pytest.raises(GithubException) as err:
        _pull(repo, 7)
    assert err.value.status == 429 and err.value.headers["retry-after"] == "7"

    gh.fail("*", r"/pulls/7$", 0, delay=0.2)  # slow, then a normal answer
    started = time.monotonic()
    assert _pull(repo, 7).number == 7
    assert time.monotonic() - started >= 0.2


def test_github_rate_limit_headers(gh: GitHubDouble, github: Github) -> None:
    repo = github.get_repo(REPO)
    _pull(repo, 7)
    core = github.get_rate_limit().resources.core
    assert core.limit == 5000 and core.remaining < 5000
    gh.rate_remaining = 0
    with pytest.raises(RateLimitExceededException):
        _pull(repo, 7)


def test_github_auth_rules(gh: GitHubDouble, github: Github) -> None:
    other_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    with pytest.raises(GithubException) as err:
        _integration(gh, other_key).get_repo_installation("acme", "ml")
    assert err.value.status == 401
    assert err.value.data["message"] == "A JSON web token could not be decoded"
    assert gh.jwt_rejections

    now = int(time.time())
    far = jwt.encode(
        {"iat": now - 60, "exp": now + 900, "iss": str(gh.app_id)},
        gh.private_key_pem,
        algorithm="RS256",
    )
    app_client = Github(auth=Auth.AppAuthToken(far), base_url=gh.url, seconds_between_requests=0)
    status, _, body = app_client.requester.requestJson("GET", "/app")
    assert status == 401 and "too far in the future" in body

    with pytest.raises(BadCredentialsException):
        _pull(Github(auth=Auth.Token("ghs_forged"), base_url=gh.url, lazy=True).get_repo(REPO), 7)

    _pull(github.get_repo(REPO), 7)
    gh.expire_tokens()  # PyGithub trusts its own expires_at and keeps the dead token
    with pytest.raises(BadCredentialsException):
        _pull(github.get_repo(REPO), 7)

    with pytest.raises(UnknownObjectException):
        _integration(gh).get_repo_installation("acme", "not-installed")


def test_github_other_installation_and_missing_permission(gh: GitHubDouble) -> None:
    gh.add_repo("other/repo", installation_id=22)
    gh.add_repo("acme/readonly", installation_id=11, permissions={"metadata": "read"})
    gh.add_pull("acme/readonly", 1, head_sha=SHA)
    gh.add_pull("other/repo", 1, head_sha=SHA)
    github = _integration(gh).get_github_for_installation(11)
    with pytest.raises(UnknownObjectException):  # GitHub hides repos of other installations
        _pull(github.get_repo("other/repo"), 1)
    with pytest.raises(GithubException) as err:
        _pull(github.get_repo("acme/readonly"), 1)
    assert err.value.status == 403
    assert err.value.data["message"] == "Resource not accessible by integration"
    assert github.withLazy(False).get_repo("acme/readonly").full_name == "acme/readonly"


def test_github_short_token_ttl_mints_per_request(gh: GitHubDouble) -> None:
    gh.token_ttl = 10  # below PyGithub's 20 s refresh threshold
    github = _integration(gh).get_github_for_installation(11)
    _pull(github.get_repo(REPO), 7)
    _pull(github.get_repo(REPO), 7)
    assert len(gh.tokens_issued) == 2


def test_github_unknown_route_is_recorded(gh: GitHubDouble, github: Github) -> None:
    status, _, body = github.requester.requestJson("GET", f"{gh.url}/repos/{REPO}/nonsense")
    assert status == 404 and body and json.loads(body)["message"] == "Not Found"
    assert gh.unknown_routes == [f"GET /repos/{REPO}/nonsense"]
    gh.reset()
    assert gh.unknown_routes == [] and gh.requests == []


def test_github_wait_for(gh: GitHubDouble, github: Github) -> None:
    _pull(github.get_repo(REPO), 7)
    assert gh.wait_for("GET", r"/pulls/7$")[0].status == 200
    with pytest.raises(AssertionError, match="received"):
        gh.wait_for("POST", r"/dispatches$", timeout=0.05)


def test_slack_raw_error_http_status(slack: SlackDouble) -> None:
    request = urllib.request.Request(slack.url + "chat.postMessage", data=b"channel=C1&text=x")
    with urllib.request.urlopen(request, timeout=5) as response:  # no token: still HTTP 200
        assert response.status == 200
        assert json.loads(response.read())["error"] == "not_authed"
