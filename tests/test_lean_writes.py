"""The store's lean writes (StoreBase._write): the writes every relayed event and job makes run
on the pooled DBAPI connection, past SQLAlchemy's execution layer. What hangs off that layer's
events must still hold: the SQLite writer queue, the refusal of writes on the event loop, one
transaction that commits whole or not at all, SQLAlchemy's errors (an IntegrityError is still
one) without the values written, and a lost connection replaced. Runs on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, Float, String, TypeDecorator, bindparam, insert, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from bot import db
from bot.db import make_engine, migrate
from bot.inline import NeedsThread, running_inline
from bot.model import NewRequest
from bot.store import Store
from bot.store.base import _Compiled
from bot.store.state import _INSERT_SENT

SECRET = "sent-key-4c1d-secret"  # a value written: it must not show in an error


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _store(engine: Engine) -> Store:
    store = Store(engine, clock=lambda: 1_700_000_000.25)
    store.process_id = "p-1"
    return store


def _sent_keys(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(text("SELECT key FROM sent")))


def test_lean_writes_answer_as_before(engine: Engine) -> None:
    """The hot writes' answers: a key claimed once, a delivery stored once and claimed once,
    a conditional update that happens only from the statuses given."""
    store = _store(engine)
    assert store.first_time("reply:1") and not store.first_time("reply:1")
    assert store.record_delivery("d-1", "workflow_run", "completed", '{"x": 1}')
    assert not store.record_delivery("d-1", "workflow_run", "completed", '{"x": 1}')
    assert store.claim_delivery("d-1") == '{"x": 1}'
    assert store.claim_delivery("d-1") is None  # held by this claim's lease
    store.finish_delivery("d-1")
    req, _ = store.create_request(
        NewRequest(
            kind="evaluate",
            repo="acme/models",
            trigger="label",
            channel_id="C1",
            user_id="U1",
            idempotency_key="k-1",
            pr_number=42,
        ),
        audit_action="requested",
    )
    assert store.claim(req.id)
    assert not store.update(req.id, only_if_status=("triggered", "running"), status="succeeded")
    assert store.update(req.id, only_if_status=("accepted", "triggered"), status="triggered")
    changed, after = store.update_and_merge(
        req.id, {"note": "n"}, only_if_status=("triggered",), status="succeeded"
    )
    assert changed and after == store.get(req.id)
    assert after is not None and after.status == "succeeded" and after.details["note"] == "n"
    store.release(req.id, retry_in=5.0)
    store.audit(actor="U1", action="checked", outcome="ok", request_id=req.id)
    assert [r["action"] for r in store.audit_rows(request_id=req.id)][-1] == "checked"


def test_a_failed_write_rolls_back_its_whole_transaction(engine: Engine) -> None:
    """Two statements in one lean transaction, the second refused: neither is kept, the error
    is SQLAlchemy's IntegrityError without the values, and the connection is usable after."""
    store = _store(engine)
    assert store.first_time("taken")
    with pytest.raises(IntegrityError) as caught, store._write() as conn:
        conn.execute(_INSERT_SENT, {"key": SECRET, "at": 1.0})
        conn.execute(_INSERT_SENT, {"key": "taken", "at": 2.0})
    assert SECRET not in str(caught.value)
    assert _sent_keys(engine) == ["taken"]
    assert store.first_time("after")  # the pooled connection is clean again
    assert _sent_keys(engine) == ["after", "taken"]


def test_an_exception_in_the_block_rolls_back(engine: Engine) -> None:
    store = _store(engine)
    with pytest.raises(RuntimeError), store._write() as conn:
        conn.execute(_INSERT_SENT, {"key": "half", "at": 1.0})
        raise RuntimeError("the caller failed between two statements")
    assert _sent_keys(engine) == []


def test_a_lean_write_holds_the_sqlite_writer_queue_until_commit_or_rollback(
    engine: Engine,
) -> None:
    """SQLite: a lean write takes the process's writer lock at its first write statement (as
    a write through SQLAlchemy does) and gives it back at commit and at rollback."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL has row locks, no writer queue")
    store = _store(engine)
    queue = db._QUEUES[engine]
    with store._write() as conn:
        assert not queue._lock.locked()
        conn.execute(_INSERT_SENT, {"key": "a", "at": 1.0})
        assert queue._lock.locked()
    assert not queue._lock.locked()
    with pytest.raises(IntegrityError), store._write() as conn:
        conn.execute(_INSERT_SENT, {"key": "b", "at": 1.0})
        assert queue._lock.locked()
        conn.execute(_INSERT_SENT, {"key": "a", "at": 1.0})
    assert not queue._lock.locked()


def test_a_lean_write_is_refused_on_the_event_loop(engine: Engine) -> None:
    """Inline (bot/inline.py) a write must not run: it would wait on the writer lock or on row
    locks with the event loop stopped. It is refused before anything is written."""
    store = _store(engine)
    with pytest.raises(NeedsThread), running_inline():
        store.first_time("inline")
    assert _sent_keys(engine) == []
    with running_inline():
        assert store.get("no-such-request") is None  # reads are allowed inline


class _Shouted(TypeDecorator[str]):
    """A type whose bind processor changes the value (as DateTime's or Boolean's would)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else value.upper()


def test_values_are_converted_as_sqlalchemy_converts_them(engine: Engine) -> None:
    """Each bound value goes through its type's bind processor, as SQLAlchemy's execution
    would send it."""
    store = _store(engine)
    statement = text("INSERT INTO sent (key, at) VALUES (:key, :at)").bindparams(
        bindparam("key", type_=_Shouted()), bindparam("at", type_=Float())
    )
    with store._write() as conn:
        conn.execute(statement, {"key": "typed", "at": 5})
    with engine.begin() as conn:  # the same statement through SQLAlchemy
        conn.execute(statement, {"key": "twin", "at": 5})
    assert _sent_keys(engine) == ["TWIN", "TYPED"]


def test_a_lean_write_is_given_every_columns_value(engine: Engine) -> None:
    """A column's Python-side default is computed by SQLAlchemy's execution context, which the
    lean path skips: a statement that would need one is refused when it is first built."""
    with pytest.raises(ValueError, match="every column"):
        _Compiled(insert(db.audit), engine, ("at", "request_id", "actor", "action", "outcome"))


def test_a_lost_connection_during_a_write_is_replaced(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: the server ends the pooled connection; the write that finds it gone fails
    as a lost connection (its job retries), nothing was written, and the next write gets a
    new connection."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: a SQLite connection cannot be lost")
    store = _store(engine)
    engine.pool.dispose()
    assert store.first_time("warm-up")  # one pooled connection
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    other = make_engine(engine.url.render_as_string(hide_password=False))
    with other.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        admin.commit()
    other.dispose()
    with pytest.raises(DBAPIError) as caught:
        store.first_time(SECRET)
    assert caught.value.connection_invalidated
    assert SECRET not in str(caught.value)
    assert store.first_time("after")
    assert _sent_keys(engine) == ["after", "warm-up"]
    assert not [r for r in caplog.records if r.name.startswith("sqlalchemy.pool")]


def test_a_failed_connect_is_sqlalchemys_error(tmp_path: Any) -> None:
    """No database to connect to: the write fails as SQLAlchemy's error (callers tell an
    outage by SQLAlchemyError), not as the driver's."""
    missing = tmp_path / "no-such-dir" / "db.sqlite"
    engine = make_engine(f"sqlite:///{missing}")
    store = _store(engine)
    with pytest.raises(DBAPIError):
        store.first_time("k")
    engine.dispose()
