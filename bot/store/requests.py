"""Requests: get, update, details, claim/release leases, recovery sweeps and finds."""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import (
    Select,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.sql.base import Executable

from bot import db
from bot.model import (
    PENDING_APPROVAL,
    Request,
    disallowed_transitions,
)
from bot.store.base import (
    _INSERT_AUDIT,
    AuditLine,
    StoreBase,
    _free_or_orphaned,
    _holder_dead,
    _needs_work,
    _request_from,
    _row_to_request,
    _Transaction,
    log,
)

# The statements every job and webhook delivery runs, built once (see new_requests.py).
_GET_REQUEST = select(db.requests).where(db.requests.c.id == bindparam("request_id"))
_BY_KEY = select(db.requests).where(db.requests.c.idempotency_key == bindparam("b_key"))
_BY_THREAD = (
    select(db.requests)
    .where(
        db.requests.c.channel_id == bindparam("b_channel"),
        db.requests.c.root_ts == bindparam("b_ts"),
    )
    .order_by(db.requests.c.created_at.desc())
    .limit(1)
)
_UPDATE_REQUEST = update(db.requests).where(db.requests.c.id == bindparam("b_id"))


@functools.cache
def _update_request_if(statuses: int) -> Any:
    """An update of a request that happens only from one of `statuses` statuses (bound as
    b_status_0 … : a parameter each, not an expanding IN list, so it runs prebuilt)."""
    allowed: list[Any] = [bindparam(f"b_status_{i}") for i in range(statuses)]
    return _UPDATE_REQUEST.where(db.requests.c.status.in_(allowed))


# The status a request has before a status change, for the log's "from" (see update). FOR
# UPDATE locks the row on PostgreSQL, so the status read is the one the UPDATE changes.
_STATUS_OF = (
    select(db.requests.c.status).where(db.requests.c.id == bindparam("b_id")).with_for_update()
)


@functools.cache
def _pg_change(
    columns: tuple[str, ...], statuses: int | None, merge: bool, audited: bool = False
) -> Executable:
    """PostgreSQL: a change of a request as one statement, in autocommit one round trip where
    BEGIN, the status read, the UPDATE(s) and COMMIT were four or five.

    The CTE locks the row and reads the status it has before the change (the log's "from"):
    under READ COMMITTED, FOR UPDATE waits for a concurrent writer and reads the row it
    committed, and the UPDATE re-checks that same row version, so both see one status.
    `columns` are set (updated_at among them), only from one of `statuses` statuses (bound as
    b_status_0 …; None: from any). With `merge`, details take the b_patch keys (jsonb `||`)
    whether or not the status condition holds, the columns change only when it holds, and
    the row comes back as it is after the change; b_changed says whether the condition held.
    Without it, the condition is the UPDATE's: a row comes back only when it changed.
    With `audited`, the change's audit row (bound as a_at, a_actor, a_action, a_outcome,
    a_detail) is inserted by the same statement when the change is made: a data-modifying CTE
    that PostgreSQL runs as one, so the decision and its trail commit together or not at all.
    Built once per shape; only column names checked against the table enter the text."""
    names = set(db.requests.c.keys())
    if not set(columns) <= names:
        raise ValueError(f"not columns of requests: {sorted(set(columns) - names)}")
    ok = "TRUE"
    if statuses is not None:
        ok = f"prior.status IN ({', '.join(f':b_status_{i}' for i in range(statuses))})"
    if merge:
        current = "coalesce(nullif(requests.details, ''), '{}')"
        sets = [
            f"details = (CAST({current} AS jsonb) || CAST(:b_patch AS jsonb))::text",
            "updated_at = :b_now",
            *(
                f"{c} = CASE WHEN {ok} THEN :{c} ELSE requests.{c} END"
                for c in columns
                if c != "updated_at"
            ),
        ]
        where, returned = "", [f"requests.{c.name}" for c in db.requests.columns]
    else:
        sets, where, returned = [f"{c} = :{c}" for c in columns], f" AND {ok}", []
    prior = "prior AS (SELECT id, status FROM requests WHERE id = :b_id FOR UPDATE)"
    returning = [*returned, "requests.id AS b_changed_id", "prior.status AS b_before"]
    change = (
        f"UPDATE requests SET {', '.join(sets)} FROM prior WHERE requests.id = prior.id{where} "  # noqa: S608
        f"RETURNING {', '.join([*returning, f'{ok} AS b_changed'])}"
    )
    if not audited:
        return text(f"WITH {prior} {change}")
    trail = (
        "INSERT INTO audit (at, request_id, actor, action, outcome, detail) "
        "SELECT :a_at, b_changed_id, :a_actor, :a_action, :a_outcome, :a_detail "
        "FROM changed WHERE b_changed"
    )
    steps = f"{prior}, changed AS ({change}), logged AS ({trail})"
    return text(f"WITH {steps} SELECT * FROM changed")  # noqa: S608 (names checked above)


_GET_DETAILS = select(db.requests.c.details).where(db.requests.c.id == bindparam("b_id"))
_SET_DETAILS_IF = _UPDATE_REQUEST.where(db.requests.c.details == bindparam("b_old"))
# Giving a lease back (release): the SET clause comes from the parameters' column names.
_RELEASE = _UPDATE_REQUEST.where(db.requests.c.holder == bindparam("b_holder"))
_RELEASE_UNHELD = _UPDATE_REQUEST.where(db.requests.c.holder.is_(None))
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
    # The request as claimed, in the same statement: a job claims, then works on what it read.
    .returning(*db.requests.c)
)


