"""Security through the real app: who may do what, inbound checks, rate limits, secrets, and
hostile text from GitHub and Slack. Every refusal must be explained and leave nothing behind."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import uvicorn
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import func, select
from webhook_examples import fixture

from bot import db, logs
from bot.signing import github_signature
from tests.conftest import (
    BOT_TOKEN,
    CHANNEL,
    HEAD_SHA,
    REPO,
    SIGNING_SECRET,
    USER,
    WEBHOOK_SECRET,
    Harness,
)

ROOT = Path(__file__).resolve().parent.parent
OTHER = "U0OUTSIDER1"
MIB = 1024 * 1024


# -- helpers --------------------------------------------------------------------------------


def row_counts(h: Harness) -> dict[str, int]:
    """Rows in every table the bridge writes (schema_migrations and the processes' heartbeats
    aside: the bridge's own bookkeeping, written whatever arrives)."""
    out = {}
    with h.bridge.engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            if table.name not in ("schema_migrations", "processes"):
                out[table.name] = conn.execute(select(func.count()).select_from(table)).scalar()
    return out


def nothing_stored(h: Harness) -> bool:
    return not any(row_counts(h).values())


def slack_headers(
    body: bytes,
    *,
    ts: int | None = None,
    secret: str = SIGNING_SECRET,
    content_type: str = "application/x-www-form-urlencoded",
) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    sig = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body.decode("latin-1"))
    return {
        "content-type": content_type,
        "x-slack-request-timestamp": stamp,
        "x-slack-signature": sig,
    }


def command_body(
    text: str = "42",
    *,
    user: str = USER,
    channel: str = CHANNEL,
    trigger_id: str | None = None,
    response_url: str = "",
) -> bytes:
    return urlencode(
        {
            "token": "unused",
            "team_id": "T0001",
            "team_domain": "acme",
            "channel_id": channel,
            "channel_name": "ml",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/evaluate",
            "text": text,
            "api_app_id": "A0001",
            "response_url": response_url,
            "trigger_id": trigger_id or f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:16]}",
        }
    ).encode()


def labelled(github: Any) -> list[Any]:
    return github.requests_to("POST", r"/labels$") + github.requests_to("POST", r"/dispatches$")


@contextlib.contextmanager
def live_server(h: Harness) -> Iterator[int]:
    """The harness's ASGI app on a real uvicorn server (for raw sockets and chunked bodies).

    The TestClient already ran the app's lifespan, so uvicorn serves it with lifespan off.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            h.bridge.asgi(), lifespan="off", log_config=None, access_log=False, timeout_keep_alive=5
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def raw_http(
    port: int, head: bytes, chunks: list[bytes], *, timeout: float = 10.0
) -> tuple[int, bytes]:
    """Send a request head and body pieces on a raw socket; return (status, whole answer).

    The server may answer and close before the body is complete (413): write errors after
    that are expected and ignored.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        with contextlib.suppress(OSError):
            for chunk in chunks:
                s.sendall(chunk)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                part = s.recv(65536)
                if not part:
                    break
                data += part
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


@contextlib.contextmanager
def capture_errors() -> Iterator[list[str]]:
    """ERROR records of any logger while inside (a refused payload must not log one)."""
    found: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(f"{record.name}: {record.getMessage()}")

    handler = Collect(logging.ERROR)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield found
    finally:
        root.removeHandler(handler)


# -- 1. who may do what ---------------------------------------------------------------------


def test_allowed_channels_refuse_elsewhere_and_name_the_rule(
    make_harness, config_data, github, slack
) -> None:
    """A command outside allowed_channels is refused ephemerally, names the rule and where to go."""
    config_data["commands"]["evaluate"]["allowed_channels"] = ["C0MLCHAN01"]
    h = make_harness(config_data)
    resp = h.slash("/evaluate", "42", channel="C0ELSEWHERE")
    body = resp.json()
    assert resp.status_code == 200 and body["response_type"] == "ephemeral"
    assert "allowed_channels" in body["text"] and "<#C0MLCHAN01>" in body["text"]
    assert "chatops.yml" in body["text"]  # who can change it: whoever runs the bridge
    h.settle()
    assert labelled(github) == [] and nothing_stored(h)
    # In the allowed channel the same command goes through.
    assert "Checking" in h.slash("/evaluate", "42", channel="C0MLCHAN01").json()["text"]


