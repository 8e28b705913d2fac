"""The ack writer's groups (bot/store/base.py `write_group`, bot/inline.py `Writer`): on SQLite the
writes of a group share one transaction, each in a savepoint, and one commit; acks wait for it."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from bot.db import make_engine, migrate
from bot.inline import Writer
from bot.model import NewRequest
from bot.store import Store


def _store(database_url: str) -> Store:
    engine = make_engine(database_url)
    migrate(engine)
    return Store(engine, clock=time.time)


def _new(key: str, **over: Any) -> NewRequest:
    fields: dict[str, Any] = {
        "kind": "deploy",
        "repo": "acme/ml-models",
        "trigger": "dispatch",
        "channel_id": "C1",
        "user_id": "U1",
        "idempotency_key": f"slack:{key}",
        "run_ref": "run-1",
        "environment": "production",
        "status": "pending_approval",
        **over,
    }
    return NewRequest(**fields)


def _committed_keys(database_url: str) -> set[str]:
    """What another connection (another process, a crash's survivor) sees committed."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT idempotency_key FROM requests")).scalars())
    finally:
        engine.dispose()


def _sqlite_only(store: Store) -> None:
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: on PostgreSQL each write of a run commits on its own")


def _counting_commits(store: Store) -> list[int]:
    commits: list[int] = []
    dialect = store.engine.dialect
    do_commit = dialect.do_commit

    def counted(dbapi_connection: object) -> None:
        commits.append(1)
        do_commit(dbapi_connection)

    dialect.do_commit = counted  # type: ignore[method-assign]
    return commits


def test_a_group_commits_its_writes_together_and_a_failing_one_fails_alone(
    database_url: str,
) -> None:
    store = _store(database_url)
    commits = _counting_commits(store)
    sqlite = store.engine.dialect.name == "sqlite"
    with store.write_group():
        first, created = store.create_request(_new("a"), audit_action="deploy.requested")
        assert created
        assert store.record_delivery("d-1", "workflow_run", "completed", "{}")
        # A row the table refuses (no kind): the error is this write's, and only its own.
        with pytest.raises(DBAPIError):
            store.create_request(_new("bad", kind=None))
        assert not store.record_delivery("d-1", "workflow_run", "completed", "{}")  # repeat
        second, created = store.create_request(_new("b"), audit_action="deploy.requested")
        assert created
        # The run's reads see its writes; on SQLite nobody else does until it ends.
        found = store.request_by_key("slack:a")
        assert found is not None and found.id == first.id
        assert _committed_keys(database_url) == (set() if sqlite else {"slack:a", "slack:b"})
    assert _committed_keys(database_url) == {"slack:a", "slack:b"}
    # PostgreSQL: each write on its own (the two requests in transactions, the rest autocommit).
    assert len(commits) == (1 if sqlite else 2)
    assert [r["action"] for r in store.audit_rows(request_id=first.id)] == ["deploy.requested"]
    assert [r["action"] for r in store.audit_rows(request_id=second.id)] == ["deploy.requested"]
    assert [d for d, _ in store.pending_deliveries(older_than=-10)] == ["d-1"]


def test_a_repeated_key_within_one_group_is_the_request_stored_first(database_url: str) -> None:
    """A retried command whose first delivery is in the same run, not yet committed: the
    insert meets the unique key on the run's connection, and the lookup that follows must
    read there too, or it finds nothing and the retry fails."""
    store = _store(database_url)
    with store.write_group():
        first, created = store.create_request(_new("same"))
        again, created_again = store.create_request(_new("same"))
    assert created and not created_again
    assert again.id == first.id
    assert _committed_keys(database_url) == {"slack:same"}


def test_a_group_that_cannot_commit_keeps_none_of_its_writes(database_url: str) -> None:
    store = _store(database_url)
    _sqlite_only(store)
    dialect = store.engine.dialect
    do_commit = dialect.do_commit

    def refused(dbapi_connection: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    dialect.do_commit = refused  # type: ignore[method-assign]
    with pytest.raises(OperationalError), store.write_group():
        store.create_request(_new("a"))
        store.create_request(_new("b"))
    dialect.do_commit = do_commit  # type: ignore[method-assign]
    assert _committed_keys(database_url) == set()
    # The writer lock and the connection were given back: the next run goes through.
    with store.write_group():
        store.create_request(_new("c"))
    assert _committed_keys(database_url) == {"slack:c"}


def test_a_write_that_ended_the_transaction_breaks_the_whole_group(database_url: str) -> None:
    """SQLite answers some errors (a full disk, an I/O error) by rolling the whole transaction
    back, savepoints and all. What the run wrote before is gone then: the writes after it
    and the run's end must fail too, not commit the rest as if nothing happened."""
    store = _store(database_url)
    _sqlite_only(store)

    def disk_full() -> None:
        with store._write() as conn:
            conn._raw.dbapi_connection.rollback()  # what SQLite does on SQLITE_FULL
            raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(sqlite3.OperationalError), store.write_group():
        store.create_request(_new("a"))
        with pytest.raises(sqlite3.OperationalError):
            disk_full()
        with pytest.raises(RuntimeError, match="ended its transaction"):
            store.create_request(_new("b"))
    assert _committed_keys(database_url) == set()


def test_a_group_whose_transaction_ended_between_writes_commits_nothing_after(
    database_url: str,
) -> None:
    """Outside a transaction a SAVEPOINT begins one and its RELEASE commits it: a write after
    SQLite ended the run's transaction would be committed alone, as if the writes before it
    had been kept. The run sees that its transaction is gone and refuses the rest."""
    store = _store(database_url)
    _sqlite_only(store)
    with pytest.raises(RuntimeError), store.write_group():
        store.create_request(_new("a"))
        store._run_of_thread.raw.dbapi_connection.rollback()  # the transaction ends under it
        with pytest.raises(RuntimeError, match="ended its transaction"):
            store.create_request(_new("b"))
    assert _committed_keys(database_url) == set()


def test_a_group_whose_transaction_ended_after_its_last_write_fails_at_its_end(
    database_url: str,
) -> None:
    """A commit outside a transaction does nothing and raises nothing: the group's end must
    see that its transaction is gone, or its writes are answered as stored and are not."""
    store = _store(database_url)
    _sqlite_only(store)
    with pytest.raises(RuntimeError, match="ended its transaction"), store.write_group():
        store.create_request(_new("a"))
        store._run_of_thread.raw.dbapi_connection.rollback()  # the transaction ends under it
    assert _committed_keys(database_url) == set()


def test_a_group_of_one_write_is_that_writes_own_transaction(database_url: str) -> None:
    """Most acks outside a burst are a run of one: no savepoint around it (two statements
    more), the write's own transaction as outside a run."""
    store = _store(database_url)
    _sqlite_only(store)
    plain: list[str] = []
    execute_plain = store._execute_plain

    def recorded(raw: Any, sql: str) -> None:
        plain.append(sql)
        execute_plain(raw, sql)

    store._execute_plain = recorded  # type: ignore[method-assign]
    commits = _counting_commits(store)
    with store.write_group(1):
        store.create_request(_new("alone"))
    assert (plain, len(commits)) == ([], 1)
    with store.write_group(2):
        store.create_request(_new("first"))
        store.create_request(_new("second"))
    assert plain.count("SAVEPOINT chatops_write") == 2 and len(commits) == 2
    assert _committed_keys(database_url) == {"slack:alone", "slack:first", "slack:second"}


def _queued(writer: Writer, works: list[Any]) -> list[Any]:
    """Submit `works` while the writer thread is busy, so that they make one run."""
    gate = threading.Event()
    first = writer.submit(lambda: gate.wait(5))
    futures = [writer.submit(w) for w in works]
    gate.set()
    first.result(5)
    return [f.result(5) for f in futures]


def test_every_write_of_a_group_whose_commit_fails_is_answered_as_failed() -> None:
    """The Writer hands outcomes back after their group ends; a group whose end fails (its
    commit) fails each write of it, however many ran; the writer goes on with the next."""
    ran: list[int] = []
    sizes: list[int] = []

    @contextlib.contextmanager
    def uncommitted(writes: int) -> Iterator[None]:
        sizes.append(writes)
        yield
        if writes > 1:
            raise OSError("commit refused")

    writer = Writer(group_scope=uncommitted, group_seconds=60)
    outcomes = _queued(writer, [lambda n=n: ran.append(n) or n for n in range(3)])
    assert sorted(ran) == [0, 1, 2]
    for outcome in outcomes:
        with pytest.raises(OSError, match="commit refused"):
            outcome()
    assert writer.submit(lambda: "next").result(5)() == "next"


def test_a_group_closes_after_its_time_and_its_writes_are_answered_then() -> None:
    """With group_seconds spent after each write, every write is a group of its own: its
    outcome is handed back before the next write of the run begins, and the writer lock (the
    run's scope) is taken once for the run."""
    answered_before: list[bool] = []
    runs: list[int] = []
    groups: list[int] = []

    @contextlib.contextmanager
    def lock(writes: int) -> Iterator[None]:
        runs.append(writes)
        yield

    @contextlib.contextmanager
    def group(writes: int) -> Iterator[None]:
        groups.append(writes)
        yield

    writer = Writer(run_scope=lock, group_scope=group, group_seconds=0)
    futures: list[Any] = []

    def second() -> str:
        answered_before.append(futures[0].done())
        return "b"

    gate = threading.Event()
    first = writer.submit(lambda: gate.wait(5))
    futures += [writer.submit(lambda: "a"), writer.submit(second)]
    gate.set()
    first.result(5)
    assert [f.result(5)() for f in futures] == ["a", "b"]
    assert answered_before == [True]
    # Three writes (the gate included): one group each, the lock taken once per run.
    assert groups[-2:] == [2, 1] and sum(runs) == 3 and len(runs) < len(groups) == 3


def test_a_run_whose_lock_is_not_given_fails_each_write_and_the_writer_goes_on() -> None:
    refused = [True]

    @contextlib.contextmanager
    def lock(writes: int) -> Iterator[None]:
        if refused[0]:
            refused[0] = False
            raise TimeoutError("the SQLite writer lock was not given back in 30 s")
        yield

    writer = Writer(run_scope=lock)
    with pytest.raises(TimeoutError):
        writer.submit(lambda: "lost").result(5)()
    assert writer.submit(lambda: "kept").result(5)() == "kept"
