"""The Store's shared ground: engine, clock, liveness, row mapping and shared SQL conditions."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    Engine,
    Select,
    and_,
    bindparam,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler

from bot import db
from bot.model import (
    PENDING_APPROVAL,
    TO_CARRY_OUT,
    Request,
)

Clock = Callable[[], float]

log = logging.getLogger("bot.store")  # one logger for the whole store


def _status_in(column: Any, statuses: Iterable[str]) -> Any:
    """SQL condition: `column IN (…)` with a bound value per status rather than a literal IN
    list (which SQLAlchemy renders per call), so a statement holding it runs prebuilt
    (StoreBase._run)."""
    return column.in_([bindparam("status_in", s, unique=True) for s in sorted(statuses)])


def _needs_work() -> Any:
    """SQL condition: the request has a step for a worker (claim and recovery sweep agree)."""
    c = db.requests.c
    return or_(
        _status_in(c.status, TO_CARRY_OUT),
        and_(c.status == PENDING_APPROVAL, c.root_ts.is_(None)),
        c.answer_due == 1,
    )


class OverLimit(Exception):
    """create_request refused: the user already made `per_minute` requests in the last minute."""


def new_request_id() -> str:
    # Short enough for a workflow run-name, long enough never to collide in practice.
    return secrets.token_hex(6)


def _row_to_request(row: Any) -> Request:
    return _request_from(row._mapping)


def _request_from(m: Any) -> Request:
    return Request(
        id=m["id"],
        kind=m["kind"],
        repo=m["repo"],
        pr_number=m["pr_number"],
        head_sha=m["head_sha"],
        run_ref=m["run_ref"],
        environment=m["environment"],
        trigger=m["trigger"],
        event_type=m["event_type"],
        channel_id=m["channel_id"],
        user_id=m["user_id"],
        root_ts=m["root_ts"],
        response_url=m["response_url"],
        status=m["status"],
        error=m["error"],
        details=json.loads(m["details"] or "{}"),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        attempts=m["attempts"],
        action_started_at=m["action_started_at"],
        finished_at=m["finished_at"],
        expires_at=m["expires_at"],
        decided_by=m["decided_by"],
        decided_at=m["decided_at"],
        reason=m["reason"],
        failures=m["failures"] or 0,
        waiting_since=m["waiting_since"],
        waiting_on=m["waiting_on"],
        answer_due=bool(m["answer_due"]),
    )


_EMPTY_ROW: dict[str, Any] = {c.name: None for c in db.requests.columns}

_INSERT_AUDIT = insert(db.audit)


@dataclass(frozen=True)
class AuditLine:
    """An audit row that goes with a status change (`Requests.update(audit=…)`): written only
    when the change is made, in its transaction (SQLite: one commit for both)."""

    actor: str
    action: str
    outcome: str
    detail: str = ""


def _holder_dead(holder: Any) -> Any:
    """SQL condition: the unit's holder is another process whose heartbeat stopped (or whose
    row is gone). Binds b_me (this process) and b_alive_since (oldest heartbeat still alive)."""
    alive = select(db.processes.c.id).where(
        db.processes.c.heartbeat_at >= bindparam("b_alive_since")
    )
    return and_(holder.is_not(None), holder != bindparam("b_me"), holder.not_in(alive))


def _free_or_orphaned(table: Any) -> Any:
    """SQL condition: nobody holds the unit's lease, or its holder is dead."""
    return or_(table.c.lease_until <= bindparam("b_now"), _holder_dead(table.c.holder))