def test_allowed_users_refuse_others_and_say_who_can_help(
    make_harness, config_data, github, slack
) -> None:
    config_data["commands"]["evaluate"]["allowed_users"] = [USER]
    h = make_harness(config_data)
    body = h.slash("/evaluate", "42", user=OTHER).json()
    assert body["response_type"] == "ephemeral"
    assert "allowed_users" in body["text"] and f"<@{USER}>" in body["text"]
    h.settle()
    assert labelled(github) == [] and nothing_stored(h)
    assert "Checking" in h.slash("/evaluate", "42", user=USER).json()["text"]


def test_allowed_usergroups_are_resolved_through_slack_and_cached(
    make_harness, config_data, github, slack
) -> None:
    """Members of an allowed user group may run the command; the lookup is cached."""
    slack.usergroups["S0MLTEAM01"] = [OTHER]
    config_data["commands"]["evaluate"]["allowed_usergroups"] = ["S0MLTEAM01"]
    h = make_harness(config_data)
    assert "Checking" in h.slash("/evaluate", "42", user=OTHER).json()["text"]
    assert "Checking" in h.slash("/evaluate", "#42", user=OTHER).json()["text"]
    refused = h.slash("/evaluate", "42", user="U0NOTMEMBER").json()
    assert "allowed_usergroups" in refused["text"] and "<!subteam^S0MLTEAM01>" in refused["text"]
    lookups = slack.calls_to("usergroups.users.list")
    assert len(lookups) == 1 and lookups[0].params["usergroup"] == "S0MLTEAM01"
    h.settle()


def test_usergroup_lookup_failure_is_explained(make_harness, config_data, github, slack) -> None:
    """When Slack cannot list a group's members, the refusal says so instead of a bare no."""
    config_data["commands"]["evaluate"]["allowed_usergroups"] = ["S0MLTEAM01"]
    h = make_harness(config_data)
    slack.fail_next("usergroups.users.list", "missing_scope")
    body = h.slash("/evaluate", "42", user=OTHER).json()
    assert "missing_scope" in body["text"] and "<!subteam^S0MLTEAM01>" in body["text"]
    h.settle()
    assert nothing_stored(h)


def test_usergroup_lookup_on_the_ack_path_does_not_wait_out_a_rate_limit(
    make_harness, config_data, github, slack
) -> None:
    """A 429 with Retry-After is not slept through before the ack: one call, a clear answer;
    once a group's members are known, a failed refresh falls back to them."""
    slack.usergroups["S0MLTEAM01"] = [OTHER]
    config_data["commands"]["evaluate"]["allowed_usergroups"] = ["S0MLTEAM01"]
    h = make_harness(config_data)
    slack.fail_next("usergroups.users.list", "ratelimited", status=429, retry_after=20)
    body = h.slash("/evaluate", "42", user=OTHER).json()
    assert "Slack did not answer in time: please try again in a minute." in body["text"]
    assert len(slack.calls_to("usergroups.users.list")) == 1  # no retry inside the 3 s budget
    assert nothing_stored(h)

    assert "Checking" in h.slash("/evaluate", "42", user=OTHER).json()["text"]
    h.bridge.slack.group_cache_seconds = 0  # every lookup refreshes from here on
    slack.fail_next("usergroups.users.list", "ratelimited", status=429, retry_after=20)
    assert "Checking" in h.slash("/evaluate", "#42", user=OTHER).json()["text"]
    assert len(slack.calls_to("usergroups.users.list")) == 3
    h.settle()


