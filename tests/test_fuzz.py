"""Fuzzing with hypothesis: the pure parsers return a value or their own error and nothing
else; the HTTP endpoints answer random and mutated requests (validly signed garbage too) with
2xx/4xx and stay up. (The markdown and Block Kit renderer: tests/test_markdown.py.)"""

from __future__ import annotations

import copy
import json
import logging
import random
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from webhook_examples import fixture

from bot.config import Config, ConfigError, load_config, parse_config
from bot.config_base import REPO_RE
from bot.http import parse_webhook_body
from bot.refs import DeployArgs, PullRef, UsageError, parse_deploy_args, parse_pull_ref
from bot.signing import github_signature
from tests.conftest import DEFAULT_CONFIG, WEBHOOK_SECRET, Harness
from tests.test_security import live_server, slack_headers

FUZZ = settings(max_examples=300, deadline=None)
HTTP_FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text that looks like what people type: refs, URLs, Slack's <...> wrapping, odd unicode.
pieces = st.sampled_from(
    [
        "42",
        "#42",
        "#0",
        "acme/ml-models",
        "acme/ml-models#7",
        "https://github.com/",
        "http://",
        "/pull/",
        "/actions/runs/",
        "<",
        ">",
        "|",
        "@",
        "#",
        " ",
        "\n",
        "\t",
        "production",
        "<!channel>",
        "<@U123>",
        "9" * 12,
        "-",
        ".",
        "/",
        ":",
        "%2F",
        "\u200b",
        "é",
        "ghes.local",
    ]
)
command_text = st.one_of(st.text(max_size=300), st.lists(pieces, max_size=12).map("".join))


# -- parsers --------------------------------------------------------------------------------


@FUZZ
@given(
    text=command_text,
    hosts=st.sampled_from([("github.com", "www.github.com"), ("ghes.local", "github.com")]),
)
@example(text="<https://github.com/acme/ml-models/pull/42|#42>", hosts=("github.com",))
@example(text="https://<!channel>/a/b/pull/1", hosts=("github.com",))
def test_parse_pull_ref_returns_a_ref_or_a_usage_error(text: str, hosts: tuple[str, ...]) -> None:
    try:
        ref = parse_pull_ref(text, allowed_hosts=hosts)
    except UsageError as exc:
        message = str(exc)
        assert message and "<" not in message and ">" not in message  # echoes are escaped
        return
    assert isinstance(ref, PullRef)
    assert 1 <= ref.number <= 2**31 - 1
    assert ref.repo is None or REPO_RE.match(ref.repo)


@FUZZ
@given(text=command_text)
@example(text="<https://github.com/a/b/actions/runs/1|run> production")
@example(text="acme/<!here>@5")
def test_parse_deploy_args_returns_args_or_a_usage_error(text: str) -> None:
    try:
        args = parse_deploy_args(text)
    except UsageError as exc:
        message = str(exc)
        assert message and "<" not in message and ">" not in message
        return
    assert isinstance(args, DeployArgs)
    assert args.run_id and len(args.run_id) <= 200 and " " not in args.run_id
    assert args.repo is None or REPO_RE.match(args.repo)


# Config documents: the real one with leaves replaced by anything, and keys added.
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["U0ABC", "C0ABC", "S0ABC", "acme/x", "0 * * * *"]),
)
anything = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_config(draw: st.DrawFn) -> Any:
    data: Any = copy.deepcopy(DEFAULT_CONFIG)
    data["schedules"] = [
        {
            "name": "nightly",
            "cron": "0 3 * * *",
            "channel": "C0TESTCHAN",
            "command": "dispatch",
            "event_type": "nightly",
        }
    ]
    data["github_users"] = {"U0REQUESTER": "octocat"}
    data["rate_limits"] = {"commands_per_minute": 10}
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(data)))
        value = draw(anything)
        if not path:
            data = value
            continue
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) or not isinstance(parent, dict):
            parent[path[-1]] = value
        else:
            parent[draw(st.text(max_size=12))] = value
    return data


@FUZZ
@given(data=st.one_of(mutated_config(), anything))
def test_parse_config_returns_a_config_or_a_config_error(data: Any) -> None:
    try:
        config = parse_config(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert isinstance(config, Config)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.one_of(st.text(max_size=200), mutated_config().map(yaml.safe_dump)))
@example(text="a: 2001-13-01")
@example(text="repositories: !!int x")
@example(text="[" * 3000)
@example(text="repositories: &a {channels: *a}")
def test_load_config_reads_any_file_into_a_config_or_a_config_error(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "chatops.yml"
    path.write_text(text)
    try:
        assert isinstance(load_config(path), Config)
    except ConfigError as exc:
        assert exc.problems


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        anything.map(lambda v: json.dumps(v).encode()),
    ),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/x-www-form-urlencoded",
            "",
            "text/plain",
            "application/x-www-form-urlencoded; x",
        ]
    ),
)
@example(body=b"payload=%5B%5D", content_type="application/x-www-form-urlencoded")
@example(body=b"\xff", content_type="application/json")
def test_parse_webhook_body_returns_an_object_or_value_error(
    body: bytes, content_type: str
) -> None:
    try:
        payload = parse_webhook_body(body, content_type)
    except ValueError as exc:
        assert str(exc)
        return
    assert isinstance(payload, dict)


