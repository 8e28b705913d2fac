"""Guards at intake, through the real app: header limits, slow clients, absurd but signed
payloads, deliveries that cannot succeed, and requests from another Slack workspace.

No timings are asserted here; bench/intake.py prints how long these take.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from webhook_examples import fixture

from bot import db
from bot.github_intake.payloads import json_too_deep, webhook_shape_problem
from bot.http import headers_for_bolt
from bot.serving import header_problem, uvicorn_options
from bot.signing import github_signature
from bot.slack import SlackFailure
from bot.workspace import Identity, foreign_reason
from tests.conftest import CHANNEL, USER, WEBHOOK_SECRET, Harness
from tests.test_security import (
    capture_errors,
    command_body,
    labelled,
    nothing_stored,
    raw_http,
    slack_headers,
)

# -- 1. headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/slack/events", "/github/webhooks", "/healthz"])
def test_too_many_headers_get_431_before_anything(harness: Harness, slack, path) -> None:
    headers = [(f"x-flood-{i % 7}", "a") for i in range(1000)]
    body = command_body()
    headers += list(slack_headers(body).items())
    method = harness.client.get if path == "/healthz" else harness.client.post
    kwargs: dict[str, Any] = {} if path == "/healthz" else {"content": body}
    resp = method(path, headers=headers, **kwargs)
    assert resp.status_code == 431
    assert "too many header fields" in resp.text
    assert nothing_stored(harness) and slack.calls == []


def test_oversized_header_bytes_get_431(harness: Harness) -> None:
    body = command_body()
    headers = {**slack_headers(body), "x-big": "b" * 40_000}
    resp = harness.client.post("/slack/events", content=body, headers=headers)
    assert resp.status_code == 431
    assert nothing_stored(harness)


def test_header_limits_are_pure_and_keep_every_value() -> None:
    assert header_problem([(b"a", b"b")] * 100, 100, 1000) is None
    assert header_problem([(b"a", b"b")] * 101, 100, 1000) == "too many header fields (at most 100)"
    assert "too large" in (header_problem([(b"a", b"b" * 2000)], 100, 1000) or "")
    raw = [(b"x-a", b"1"), (b"X-A", b"2"), (b"x-b", b"3")]
    assert headers_for_bolt(raw) == {"x-a": ["1", "2"], "x-b": ["3"]}


@pytest.fixture
def limits_server(harness: Harness) -> Iterator[tuple[int, list[str]]]:
    """The harness's app on uvicorn with the production limits (small ones, to test them)."""
    seen: list[str] = []
    app = harness.bridge.asgi()

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await app(scope, receive, send)

    settings = harness.settings
    object.__setattr__(settings, "header_timeout_seconds", 1.0)
    object.__setattr__(settings, "max_connections", 8)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            counting, lifespan="off", log_config=None, access_log=False, **uvicorn_options(settings)
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1], seen
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_a_100000_header_request_is_refused_by_the_server_before_the_app(limits_server) -> None:
    port, seen = limits_server
    head = b"POST /slack/events HTTP/1.1\r\nhost: x\r\n" + b"x-a: b\r\n" * 100_000
    status, answer = raw_http(port, head + b"content-length: 0\r\n\r\n", [])
    assert status == 431, answer[:200]
    assert seen == []  # the parser stopped at the cap: the app never saw the request
    assert raw_http(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", [])[0] == 200


def test_a_websocket_upgrade_is_answered_as_plain_http(limits_server) -> None:
    """The bridge has no WebSocket endpoint: uvicorn is told so (no WebSocket library loaded
    at start), and an upgrade request gets the HTTP answer, not a switched protocol."""
    port, seen = limits_server
    head = (
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
        b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    status, answer = raw_http(port, head, [])
    assert status == 200, answer[:200]
    assert seen == ["/healthz"]


def test_half_open_connections_are_closed_and_cannot_lock_out_healthz(limits_server) -> None:
    port, _seen = limits_server
    with contextlib.ExitStack() as stack:
        silent = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            for _ in range(20)  # more than the cap of 8
        ]
        slow = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        slow.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")  # headers never finished
        # /healthz still answers: the oldest idle connections give way to it.
        assert raw_http(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", [])[0] == 200
        # Every silent or slow client is closed by the server (header timeout or the cap);
        # recv returns b"" (closed) rather than waiting out the socket timeout.
        for s in [*silent, slow]:
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1024) == b""


# -- 2. absurd but signed payloads -----------------------------------------------------------


def _signed_webhook(h: Harness, event: str, body: bytes) -> Any:
    headers = {
        "content-type": "application/json",
        "x-github-event": event,
        "x-github-delivery": str(uuid.uuid4()),
        "x-hub-signature-256": github_signature(WEBHOOK_SECRET, body),
    }
    return h.client.post("/github/webhooks", content=body, headers=headers)


@pytest.mark.parametrize("depth", [100_000, 100])
def test_deeply_nested_webhooks_get_400(harness: Harness, depth: int) -> None:
    payload = json.dumps(fixture("workflow_run.completed"))
    body = (payload[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}").encode()
    with capture_errors() as errors:
        resp = _signed_webhook(harness, "workflow_run", body)
    assert resp.status_code == 400 and "nested deeper" in resp.text
    assert nothing_stored(harness) and errors == []


@pytest.mark.parametrize("depth", [100_000, 100])
def test_deeply_nested_slack_payloads_get_400(harness: Harness, slack, depth: int) -> None:
    inner = "[" * depth + "]" * depth
    payload = (
        '{"type": "block_actions", "team": {"id": "T0001"}, "user": {"id": "U0REQUESTER"}, '
        f'"actions": [], "x": {inner}}}'
    )
    body = urlencode({"payload": payload}).encode()
    with capture_errors() as errors:
        resp = harness.client.post("/slack/events", content=body, headers=slack_headers(body))
    assert resp.status_code == 400
    assert nothing_stored(harness) and errors == [] and slack.calls == []


def _bad(event: str, path: str, value: Any) -> dict[str, Any]:
    name = {
        "workflow_run": "workflow_run.completed",
        "issue_comment": "issue_comment.created",
        "pull_request": "pull_request.labeled",
        "deployment_status": "deployment_status.created",
    }[event]
    payload = copy.deepcopy(fixture(name))
    target = payload
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    target[last] = value
    return payload


@pytest.mark.parametrize(
    ("event", "path", "value"),
    [
        ("issue_comment", "issue.number", "abc"),
        ("issue_comment", "comment.id", 1.5),
        ("pull_request", "pull_request.number", "7"),
        ("pull_request", "number", True),
        ("workflow_run", "workflow_run.id", "1234"),
        ("workflow_run", "workflow_run.run_attempt", [1]),
        ("workflow_run", "repository.full_name", 5),
        ("deployment_status", "deployment.id", "x"),
    ],
)
def test_fields_of_the_wrong_type_get_400_and_are_never_stored(
    harness: Harness, event: str, path: str, value: Any
) -> None:
    body = json.dumps(_bad(event, path, value)).encode()
    resp = _signed_webhook(harness, event, body)
    assert resp.status_code == 400, resp.text
    assert path in resp.json()["error"]
    assert nothing_stored(harness)


def test_shape_checks_are_pure() -> None:
    assert webhook_shape_problem("issue_comment", {"issue": {"number": 3}}) is None
    assert webhook_shape_problem("workflow_run", {"workflow_run": {"conclusion": None}}) is None
    assert webhook_shape_problem("workflow_run", {"workflow_run": {"pull_requests": [1]}})
    assert not json_too_deep({"a": [{"b": 1}]}, 3)
    assert json_too_deep({"a": [{"b": {}}]}, 3)


def _depth(value: Any) -> int:
    """Nesting of objects/arrays, by the definition (recursive; test-only reference)."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(_JSON, st.integers(min_value=0, max_value=8))
def test_json_too_deep_agrees_with_the_definition(value: Any, limit: int) -> None:
    assert json_too_deep(value, limit) == (_depth(value) > limit)


def _deliveries(h: Harness) -> list[Any]:
    with h.bridge.engine.connect() as conn:
        return list(conn.execute(select(db.deliveries)).mappings())


def test_a_delivery_that_cannot_succeed_is_failed_once_not_retried(make_harness, clock) -> None:
    h = make_harness(use_clock=True)
    calls: list[int] = []

    def broken(payload: dict[str, Any]) -> None:
        calls.append(1)
        raise KeyError("a field this handler needs")  # the same payload fails every time

    h.bridge.router.add("workflow_run", broken)
    payload = fixture("workflow_run.completed")
    payload["workflow_run"]["display_title"] = "unrelated"
    with capture_errors() as errors:
        assert _signed_webhook(h, "workflow_run", json.dumps(payload).encode()).status_code == 202
        h.settle()
    (row,) = _deliveries(h)
    assert row["processed_at"] is not None and row["attempts"] == 1
    assert row["payload"] is not None  # kept: this is how a failed delivery looks
    assert len(errors) == 1 and "not retried" in errors[0]
    clock.advance(3600)
    assert h.store.pending_deliveries(older_than=0) == []
    assert calls == [1]


def test_a_delivery_that_meets_an_outage_is_retried(make_harness, clock) -> None:
    h = make_harness(use_clock=True)
    # Not GitHub's Retryable (that has its own clause): Slack unreachable, the database gone.
    outcomes: list[Exception | None] = [
        SlackFailure("connection: ConnectError", "chat.postMessage"),
        OperationalError("SELECT 1", {}, Exception("connection refused")),
        None,
    ]

    def flaky(payload: dict[str, Any]) -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    h.bridge.router.add("workflow_run", flaky)
    payload = fixture("workflow_run.completed")
    payload["workflow_run"]["display_title"] = "unrelated"
    assert _signed_webhook(h, "workflow_run", json.dumps(payload).encode()).status_code == 202
    h.settle()
    for _ in range(2):
        (row,) = _deliveries(h)
        assert row["processed_at"] is None
        clock.advance(3600)
        ((delivery_id, event),) = h.store.pending_deliveries(older_than=0)
        h.bridge.jobs.run_delivery(delivery_id, event)
    (row,) = _deliveries(h)
    assert row["processed_at"] is not None and row["payload"] is None and outcomes == []


# -- 3. another workspace ----------------------------------------------------------------------


def _auth_test(slack: Any, **extra: Any) -> None:
    answer = {
        "ok": True,
        "url": "https://acme.slack.com/",
        "team": "Acme",
        "user": "chatops",
        "team_id": "T0001",
        "user_id": slack.bot_user_id,
        "bot_id": slack.bot_id,
        "is_enterprise_install": False,
        **extra,
    }
    slack._m_auth_test = lambda params: dict(answer)


@contextlib.contextmanager
def warnings_of(name: str) -> Iterator[list[logging.LogRecord]]:
    found: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(record)

    handler = Collect(logging.WARNING)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)


def _command_from(
    team: str, *, enterprise: str | None = None, app: str = "A0001", text: str = "42"
) -> bytes:
    form = dict(parse_qsl(command_body(text).decode()))
    form.update({"team_id": team, "api_app_id": app})
    if enterprise:
        form["enterprise_id"] = enterprise
    return urlencode(form).encode()


def test_commands_from_another_workspace_are_refused(harness: Harness, github, slack) -> None:
    body = _command_from("T0OTHERWS", text="42 secret-words")
    with warnings_of("bot.workspace") as warned:
        resp = harness.client.post("/slack/events", content=body, headers=slack_headers(body))
    assert resp.status_code == 200
    assert resp.json()["response_type"] == "ephemeral"
    assert "serves another Slack workspace" in resp.json()["text"]
    harness.settle()
    assert nothing_stored(harness) and labelled(github) == []
    assert [r.getMessage() for r in warned] == ["Slack request from another workspace refused"]
    assert warned[0].team_ids == ["T0OTHERWS"]  # type: ignore[attr-defined]
    assert "secret-words" not in str(warned[0].__dict__)
    # Our own workspace still works.
    assert harness.slash("/evaluate", "42").status_code == 200
    harness.settle()
    assert len(harness.store.find()) == 1


def test_events_and_clicks_from_another_workspace_get_403(harness: Harness, slack) -> None:
    event = {
        "token": "unused",
        "team_id": "T0OTHERWS",
        "api_app_id": "A0001",
        "type": "event_callback",
        "event_id": "Ev0OTHER1",
        "event_time": int(time.time()),
        "event": {
            "type": "app_mention",
            "user": USER,
            "channel": CHANNEL,
            "text": "hi",
            "ts": "1.2",
        },
        "authorizations": [{"team_id": "T0OTHERWS", "user_id": "UBOT", "is_bot": True}],
    }
    body = json.dumps(event).encode()
    headers = slack_headers(body, content_type="application/json")
    assert harness.client.post("/slack/events", content=body, headers=headers).status_code == 403
    click = {
        "type": "block_actions",
        "team": {"id": "T0OTHERWS", "domain": "other"},
        "user": {"id": USER, "team_id": "T0OTHERWS"},
        "api_app_id": "A0001",
        "actions": [{"action_id": "deploy_approve", "value": "x"}],
    }
    body = urlencode({"payload": json.dumps(click)}).encode()
    assert (
        harness.client.post("/slack/events", content=body, headers=slack_headers(body)).status_code
        == 403
    )
    assert [c.method for c in slack.calls] == ["auth.test"]  # nothing posted anywhere


def test_enterprise_grid_teams_of_the_same_organization_are_accepted(
    make_harness, slack, github
) -> None:
    _auth_test(slack, enterprise_id="E0ACME")
    h = make_harness()
    body = _command_from("T0SISTER", enterprise="E0ACME")
    resp = h.client.post("/slack/events", content=body, headers=slack_headers(body))
    assert "another Slack workspace" not in resp.text, resp.text
    h.settle()
    assert len(h.store.find()) == 1
    body = _command_from("T0SISTER", enterprise="E0OTHERORG")
    resp = h.client.post("/slack/events", content=body, headers=slack_headers(body))
    assert "serves another Slack workspace" in resp.json()["text"]


def test_another_app_id_is_refused_when_auth_test_names_ours(make_harness, slack) -> None:
    _auth_test(slack, app_id="A0001")
    h = make_harness()
    body = _command_from("T0001", app="A0SOMEONE")
    resp = h.client.post("/slack/events", content=body, headers=slack_headers(body))
    assert "serves another Slack workspace" in resp.json()["text"]
    assert nothing_stored(h)


def test_workspace_rules_are_pure() -> None:
    me = Identity(team_id="T1", enterprise_id="E1", app_id="A1")
    assert foreign_reason({"team_id": "T1", "api_app_id": "A1"}, me) is None
    assert foreign_reason({"team": {"id": "T2"}, "enterprise": {"id": "E1"}}, me) is None
    assert foreign_reason({"team": {"id": "T2"}}, me) == "team_id"
    assert foreign_reason({"team_id": "T1", "api_app_id": "A2"}, me) == "api_app_id"
    assert foreign_reason({"type": "block_actions"}, me) == "no team"
