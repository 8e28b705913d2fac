"""The Store's shared ground: engine, clock, liveness, row mapping and shared SQL conditions."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

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

from bot import db
from bot.model import (
    PENDING_APPROVAL,
    TO_CARRY_OUT,
    Request,
)

Clock = Callable[[], float]

log = logging.getLogger("bot.store")  # one logger for the whole store


def _needs_work() -> Any:
    """SQL condition: the request has a step for a worker (claim and recovery sweep agree)."""
    c = db.requests.c
    return or_(
        c.status.in_(list(TO_CARRY_OUT)),
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
    """A prebuilt SELECT as its dialect's SQL text and the order of its parameters."""

    __slots__ = ("compiled", "positions", "sql")

    def __init__(self, statement: Select[Any], engine: Engine) -> None:
        self.compiled = statement.compile(dialect=engine.dialect)
        self.sql = str(self.compiled)
        if "POSTCOMPILE" in self.sql:  # an expanding IN list is rendered per call
            raise ValueError("a lean read takes no IN list parameter")
        self.positions = self.compiled.positiontup  # None: named parameters (psycopg)

    def parameters(self, values: dict[str, Any]) -> Any:
        full = self.compiled.construct_params(values)  # with the statement's own literals
        return full if self.positions is None else tuple(full[n] for n in self.positions)


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
        self._compiled: dict[Select[Any], _Compiled] = {}  # see _rows
        self.clock = clock
        # This process's id in `processes` (bot/liveness.py): the holder of what it claims.
        self.process_id: str | None = None
        # A holder whose heartbeat is older than this is dead (CHATOPS_HOLDER_DEAD_SECONDS).
        self.holder_dead_seconds = 10.0

    def _rows(self, statement: Select[Any], values: dict[str, Any]) -> list[dict[str, Any]]:
        """A prebuilt SELECT's rows as dicts, run on a pooled DBAPI connection.

        For the reads every relayed event and job makes (a request by id, a run's link, a
        request's runs): SQLAlchemy's execution layer costs ~160-170 µs of CPU per statement on
        either database (`bench/relay.py`, docs/benchmarks.md), as much as the read itself on
        SQLite five times over. A read needs none of what that layer adds here: the SQLite
        writer queue and the inline-write guard watch writes, and the columns read this way are
        text and numbers that both drivers return as Python values already. The pool's events
        still run (the idle ping at checkout), and a driver error comes out as SQLAlchemy's
        (`DBAPIError`, parameters hidden), as it would from `conn.execute`: callers that take
        a database outage for what it is catch SQLAlchemyError. On PostgreSQL the read runs in
        autocommit, as `reader` does: one round trip, no BEGIN and no ROLLBACK at check-in.
        """
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = _Compiled(statement, self.engine)
        dialect = self.engine.dialect
        pg = dialect.name == "postgresql"
        raw: Any = None
        cursor: Any = None
        try:
            raw = self.engine.raw_connection()
            if pg:
                raw.dbapi_connection.autocommit = True
            try:
                cursor = raw.cursor()
                cursor.execute(compiled.sql, compiled.parameters(values))
                names = [d[0] for d in cursor.description]
                rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                cursor.close()
            finally:
                if pg:
                    raw.dbapi_connection.autocommit = False
        except dialect.loaded_dbapi.Error as exc:
            gone = raw is not None and dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
            if gone:
                raw.invalidate(exc)  # the pool opens a new connection for the next checkout
            raise DBAPIError.instance(
                compiled.sql,
                None,
                exc,
                dialect.loaded_dbapi.Error,
                hide_parameters=True,
                connection_invalidated=gone,
                dialect=dialect,
            ) from exc
        finally:
            if raw is not None:
                raw.close()  # back to the pool
        return rows

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