class _Compiled:
    """A prebuilt statement as its dialect's SQL text, the order of its parameters and their
    bind processors (what SQLAlchemy would apply to each value: SQLite's float coercion, say).
    A DML statement is compiled for the columns it is given (`keys`), as SQLAlchemy does."""

    __slots__ = ("compiled", "names", "positions", "processors", "sql")

    def __init__(
        self, statement: Executable, engine: Engine, keys: tuple[str, ...] | None = None
    ) -> None:
        dialect = engine.dialect
        self.compiled = cast(
            SQLCompiler,
            cast(Any, statement).compile(
                dialect=dialect, column_keys=None if keys is None else list(keys)
            ),
        )
        self.sql = str(self.compiled)
        if "POSTCOMPILE" in self.sql:  # an expanding IN list is rendered per call
            raise ValueError("a lean statement takes no IN list parameter")
        if self.compiled.insert_prefetch or self.compiled.update_prefetch:
            # SQLAlchemy computes those values in its execution context, which this skips.
            raise ValueError("a lean statement is given every column's value (no defaults)")
        self.positions = self.compiled.positiontup  # None: named parameters (psycopg)
        # The names of the columns it returns, () for none: read off the first run's cursor
        # and kept (psycopg builds a Column object per column each time description is read).
        self.names: tuple[str, ...] | None = None
        names = self.compiled.bind_names
        self.processors = {
            names[bind]: process
            for bind in self.compiled.binds.values()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    def parameters(self, values: dict[str, Any]) -> Any:
        full = dict(self.compiled.construct_params(values))  # with the statement's literals
        for name, process in self.processors.items():
            if name in full:
                full[name] = process(full[name])
        return full if self.positions is None else tuple(full[n] for n in self.positions)


class _Result:
    """What a lean statement gave: the rows it returned (as dicts) and the rows it changed."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[dict[str, Any]], rowcount: int) -> None:
        self.rows, self.rowcount = rows, rowcount

    def first(self) -> dict[str, Any] | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        return next(iter(self.rows[0].values())) if self.rows else None


class _Transaction:
    """A write transaction on a pooled DBAPI connection (StoreBase._write): `execute` runs a
    prebuilt statement in it."""

    __slots__ = ("_raw", "_store", "dialect")

    def __init__(self, store: StoreBase, raw: Any) -> None:
        self._store, self._raw = store, raw
        self.dialect = store.engine.dialect  # as a Connection's

    def execute(self, statement: Executable, values: dict[str, Any]) -> _Result:
        return self._store._run(self._raw, statement, values, write=True)


class _Run(threading.local):
    """The write group open on this thread (StoreBase.write_group): its connection, in one
    SQLite transaction, and what broke it, if anything did."""

    raw: Any = None
    broken: BaseException | None = None


class StoreBase:
    """The engine, the clock and this process's liveness, shared by the Store's parts."""

    def __init__(self, engine: Engine, clock: Clock = time.time) -> None:
        self.engine = engine
        # Reads (`reader.connect()`): on PostgreSQL in autocommit, so a read is one round trip
        # instead of BEGIN, SELECT and the pool's ROLLBACK at check-in (a primary-key read:
        # 0.94-1.10 -> 0.61-0.82 ms of CPU, 1.5-1.7 -> 0.7-1.1 ms wall). Under READ COMMITTED
        # each statement sees what was committed when it began, in a transaction or not, so a
        # read answers the same. Writes keep `engine.begin()`; SQLite (pysqlite opens no
        # transaction for a SELECT) keeps the engine as it is.
        self.reader = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._compiled: dict[tuple[Any, tuple[str, ...] | None], _Compiled] = {}  # see _run
        self.clock = clock
        # This process's id in `processes` (bot/liveness.py): the holder of what it claims.
        self.process_id: str | None = None
        # A holder whose heartbeat is older than this is dead (CHATOPS_HOLDER_DEAD_SECONDS).
        self.holder_dead_seconds = 10.0
        self._run_of_thread = _Run()

    @contextlib.contextmanager
    def write_group(self, writes: int = 2) -> Iterator[None]:
        """A group of writes on one thread, committed together when it ends (the ack writer
        thread, bot/inline.py: the writes that commands and webhook deliveries wait on before
        they are answered, inside the run for which it holds SQLite's writer lock).

        SQLite: the group's writes share one transaction on one connection, each in a
        savepoint of its own (`_write`): one that fails is rolled back alone, the others
        stand, and one commit at the end covers them all (a commit was 40 % of a stored
        command's write: the WAL frames of the requests table's pages and its indexes). Reads
        of the thread use the group's connection, so they see its writes (a repeated
        idempotency key within one group finds its first row). If the commit fails, or SQLite
        ended the transaction on its own (a disk error rolls it all back), the block raises:
        nothing of the group was kept, and every write of it must be answered as failed. A
        group that can hold one write only (`writes`: what is left of the writer's run) is
        that write's own transaction: a savepoint would only cost two statements. A write in
        a group must go through `_write` / `_write_one` (what `create_request` and
        `record_delivery` use): one through `engine.begin()` would open another connection and
        wait, until busy_timeout, for the lock this group holds. PostgreSQL: each write
        commits on its own, as outside a group (row locks, no single writer: nothing to
        amortise but a round trip)."""
        if self.engine.dialect.name == "postgresql" or writes < 2:
            yield
            return
        run = self._run_of_thread
        if run.raw is not None:
            raise RuntimeError("a write group is already open on this thread")
        raw = self._connect()
        try:
            self._execute_plain(raw, "BEGIN")
            run.raw, run.broken = raw, None
            try:
                yield
                if run.broken is None:
                    self._check_run(run)  # raises if SQLite ended the transaction itself
            finally:
                run.raw = None
            if run.broken is not None:
                raise run.broken
            dialect = self.engine.dialect
            try:
                dialect.do_commit(raw)
            except dialect.loaded_dbapi.Error as exc:
                raise self._wrapped(exc, "COMMIT", raw, None) from exc
        finally:
            raw.close()  # back to the pool, which rolls back what was not committed

    def _execute_plain(self, raw: Any, sql: str) -> None:
        """A statement without parameters or rows (transaction control) on `raw`."""
        dialect = self.engine.dialect
        cursor: Any = None
        try:
            cursor = raw.cursor()
            cursor.execute(sql)
            cursor.close()
        except dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, sql, raw, cursor) from exc

    def _rows(self, statement: Select[Any], values: dict[str, Any]) -> list[dict[str, Any]]:
        """A prebuilt SELECT's rows as dicts, run on a pooled DBAPI connection.

        For the reads every relayed event and job makes (a request by id, a run's link, a
        request's runs): SQLAlchemy's execution layer costs ~160-170 µs of CPU per statement on
        either database (`bench/relay.py`, docs/benchmarks.md), as much as the read itself on
        SQLite five times over. A read needs none of what that layer adds here, and the columns
        read this way are text and numbers that both drivers return as Python values already.
        The pool's events still run (the idle ping at checkout), and a driver error comes out
        as SQLAlchemy's (`DBAPIError`, parameters hidden), as it would from `conn.execute`:
        callers that take a database outage for what it is catch SQLAlchemyError. On
        PostgreSQL the read runs in autocommit, as `reader` does: one round trip, no BEGIN and
        no ROLLBACK at check-in.
        """
        return self._alone(statement, values, write=False).rows

    def _write_one(self, statement: Executable, values: dict[str, Any]) -> _Result:
        """One write statement as its own transaction (most hot writes are one: a claim, a
        release, a key, a delivery stored or finished, an audit row). On PostgreSQL it runs in
        autocommit, where a statement is its own transaction: one round trip instead of three
        (BEGIN, the statement, COMMIT; psycopg spends ~40 µs of CPU on each). SQLite needs its
        transaction for the writer queue, which is given back at the commit: `_write()`."""
        if self.engine.dialect.name == "postgresql":
            return self._alone(statement, values, write=True)
        with self._write() as conn:
            return conn.execute(statement, values)

    def _alone(self, statement: Executable, values: dict[str, Any], *, write: bool) -> _Result:
        """One statement on a pooled connection; on PostgreSQL in autocommit (see _each).
        SQLite runs it as is (pysqlite opens no transaction for a SELECT)."""
        if self.engine.dialect.name != "postgresql":
            if self._run_of_thread.raw is not None:  # in a write group: see its writes
                if write:
                    with self._write() as conn:
                        return conn.execute(statement, values)
                return self._run(self._run_of_thread.raw, statement, values, write=False)
            raw = self._connect()
            try:
                return self._run(raw, statement, values, write=write)
            finally:
                raw.close()  # back to the pool
        with self._autocommit() as conn:
            return self._run(conn._raw, statement, values, write=write)

    @contextlib.contextmanager
    def _each(self) -> Iterator[_Transaction]:
        """Write statements that need not commit together (each is right on its own), run on
        one pooled connection. PostgreSQL: each in autocommit, a transaction of its own in one
        round trip, where BEGIN and COMMIT around them would be two more (psycopg sends each
        as its own query). SQLite: one transaction, one turn of the writer queue."""
        if self.engine.dialect.name != "postgresql":
            with self._write() as conn:
                yield conn
            return
        with self._autocommit() as conn:
            yield conn

    @contextlib.contextmanager
    def _autocommit(self) -> Iterator[_Transaction]:
        """A pooled PostgreSQL connection in autocommit, handed back out of it (a transaction on
        it later must not commit statement by statement)."""
        raw = self._connect()
        try:
            raw.dbapi_connection.autocommit = True
            try:
                yield _Transaction(self, raw)
            finally:
                if raw.dbapi_connection is not None:  # None: invalidated
                    raw.dbapi_connection.autocommit = False
        finally:
            raw.close()  # back to the pool

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Transaction]:
        """A write transaction on a pooled DBAPI connection: `engine.begin()` for the writes
        every relayed event and job makes, without SQLAlchemy's execution layer (see _rows).

        What hangs off that layer's events is kept: each statement passes the engine's gate
        first (db.before_statement: the SQLite writer queue, the inline-write guard), and the
        commit and rollback go through the dialect, where the writer queue is given back.
        Committed when the block ends, rolled back (by the pool) when it raises; driver errors
        come out as SQLAlchemy's (an IntegrityError as IntegrityError), parameters hidden.

        Inside a write group (`write_group`, SQLite) the block is a savepoint of the group's
        transaction instead: released when it ends, rolled back to when it raises."""
        dialect = self.engine.dialect
        run = self._run_of_thread
        if run.raw is not None:
            yield from self._savepoint(run)
            return
        raw = self._connect()
        try:
            yield _Transaction(self, raw)
            try:
                dialect.do_commit(raw)
            except dialect.loaded_dbapi.Error as exc:
                raise self._wrapped(exc, "COMMIT", raw, None) from exc
        finally:
            # Back to the pool, which rolls back what was not committed (its reset on return,
            # through the dialect) and, on SQLite, gives the writer queue back.
            raw.close()

    def _savepoint(self, run: _Run) -> Iterator[_Transaction]:
        """`_write`'s block as a savepoint of the run's transaction. An error SQLite answers by
        ending the whole transaction (a full disk, an I/O error), or a savepoint statement
        that fails, breaks the run: what it had written is gone or unknown, so this and every
        later write of it fail, and so does its end (`_check_run`)."""
        raw = self._check_run(run)
        try:
            self._execute_plain(raw, "SAVEPOINT chatops_write")
        except BaseException as exc:
            run.broken = exc
            raise
        try:
            yield _Transaction(self, raw)
        except BaseException as exc:
            dbapi_connection = raw.dbapi_connection  # None: invalidated
            if dbapi_connection is None or not dbapi_connection.in_transaction:
                run.broken = run.broken or exc
                raise
            try:
                self._execute_plain(raw, "ROLLBACK TO chatops_write")
                self._execute_plain(raw, "RELEASE chatops_write")
            except BaseException:
                run.broken = run.broken or exc
            raise
        try:
            self._execute_plain(raw, "RELEASE chatops_write")
        except BaseException as exc:
            run.broken = exc
            raise

    @staticmethod
    def _check_run(run: _Run) -> Any:
        """The run's connection, if its transaction is still open; else the run is broken
        (SQLite ended the transaction: outside one, a SAVEPOINT would begin a new one and its
        RELEASE commit it, with the run's earlier writes silently gone) and this raises."""
        if run.broken is None:
            dbapi_connection = run.raw.dbapi_connection  # None: invalidated
            if dbapi_connection is not None and dbapi_connection.in_transaction:
                return run.raw
            run.broken = RuntimeError("the write group's transaction ended before its commit")
        raise RuntimeError("an earlier write of this group ended its transaction") from None

    def _connect(self) -> Any:
        """A pooled DBAPI connection; failing to connect comes out as SQLAlchemy's error, as
        from `engine.connect()` (raw_connection() lets the driver's own through)."""
        try:
            return self.engine.raw_connection()
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, None, None, None) from exc

    def _run(
        self, raw: Any, statement: Executable, values: dict[str, Any], *, write: bool
    ) -> _Result:
        """Run a prebuilt statement on `raw` (a pooled connection), compiled once per
        statement (and, for writes, per set of columns given)."""
        keys = tuple(values) if write else None
        compiled = self._compiled.get((statement, keys))
        if compiled is None:
            compiled = self._compiled[(statement, keys)] = _Compiled(statement, self.engine, keys)
        if write:
            db.before_statement(self.engine, raw.info, compiled.sql)
        dialect = self.engine.dialect
        cursor: Any = None
        try:
            cursor = raw.cursor()
            cursor.execute(compiled.sql, compiled.parameters(values))
            names = compiled.names
            if names is None:
                described = cursor.description
                names = compiled.names = () if described is None else tuple(d[0] for d in described)
            rows: list[dict[str, Any]] = []
            if names:
                rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            result = _Result(rows, cursor.rowcount)
            cursor.close()
        except dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, compiled.sql, raw, cursor) from exc
        return result

    def _wrapped(self, exc: Any, sql: str | None, raw: Any, cursor: Any) -> Exception:
        """A driver error as SQLAlchemy's, without the parameters; a lost connection is
        invalidated (the pool opens a new one for the next checkout). `raw` is None when the
        connection could not be opened."""
        dialect = self.engine.dialect
        dbapi_connection = None if raw is None else raw.dbapi_connection
        gone = dialect.is_disconnect(exc, dbapi_connection, cursor)
        if gone and dbapi_connection is not None:
            raw.invalidate(exc)
        return DBAPIError.instance(
            sql,
            None,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=gone,
            dialect=dialect,
        )

    def _audit_values(self, request_id: str | None, line: AuditLine) -> dict[str, Any]:
        return {
            "at": self.clock(),
            "request_id": request_id,
            "actor": line.actor,
            "action": line.action,
            "outcome": line.outcome,
            "detail": line.detail,
        }

    @staticmethod
    def _audit_logged(request_id: str | None, line: AuditLine) -> None:
        # Every audit row is a decided step of the story. Not the detail: it may hold text
        # a person typed (a rejection's reason).
        log.info(
            "decision recorded",
            extra={
                "request_id": request_id,
                "action": line.action,
                "outcome": line.outcome,
                "actor": line.actor,
            },
        )

    def _liveness(self, now: float) -> dict[str, Any]:
        return {
            "b_now": now,
            "b_me": self.process_id or "",
            "b_alive_since": now - self.holder_dead_seconds,
            "b_holder": self.process_id,
        }

    def _mine(self, table: Any) -> Any:
        """SQL condition: this process still holds the unit. A holder that stalled past
        holder_dead_seconds and was taken over must not give back its successor's lease."""
        if self.process_id is None:
            return table.c.holder.is_(None)
        return table.c.holder == self.process_id

    # -- health -------------------------------------------------------------------------
    def ping(self) -> None:
        with self.reader.connect() as conn:
            conn.execute(text("SELECT 1"))