@pytest.mark.parametrize(
    ("linked", "role", "allowed"),
    [
        (False, None, False),
        (True, "read", False),
        (True, "triage", False),
        (True, "write", True),
        (True, "admin", True),
    ],
)
def test_require_github_permission(
    make_harness, config_data, github, slack, linked, role, allowed
) -> None:
    """The linked GitHub login needs the permission; an unlinked user is told how to get linked."""
    config_data["commands"]["evaluate"]["require_github_permission"] = "write"
    if linked:
        config_data["github_users"] = {USER: "octo-dev"}
    if role:
        github.set_permission(REPO, "octo-dev", role)
    h = make_harness(config_data)
    h.slash("/evaluate", "42", response_url=slack.response_url("perm"))
    if allowed:
        github.wait_for("POST", r"/issues/42/labels$")
        h.settle()
        assert h.store.find()[0].status == "triggered"
        return
    said = slack.wait_for("response_url")[0].params["text"]
    h.settle()
    assert "require_github_permission" in said
    if linked:
        assert f"`{role}`" in said and "`write`" in said and "octo-dev" in said
    else:
        assert "github_users" in said and "not linked" in said
    assert labelled(github) == []
    assert not [c for c in slack.calls_to("chat.postMessage") if "thread_ts" not in c.params]
    assert h.store.find()[0].status == "error"


# -- 2. inbound checks ----------------------------------------------------------------------


@pytest.mark.parametrize(("age", "status"), [(299, 200), (301, 401), (-301, 401), (-299, 200)])
def test_slack_signature_window(harness: Harness, github, slack, age, status) -> None:
    """Bolt accepts a signed request up to 5 minutes old (either side) and refuses beyond."""
    body = command_body("help")
    # Start just after a second boundary: Bolt compares whole-second stamps with the clock, so
    # a boundary crossed during the request would otherwise age it by one second.
    time.sleep(1 - time.time() % 1 + 0.01)
    resp = harness.client.post(
        "/slack/events", content=body, headers=slack_headers(body, ts=int(time.time()) - age)
    )
    assert resp.status_code == status


@pytest.mark.parametrize("bad", ["wrong-secret", "tampered", "missing", "garbage"])
def test_bad_slack_signatures_are_refused_and_store_nothing(
    harness: Harness, github, slack, bad
) -> None:
    body = command_body("42")
    headers = slack_headers(
        body, secret="not-the-secret" if bad == "wrong-secret" else SIGNING_SECRET
    )
    if bad == "tampered":
        body = body.replace(b"text=42", b"text=43")
    elif bad == "missing":
        del headers["x-slack-signature"]
    elif bad == "garbage":
        headers["x-slack-signature"] = "v0=" + "0" * 64
    resp = harness.client.post("/slack/events", content=body, headers=headers)
    assert resp.status_code == 401
    harness.settle()
    assert nothing_stored(harness) and labelled(github) == [] and slack.calls == []


@pytest.mark.parametrize("bad", ["wrong-secret", "missing", "sha1-only", "other-body", "no-prefix"])
def test_bad_github_signatures_are_refused_and_store_nothing(
    harness: Harness, github, slack, bad
) -> None:
    """X-Hub-Signature-256 is an HMAC of the raw body with the webhook secret, nothing else."""
    body = json.dumps(fixture("workflow_run.completed")).encode()
    sig = github_signature(WEBHOOK_SECRET, body)
    headers = {
        "content-type": "application/json",
        "x-github-event": "workflow_run",
        "x-github-delivery": str(uuid.uuid4()),
    }
    if bad == "wrong-secret":
        headers["x-hub-signature-256"] = github_signature("not-the-secret", body)
    elif bad == "sha1-only":
        headers["x-hub-signature"] = "sha1=" + "0" * 40
    elif bad == "other-body":
        headers["x-hub-signature-256"] = github_signature(WEBHOOK_SECRET, body + b" ")
    elif bad == "no-prefix":
        headers["x-hub-signature-256"] = sig.removeprefix("sha256=")
    resp = harness.client.post("/github/webhooks", content=body, headers=headers)
    assert resp.status_code == 401
    assert nothing_stored(harness)