class _Change(NamedTuple):
    """An update to run: the statement, its parameters, the statuses it may change from."""

    statement: Any
    values: dict[str, Any]
    statuses: list[str] | None


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MERGES: dict[tuple[str, tuple[str, ...], bool], Executable] = {}


@functools.cache
def _find_statement(filters: tuple[str, ...], statuses: int, since: bool) -> Select[Any]:
    """`find`'s SELECT for one combination of filters, built once: `filters` are the equality
    filters given (`f_<column>`), `statuses` how many statuses (-1: any status), `since` whether
    a creation time bounds it. A bind parameter per status rather than an expanding IN list, so
    the statement runs as it was compiled (StoreBase._rows). The call sites use a few dozen
    combinations at most."""
    c = db.requests.c
    conds: list[Any] = [c[name.removeprefix("f_")] == bindparam(name) for name in filters]
    if statuses >= 0:
        conds.append(c.status.in_([bindparam(f"f_status_{i}") for i in range(statuses)]))
    if since:
        conds.append(c.created_at >= bindparam("f_since"))
    return (
        select(db.requests).where(*conds).order_by(c.created_at.desc()).limit(bindparam("f_limit"))
    )


class Requests(StoreBase):
    """Reading and changing requests: status, details, leases, sweeps and lookups."""

    # -- requests -----------------------------------------------------------------------
    def get(self, request_id: str) -> Request | None:
        rows = self._rows(_GET_REQUEST, {"request_id": request_id})
        return _request_from(rows[0]) if rows else None

    def request_by_key(self, key: str) -> Request | None:
        rows = self._rows(_BY_KEY, {"b_key": key})
        return _request_from(rows[0]) if rows else None

    def update(
        self,
        request_id: str,
        *,
        only_if_status: Iterable[str] | None = None,
        audit: AuditLine | None = None,
        **values: Any,
    ) -> bool:
        """Set columns; with only_if_status the change happens only from those states.

        Returns whether a row changed: the single conditional UPDATE is what makes concurrent
        clicks, retries and recovery sweeps agree on one outcome. `audit`: the audit row of
        the change, written only when it was made (see _audit_with).
        """
        change = self._update_values(request_id, only_if_status, values)
        if change is None:
            return False
        if self.engine.dialect.name == "postgresql":
            changed = self._update_alone(request_id, change, audit)
        else:
            with self._write() as conn:
                changed = self._update_in(conn, request_id, change)
                self._audit_with(conn, request_id, changed, audit)
        self._log_status(request_id, changed, change)
        if changed and audit is not None:
            self._audit_logged(request_id, audit)
        return changed

    def _audit_with(
        self, conn: _Transaction, request_id: str, changed: bool, audit: AuditLine | None
    ) -> None:
        """The audit row of a status change that was made, in the change's transaction (one
        commit, one turn of SQLite's writer queue for both). PostgreSQL's one-statement
        changes insert it in that statement instead (_pg_change's `audited`)."""
        if changed and audit is not None:
            conn.execute(_INSERT_AUDIT, self._audit_values(request_id, audit))

    def _audit_params(self, request_id: str, audit: AuditLine | None) -> dict[str, Any]:
        """_pg_change's a_* parameters for `audit` ({} for none)."""
        if audit is None:
            return {}
        return {f"a_{k}": v for k, v in self._audit_values(request_id, audit).items()}

    def _update_alone(self, request_id: str, change: _Change, audit: AuditLine | None) -> bool:
        """PostgreSQL: `update` as one statement in autocommit. The status it changes from is
        read by the same statement (_pg_change) when the log needs it and it is not known
        already (one possible status), and so is the audit row, when there is one."""
        values, statuses = change.values, change.statuses
        if audit is None and (
            not self._logged(values) or (statuses is not None and len(statuses) == 1)
        ):
            if statuses is not None and self._logged(values):
                values["_before"] = statuses[0]
            params = {k: v for k, v in values.items() if k != "_before"}
            return bool(self._write_one(change.statement, params).rowcount)
        columns = tuple(k for k in values if not k.startswith(("b_", "_")))
        shape = None if statuses is None else len(statuses)
        statement = _pg_change(columns, shape, False, audit is not None)
        params = {k: v for k, v in values.items() if k != "_before"}
        row = self._write_one(statement, {**params, **self._audit_params(request_id, audit)})
        found = row.first()
        if found is None:
            return False
        values["_before"] = found["b_before"]
        return True

    def update_and_merge(
        self,
        request_id: str,
        details: Mapping[str, Any],
        *,
        only_if_status: Iterable[str] | None = None,
        audit: AuditLine | None = None,
        **values: Any,
    ) -> tuple[bool, Request | None]:
        """`update(…)` and `merge_details(details)` in one transaction; returns whether the
        update changed the row and the request as committed (None: no such request).

        The details are merged whether or not the status condition held. One commit instead
        of two, and the caller needs no read after it (lifecycle.settle → refresh_root,
        lifecycle.ensure_root, the deploy worker's facts). With neither values nor a condition
        it is the merge alone, with the row back. `audit`: as `update`'s.
        """
        statement = self._merge_statement(tuple(details), returning=True)
        patch = json.dumps(dict(details))
        # With no values and no condition only the merge runs (it sets updated_at itself).
        updating = bool(values) or only_if_status is not None
        change = self._update_values(request_id, only_if_status, values) if updating else None
        if statement is None or "\\u0000" in patch:
            # The read-merge-write fallback of merge_details: three steps, as before.
            changed = updating and self.update(
                request_id, only_if_status=only_if_status, audit=audit, **values
            )
            self.merge_details(request_id, dict(details))
            return changed, self.get(request_id)
        merge = self._merge_params(request_id, details, patch)
        if change is None:  # the merge alone: one statement (no change to audit)
            row = self._write_one(statement, merge).first()
            return False, (_request_from(row) if row else None)
        if self.engine.dialect.name == "postgresql" and "details" not in change.values:
            changed, current = self._update_and_merge_alone(request_id, change, merge, audit)
        else:
            with self._write() as conn:
                changed = self._update_in(conn, request_id, change)
                row = conn.execute(statement, merge).first()
                self._audit_with(conn, request_id, changed, audit)
            self._log_status(request_id, changed, change)
            current = _request_from(row) if row else None
        if changed and audit is not None:
            self._audit_logged(request_id, audit)
        return changed, current

    def _update_and_merge_alone(
        self, request_id: str, change: _Change, merge: dict[str, Any], audit: AuditLine | None
    ) -> tuple[bool, Request | None]:
        """PostgreSQL: `update_and_merge` as one statement in autocommit (_pg_change), with
        the audit row when there is one."""
        values, statuses = change.values, change.statuses
        columns = tuple(k for k in values if not k.startswith(("b_", "_")))
        shape = None if statuses is None else len(statuses)
        statement = _pg_change(columns, shape, True, audit is not None)
        params = {**values, **merge, **self._audit_params(request_id, audit)}
        row = self._write_one(statement, params).first()
        if row is None:
            return False, None
        changed = bool(row["b_changed"])
        values["_before"] = row["b_before"]
        self._log_status(request_id, changed, change)
        return changed, _request_from(row)

    def _update_values(
        self, request_id: str, only_if_status: Iterable[str] | None, values: dict[str, Any]
    ) -> _Change | None:
        """The statement and parameters of an update; None when no status may change."""
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
                return None
            statement = _update_request_if(len(statuses))
            for i, status in enumerate(statuses):
                values[f"b_status_{i}"] = status
        return _Change(statement, values, statuses)

    @staticmethod
    def _logged(values: dict[str, Any]) -> bool:
        return "status" in values and log.isEnabledFor(logging.INFO)

    def _update_in(self, conn: _Transaction, request_id: str, change: _Change) -> bool:
        values, statuses = change.values, change.statuses
        if self._logged(values):
            # "from" of the story's "status changed" line: known when only one status may
            # change, else read in the same transaction (a primary-key read, and only for
            # status changes, never on the path before a command's ack).
            if statuses is not None and len(statuses) == 1:
                values["_before"] = statuses[0]
            else:
                values["_before"] = conn.execute(_STATUS_OF, {"b_id": request_id}).scalar()
        params = {k: v for k, v in values.items() if k != "_before"}
        return bool(conn.execute(change.statement, params).rowcount)

    def _log_status(self, request_id: str, changed: bool, change: _Change) -> None:
        values = change.values
        if not (changed and self._logged(values)):
            return
        before = values.get("_before")
        if before != values["status"]:
            log.info(
                "request status changed",
                extra={"request_id": request_id, "from": before, "to": values["status"]},
            )

    def merge_details(self, request_id: str, extra: dict[str, Any]) -> None:
        """Merge keys into details (each given key replaced whole), in one UPDATE: the
        database merges, so concurrent merges never lose a key and nothing is read first."""
        statement = self._merge_statement(tuple(extra))
        patch = json.dumps(extra)
        if statement is None or "\\u0000" in patch:
            # Keys that are not plain words, or NUL characters (PostgreSQL's jsonb refuses
            # them): read, merge and compare-and-set in Python instead.
            self.change_details(request_id, lambda details: {**details, **extra})
            return
        self._write_one(statement, self._merge_params(request_id, extra, patch))

    def _merge_params(
        self, request_id: str, extra: Mapping[str, Any], patch: str
    ) -> dict[str, Any]:
        values: dict[str, Any] = {"b_id": request_id, "b_now": self.clock(), "b_patch": patch}
        for i, value in enumerate(extra.values()):
            values[f"b_v{i}"] = json.dumps(value)
        return values

    def _merge_statement(
        self, keys: tuple[str, ...], *, returning: bool = False
    ) -> Executable | None:
        """`UPDATE … SET details = <details with these keys replaced>`, built once per key set
        (with `returning`: and the request's row as it is after it).

        PostgreSQL: jsonb `||` (a shallow merge); SQLite: json_set of each key (json_patch
        would merge nested objects and drop null values, which a shallow merge does not)."""
        if not keys or not all(_WORD.fullmatch(k) for k in keys):
            return None
        cache_key = (self.engine.dialect.name, keys, returning)
        cached = _MERGES.get(cache_key)
        if cached is not None:
            return cached
        current = "coalesce(nullif(details, ''), '{}')"
        if self.engine.dialect.name == "postgresql":
            merged = f"(CAST({current} AS jsonb) || CAST(:b_patch AS jsonb))::text"
        else:
            pairs = ", ".join(f"'$.\"{k}\"', json(:b_v{i})" for i, k in enumerate(keys))
            merged = f"json_set({current}, {pairs})"
        # Only the keys (checked above to be plain words) are written into the text; every
        # value is a bound parameter.
        sql = f"UPDATE requests SET details = {merged}, updated_at = :b_now WHERE id = :b_id"  # noqa: S608
        statement: Executable = text(sql)
        if returning:
            columns = db.requests.columns
            returned = text(sql + " RETURNING " + ", ".join(c.name for c in columns))
            statement = returned.columns(*columns)  # typed: the row maps like a select's
        _MERGES[cache_key] = statement
        return statement

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
        rows = self._rows(_BY_THREAD, {"b_channel": channel_id, "b_ts": root_ts})
        return _request_from(rows[0]) if rows else None

    def claim(self, request_id: str, lease_seconds: float = 120.0) -> Request | None:
        """Take the work lease of a request and return it as claimed (its attempts counted);
        None when a live worker holds it, or it has no step left to do.

        A lease whose holder is dead (no heartbeat for holder_dead_seconds) is taken at once,
        whatever its lease_until says.
        """
        now = self.clock()
        params = {"request_id": request_id, "until": now + lease_seconds, **self._liveness(now)}
        row = self._write_one(_CLAIM, params).first()
        return _request_from(row) if row else None

    def release(self, request_id: str, *, retry_in: float = 0.0, **values: Any) -> None:
        """Give the lease back; the next attempt is due in retry_in seconds (lease_until is its
        durable record: the holder's timer runs it, or any sweep once it is due). `values`:
        failures, waiting_since, waiting_on."""
        # Prebuilt statements, not one built per call: every job ends here.
        params = {"b_id": request_id, "lease_until": self.clock() + retry_in, **values}
        statement = _RELEASE_UNHELD
        if self.process_id is not None:
            statement, params["b_holder"] = _RELEASE, self.process_id
        self._write_one(statement, params)

    def to_carry_out(self, *, older_than: float, limit: int = 100) -> list[Request]:
        """Requests with a step to do that nobody is working on: the recovery sweep's input.

        Free ones untouched for `older_than` seconds, and at once those of a dead holder.
        """
        now = self.clock()
        c = db.requests.c
        free_and_stale = and_(c.lease_until <= now, c.updated_at <= now - older_than)
        with self.reader.connect() as conn:
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
        with self.reader.connect() as conn:
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
        with self.reader.connect() as conn:
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
        values: dict[str, Any] = {
            f"f_{name}": value
            for name, value in (
                ("repo", repo),
                ("pr_number", pr_number),
                ("head_sha", head_sha),
                ("kind", kind),
                ("user_id", user_id),
                ("channel_id", channel_id),
                ("environment", environment),
            )
            if value is not None
        }
        wanted = None if statuses is None else list(statuses)
        if wanted == []:
            return []  # no status given: nothing can match
        for i, status in enumerate(wanted or ()):
            values[f"f_status_{i}"] = status
        if since is not None:
            values["f_since"] = since
        statement = _find_statement(
            tuple(k for k in values if not k.startswith(("f_status_", "f_since"))),
            -1 if wanted is None else len(wanted),
            since is not None,
        )
        return [_request_from(m) for m in self._rows(statement, {**values, "f_limit": limit})]

    def expired_approvals(self, now: float, limit: int = 100) -> list[Request]:
        c = db.requests.c
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(db.requests)
                .where(c.status == PENDING_APPROVAL, c.expires_at <= now)
                .order_by(c.expires_at)
                .limit(limit)
            ).all()
        return [_row_to_request(r) for r in rows]

    def count_by_status(self, statuses: Iterable[str] | None = None) -> dict[str, int]:
        """Requests per status; give `statuses` on a path that runs often (GET /metrics): all
        of them counts every finished request, which grows with history."""
        c = db.requests.c
        query = select(c.status, func.count()).group_by(c.status)
        if statuses is not None:
            query = query.where(c.status.in_(list(statuses)))
        with self.reader.connect() as conn:
            rows = conn.execute(query).all()
        return {r[0]: int(r[1]) for r in rows}
