"""New requests: the rate-limited insert, advisory locks, one evaluation per head SHA."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from sqlalchemy import (
    bindparam,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from bot import db
from bot.model import (
    OPEN_STATES,
    NewRequest,
    Request,
)
from bot.store.base import (
    _EMPTY_ROW,
    _INSERT_AUDIT,
    OverLimit,
    _request_from,
    _status_in,
    _Transaction,
    log,
    new_request_id,
)
from bot.store.requests import _GET_REQUEST, Requests

# The statements on the path before a command's ack, built once: building a statement with
# .values(...) per call cost more Python than the SQLite write itself (py-spy, bench/run.py).
_INSERT_REQUEST = insert(db.requests)
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
    "answer_due",
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
_LOCK_USER, _LOCK_PR, _LOCK_REF = 0x43485531, 0x43485032, 0x43485233  # "CHU1", "CHP2", "CHR3"
_ADVISORY_XACT_LOCK = text(
    "SELECT pg_advisory_xact_lock(CAST(:ns AS integer), CAST(:key AS integer))"
)


def _lock_key(value: str) -> int:
    """A stable signed 32-bit key (a collision only makes two users or PRs wait in turn)."""
    n = zlib.crc32(value.encode())
    return n - (1 << 32) if n >= 1 << 31 else n


def _advisory_lock(conn: _Transaction, namespace: int, value: str) -> None:
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
    _status_in(_OTHER.c.status, OPEN_STATES),
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
        _status_in(db.requests.c.status, OPEN_STATES),
        db.requests.c.id != bindparam("b_id"),
    )
    .order_by(db.requests.c.created_at)
    .limit(1)
)


# One open request per kind + repository + environment + run_ref, where asked (the deploys the
# model registry asks for): the row goes in only while no open request has the same four, in
# one statement (SQLite: under the write lock; PostgreSQL: under that ref's advisory lock).
# Two deliveries asking for the same version at the same instant (an alias and a tag, two
# aliases) then make one card, not two that could each be approved.
_OPEN_SAME_REF = (
    _OTHER.c.kind == _NEW_VALUES["kind"],
    _OTHER.c.repo == _NEW_VALUES["repo"],
    _OTHER.c.environment == _NEW_VALUES["environment"],
    _OTHER.c.run_ref == _NEW_VALUES["run_ref"],
    _status_in(_OTHER.c.status, OPEN_STATES),
)
_INSERT_REQUEST_UNLESS_OPEN = (
    insert(db.requests)
    .from_select(
        list(_NEW_REQUEST_COLUMNS),
        select(*_NEW_VALUES.values()).where(~exists().where(*_OPEN_SAME_REF)),
    )
    .returning(db.requests.c.id)
)
_OPEN_WITH_REF = select(_OTHER).where(*_OPEN_SAME_REF).order_by(_OTHER.c.created_at).limit(1)


class HeadTaken(NamedTuple):
    """take_head's answer: the request holding the head SHA when it is another; else None and
    the taker as committed (None only if its row is gone)."""

    holder: Request | None
    current: Request | None


class NewRequests(Requests):
    """Creating requests (rate limit, idempotency) and taking an evaluation's head SHA."""

    # -- requests -----------------------------------------------------------------------
    def create_request(
        self,
        new: NewRequest,
        *,
        audit_action: str | None = None,
        audit_detail: str = "",
        per_minute: int | None = None,
        one_open_per_ref: bool = False,
    ) -> tuple[Request, bool]:
        """Insert; on a repeat of the same idempotency key return the existing row and False.

        With one_open_per_ref, also return an open request of the same kind, repository,
        environment and run_ref (and False) instead of inserting (_INSERT_REQUEST_UNLESS_OPEN).

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
            "answer_due": 0,  # every column's value given: the write skips SQLAlchemy's defaults
        }
        if one_open_per_ref and per_minute is not None:
            raise ValueError("one_open_per_ref does not combine with per_minute")
        try:
            with self._write() as conn:
                if one_open_per_ref:
                    ref = f"{new.kind}:{new.repo}:{new.environment}:{new.run_ref}"
                    _advisory_lock(conn, _LOCK_REF, ref)
                    if conn.execute(_INSERT_REQUEST_UNLESS_OPEN, values).first() is None:
                        row = conn.execute(_OPEN_WITH_REF, values).first()
                        if row is None:  # cannot happen under the lock; never insert blind
                            raise RuntimeError(f"no open request with {ref} and none inserted")
                        return _request_from(row), False
                elif per_minute is None:
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

    def count_recent(self, user_id: str, since: float) -> int:
        (row,) = self._rows(_COUNT_RECENT, {"user_id": user_id, "since": since})
        return int(next(iter(row.values())))

    def take_head(
        self, req: Request, head_sha: str, facts: Mapping[str, Any] | None = None
    ) -> HeadTaken:
        """Make `req` THE evaluation in flight of its repo + PR + head SHA: store the SHA on it
        unless another open evaluation has it. Returns the request that holds it when that is
        another (the caller settles req as a duplicate of it); else req as committed, with
        `facts` merged into its details in the same transaction (one commit, not two).

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
        merge = None
        if facts:
            patch = json.dumps(dict(facts))
            statement = self._merge_statement(tuple(facts), returning=True)
            if statement is not None and "\\u0000" not in patch:
                merge = (statement, self._merge_params(req.id, facts, patch))
        for _ in range(5):
            with self._write() as conn:
                _advisory_lock(conn, _LOCK_PR, f"{req.repo}#{req.pr_number}")
                taken = bool(conn.execute(_TAKE_HEAD, params).rowcount)
                if taken:
                    mine = (
                        conn.execute(*merge)
                        if merge is not None
                        else conn.execute(_GET_REQUEST, {"request_id": req.id})
                    ).first()
                else:
                    holder = conn.execute(_HOLDER_OF_HEAD, params).first()
            if taken:
                if facts and merge is None:  # keys or text the one-statement merge cannot take
                    return HeadTaken(None, self.update_and_merge(req.id, facts)[1])
                return HeadTaken(None, _request_from(mine) if mine else None)
            if holder is not None:
                return HeadTaken(_request_from(holder), None)
            # PostgreSQL only: the holder finished between the two statements. Try again.
        raise RuntimeError(f"head of request {req.id} keeps changing hands; gave up")
