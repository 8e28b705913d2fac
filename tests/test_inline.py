"""Slash commands answered on the event loop (bot/inline.py): what may run there and what not.

Each guard is checked by what it protects: no write statement and no HTTP call to Slack or
GitHub ever runs on a thread with a running event loop, whatever the command; the one stored
write of a command runs on the writer thread, after the listener, and before the answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event
from webhook_examples import fixture

from bot.inline import NeedsThread, Writer, guard, running_inline, write_then
from bot.store.base import _Compiled
from tests.conftest import USER

OTHER = "U0OUTSIDER1"

WRITES = ("INSERT", "UPDATE", "DELETE")


def on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def watched(make_harness: Callable[..., Any]) -> Callable[..., tuple[Any, list[tuple[str, str]]]]:
    """A harness whose database writes are recorded with the thread they ran on."""

    def build(config: dict[str, Any] | None = None) -> tuple[Any, list[tuple[str, str]]]:
        h = make_harness(config)
        seen: list[tuple[str, str]] = []

        @event.listens_for(h.bridge.engine, "before_cursor_execute")
        def _record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
            verb = statement.lstrip()[:6].upper()
            if verb in WRITES:
                where = "event loop" if on_loop() else threading.current_thread().name
                seen.append((verb + statement.split("(")[0][6:40], where))

        lean = h.store._run  # the store's lean writes run past SQLAlchemy's events

        def _lean(raw, statement, values, *, write):  # type: ignore[no-untyped-def]
            if write:
                sql = _Compiled(statement, h.bridge.engine, tuple(values)).sql
                _record(None, None, sql, values, None, False)
            return lean(raw, statement, values, write=write)

        h.store._run = _lean  # type: ignore[method-assign]
        return h, seen

    return build


def test_a_stored_command_is_written_by_the_writer_thread_before_its_answer(watched) -> None:
    h, seen = watched()
    answer = h.slash("/deploy", "run-00000000000000a1 production").json()
    assert "request" in answer["text"] or "approval" in answer["text"].lower()
    # The answer came back after the commit: the row is there now.
    stored = [r for r in h.store.find(kind="deploy") if r.run_ref == "run-00000000000000a1"]
    assert len(stored) == 1
    inserts = [where for stmt, where in seen if "requests" in stmt and stmt.startswith("INSERT")]
    assert inserts and inserts[0] == "chatops-ack-writer"
    h.settle()


def test_a_webhook_delivery_is_stored_by_the_writer_thread_before_its_202(watched) -> None:
    """GitHub intake verifies and parses on the event loop; its one insert runs on the writer
    thread (not the thread pool, not the loop), and the 202 follows its commit."""
    h, seen = watched()
    payload = fixture("workflow_run.completed")
    answer = h.webhook("workflow_run", payload, delivery="d-writer-1")
    assert answer.status_code == 202 and answer.json()["accepted"]
    inserts = [where for stmt, where in seen if "deliveries" in stmt and stmt.startswith("INSERT")]
    assert inserts == ["chatops-ack-writer"]
    again = h.webhook("workflow_run", payload, delivery="d-writer-1")
    assert again.status_code == 200 and again.json()["duplicate"]
    h.settle()


@pytest.mark.parametrize(
    ("command", "text"),
    [
        ("/deploy", "run-00000000000000b2 production"),
        ("/deploy", "lock production freeze"),
        ("/deploy", "unlock production"),
        ("/deploy", "status"),
        ("/evaluate", "42"),
        ("/evaluate", "help"),
        ("/evaluate", "status"),
        ("/deploy", "nonsense words here"),
    ],
)
def test_no_write_statement_runs_on_the_event_loop(watched, command: str, text: str) -> None:
    """bot/db.py refuses a write inline (the listener is run again on a thread): without that
    guard `/deploy lock` inserted its lock row on the event loop."""
    h, seen = watched()
    h.slash("/deploy", "lock staging hold", user=USER)  # something to unlock / show
    h.slash(command, text, user=USER)
    h.settle()
    assert seen, "the commands wrote nothing: the test would prove nothing"
    assert [s for s in seen if s[1] == "event loop"] == []


def test_slack_lookups_never_run_on_the_event_loop(watched, config_data, slack) -> None:
    """A usergroup rule whose members are not cached needs Slack: the command moves to a thread
    (without the guard in bot/slack.py the lookup ran on the event loop); once cached, the
    next command is answered inline again, and each is stored once."""
    slack.usergroups["S0MLTEAM01"] = [OTHER]
    config_data["commands"]["evaluate"]["allowed_usergroups"] = ["S0MLTEAM01"]
    h, seen = watched(config_data)
    calls: list[bool] = []
    for web in (h.bridge.slack.client, h.bridge.slack._lookup):  # what reaches the network
        real = web.lean_call  # SlackOut's calls (KeepAliveWebClient.lean_call)

        def spy(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            calls.append(on_loop())
            return _real(*args, **kwargs)

        web.lean_call = spy
    assert "Checking" in h.slash("/evaluate", "42", user=OTHER).json()["text"]
    assert calls == [False]
    first = [w for s, w in seen if s.startswith("INSERT") and "requests" in s]
    assert first and first[0].startswith("AnyIO worker")  # moved to the thread pool

    assert "Checking" in h.slash("/evaluate", "#42", user=OTHER).json()["text"]
    assert calls == [False]  # cached: no second lookup
    inserts = [w for s, w in seen if s.startswith("INSERT") and "requests" in s]
    assert inserts[1] == "chatops-ack-writer"  # answered inline this time
    h.settle()


def test_every_peer_client_refuses_to_call_out_inline(harness, github, slack) -> None:
    """Inside an inline run the GitHub, Slack and MLflow clients raise NeedsThread before any
    request leaves (no command reaches GitHub before its ack today; this keeps it that way)."""
    from bot.mlflow import MlflowRegistry

    before_github, before_slack = len(github.requests), len(slack.calls)
    registry = MlflowRegistry("http://127.0.0.1:9")  # nothing listens there: never reached
    for call in (
        lambda: harness.bridge.github.get_pull("acme/ml-models", 42),
        lambda: harness.bridge.slack.post("C0CHANNEL1", "hello"),
        registry.ping,
    ):
        with pytest.raises(NeedsThread), running_inline():
            call()
    assert (len(github.requests), len(slack.calls)) == (before_github, before_slack)


def test_inline_scope_defers_the_write_and_refuses_blocking_steps() -> None:
    """The pure parts: inside the scope a write is recorded for later and a blocking step
    raises NeedsThread (a BaseException: `except Exception` in a handler cannot swallow it);
    outside it, the write is done in place."""
    done: list[str] = []
    assert write_then(lambda: done.append("now") or 1, lambda out: out() + 1) == 2
    assert done == ["now"]
    with running_inline() as deferred:
        assert write_then(lambda: done.append("later") or 1, lambda out: out()) is None
        with pytest.raises(NeedsThread):
            try:
                guard("Slack")
            except Exception:  # what a handler's catch-all would do
                pytest.fail("NeedsThread was caught as an Exception")
    assert done == ["now"] and len(deferred.steps) == 1
    guard("Slack")  # outside the scope: allowed


def test_the_writer_hands_back_each_writes_outcome_and_failures_alone() -> None:
    ran: list[str] = []
    writer = Writer()

    def fail() -> None:
        raise ValueError("boom")

    ok = writer.submit(lambda: ran.append("a") or "a").result(5)
    bad = writer.submit(fail).result(5)
    assert ok() == "a" and ran == ["a"]
    with pytest.raises(ValueError, match="boom"):
        bad()
