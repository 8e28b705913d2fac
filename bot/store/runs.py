"""Workflow runs: upsert (forward only), owner and runs of a request."""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    or_,
    select,
    update,
)
from sqlalchemy.sql.dml import Insert

from bot import db
from bot.model import (
    Request,
    RunRecord,
)
from bot.store.base import (
    StoreBase,
    _request_from,
    log,
)

_TRIGGER_OF = select(db.requests.c.trigger).where(db.requests.c.id == bindparam("b_id"))
# Built once: on the path of every relayed run event (settle), building it cost a third of it.
_RUNS_OF = (
    select(db.runs).where(db.runs.c.request_id == bindparam("b_id")).order_by(db.runs.c.run_id)
)
_OWNER_OF_RUN = select(db.runs.c.request_id).where(db.runs.c.run_id == bindparam("b_id"))
# The link and the request it names in one read (a LEFT JOIN: a link whose request is gone
# still counts as linked).
_LINKED_REQUEST = (
    select(db.runs.c.request_id.label("linked_to"), *db.requests.c)
    .select_from(db.runs.outerjoin(db.requests, db.requests.c.id == db.runs.c.request_id))
    .where(db.runs.c.run_id == bindparam("b_id"))
)


@functools.cache
def _insert_run(dialect: str) -> Insert:
    """A new run's row, unless one is there already (a concurrent first delivery of the run):
    ON CONFLICT DO NOTHING leaves the transaction usable on PostgreSQL, no savepoint needed.
    RETURNING says whether the row went in (SQLAlchemy does not keep an INSERT's rowcount).
    Built on first use, so only the engine's own dialect module is imported."""
    module = importlib.import_module(f"sqlalchemy.dialects.{dialect}")
    statement: Insert = (
        module.insert(db.runs)
        .on_conflict_do_nothing(index_elements=["run_id"])
        .returning(db.runs.c.run_id)
    )
    return statement


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


class Runs(StoreBase):
    """Workflow runs linked to requests; a run's record only moves forward."""

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
        trigger: str | None = None,
    ) -> tuple[bool, bool]:
        """Store a view of a run unless the stored one is newer (see _UPDATE_RUN_IF_NEWER).

        Returns (created, stored): whether this call inserted the run, and whether this view
        was stored. The conditional UPDATE keeps concurrent deliveries of one run from
        stepping back; a run seen before (every event after its first) costs that one
        statement. `trigger`: the request's, for the log line (read when not given).
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
        newer = {"b_id": run_id, "b_attempt": attempt, "b_completed": status == "completed"}
        created = False
        # Each statement below is right on its own (the conditional UPDATE, the INSERT that a
        # concurrent first delivery may beat): nothing needs them to commit together.
        with self._each() as conn:
            stored = conn.execute(_UPDATE_RUN_IF_NEWER, {**newer, **values}).rowcount > 0
            if not stored:
                insert_run = _insert_run(self.engine.dialect.name)
                inserted = conn.execute(insert_run, {"run_id": run_id, **values}).first()
                created = inserted is not None
                if not created:
                    # Inserted meanwhile by a concurrent delivery of the run: apply the rule.
                    stored = conn.execute(_UPDATE_RUN_IF_NEWER, {**newer, **values}).rowcount > 0
            if created and trigger is None and log.isEnabledFor(logging.INFO):
                trigger = conn.execute(_TRIGGER_OF, {"b_id": request_id}).scalar()
        if created:
            # How handlers.workflow_run.request_for_run matched an unlinked run follows from
            # the request's trigger: a run-name (title) is evidence only for dispatched
            # requests, PR + head SHA only for labelled ones.
            how = "title" if trigger == "dispatch" else "head_sha"
            self._log_run(run_id, request_id, how, status, conclusion, attempt, True)
            return True, True
        # Linked before: later events of a run find their request by the link (runs table).
        self._log_run(run_id, request_id, "link", status, conclusion, attempt, stored)
        return False, stored

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
        rows = self._rows(_OWNER_OF_RUN, {"b_id": run_id})
        return rows[0]["request_id"] if rows else None

    def linked_request(self, run_id: str) -> tuple[bool, Request | None]:
        """(linked, request): whether the run was linked before, and its request if it still
        exists."""
        rows = self._rows(_LINKED_REQUEST, {"b_id": run_id})
        if not rows:
            return False, None
        m = rows[0]
        return True, (_request_from(m) if m["id"] is not None else None)

    def runs_of(self, request_id: str) -> list[RunRecord]:
        return [_run_record(m) for m in self._rows(_RUNS_OF, {"b_id": request_id})]


def _run_record(m: Mapping[str, Any]) -> RunRecord:
    """A row of the runs table as the domain sees it."""
    return RunRecord(
        run_id=m["run_id"],
        request_id=m["request_id"],
        status=m["status"],
        conclusion=m["conclusion"],
        attempt=m["attempt"],
        name=m["name"],
        html_url=m["html_url"],
        started_at=m["started_at"],
        head_sha=m["head_sha"],
    )
