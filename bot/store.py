"""Storage: every state change of a request is one SQL statement, conditional where it races."""

from __future__ import annotations

import json
import logging
import secrets
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from bot import db
from bot.model import (
    OPEN_STATES,
    PENDING_APPROVAL,
    TO_CARRY_OUT,
    NewRequest,
    Request,
    RunRecord,
    disallowed_transitions,
)

Clock = Callable[[], float]

log = logging.getLogger(__name__)


def _needs_work() -> Any:
    """SQL condition: the request has a step for a worker (claim and recovery sweep agree)."""
    c = db.requests.c
    return or_(
        c.status.in_(list(TO_CARRY_OUT)),
        and_(c.status == PENDING_APPROVAL, c.root_ts.is_(None)),
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
    )


_EMPTY_ROW: dict[str, Any] = {c.name: None for c in db.requests.columns}


# The statements on the path before a command's ack, built once: building a statement with
# .values(...) per call cost more Python than the SQLite write itself (py-spy, bench/run.py).
_INSERT_REQUEST = insert(db.requests)
_INSERT_AUDIT = insert(db.audit)
_COUNT_RECENT = select(func.count()).where(
    db.requests.c.user_id == bindparam("user_id"), db.requests.c.created_at >= bindparam("since")
)

# The rate limit and the insert in ONE statement: the row goes in only while the user has fewer
# than b_limit requests since b_since. Counting first and inserting after let a burst of 30
# parallel commands through 12-25 times at a limit of 10 (issue 10). On SQLite a write
# statement takes the database's write lock before it reads, so no other writer (thread or
# process) can insert between the count and the insert. On PostgreSQL two READ COMMITTED
# statements would still both count 9: _LOCK_USER serialises them first (see create_request).
_NEW_REQUEST_COLUMNS = (
    "id",
    "kind",
    "idempotency_key",
    "repo",
    "pr_number",
    "head_sha",
    "run_ref",
    "environment",
    "trigger",
    "event_type",
    "channel_id",
    "user_id",
    "response_url",
    "status",
    "details",
    "created_at",
    "updated_at",
    "lease_until",
    "attempts",
    "expires_at",
    "holder",
    "failures",
)
# Typed parameters: psycopg cannot infer the type of a bare parameter in a SELECT list.
_NEW_VALUES = {k: bindparam(k, type_=db.requests.c[k].type) for k in _NEW_REQUEST_COLUMNS}
_INSERT_REQUEST_UNDER_LIMIT = (
    insert(db.requests)
    .from_select(
        list(_NEW_REQUEST_COLUMNS),
        select(*_NEW_VALUES.values()).where(
            select(func.count())
            .select_from(db.requests)
            .where(
                db.requests.c.user_id == _NEW_VALUES["user_id"],
                db.requests.c.created_at
                >= bindparam("b_since", type_=db.requests.c.created_at.type),
            )
            .scalar_subquery()
            < bindparam("b_limit", type_=db.requests.c.attempts.type)
        ),
        # RETURNING tells whether the row went in: psycopg's rowcount reaches SQLAlchemy as -1
        # for an INSERT ... SELECT.
    )
    .returning(db.requests.c.id)
)
# PostgreSQL transaction-level advisory locks, two-int form (a key space apart from the
# single-bigint keys of migrations and scheduler leadership). Held until commit/rollback, so
# they also work across replicas sharing the database.
_LOCK_USER, _LOCK_PR = 0x43485531, 0x43485032  # "CHU1", "CHP2": the first int of the key
_ADVISORY_XACT_LOCK = text(
    "SELECT pg_advisory_xact_lock(CAST(:ns AS integer), CAST(:key AS integer))"
)


def _lock_key(value: str) -> int:
    """A stable signed 32-bit key (a collision only makes two users or PRs wait in turn)."""
    n = zlib.crc32(value.encode())
    return n - (1 << 32) if n >= 1 << 31 else n