# -- endpoints ------------------------------------------------------------------------------


ODD_LEAVES = [
    None,
    0,
    -1,
    2**63,
    1.5,
    "",
    "x" * 300,
    True,
    "<!channel>",
    "\u0000",
    "9" * 40,
    "U0REQUESTER",
    "1700000000.000100",
]


def _mutate(value: Any, rnd: random.Random, depth: int = 0) -> Any:
    """A real payload with some leaves replaced by odd values and some objects emptied.

    Nested objects stay objects and lists stay lists: a signed payload comes from Slack or
    GitHub, whose shapes are fixed; at the top level any key may get any type (Bolt and the
    webhook parser must refuse those), and whole random documents are tried separately.
    """
    if isinstance(value, dict):
        if depth and rnd.random() < 0.05:
            return {}
        out = {k: _mutate(v, rnd, depth + 1) for k, v in value.items()}
        if depth == 0 and out and rnd.random() < 0.2:
            out[rnd.choice(list(out))] = rnd.choice([*ODD_LEAVES, [], {}, [1, "a"], {"a": []}])
        return out
    if isinstance(value, list):
        if rnd.random() < 0.05:
            return []
        return [_mutate(v, rnd, depth + 1) for v in value]
    return rnd.choice(ODD_LEAVES) if rnd.random() < 0.15 else value


def _slack_bodies(rnd: random.Random) -> tuple[bytes, str]:
    command = {
        "token": "t",
        "team_id": "T0001",
        "channel_id": "C0TESTCHAN",
        "user_id": "U0X",
        "command": rnd.choice(["/evaluate", "/deploy", "/other"]),
        "text": rnd.choice(["42", "status", "help", "9001 production", "<!channel>", ""]),
        "trigger_id": uuid.uuid4().hex,
        "response_url": "",
    }
    event = {
        "type": "event_callback",
        "team_id": "T0001",
        "api_app_id": "A1",
        "event_id": f"Ev{uuid.uuid4().hex[:8]}",
        "event_time": 1,
        "event": {
            "type": rnd.choice(["app_mention", "app_home_opened", "message"]),
            "user": "U0X",
            "channel": "C0TESTCHAN",
            "text": "<@UBOT> status",
            "ts": "1.2",
            "thread_ts": "1.1",
            "tab": "home",
        },
    }
    action = {
        "type": "block_actions",
        "user": {"id": "U0X"},
        "team": {"id": "T0001"},
        "trigger_id": "1.2",
        "channel": {"id": "C0TESTCHAN"},
        "container": {"type": "message", "message_ts": "1.1"},
        "message": {"ts": "1.1", "text": "x"},
        "response_url": "",
        "actions": [
            {
                "action_id": rnd.choice(["deploy_approve", "deploy_reject", "x"]),
                "value": rnd.choice(["0" * 12, "", "x"]),
                "block_id": "b",
            }
        ],
    }
    view = {
        "type": "view_submission",
        "user": {"id": "U0X"},
        "team": {"id": "T0001"},
        "view": {
            "type": "modal",
            "id": "V1",
            "callback_id": "deploy_reject_reason",
            "private_metadata": "0" * 12,
            "state": {"values": {"reason": {"reason": {"value": "no"}}}},
        },
    }
    kind = rnd.randrange(7)
    if kind == 0:
        return urlencode(
            {k: str(_mutate(v, rnd)) for k, v in command.items()}
        ).encode(), "application/x-www-form-urlencoded"
    if kind == 1:
        return json.dumps(_mutate(event, rnd)).encode(), "application/json"
    if kind in (2, 3):
        chosen = action if kind == 2 else view
        return urlencode(
            {"payload": json.dumps(_mutate(chosen, rnd))}
        ).encode(), "application/x-www-form-urlencoded"
    if kind == 4:
        return json.dumps(_mutate(command, rnd)).encode(), "application/json"
    if kind == 5:
        return json.dumps(_random_json(rnd)).encode(), "application/json"
    return rnd.randbytes(rnd.randrange(200)), rnd.choice(["application/json", "text/plain", ""])


def _random_json(rnd: random.Random, depth: int = 0) -> Any:
    """A random JSON document that may borrow Slack's field names."""
    keys = [
        "type",
        "event",
        "command",
        "user",
        "channel",
        "view",
        "actions",
        "team",
        "text",
        "payload",
        "event_id",
        "callback_id",
        "x",
    ]
    roll = rnd.random()
    if depth > 3 or roll < 0.3:
        return rnd.choice(
            [
                *ODD_LEAVES,
                "event_callback",
                "app_mention",
                "block_actions",
                "view_submission",
                "/evaluate",
            ]
        )
    if roll < 0.45:
        return [_random_json(rnd, depth + 1) for _ in range(rnd.randrange(3))]
    return {rnd.choice(keys): _random_json(rnd, depth + 1) for _ in range(rnd.randrange(5))}


