"""Reliability through the real app: repeats of every kind act once, writes to GitHub are not
repeated blindly, and a database, GitHub or Slack that is down or slow is explained, bounded
and leaves nothing half-written. (Crashes at each step: tests/test_crash_recovery.py.)"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from webhook_examples import fixture

from bot.github import GitHubApp, Unavailable
from bot.slack import (
    MAX_RETRY_AFTER,
    BoundedRateLimitRetryHandler,
    SlackFailure,
    SlackOut,
    make_client,
    retry_after_seconds,
)
from tests.conftest import BOT_TOKEN, HEAD_SHA, REPO, SIGNING_SECRET, Harness
from tests.doubles.github_api import app_key_pair
from tests.test_security import command_body, nothing_stored, row_counts, slack_headers

ROOT = Path(__file__).resolve().parent.parent


def run_payload(req_id: str, *, run_id: int = 9001, conclusion: str = "success") -> dict[str, Any]:
    payload = copy.deepcopy(fixture("workflow_run.completed"))
    payload["repository"]["full_name"] = REPO
    payload["workflow_run"].update(
        {
            "id": run_id,
            "name": "Evaluate model",
            "head_sha": HEAD_SHA,
            "event": "pull_request",
            "display_title": f"chatops {req_id}: evaluate",
            "pull_requests": [],  # matched by head SHA, created now: not by its title
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "status": "completed",
            "conclusion": conclusion,
            "run_attempt": 1,
        }
    )
    return payload


def started(h: Harness, slack: Any) -> Any:
    h.slash("/evaluate", "42")
    slack.wait_for("chat.update", 1)
    h.settle()
    return h.store.find()[0]


def client_for(github: Any, **kwargs: Any) -> GitHubApp:
    return GitHubApp(
        app_id=github.app_id,
        private_key=github.private_key_pem,
        base_url=github.url,
        seconds_between_requests=0,
        seconds_between_writes=0,
        **kwargs,
    )


# -- 6. idempotency -------------------------------------------------------------------------


def test_concurrent_redeliveries_are_handled_once(harness: Harness, github, slack) -> None:
    """GitHub redelivers with the same X-GitHub-Delivery; eight at once still act once."""
    req = started(harness, slack)
    payload = run_payload(req.id)
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: harness.webhook("workflow_run", payload, delivery="same-delivery"),
                range(8),
            )
        )
    harness.settle()
    assert sorted(a.status_code for a in answers) == [200] * 7 + [202]
    replies = [c for c in slack.calls_to("chat.postMessage") if c.params.get("thread_ts")]
    assert len(replies) == 1
    assert row_counts(harness)["deliveries"] == 1


def test_double_submit_of_one_command_is_one_request(harness: Harness, github, slack) -> None:
    """Slack sent the same command twice at once (same trigger_id): one request, one label."""
    body = command_body("42", trigger_id="555.double")
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda _: harness.client.post(
                    "/slack/events", content=body, headers=slack_headers(body)
                ),
                range(6),
            )
        )
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["text"] for a in answers}) == 1  # every answer names the same request
    github.wait_for("POST", r"/labels$")
    harness.settle()
    assert len(harness.store.find()) == 1
    assert len(github.requests_to("POST", r"/labels$")) == 1


def test_a_502_on_a_dispatch_is_sent_once_by_the_client(github) -> None:
    """Writes are never retried by the HTTP layer: one 502 means exactly one POST."""
    github.add_repo(REPO, installation_id=101)
    gh = client_for(github)
    github.fail("POST", r"/dispatches$", 502)
    with pytest.raises(Unavailable):
        gh.dispatch(REPO, "evaluate", {"request_id": "abc"})
    assert len(github.requests_to("POST", r"/dispatches$")) == 1


def test_a_502_on_a_read_is_retried(github) -> None:
    """Reads are safe to repeat: urllib3 retries GET on 5xx."""
    github.add_repo(REPO, installation_id=101)
    github.add_pull(REPO, 42, head_sha=HEAD_SHA)
    gh = client_for(github)
    github.fail("GET", r"/pulls/42$", 502)
    assert gh.get_pull(REPO, 42).head_sha == HEAD_SHA
    assert [r.status for r in github.requests_to("GET", r"/pulls/42$")] == [502, 200]


def test_dispatch_retry_after_a_502_carries_the_same_request_id(
    make_harness, config_data, clock, github, slack
) -> None:
    """The job layer retries the write later, with the same request id in client_payload."""
    config_data["commands"]["evaluate"] = {"trigger": "dispatch", "event_type": "evaluate"}
    h = make_harness(config_data, use_clock=True)
    github.fail("POST", r"/dispatches$", 502)
    h.slash("/evaluate", "42")
    h.wait_until(
        lambda: [c for c in slack.calls_to("chat.postMessage") if c.params.get("thread_ts")],
        what="a note in the thread",
    )
    h.settle()
    note = next(c for c in slack.calls_to("chat.postMessage") if c.params.get("thread_ts"))
    assert "retry" in note.params["text"]
    req = h.store.find()[0]
    assert req.status == "accepted" and len(github.requests_to("POST", r"/dispatches$")) == 1
    clock.advance(31)
    h.bridge.jobs.run_request(req.id)
    h.settle()
    assert h.store.get(req.id).status == "triggered"
    assert len(github.requests_to("POST", r"/dispatches$")) == 2
    assert [d["client_payload"]["request_id"] for d in github.dispatches] == [req.id]
    bodies = [
        r.body["client_payload"]["request_id"] for r in github.requests_to("POST", r"/dispatches$")
    ]
    assert bodies == [req.id, req.id]


def test_a_revoked_installation_token_is_replaced_at_once(harness: Harness, github, slack) -> None:
    """GitHub answers 401 for a token PyGithub still trusts: one retry with a fresh token,
    so the person's command goes through instead of failing."""
    started(harness, slack)
    github.expire_tokens()
    # A new head, so the second /evaluate 42 is not "already running" (one per PR + head SHA).
    github.add_pull(REPO, 42, head_sha="c" * 40, labels=["evaluate"])
    harness.slash("/evaluate", "42")
    github.wait_for("POST", r"/labels$", 2)
    harness.settle()
    assert [r.status for r in harness.store.find()] == ["triggered", "triggered"]
    assert len(github.tokens_issued) == 2
    assert [r.status for r in github.requests_to("GET", r"/pulls/42$")] == [200, 401, 200]