def test_github_signature_test_vector() -> None:
    """GitHub's documented example (docs: validating webhook deliveries)."""
    assert github_signature("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


@pytest.mark.parametrize("path", ["/slack/events", "/github/webhooks"])
def test_oversized_bodies_are_refused_before_parsing(harness: Harness, path: str) -> None:
    """A declared Content-Length over 1 MiB is refused with 413 (signed or not)."""
    body = b"{" + b" " * MIB + b"}"
    headers = (
        slack_headers(body, content_type="application/json")
        if path == "/slack/events"
        else {
            "content-type": "application/json",
            "x-github-event": "workflow_run",
            "x-github-delivery": "big-1",
            "x-hub-signature-256": github_signature(WEBHOOK_SECRET, body),
        }
    )
    assert harness.client.post(path, content=body, headers=headers).status_code == 413
    assert nothing_stored(harness)


@pytest.mark.parametrize("path", ["/slack/events", "/github/webhooks"])
def test_oversized_chunked_bodies_are_cut_off(harness: Harness, path: str) -> None:
    """Without a Content-Length (chunked), reading stops at 1 MiB and the answer is 413."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "X-GitHub-Event: workflow_run\r\nX-GitHub-Delivery: chunky\r\n"
        "X-Slack-Request-Timestamp: 1\r\nX-Slack-Signature: v0=0\r\n"
        "X-Hub-Signature-256: sha256=0\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b" " * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    with live_server(harness) as port:
        # 2 MiB offered; the server answers 413 once it has read a little over 1 MiB.
        status, _ = raw_http(port, head, [chunk] * 32 + [b"0\r\n\r\n"])
        assert status == 413
        # The server is still healthy afterwards.
        status, _ = raw_http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", [])
        assert status == 200
    assert nothing_stored(harness)


def test_lying_content_length_is_refused(harness: Harness) -> None:
    """A body longer than its Content-Length is cut at the declared length, so the signature
    no longer matches; a declared length over the limit is refused before any body is read."""
    body = json.dumps(fixture("workflow_run.completed")).encode()
    sig = github_signature(WEBHOOK_SECRET, body)
    with live_server(harness) as port:
        short = (
            f"POST /github/webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) // 2}\r\nX-GitHub-Event: workflow_run\r\n"
            f"X-GitHub-Delivery: liar-1\r\nX-Hub-Signature-256: {sig}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        status, _ = raw_http(port, short, [body])
        assert status == 401
        huge = (
            f"POST /github/webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: {5 * MIB}\r\n"
            f"X-GitHub-Event: workflow_run\r\nX-GitHub-Delivery: liar-2\r\n"
            f"X-Hub-Signature-256: {sig}\r\n\r\n"
        ).encode()
        status, _ = raw_http(port, huge, [body])
        assert status == 413
    assert nothing_stored(harness)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"type": "event_callback", "event": '),
        ("application/json", b"\xff\xfe not utf-8"),
        ("application/x-www-form-urlencoded", b"payload=%7Bnot-json"),
        ("application/x-www-form-urlencoded", b"payload=%5B1%2C2%5D"),
        ("application/x-www-form-urlencoded", b"payload=%22a-string%22"),
        ("application/json", b"[1, 2, 3]"),
        # Bolt itself raises on these (a view of null); that is a bad payload, not our bug.
        (
            "application/x-www-form-urlencoded",
            b"payload=%7B%22type%22%3A+%22view_submission%22%2C+%22user%22%3A+%7B%22id%22%3A+"
            b"%22U0X%22%7D%2C+%22team%22%3A+%7B%22id%22%3A+%22T0001%22%7D%2C+%22view%22%3A+null%7D",
        ),
    ],
)
def test_malformed_signed_slack_bodies_get_400(
    harness: Harness, github, slack, content_type, body
) -> None:
    with capture_errors() as errors:
        resp = harness.client.post(
            "/slack/events", content=body, headers=slack_headers(body, content_type=content_type)
        )
    assert resp.status_code == 400
    assert errors == []  # refused as malformed, not logged as a failure of the bridge
    # Nothing said in Slack (Bolt's own auth.test before its listeners is a read).
    assert nothing_stored(harness) and [c for c in slack.calls if c.method != "auth.test"] == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{not json"),
        ("application/json", b"[1, 2]"),
        ("application/json", b"\xff\xfe"),
        ("application/x-www-form-urlencoded", b"payload=%7Bnot-json"),
        ("application/x-www-form-urlencoded", b"nothing=here"),
    ],
)
def test_malformed_signed_webhooks_get_400(harness: Harness, content_type, body) -> None:
    headers = {
        "content-type": content_type,
        "x-github-event": "workflow_run",
        "x-github-delivery": str(uuid.uuid4()),
        "x-hub-signature-256": github_signature(WEBHOOK_SECRET, body),
    }
    assert harness.client.post("/github/webhooks", content=body, headers=headers).status_code == 400
    assert nothing_stored(harness)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", command_body("42\x00")),
        ("application/x-www-form-urlencoded", b"payload=" + b"%7B%22type%22%3A%22x%5Cu0000%22%7D"),
        ("application/json", b'{"type": "event_callback", "event": {"text": "a\\u0000"}}'),
    ],
)
def test_nul_characters_from_slack_are_refused(harness: Harness, content_type, body) -> None:
    """Slack never sends NUL; PostgreSQL text cannot hold it: 400, nothing stored."""
    resp = harness.client.post(
        "/slack/events", content=body, headers=slack_headers(body, content_type=content_type)
    )
    assert resp.status_code == 400
    assert nothing_stored(harness)


def test_nul_characters_in_webhooks_are_dropped(harness: Harness, github, slack) -> None:
    """A NUL inside a webhook's strings is removed before anything is stored (PostgreSQL)."""
    harness.slash("/evaluate", "42")
    slack.wait_for("chat.update", 1)
    harness.settle()
    req = harness.store.find()[0]
    payload = copy.deepcopy(fixture("workflow_run.completed"))
    payload["repository"]["full_name"] = REPO
    payload["workflow_run"].update(
        {
            "name": "Evaluate\u0000 model",
            "display_title": f"chatops {req.id}: x\u0000",
            "head_sha": HEAD_SHA,
            "event": "pull_request",
            # Matched by head SHA (a pull_request run's title proves nothing): created now.
            "pull_requests": [],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    assert harness.webhook("workflow_run", payload).status_code == 202
    harness.settle()
    assert [r.name for r in harness.store.runs_of(req.id)] == ["Evaluate model"]
    assert harness.store.get(req.id).status in ("succeeded", "failed")


def test_retried_slash_command_acts_once(harness: Harness, github, slack) -> None:
    """The same command delivered again (same trigger_id, with retry headers) is one request."""
    body = command_body("42", trigger_id="777.retry")
    first = harness.client.post("/slack/events", content=body, headers=slack_headers(body))
    again = harness.client.post(
        "/slack/events",
        content=body,
        headers={
            **slack_headers(body),
            "x-slack-retry-num": "1",
            "x-slack-retry-reason": "http_timeout",
        },
    )
    assert first.status_code == again.status_code == 200
    assert first.json()["text"] == again.json()["text"]  # same request id in both answers
    github.wait_for("POST", r"/labels$")
    harness.settle()
    assert len(harness.store.find()) == 1 and len(labelled(github)) == 1


def test_retried_event_acts_once(harness: Harness, github, slack) -> None:
    """An Events API retry (X-Slack-Retry-Num, same event_id) does not act twice."""
    event = {
        "type": "app_mention",
        "user": USER,
        "channel": CHANNEL,
        "text": "<@UBOTBRIDGE> help",
        "ts": "1700000000.000100",
        "event_ts": "1700000000.000100",
    }
    envelope = {
        "token": "unused",
        "team_id": "T0001",
        "api_app_id": "A0001",
        "type": "event_callback",
        "event_id": "Ev0RETRY01",
        "event_time": int(time.time()),
        "event": event,
    }
    body = json.dumps(envelope).encode()
    for retry in (None, "1", "2"):
        headers = slack_headers(body, content_type="application/json")
        if retry:
            headers |= {"x-slack-retry-num": retry, "x-slack-retry-reason": "http_timeout"}
        assert (
            harness.client.post("/slack/events", content=body, headers=headers).status_code == 200
        )
    harness.settle()
    assert len(slack.calls_to("chat.postEphemeral")) == 1


# -- 3. rate limit --------------------------------------------------------------------------


def test_rate_limit_per_user_with_clear_message(
    make_harness, config_data, clock, github, slack
) -> None:
    config_data["rate_limits"] = {"commands_per_minute": 3}
    h = make_harness(config_data, use_clock=True)
    for _ in range(3):
        assert "Checking" in h.slash("/evaluate", "42").json()["text"]
    refused = h.slash("/evaluate", "42").json()
    assert refused["response_type"] == "ephemeral"
    assert "3 commands" in refused["text"] and "rate_limits.commands_per_minute" in refused["text"]
    # Another person is not affected; the first one may go again a minute later.
    assert "Checking" in h.slash("/evaluate", "42", user=OTHER).json()["text"]
    clock.advance(61)
    assert "Checking" in h.slash("/evaluate", "42").json()["text"]
    h.settle()
    assert len(h.store.find()) == 5


# -- 4. secrets -----------------------------------------------------------------------------


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def debug_logs(harness: Harness) -> Iterator[Capture]:
    """Every logger at DEBUG into one handler set up like bot.logs.setup (filters on it)."""
    capture = Capture()
    capture.setFormatter(logs.JsonFormatter())
    capture.addFilter(logs.ContextFilter())
    capture.addFilter(logs.Redactor(harness.settings.secret_values()))
    root = logging.getLogger()
    saved = (
        root.level,
        {name: logging.getLogger(name).level for name in list(logging.root.manager.loggerDict)},
    )
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    for name in saved[1]:
        logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


def secret_values(h: Harness, github: Any) -> dict[str, str]:
    pem = h.settings.github_private_key.get()
    out = {
        "bot token": BOT_TOKEN,
        "signing secret": SIGNING_SECRET,
        "webhook secret": WEBHOOK_SECRET,
        "private key": pem,
    }
    body = [ln for ln in pem.splitlines() if ln and "PRIVATE KEY" not in ln]
    out |= {f"private key line {i}": ln for i, ln in enumerate(body)}
    out |= {f"installation token {i}": t for i, t in enumerate(github.tokens_issued)}
    out |= {f"installation token {i} (head)": t[:40] for i, t in enumerate(github.tokens_issued)}
    return out


def assert_no_secrets(where: str, text: str, secrets: dict[str, str]) -> None:
    for name, value in secrets.items():
        assert value not in text, f"{name} found in {where}"


def test_no_secret_in_logs_messages_or_endpoints(
    harness: Harness, github, slack, debug_logs: Capture
) -> None:
    """A whole flow at DEBUG, failures included: no secret in any log line, Slack message,
    /healthz or /metrics body."""
    h = harness
    # Success path: command, label, root, webhook, reply.
    h.slash("/evaluate", "42")
    slack.wait_for("chat.update", 1)
    h.settle()
    req = h.store.find()[0]
    run = copy.deepcopy(fixture("workflow_run.completed"))
    run["repository"]["full_name"] = REPO
    run["workflow_run"].update(
        {
            "head_sha": HEAD_SHA,
            "event": "pull_request",
            "display_title": f"chatops {req.id}: evaluate",
            "pull_requests": [],  # matched by head SHA, created now: not by its title
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    assert h.webhook("workflow_run", run).status_code == 202
    slack.wait_for("chat.update", 2)
    h.settle()

    # GitHub refuses: 401 (bad credentials) and 403 on the next commands; then Slack refuses
    # the root message. Each ends as an explained error.
    def ends_in_error(n: int) -> None:
        h.wait_until(
            lambda: sum(r.status == "error" for r in h.store.find()) == n,
            what=f"{n} failed requests",
        )
        h.settle()

    github.fail("GET", r"/pulls/42$", 401, times=2)  # the retry with a fresh token, too
    h.slash("/evaluate", "42", response_url=slack.response_url("a"))
    ends_in_error(1)
    github.fail("POST", r"/labels$", 403)
    h.slash("/evaluate", "42", response_url=slack.response_url("b"))
    ends_in_error(2)
    slack.fail_next("chat.postMessage", "not_in_channel")
    h.slash("/evaluate", "42", response_url=slack.response_url("c"))
    ends_in_error(3)
    # A bad signature and a bad webhook body are logged too.
    h.webhook("workflow_run", b"{oops")
    h.webhook("workflow_run", run, secret="wrong")
    healthz = h.client.get("/healthz").text
    metrics = h.client.get("/metrics").text

    assert github.tokens_issued, "the flow must have used an installation token"
    secrets = secret_values(h, github)
    assert len(debug_logs.lines) > 50, "DEBUG logging did not reach the capture"
    # The capture really sees library debug output (PyGithub, urllib3, slack_sdk).
    joined = "\n".join(debug_logs.lines)
    assert '"logger": "github.Requester"' in joined and '"logger": "urllib3' in joined
    assert '"logger": "slack_sdk' in joined
    for line in debug_logs.lines:
        assert_no_secrets("a log line", line, secrets)
    for call in slack.calls:
        assert_no_secrets(f"Slack {call.method} params", json.dumps(call.params), secrets)
    assert_no_secrets("/healthz", healthz, secrets)
    assert_no_secrets("/metrics", metrics, secrets)
    for err in h.store.find():
        assert_no_secrets("a stored error", str(err.error), secrets)


def test_installation_tokens_and_jwts_are_redacted_by_shape() -> None:
    """Values the settings do not know (installation tokens, JWTs) are scrubbed by their shape."""
    red = logs.Redactor([])
    token = "ghs_" + "A1b2" * 100
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjQyfQ.c2lnbmF0dXJlLWJ5dGVz"
    for text in (
        f'{{"token": "{token}"}}',
        f"Authorization: Bearer {jwt}",
        f"token {token}",
        "xoxb-123-456-abcdefABCDEF",
    ):
        record = logging.LogRecord("x", logging.DEBUG, "f", 1, "%s", (text,), None)
        red.filter(record)
        assert "[redacted]" in record.msg
        for secret in (token, jwt, "xoxb-123-456-abcdefABCDEF"):
            assert secret not in record.msg


def test_private_key_file_is_read_once(make_harness, github, slack, tmp_path) -> None:
    """The key file is read at start; the running bridge never needs it again."""
    key = tmp_path / "app.pem"
    key.write_text(github.private_key_pem)
    key.chmod(0o600)
    h = make_harness(GITHUB_APP_PRIVATE_KEY="", GITHUB_APP_PRIVATE_KEY_PATH=str(key))
    key.unlink()  # gone: every JWT from now on must come from memory
    h.slash("/evaluate", "42")
    github.wait_for("POST", r"/labels$")
    h.settle()
    github.expire_tokens()  # the next call needs a new installation token, so a new JWT
    # A new head, so the second /evaluate 42 is not "already running" (one per PR + head SHA).
    github.add_pull(REPO, 42, head_sha="c" * 40, labels=["evaluate"])
    h.slash("/evaluate", "42")
    github.wait_for("POST", r"/labels$", 2)
    h.settle()
    assert [r.status for r in h.store.find()] == ["triggered", "triggered"]
    assert len(github.tokens_issued) == 2


# -- 5. hostile input -----------------------------------------------------------------------

HOSTILE = "<!channel> <!here> <@U0VICTIM01> <https://evil.example/|click me> &amp; *bold*"
# What HOSTILE would become in Slack if it were not escaped. (A markdown link in a metrics
# comment is meant to become a Slack link; its label is escaped, so it cannot mention anyone.)
INJECTIONS = (
    "<!channel>",
    "<!here>",
    "<@U0VICTIM01>",
    "<https://evil.example/|click me>",
    "|click me>",
)


def slack_texts(slack: Any) -> list[str]:
    """Every string Slack was asked to show (text, blocks, views), as JSON."""
    return [
        json.dumps(c.params)
        for c in slack.calls
        if c.method not in ("usergroups.users.list", "auth.test", "users.info")
    ]


def assert_escaped(slack: Any) -> None:
    for text in slack_texts(slack):
        for needle in INJECTIONS:
            assert needle not in text, f"{needle!r} reached Slack unescaped: {text[:300]}"


def test_hostile_github_text_is_escaped_everywhere(harness: Harness, github, slack) -> None:
    """PR titles, branch names, run names and titles, and comment bodies are data, not mrkdwn."""
    github.add_pull(REPO, 66, head_sha="e" * 40, title=f"Fix {HOSTILE}", head_ref=f"x{HOSTILE}")
    harness.slash("/evaluate", "66")
    slack.wait_for("chat.update", 1)
    harness.settle()
    req = harness.store.find(pr_number=66)[0]
    run = copy.deepcopy(fixture("workflow_run.completed"))
    run["repository"]["full_name"] = REPO
    run["workflow_run"].update(
        {
            "id": 4242,
            "name": f"Evaluate {HOSTILE}",
            "head_sha": "e" * 40,
            "event": "pull_request",
            "head_branch": HOSTILE,
            "display_title": f"chatops {req.id}: {HOSTILE}",
            "pull_requests": [],  # matched by head SHA, created now: not by its title
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "conclusion": "failure",
            "html_url": "https://github.com/acme/ml-models/actions/runs/4242",
        }
    )
    for action, status in (("in_progress", "in_progress"), ("completed", "completed")):
        run["action"], run["workflow_run"]["status"] = action, status
        assert harness.webhook("workflow_run", run).status_code == 202
        harness.settle()
    comment = copy.deepcopy(fixture("issue_comment.created"))
    comment["repository"]["full_name"] = REPO
    comment["issue"]["number"] = 66
    comment["issue"]["pull_request"] = {"url": "x"}
    comment["comment"]["user"]["type"] = "Bot"
    comment["comment"]["body"] = (
        f"<!-- chatops:metrics -->\n### {HOSTILE}\n| {HOSTILE} | Loss |\n|---|---|\n"
        f"| <!channel> | 0.1 |\n\n[<!here>](https://evil.example/) {HOSTILE}\n"
    )
    assert harness.webhook("issue_comment", comment).status_code == 202
    harness.settle()
    posted = [c for c in slack.calls_to("chat.postMessage") if c.params.get("thread_ts")]
    assert len(posted) >= 3  # started, finished, metrics
    shown = json.dumps([c.params for c in posted])
    assert "&lt;!channel&gt;" in shown and "<https://evil.example/|&lt;!here&gt;>" in shown
    assert_escaped(slack)


def test_hostile_command_text_is_escaped(harness: Harness, github, slack) -> None:
    """Whatever a person types comes back as text, never as a mention or link."""
    for text in (
        "<!channel>",
        "<@U0VICTIM01> 42",
        "<https://evil.example/|42>",
        "acme/<!here>#4",
        "https://github.com/a/b/pull/<!channel>",
    ):
        body = harness.slash("/evaluate", text).json()
        assert body["response_type"] == "ephemeral"
        for needle in INJECTIONS:
            assert needle not in body["text"], (text, body["text"])
    harness.settle()
    assert nothing_stored(harness)


def test_no_shell_anywhere() -> None:
    """bot/ and handlers/ never start processes (no subprocess, os.system, os.popen, os.exec*)."""
    pattern = re.compile(
        r"^\s*(import\s+subprocess|from\s+subprocess\s+import)|\bos\.(system|popen|exec\w*|spawn\w*)"
        r"\s*\(|shell\s*=\s*True|\bpty\.spawn|\bcommands\.getoutput",
        re.M,
    )
    offenders = []
    for folder in ("bot", "handlers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for m in pattern.finditer(path.read_text()):
                offenders.append(f"{path.relative_to(ROOT)}: {m.group(0).strip()}")
    assert offenders == []