class ErrorLog(logging.Handler):
    """Collects ERROR records: a crash deep in a handler must not hide behind a 2xx."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def errors() -> Any:
    handler = ErrorLog()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


def _describe(records: list[logging.LogRecord]) -> list[str]:
    out = []
    for r in records:
        exc = logging.Formatter().formatException(r.exc_info) if r.exc_info else ""
        out.append(f"{r.name}: {r.getMessage()} {exc[-800:]}")
    return out


@HTTP_FUZZ
@given(seed=st.integers(0, 2**32), signed=st.booleans(), retry=st.booleans())
def test_slack_endpoint_answers_2xx_or_4xx_to_anything(
    harness: Harness, errors: ErrorLog, seed: int, signed: bool, retry: bool
) -> None:
    errors.records.clear()  # fixtures are shared by the examples of one test
    rnd = random.Random(seed)
    body, content_type = _slack_bodies(rnd)
    headers = (
        slack_headers(body, content_type=content_type)
        if signed
        else {
            "content-type": content_type,
            "x-slack-signature": "v0=" + "0" * 64,
            "x-slack-request-timestamp": str(rnd.randrange(2**40)),
        }
    )
    if retry:
        headers["x-slack-retry-num"] = str(rnd.randrange(4))
    resp = harness.client.post("/slack/events", content=body, headers=headers)
    assert 200 <= resp.status_code < 500, (resp.status_code, body[:300])
    harness.settle()
    assert _describe(errors.records) == []


def _webhook_bodies(rnd: random.Random) -> tuple[str, bytes, str]:
    names = [
        "workflow_run.completed",
        "workflow_run.in_progress",
        "issue_comment.created",
        "pull_request.labeled",
        "deployment_status.created",
        "installation.created",
        "ping",
    ]
    name = rnd.choice(names)
    event = name.split(".")[0]
    payload = _mutate(fixture(name), rnd)
    kind = rnd.randrange(5)
    if kind == 0:
        return event, rnd.randbytes(rnd.randrange(300)), "application/json"
    if kind == 1:
        return (
            event,
            urlencode({"payload": json.dumps(payload)}).encode(),
            "application/x-www-form-urlencoded",
        )
    if kind == 2:
        event = rnd.choice(["", "x" * 70, "star", "workflow_job", event])
    return event, json.dumps(payload).encode(), "application/json"


@HTTP_FUZZ
@given(seed=st.integers(0, 2**32), signed=st.booleans())
def test_github_endpoint_answers_2xx_or_4xx_to_anything(
    harness: Harness, errors: ErrorLog, seed: int, signed: bool
) -> None:
    errors.records.clear()
    rnd = random.Random(seed)
    event, body, content_type = _webhook_bodies(rnd)
    headers = {
        "content-type": content_type,
        "x-github-event": event,
        "x-github-delivery": rnd.choice([str(uuid.uuid4()), "", "d" * 150, "fixed"]),
        "x-hub-signature-256": github_signature(WEBHOOK_SECRET, body)
        if signed
        else "sha256=" + "0" * 64,
    }
    resp = harness.client.post("/github/webhooks", content=body, headers=headers)
    assert 200 <= resp.status_code < 500, (resp.status_code, event, body[:300])
    harness.settle()
    assert _describe(errors.records) == []


def test_the_server_stays_up_under_random_bytes(harness: Harness) -> None:
    """Garbage on the socket (broken HTTP, random bodies, abrupt closes) leaves /healthz at 200."""
    rnd = random.Random(1234)
    heads = [
        b"POST /slack/events HTTP/1.1\r\nHost: x\r\n",
        b"POST /github/webhooks HTTP/1.1\r\n",
        b"GET /healthz HTTP/1.1\r\n",
        b"",
        b"\x16\x03\x01\x02\x00",
        b"POST / HTTP/9.9\r\n",
    ]
    with live_server(harness) as port:
        for _ in range(200):
            data = rnd.choice(heads)
            if rnd.random() < 0.5:
                data += f"Content-Length: {rnd.choice([0, 5, 10**7, -1])}\r\n".encode()
            data += b"\r\n" if rnd.random() < 0.7 else b""
            data += rnd.randbytes(rnd.randrange(400))
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(data)
                if rnd.random() < 0.5:
                    s.settimeout(0.2)
                    try:
                        answer = s.recv(1024)
                    except OSError:
                        answer = b""
                    if answer.startswith(b"HTTP/1.1 "):
                        assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(1024).startswith(b"HTTP/1.1 200")