# -- 8. dependencies down -------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_serve_without_a_database_exits_with_one_clear_line(tmp_path: Path, kind: str) -> None:
    url = (
        f"postgresql://postgres@127.0.0.1:{_closed_port()}/chatops"
        if kind == "postgres"
        else f"sqlite:///{tmp_path}/no/such/dir/chatops.db"
    )
    config = tmp_path / "chatops.yml"
    config.write_text("repositories:\n  default: acme/ml-models\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "GITHUB_"))}
    env |= {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "GITHUB_APP_ID": "1",
        "GITHUB_APP_PRIVATE_KEY": app_key_pair()[0],
        "DATABASE_URL": url,
        "CHATOPS_CONFIG": str(config),
        "PORT": str(_closed_port()),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "database is unavailable" in lines[0] and "DATABASE_URL" in lines[0]


@contextlib.contextmanager
def database_down(h: Harness) -> Iterator[None]:
    """Make the bridge's database unreachable for new connections, then bring it back."""
    engine = h.bridge.engine
    if engine.dialect.name == "sqlite":
        path = Path(str(engine.url.database))
        engine.dispose()
        away = path.with_name(path.name + ".away")
        path.rename(away)
        path.mkdir()  # a directory where the file was: "unable to open database file"
        try:
            yield
        finally:
            path.rmdir()
            away.rename(path)
        return
    name = engine.url.database
    admin = create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def test_database_down_during_operation(harness: Harness, github, slack) -> None:
    """/healthz turns 503, a command gets an apology, a webhook a 503 for redelivery; nothing
    is half-written, and everything works again once the database is back."""
    h = harness
    started(h, slack)
    before = row_counts(h)
    calls_before = len(slack.calls)
    with database_down(h):
        health = h.client.get("/healthz")
        assert health.status_code == 503
        assert "unavailable" in health.json()["database"]
        answer = h.slash("/evaluate", "42", trigger_id="999.down")
        assert answer.status_code == 200
        body = answer.json()
        assert body["response_type"] == "ephemeral" and "database" in body["text"]
        assert "nothing was started" in body["text"]
        hook = h.webhook("workflow_run", run_payload("0" * 12), delivery="while-down")
        assert hook.status_code == 503
        assert h.client.get("/metrics").status_code == 200  # metrics stay readable
    h.wait_until(lambda: h.client.get("/healthz").status_code == 200, what="healthz 200")
    assert row_counts(h) == before  # nothing half-written
    assert len(slack.calls) == calls_before  # nothing was said in channels
    assert h.store.request_by_key("slack:999.down") is None
    # Back to normal: the same command now goes through; the webhook is accepted when redelivered.
    assert "Checking" in h.slash("/evaluate", "42", trigger_id="999.down").json()["text"]
    assert (
        h.webhook("workflow_run", run_payload("0" * 12), delivery="while-down").status_code == 202
    )
    h.settle()


def test_github_timeouts_are_bounded_and_explained(harness: Harness, github, slack) -> None:
    """A GitHub that does not answer costs a bounded time; the person is told it will be
    retried, the request waits for its retry, and no thread is left hanging."""
    h = harness
    slow = client_for(github, timeout=1)
    h.bridge.github = h.bridge.deps.github = slow
    # Each answer comes (correctly) after 2.5 s: a client without a 1 s timeout would get it
    # and label the PR. No wall-clock assertion: the proof is what the client gave up on.
    github.fail("GET", r"/pulls/42$", 0, delay=2.5, times=3)
    h.slash("/evaluate", "42", response_url=slack.response_url("slow"))
    note = slack.wait_for("response_url", timeout=15)[0].params["text"]
    h.settle(timeout=15)
    assert "did not answer in time" in note and "retry" in note
    # Bounded: the first try and the two read retries, then the work is handed back. (The
    # double records a request when it has answered it, 2.5 s after it came in.)
    h.wait_until(
        lambda: len(github.requests_to("GET", r"/pulls/42$")) == 3, 10, "three attempts recorded"
    )
    req = h.store.find()[0]
    assert req.status == "accepted" and h.bridge.jobs.depth == 0
    assert github.requests_to("POST", r"/labels$") == []


def test_slack_timeouts_are_bounded() -> None:
    """A Slack API that answers only after 3 s fails a client whose timeout is 1 s.

    The late answer is a valid `ok` reply: a client without the bound would take it and the
    post would succeed, so the test fails rather than hangs (no wall-clock assertion)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()
    ok = b'{"ok": true, "channel": "C0TESTCHAN", "ts": "1700000000.000100"}'
    late_answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(ok)}\r\nConnection: close\r\n\r\n".encode()
        + ok
    )

    def answer_late(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.recv(65536)
            if not stop.wait(3):
                conn.sendall(late_answer)

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn = server.accept()[0]
                held.append(conn)
                threading.Thread(target=answer_late, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        out = SlackOut(
            make_client(BOT_TOKEN, f"http://127.0.0.1:{server.getsockname()[1]}/api/", timeout=1)
        )
        with pytest.raises(SlackFailure) as failure:
            out.post("C0TESTCHAN", "hello")
        assert failure.value.error.startswith("connection")
        # One try: a timed-out POST may have been delivered, so it is not repeated blindly.
        assert len(held) == 1
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def test_slack_retry_after_waits_are_bounded(slack) -> None:
    """A 429 is retried after Retry-After only when that wait is short; an hour-long
    Retry-After fails the call at once (`ratelimited`, retried later by the job layer) instead
    of holding a worker or a request thread for an hour."""
    waits: list[float] = []
    client = make_client(BOT_TOKEN, slack.url)
    (limiter,) = [h for h in client.retry_handlers if isinstance(h, BoundedRateLimitRetryHandler)]
    limiter._sleep = waits.append  # record the waits instead of sleeping them
    out = SlackOut(client)
    slack.fail_next("chat.postMessage", "ratelimited", status=429, retry_after=2)
    assert out.post("C0TESTCHAN", "hello")
    assert len(slack.calls_to("chat.postMessage")) == 2 and 2 <= waits[0] <= MAX_RETRY_AFTER
    slack.fail_next("chat.postMessage", "ratelimited", status=429, retry_after=3600)
    with pytest.raises(SlackFailure) as failure:
        out.post("C0TESTCHAN", "hello")
    assert failure.value.error == "ratelimited"
    assert len(slack.calls_to("chat.postMessage")) == 3 and len(waits) == 1  # no retry, no wait


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": ["3"]}, 3.0),
        ({"retry-after": ["1.5"]}, 1.5),
        ({"Retry-After": ["soon"]}, 1.0),
        ({"Retry-After": ["-5"]}, 1.0),
        ({}, 1.0),
    ],
)
def test_retry_after_is_read_safely(headers: dict[str, list[str]], seconds: float) -> None:
    """slack_sdk's own handler calls int() on Retry-After and raises on "1.5"; ours cannot."""
    assert retry_after_seconds(headers) == seconds


def test_default_timeouts_are_bounded(github) -> None:
    """Production clients: 10 s per GitHub call, 10 s per Slack call, no unbounded waits."""
    github.add_repo(REPO, installation_id=101)
    gh = client_for(github)
    assert gh._kwargs["timeout"] == 10
    assert make_client(BOT_TOKEN, "https://slack.com/api/").timeout == 10


def test_nothing_stored_helper_sees_every_table(harness: Harness) -> None:
    """The checks above rely on row_counts covering every table the bridge writes."""
    assert nothing_stored(harness)
    assert {"requests", "deliveries", "sent", "audit", "runs", "approvals"} <= set(
        row_counts(harness)
    )
