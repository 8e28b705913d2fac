"""The store's lean path (bot/store/base.py): the hot reads (StoreBase._rows) and writes
(StoreBase._write) run on the pooled DBAPI connection, past SQLAlchemy's execution layer.

They must answer exactly as SQLAlchemy does, fail as SQLAlchemy's errors (callers tell a
database outage by SQLAlchemyError, a repeat by IntegrityError) without the values read by or
written, and give the connection back to the pool as they found it. What hangs off that
layer's events must still hold for writes: the SQLite writer queue, the refusal of writes on the
event loop, one transaction that commits whole or not at all, a lost connection replaced. Runs
on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, Float, String, TypeDecorator, bindparam, insert, text
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from bot import db
from bot.db import make_engine, migrate
from bot.inline import NeedsThread, running_inline
from bot.model import NewRequest
from bot.store import Store
from bot.store.base import _Compiled, _row_to_request
from bot.store.locks import _LOCK_OF
from bot.store.requests import _GET_REQUEST
from bot.store.runs import _LINKED_REQUEST, _RUNS_OF
from bot.store.state import _INSERT_SENT

SECRET_ID = "run-4c1d-secret"  # a value read by: it must not show in an error
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


def _request(store: Store, key: str = "k-1") -> Any:
    req, _ = store.create_request(
        NewRequest(
            kind="evaluate",
            repo="acme/models",
            trigger="label",
            channel_id="C1",
            user_id="U1",
            idempotency_key=key,
            pr_number=42,
            head_sha="a" * 40,
        ),
        audit_action="requested",
    )
    return req


def _end_the_pooled_connection(engine: Engine) -> None:
    """PostgreSQL: the server ends the one connection in the pool (as a restart would)."""
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    other = make_engine(engine.url.render_as_string(hide_password=False))
    with other.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        admin.commit()
    other.dispose()


def _sqlalchemy_rows(engine: Engine, statement: Any, values: dict[str, Any]) -> list[Any]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(statement, values)]


def test_lean_reads_answer_as_sqlalchemy_does(engine: Engine) -> None:
    store = _store(engine)
    req = _request(store)
    store.update_and_merge(req.id, {"facts": {"n": 1.5, "who": "U1"}}, root_ts="1700.0001")
    store.upsert_run(
        run_id="77",
        request_id=req.id,
        repo="acme/models",
        name="eval",
        status="completed",
        conclusion="success",
        attempt=2,
        html_url=None,  # NULLs come back as None
        head_sha="a" * 40,
        started_at=1_700_000_000.5,
    )
    store.take_lock(
        repo="acme/models",
        environment="production",
        user_id="U1",
        channel_id="C1",
        reason="freeze",
        expires_at=None,  # NULL
    )
    for statement, values in [
        (_LOCK_OF, {"b_repo": "acme/models", "b_env": "production"}),
        (_GET_REQUEST, {"request_id": req.id}),
        (_LINKED_REQUEST, {"b_id": "77"}),
        (_RUNS_OF, {"b_id": req.id}),
        (_GET_REQUEST, {"request_id": "no-such-request"}),
    ]:
        lean = store._rows(statement, values)
        assert lean == _sqlalchemy_rows(engine, statement, values)
        for row in lean:  # the same Python types, not only equal values (1 == 1.0)
            twin = _sqlalchemy_rows(engine, statement, values)[0]
            assert {k: type(v) for k, v in row.items()} == {k: type(v) for k, v in twin.items()}
    with engine.connect() as conn:
        via_sqlalchemy = _row_to_request(conn.execute(_GET_REQUEST, {"request_id": req.id}).one())
    assert store.get(req.id) == via_sqlalchemy
    linked, owner = store.linked_request("77")
    assert linked and owner == via_sqlalchemy
    assert store.linked_request("78") == (False, None)
    assert store.run_owner("77") == req.id and store.run_owner("78") is None
    assert [r.run_id for r in store.runs_of(req.id)] == ["77"]


def test_a_failed_lean_read_is_sqlalchemys_error_without_the_values(engine: Engine) -> None:
    store = _store(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE runs"))
    with pytest.raises(SQLAlchemyError) as caught:
        store.run_owner(SECRET_ID)
    assert isinstance(caught.value, DBAPIError)
    assert SECRET_ID not in str(caught.value)
    assert not caught.value.connection_invalidated  # a bad statement is not a lost connection
    # The connection went back to the pool usable.
    assert store.get("no-such-request") is None


@pytest.mark.parametrize("lean", ["read", "single write"])
def test_the_connection_goes_back_as_it_came(engine: Engine, lean: str) -> None:
    """PostgreSQL: a read, and a write of one statement, run in autocommit; the connection
    must leave it again, or the next transaction on it would commit each statement as it goes
    (its rollback would undo nothing)."""
    store = _store(engine)
    engine.pool.dispose()  # one pooled connection from here: the lean call's, then ours
    if lean == "read":
        store.get("no-such-request")
    else:
        store.audit(actor="U1", action="checked", outcome="ok")
    with engine.connect() as conn:
        conn.execute(db.sent.insert().values(key="kept-only-if-committed", at=1.0))
        conn.rollback()
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM sent")).scalar_one()
    assert left == 0


def test_a_lean_read_takes_no_in_list(engine: Engine) -> None:
    statement = db.requests.select().where(db.requests.c.status.in_(["a", "b"]))
    with pytest.raises(ValueError, match="IN list"):
        _Compiled(statement, engine)


def test_a_lost_connection_is_replaced(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL: the server ends the pooled connection between two reads; the read that
    finds it gone fails as a lost connection (the job retries), and the next one gets a new
    connection instead of the dead one."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: a SQLite connection cannot be lost")
    store = _store(engine)
    engine.pool.dispose()
    store.get("warm-up")  # one pooled connection
    _end_the_pooled_connection(engine)
    with pytest.raises(DBAPIError) as caught:
        store.get(SECRET_ID)
    assert caught.value.connection_invalidated
    assert SECRET_ID not in str(caught.value)
    assert store.get("no-such-request") is None
    # Thrown away when found dead, not handed back for the pool to fail on (it would log an
    # error with a traceback for each: "Exception during reset or similar").
    assert not [r for r in caplog.records if r.name.startswith("sqlalchemy.pool")]


def _find_as_before(engine: Engine, limit: int = 50, **filters: Any) -> list[str]:
    """`find` as it was built per call before its statements were prebuilt."""
    c = db.requests.c
    conds = [c[k] == v for k, v in filters.items() if k not in ("statuses", "since")]
    if "statuses" in filters:
        conds.append(c.status.in_(list(filters["statuses"])))
    if "since" in filters:
        conds.append(c.created_at >= filters["since"])
    statement = db.requests.select().where(*conds).order_by(c.created_at.desc()).limit(limit)
    with engine.connect() as conn:
        return [r.id for r in conn.execute(statement)]


def test_find_answers_as_the_query_built_per_call_did(engine: Engine) -> None:
    now = [1_700_000_000.0]
    store = Store(engine, clock=lambda: now[0])
    store.process_id = "p-1"
    for i in range(12):
        now[0] += 1
        req, _ = store.create_request(
            NewRequest(
                kind="evaluate" if i % 3 else "deploy",
                repo=f"acme/repo-{i % 2}",
                trigger="label",
                channel_id=f"C{i % 3}",
                user_id=f"U{i % 4}",
                idempotency_key=f"k-{i}",
                pr_number=i % 5,
                head_sha=f"{i % 2:040x}",
                environment="prod" if i % 3 == 0 else None,
            ),
            audit_action="requested",
        )
        if i % 4 == 0:
            store.update(req.id, status="triggered")
    cases: list[dict[str, Any]] = [
        {},
        {"repo": "acme/repo-1"},
        {"repo": "acme/repo-0", "pr_number": 2},
        {"repo": "acme/repo-1", "head_sha": f"{1:040x}", "kind": "evaluate"},
        {"statuses": ["accepted"]},
        {"statuses": ["accepted", "triggered"], "channel_id": "C1"},
        {"user_id": "U2", "since": 1_700_000_006.0},
        {"environment": "prod", "kind": "deploy", "statuses": ["triggered", "accepted"]},
        {"repo": "acme/repo-0", "limit": 2},
        {"repo": "nobody/none"},
    ]
    for case in cases:
        got = [r.id for r in store.find(**case)]
        assert got == _find_as_before(engine, **case), case
    assert store.find(repo="acme/repo-1", statuses=[]) == []


# -- writes --------------------------------------------------------------------------------
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
    req = _request(store)
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
    _end_the_pooled_connection(engine)
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