def _advisory_lock(conn: Connection, namespace: int, value: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(_ADVISORY_XACT_LOCK, {"ns": namespace, "key": _lock_key(value)})


# One evaluation per repository + PR + head SHA in flight: the head SHA is set only while no
# other open evaluation has it (one statement; on PostgreSQL under the PR's advisory lock).
_OTHER = db.requests.alias("other")
_OTHER_EVALUATION_IN_FLIGHT = exists().where(
    _OTHER.c.kind == "evaluate",
    _OTHER.c.repo == bindparam("b_repo"),
    _OTHER.c.pr_number == bindparam("b_pr"),
    _OTHER.c.head_sha == bindparam("b_sha"),
    _OTHER.c.status.in_(list(OPEN_STATES)),
    _OTHER.c.id != bindparam("b_id"),
)
_TAKE_HEAD = (
    update(db.requests)
    .where(db.requests.c.id == bindparam("b_id"), ~_OTHER_EVALUATION_IN_FLIGHT)
    .values(head_sha=bindparam("b_sha"), updated_at=bindparam("b_now"))
)
_HOLDER_OF_HEAD = (
    select(db.requests)
    .where(
        db.requests.c.kind == "evaluate",
        db.requests.c.repo == bindparam("b_repo"),
        db.requests.c.pr_number == bindparam("b_pr"),
        db.requests.c.head_sha == bindparam("b_sha"),
        db.requests.c.status.in_(list(OPEN_STATES)),
        db.requests.c.id != bindparam("b_id"),
    )
    .order_by(db.requests.c.created_at)
    .limit(1)
)
# The same for the statements every job and webhook delivery runs.
_GET_REQUEST = select(db.requests).where(db.requests.c.id == bindparam("request_id"))
_INSERT_DELIVERY = insert(db.deliveries)
_UPDATE_REQUEST = update(db.requests).where(db.requests.c.id == bindparam("b_id"))
_UPDATE_REQUEST_IF = _UPDATE_REQUEST.where(
    db.requests.c.status.in_(bindparam("b_statuses", expanding=True))
)
# The status a request has before a status change, for the log's "from" (see update). FOR
# UPDATE locks the row on PostgreSQL, so the status read is the one the UPDATE changes.
_STATUS_OF = (
    select(db.requests.c.status).where(db.requests.c.id == bindparam("b_id")).with_for_update()
)
_TRIGGER_OF = select(db.requests.c.trigger).where(db.requests.c.id == bindparam("b_id"))
_GET_DETAILS = select(db.requests.c.details).where(db.requests.c.id == bindparam("b_id"))
_SET_DETAILS_IF = _UPDATE_REQUEST.where(db.requests.c.details == bindparam("b_old"))


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


_CLAIM_DELIVERY = (
    update(db.deliveries)
    .where(
        db.deliveries.c.id == bindparam("b_id"),
        db.deliveries.c.processed_at.is_(None),
        _free_or_orphaned(db.deliveries),
    )
    .values(
        lease_until=bindparam("b_until"),
        attempts=db.deliveries.c.attempts + 1,
        holder=bindparam("b_holder"),
    )
    .returning(db.deliveries.c.payload)
)
_UPDATE_DELIVERY = update(db.deliveries).where(db.deliveries.c.id == bindparam("b_id"))
_GET_RUN = select(db.runs).where(db.runs.c.run_id == bindparam("b_id"))
_INSERT_RUN = insert(db.runs)
# A run's record only moves forward: a later attempt, or the same attempt unless it would take
# a completed run back to queued/in progress (a redelivery or a poll after the webhook).
_UPDATE_RUN_IF_NEWER = update(db.runs).where(
    db.runs.c.run_id == bindparam("b_id"),
    or_(
        db.runs.c.attempt < bindparam("b_attempt"),
        and_(
            db.runs.c.attempt == bindparam("b_attempt"),
            or_(db.runs.c.status != "completed", bindparam("b_completed")),
        ),
    ),
)
_INSERT_SENT = insert(db.sent)
_CLAIM = (
    update(db.requests)
    .where(
        db.requests.c.id == bindparam("request_id"),
        _free_or_orphaned(db.requests),
        _needs_work(),
    )
    .values(
        lease_until=bindparam("until"),
        attempts=db.requests.c.attempts + 1,
        updated_at=bindparam("b_now"),
        holder=bindparam("b_holder"),
    )
)


class Store:
    def __init__(self, engine: Engine, clock: Clock = time.time) -> None:
        self.engine = engine
        self.clock = clock
        # This process's id in `processes` (bot/liveness.py): the holder of what it claims.
        self.process_id: str | None = None
        # A holder whose heartbeat is older than this is dead (CHATOPS_HOLDER_DEAD_SECONDS).
        self.holder_dead_seconds = 10.0

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

    # -- processes (heartbeats) -----------------------------------------------------------
    def register_process(self, process_id: str, host: str, pid: int) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                insert(db.processes).values(
                    id=process_id, host=host, pid=pid, started_at=now, heartbeat_at=now
                )
            )

    def heartbeat(self, process_id: str) -> bool:
        """Renew this process's heartbeat; False when its row is gone (then it is re-added)."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(db.processes)
                .where(db.processes.c.id == process_id)
                .values(heartbeat_at=self.clock())
            ).rowcount
        return bool(changed)

    def processes_on(self, host: str) -> list[tuple[str, int]]:
        """(id, pid) of the processes that registered with this host identity."""
        p = db.processes.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(p.id, p.pid).where(p.host == host)).all()
        return [(r[0], int(r[1])) for r in rows]

    def forget_processes(self, ids: Iterable[str]) -> int:
        """Remove process rows: their leases count as orphaned from now on."""
        ids = list(ids)
        if not ids:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(delete(db.processes).where(db.processes.c.id.in_(ids)))
        return int(result.rowcount)

    def prune_processes(self, older_than: float) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(db.processes).where(db.processes.c.heartbeat_at < self.clock() - older_than)
            )
        return int(result.rowcount)

    # -- health -------------------------------------------------------------------------
    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    # -- requests -----------------------------------------------------------------------
    def create_request(
        self,
        new: NewRequest,
        *,
        audit_action: str | None = None,
        audit_detail: str = "",
        per_minute: int | None = None,
    ) -> tuple[Request, bool]:
        """Insert; on a repeat of the same idempotency key return the existing row and False.

        With audit_action, the audit row (actor: the requester, outcome: the new status) is
        written in the same transaction: a request is never stored without it, nor it without
        the request.

        With per_minute, raise OverLimit instead when the user already has that many requests
        from the last 60 seconds; the count and the insert are one atomic step (see
        _INSERT_REQUEST_UNDER_LIMIT), so a burst of parallel commands cannot pass the limit.
        """
        now = self.clock()
        request_id = new_request_id()
        values = {
            "id": request_id,
            "kind": new.kind,
            "idempotency_key": new.idempotency_key,
            "repo": new.repo,
            "pr_number": new.pr_number,
            "head_sha": new.head_sha,
            "run_ref": new.run_ref,
            "environment": new.environment,
            "trigger": new.trigger,
            "event_type": new.event_type,
            "channel_id": new.channel_id,
            "user_id": new.user_id,
            "response_url": new.response_url,
            "status": new.status,
            "details": json.dumps(new.details),
            "created_at": now,
            "updated_at": now,
            "lease_until": 0.0,
            "attempts": 0,
            "expires_at": new.expires_at,
            # The process that stored it will carry it out; if it dies first, any replica
            # takes it over at once instead of after CHATOPS_STALE_AFTER_SECONDS.
            "holder": self.process_id,
            "failures": 0,
        }
        try:
            with self.engine.begin() as conn:
                if per_minute is None:
                    conn.execute(_INSERT_REQUEST, values)
                else:
                    # One lock per user, taken before the counting statement reads: READ
                    # COMMITTED then sees every row the previous holder committed.
                    _advisory_lock(conn, _LOCK_USER, new.user_id)
                    limited = {**values, "b_since": now - 60.0, "b_limit": per_minute}
                    if conn.execute(_INSERT_REQUEST_UNDER_LIMIT, limited).first() is None:
                        raise OverLimit(new.user_id)
                if audit_action:
                    conn.execute(
                        _INSERT_AUDIT,
                        {
                            "at": now,
                            "request_id": request_id,
                            "actor": new.user_id,
                            "action": audit_action,
                            "outcome": new.status,
                            "detail": audit_detail,
                        },
                    )
        except IntegrityError:
            existing = self.request_by_key(new.idempotency_key)
            if existing is None:
                raise
            return existing, False
        except OverLimit:
            # A retried delivery of a command that was stored earlier is that request, not
            # a refusal (its row is one of those that filled the minute).
            existing = self.request_by_key(new.idempotency_key)
            if existing is None:
                raise
            return existing, False
        # Ids only: never the text the person typed (run_ref is a checked id, bot/refs.py).
        stored = {
            "request_id": request_id,
            "kind": new.kind,
            "status": new.status,
            "action": audit_action,
            "repo": new.repo,
            "pr_number": new.pr_number,
            "run_ref": new.run_ref,
            "environment": new.environment,
            "channel_id": new.channel_id,
            "user_id": new.user_id,
        }
        log.info("request stored", extra={k: v for k, v in stored.items() if v is not None})
        # The row is exactly what was inserted: no need to read it back (one query less on the
        # path before ack()).
        return _request_from({**_EMPTY_ROW, **values}), True

    def get(self, request_id: str) -> Request | None:
        with self.engine.connect() as conn:
            row = conn.execute(_GET_REQUEST, {"request_id": request_id}).first()
        return _row_to_request(row) if row else None

    def request_by_key(self, key: str) -> Request | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.requests).where(db.requests.c.idempotency_key == key)
            ).first()
        return _row_to_request(row) if row else None

    def update(
        self, request_id: str, *, only_if_status: Iterable[str] | None = None, **values: Any
    ) -> bool:
        """Set columns; with only_if_status the change happens only from those states.

        Returns whether a row changed: the single conditional UPDATE is what makes concurrent
        clicks, retries and recovery sweeps agree on one outcome.
        """
        if "details" in values and not isinstance(values["details"], str):
            values["details"] = json.dumps(values["details"])
        values["updated_at"] = self.clock()
        values["b_id"] = request_id
        statement = _UPDATE_REQUEST
        statuses: list[str] | None = None
        if only_if_status is not None:
            statuses = list(only_if_status)
            if "status" in values:
                # A change of status the model does not know is a bug in the caller.
                wrong = disallowed_transitions(statuses, values["status"])
                if wrong:
                    raise ValueError(f"status change {wrong} -> {values['status']} not allowed")
            if not statuses:
                return False
            statement, values["b_statuses"] = _UPDATE_REQUEST_IF, statuses
        logged = "status" in values and log.isEnabledFor(logging.INFO)
        before: str | None = None
        with self.engine.begin() as conn:
            if logged:
                # "from" of the story's "status changed" line: known when only one status may
                # change, else read in the same transaction (a primary-key read, and only for
                # status changes, never on the path before a command's ack).
                if statuses is not None and len(statuses) == 1:
                    before = statuses[0]
                else:
                    before = conn.execute(_STATUS_OF, {"b_id": request_id}).scalar()
            result = conn.execute(statement, values)
        changed = bool(result.rowcount)
        if changed and logged and before != values["status"]:
            log.info(
                "request status changed",
                extra={"request_id": request_id, "from": before, "to": values["status"]},
            )
        return changed

    def merge_details(self, request_id: str, extra: dict[str, Any]) -> None:
        """Merge keys into details; compare-and-set, so concurrent merges never lose a key."""
        self.change_details(request_id, lambda details: {**details, **extra})

    def change_details(
        self, request_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """Replace details by change(details), compare-and-set: a change computed from a value
        another writer replaced meanwhile is computed again (e.g. appending to a list)."""
        for _ in range(20):
            with self.engine.begin() as conn:
                row = conn.execute(_GET_DETAILS, {"b_id": request_id}).first()
                if row is None:
                    return
                merged = change(json.loads(row[0] or "{}"))
                changed = conn.execute(
                    _SET_DETAILS_IF,
                    {
                        "b_id": request_id,
                        "b_old": row[0],
                        "details": json.dumps(merged),
                        "updated_at": self.clock(),
                    },
                ).rowcount
            if changed:
                return
        raise RuntimeError(f"details of request {request_id} keep changing; merge abandoned")

    def request_by_thread(self, channel_id: str, root_ts: str) -> Request | None:
        """The request whose thread root is (channel, ts): how a mention in a thread finds it."""
        c = db.requests.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.requests)
                .where(c.channel_id == channel_id, c.root_ts == root_ts)
                .order_by(c.created_at.desc())
                .limit(1)
            ).first()
        return _row_to_request(row) if row else None

    def claim(self, request_id: str, lease_seconds: float = 120.0) -> bool:
        """Take the work lease of a request; False when a live worker holds it.

        A lease whose holder is dead (no heartbeat for holder_dead_seconds) is taken at once,
        whatever its lease_until says.
        """
        now = self.clock()
        params = {"request_id": request_id, "until": now + lease_seconds, **self._liveness(now)}
        with self.engine.begin() as conn:
            result = conn.execute(_CLAIM, params)
        return bool(result.rowcount)

    def release(self, request_id: str, *, retry_in: float = 0.0, **values: Any) -> None:
        """Give the lease back; the next attempt is due in retry_in seconds (lease_until is its
        durable record: the holder's timer runs it, or any sweep once it is due). `values`:
        failures, waiting_since, waiting_on."""
        with self.engine.begin() as conn:
            conn.execute(
                update(db.requests)
                .where(db.requests.c.id == request_id, self._mine(db.requests))
                .values(lease_until=self.clock() + retry_in, **values)
            )

    def to_carry_out(self, *, older_than: float, limit: int = 100) -> list[Request]:
        """Requests with a step to do that nobody is working on: the recovery sweep's input.

        Free ones untouched for `older_than` seconds, and at once those of a dead holder.
        """
        now = self.clock()
        c = db.requests.c
        free_and_stale = and_(c.lease_until <= now, c.updated_at <= now - older_than)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(db.requests)
                .where(_needs_work(), or_(free_and_stale, _holder_dead(c.holder)))
                .order_by(c.created_at)
                .limit(limit),
                self._liveness(now),
            ).all()
        return [_row_to_request(r) for r in rows]

    def orphaned(self, limit: int = 100) -> tuple[list[str], list[tuple[str, str]]]:
        """Request ids and (delivery id, event) whose holder is dead: the takeover's input."""
        now = self.clock()
        r, d = db.requests.c, db.deliveries.c
        params = self._liveness(now)
        with self.engine.connect() as conn:
            reqs = conn.execute(
                select(r.id)
                .where(_needs_work(), _holder_dead(r.holder))
                .order_by(r.created_at)
                .limit(limit),
                params,
            ).all()
            dels = conn.execute(
                select(d.id, d.event)
                .where(d.processed_at.is_(None), _holder_dead(d.holder))
                .order_by(d.received_at)
                .limit(limit),
                params,
            ).all()
        return [row[0] for row in reqs], [(row[0], row[1]) for row in dels]

    def waiting(self) -> dict[str, tuple[int, float]]:
        """Per peer (GitHub, Slack): units waiting out its outage, and since when."""
        out: dict[str, tuple[int, float]] = {}
        r, d = db.requests.c, db.deliveries.c
        with self.engine.connect() as conn:
            rows = [
                *conn.execute(
                    select(r.waiting_on, func.count(), func.min(r.waiting_since))
                    .where(_needs_work(), r.waiting_on.is_not(None))
                    .group_by(r.waiting_on)
                ).all(),
                *conn.execute(
                    select(d.waiting_on, func.count(), func.min(d.waiting_since))
                    .where(d.processed_at.is_(None), d.waiting_on.is_not(None))
                    .group_by(d.waiting_on)
                ).all(),
            ]
        for peer, n, since in rows:
            had = out.get(peer)
            out[peer] = (
                (had[0] + int(n), min(had[1], float(since))) if had else (int(n), float(since))
            )
        return out

    def find(
        self,
        *,
        repo: str | None = None,
        pr_number: int | None = None,
        head_sha: str | None = None,
        kind: str | None = None,
        statuses: Iterable[str] | None = None,
        user_id: str | None = None,
        channel_id: str | None = None,
        environment: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[Request]:
        """Requests matching every given filter, newest first."""
        c = db.requests.c
        conds = []
        for col, val in (
            (c.repo, repo),
            (c.pr_number, pr_number),
            (c.head_sha, head_sha),
            (c.kind, kind),
            (c.user_id, user_id),
            (c.channel_id, channel_id),
            (c.environment, environment),
        ):
            if val is not None:
                conds.append(col == val)
        if statuses is not None:
            conds.append(c.status.in_(list(statuses)))
        if since is not None:
            conds.append(c.created_at >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(db.requests).where(*conds).order_by(c.created_at.desc()).limit(limit)
            ).all()
        return [_row_to_request(r) for r in rows]

    def expired_approvals(self, now: float, limit: int = 100) -> list[Request]:
        c = db.requests.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(db.requests)
                .where(c.status == PENDING_APPROVAL, c.expires_at <= now)
                .order_by(c.expires_at)
                .limit(limit)
            ).all()
        return [_row_to_request(r) for r in rows]

    def count_recent(self, user_id: str, since: float) -> int:
        with self.engine.connect() as conn:
            n = conn.execute(_COUNT_RECENT, {"user_id": user_id, "since": since}).scalar_one()
        return int(n)

    def take_head(self, req: Request, head_sha: str) -> Request | None:
        """Make `req` THE evaluation in flight of its repo + PR + head SHA: store the SHA on it
        unless another open evaluation has it. Returns None when req holds it now, else the
        request that does (the caller settles req as a duplicate of it).

        One conditional UPDATE decides (SQLite: the statement holds the write lock; PostgreSQL:
        the PR's advisory lock serialises takers, so each sees the SHA its predecessor stored).
        """
        assert req.pr_number is not None
        params = {
            "b_id": req.id,
            "b_repo": req.repo,
            "b_pr": req.pr_number,
            "b_sha": head_sha,
            "b_now": self.clock(),
        }
        for _ in range(5):
            with self.engine.begin() as conn:
                _advisory_lock(conn, _LOCK_PR, f"{req.repo}#{req.pr_number}")
                if conn.execute(_TAKE_HEAD, params).rowcount:
                    return None
                row = conn.execute(_HOLDER_OF_HEAD, params).first()
            if row is not None:
                return _row_to_request(row)
            # PostgreSQL only: the holder finished between the two statements. Try again.
        raise RuntimeError(f"head of request {req.id} keeps changing hands; gave up")

    def count_by_status(self) -> dict[str, int]:
        c = db.requests.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.status, func.count()).group_by(c.status)).all()
        return {r[0]: int(r[1]) for r in rows}

    # -- approvals ----------------------------------------------------------------------
    def add_approval(self, request_id: str, user_id: str) -> bool:
        """Record one person's approval; False if that person had approved already."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(db.approvals).values(
                        request_id=request_id, user_id=user_id, at=self.clock()
                    )
                )
        except IntegrityError:
            return False
        return True

    def remove_approval(self, request_id: str, user_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                delete(db.approvals).where(
                    db.approvals.c.request_id == request_id, db.approvals.c.user_id == user_id
                )
            )

    def approvers_of(self, request_id: str) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(db.approvals.c.user_id)
                .where(db.approvals.c.request_id == request_id)
                .order_by(db.approvals.c.at)
            ).all()
        return [r[0] for r in rows]

    # -- webhook deliveries -------------------------------------------------------------
    def record_delivery(
        self, delivery_id: str, event: str, action: str | None, payload: str
    ) -> bool:
        """Store a delivery once; False for a redelivery of an id already seen."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    _INSERT_DELIVERY,
                    {
                        "id": delivery_id,
                        "event": event,
                        "action": action,
                        "received_at": self.clock(),
                        "payload": payload,
                        "lease_until": 0.0,
                        "attempts": 0,
                        "holder": self.process_id,
                        "failures": 0,
                    },
                )
        except IntegrityError:
            return False
        return True

    def claim_delivery(self, delivery_id: str, lease_seconds: float = 120.0) -> str | None:
        """Take a pending delivery's lease; returns its payload, or None if taken/done."""
        now = self.clock()
        params = {"b_id": delivery_id, "b_until": now + lease_seconds, **self._liveness(now)}
        with self.engine.begin() as conn:
            # One statement (RETURNING: SQLite 3.35+, PostgreSQL): claim and read together.
            row = conn.execute(_CLAIM_DELIVERY, params).first()
        return row[0] if row else None

    def finish_delivery(self, delivery_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                _UPDATE_DELIVERY,
                {"b_id": delivery_id, "processed_at": self.clock(), "payload": None},
            )

    def release_delivery(self, delivery_id: str, retry_in: float, **values: Any) -> None:
        """As release(): `values` may set failures, waiting_since, waiting_on."""
        with self.engine.begin() as conn:
            conn.execute(
                update(db.deliveries)
                .where(db.deliveries.c.id == delivery_id, self._mine(db.deliveries))
                .values(lease_until=self.clock() + retry_in, **values)
            )

    def delivery_retry_state(self, delivery_id: str) -> tuple[int, float | None]:
        """(failures, waiting_since) of a delivery: what its retry policy needs."""
        d = db.deliveries.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(d.failures, d.waiting_since).where(d.id == delivery_id)
            ).first()
        return (int(row[0] or 0), row[1]) if row else (0, None)

    def fail_delivery(self, delivery_id: str, error: str) -> None:
        """Give a delivery up: processed (never retried), with failed_at and why. The payload
        is kept for whoever investigates, until pruning."""
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                _UPDATE_DELIVERY,
                {
                    "b_id": delivery_id,
                    "processed_at": now,
                    "failed_at": now,
                    "error": error[:2000],
                    "waiting_since": None,
                    "waiting_on": None,
                },
            )

    def pending_deliveries(
        self, *, older_than: float, max_attempts: int | None = None, limit: int = 100
    ) -> list[tuple[str, str]]:
        """(id, event) of deliveries stored but not processed: the recovery sweep's input.

        No attempts cap by default: a delivery waiting out an outage stays pending until it is
        handled or given up (Jobs marks it failed, processed_at set).
        """
        now = self.clock()
        d = db.deliveries.c
        conds = [d.processed_at.is_(None), d.lease_until <= now, d.received_at <= now - older_than]
        if max_attempts is not None:
            conds.append(d.attempts < max_attempts)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(d.id, d.event).where(*conds).order_by(d.received_at).limit(limit)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def last_delivery_at(self) -> float | None:
        with self.engine.connect() as conn:
            v = conn.execute(select(func.max(db.deliveries.c.received_at))).scalar()
        return float(v) if v is not None else None

    def prune_deliveries(self, older_than: float) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(db.deliveries).where(
                    db.deliveries.c.processed_at.is_not(None),
                    db.deliveries.c.received_at < self.clock() - older_than,
                )
            )
        return int(result.rowcount)

    # -- workflow runs ------------------------------------------------------------------
    def upsert_run(
        self,
        *,
        run_id: str,
        request_id: str,
        repo: str,
        name: str | None,
        status: str,
        conclusion: str | None,
        attempt: int,
        html_url: str | None,
        head_sha: str | None,
        started_at: float | None,
    ) -> tuple[RunRecord | None, bool]:
        """Store a view of a run unless the stored one is newer (see _UPDATE_RUN_IF_NEWER).

        Returns the previous record (None when new) and whether this view was stored; the one
        conditional UPDATE keeps concurrent deliveries of one run from stepping back.
        """
        now = self.clock()
        values = {
            "request_id": request_id,
            "repo": repo,
            "name": name,
            "status": status,
            "conclusion": conclusion,
            "attempt": attempt,
            "html_url": html_url,
            "head_sha": head_sha,
            "started_at": started_at,
            "updated_at": now,
        }
        with self.engine.begin() as conn:
            row = conn.execute(_GET_RUN, {"b_id": run_id}).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(_INSERT_RUN, {"run_id": run_id, **values})
                    if log.isEnabledFor(logging.INFO):
                        # How handlers.workflow_run.request_for_run matched an unlinked run
                        # follows from the request's trigger: a run-name (title) is evidence
                        # only for dispatched requests, PR + head SHA only for labelled ones.
                        trigger = conn.execute(_TRIGGER_OF, {"b_id": request_id}).scalar()
                        how = "title" if trigger == "dispatch" else "head_sha"
                        self._log_run(run_id, request_id, how, status, conclusion, attempt, True)
                    return None, True
                except IntegrityError:
                    row = conn.execute(_GET_RUN, {"b_id": run_id}).first()
            assert row is not None
            newer = {"b_attempt": attempt, "b_completed": status == "completed"}
            stored = conn.execute(_UPDATE_RUN_IF_NEWER, {"b_id": run_id, **newer, **values})
        # Linked before: later events of a run find their request by the link (runs table).
        self._log_run(run_id, request_id, "link", status, conclusion, attempt, stored.rowcount > 0)
        m = row._mapping
        prev = RunRecord(
            run_id=m["run_id"],
            request_id=m["request_id"],
            status=m["status"],
            conclusion=m["conclusion"],
            attempt=m["attempt"],
            name=m["name"],
            html_url=m["html_url"],
            started_at=m["started_at"],
        )
        return prev, bool(stored.rowcount)

    @staticmethod
    def _log_run(
        run_id: str,
        request_id: str,
        how: str,
        status: str,
        conclusion: str | None,
        attempt: int,
        stored: bool,
    ) -> None:
        # stored=False: an older view (redelivery, poll after webhook) that changed nothing.
        log.info(
            "run matched",
            extra={
                "request_id": request_id,
                "run_id": run_id,
                "matched_by": how,
                "run_status": status,
                "conclusion": conclusion,
                "attempt": attempt,
                "stored": stored,
            },
        )

    def run_owner(self, run_id: str) -> str | None:
        """The request a run was linked to before, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.runs.c.request_id).where(db.runs.c.run_id == run_id)
            ).first()
        return row[0] if row else None

    def runs_of(self, request_id: str) -> list[RunRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(db.runs).where(db.runs.c.request_id == request_id).order_by(db.runs.c.run_id)
            ).all()
        return [
            RunRecord(
                run_id=m["run_id"],
                request_id=m["request_id"],
                status=m["status"],
                conclusion=m["conclusion"],
                attempt=m["attempt"],
                name=m["name"],
                html_url=m["html_url"],
                started_at=m["started_at"],
            )
            for m in (row._mapping for row in rows)
        ]

    # -- side-effect keys ---------------------------------------------------------------
    def first_time(self, key: str) -> bool:
        """Claim an idempotency key for a side effect; True only for the first claimer."""
        try:
            with self.engine.begin() as conn:
                conn.execute(_INSERT_SENT, {"key": key[:255], "at": self.clock()})
        except IntegrityError:
            return False
        return True

    def forget(self, key: str) -> None:
        """Give a key back after its side effect failed, so a retry may do it."""
        with self.engine.begin() as conn:
            conn.execute(delete(db.sent).where(db.sent.c.key == key[:255]))

    # -- audit --------------------------------------------------------------------------
    def audit(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        request_id: str | None = None,
        detail: str = "",
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                _INSERT_AUDIT,
                {
                    "at": self.clock(),
                    "request_id": request_id,
                    "actor": actor,
                    "action": action,
                    "outcome": outcome,
                    "detail": detail,
                },
            )
        # Every audit row is a decided step of the story. Not the detail: it may hold text
        # a person typed (a rejection's reason).
        log.info(
            "decision recorded",
            extra={"request_id": request_id, "action": action, "outcome": outcome, "actor": actor},
        )

    def audit_rows(
        self, *, since: float = 0.0, request_id: str | None = None
    ) -> list[dict[str, Any]]:
        a = db.audit.c
        conds = [a.at >= since]
        if request_id:
            conds.append(a.request_id == request_id)
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.audit).where(*conds).order_by(a.id)).all()
        return [dict(r._mapping) for r in rows]

    # -- polling and schedules ----------------------------------------------------------
    def etag(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.poll_state.c.etag).where(db.poll_state.c.key == key)
            ).first()
        return row[0] if row else None

    def set_etag(self, key: str, etag: str | None) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(db.poll_state)
                .where(db.poll_state.c.key == key)
                .values(etag=etag, checked_at=now)
            ).rowcount
            if not changed:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(db.poll_state).values(key=key, etag=etag, checked_at=now)
                        )
                except IntegrityError:
                    pass

    def prune_poll_state(self, older_than: float) -> int:
        """Forget ETags not used for a while (PRs and SHAs nobody polls any more)."""
        with self.engine.begin() as conn:
            cutoff = self.clock() - older_than
            result = conn.execute(delete(db.poll_state).where(db.poll_state.c.checked_at < cutoff))
        return int(result.rowcount)

    def last_fire(self, name: str) -> float | None:
        s = db.schedule_state.c
        with self.engine.connect() as conn:
            row = conn.execute(select(s.last_fire_at).where(s.name == name)).first()
        return float(row[0]) if row else None

    def set_last_fire(self, name: str, at: float, *, previous: float | None) -> bool:
        """Advance a schedule's last fire time only from `previous`: one fire per due time."""
        s = db.schedule_state.c
        with self.engine.begin() as conn:
            if previous is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(db.schedule_state).values(name=name, last_fire_at=at))
                    return True
                except IntegrityError:
                    return False
            result = conn.execute(
                update(db.schedule_state)
                .where(s.name == name, s.last_fire_at == previous)
                .values(last_fire_at=at)
            )
        return bool(result.rowcount)


__all__ = ["OverLimit", "Store"]
