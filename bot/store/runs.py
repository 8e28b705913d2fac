"""Workflow runs: upsert (forward only), owner and runs of a request."""

from __future__ import annotations

import logging

from sqlalchemy import (
    RowMapping,
    and_,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from bot import db
from bot.model import (
    RunRecord,
)
from bot.store.base import (
    StoreBase,
    log,
)

_TRIGGER_OF = select(db.requests.c.trigger).where(db.requests.c.id == bindparam("b_id"))
# Built once: on the path of every relayed run event (settle), building it cost a third of it.
_RUNS_OF = (
    select(db.runs).where(db.runs.c.request_id == bindparam("b_id")).order_by(db.runs.c.run_id)
)
_GET_RUN = select(db.runs).where(db.runs.c.run_id == bindparam("b_id"))
_OWNER_OF_RUN = select(db.runs.c.request_id).where(db.runs.c.run_id == bindparam("b_id"))
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
        return _run_record(row._mapping), bool(stored.rowcount)

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
            row = conn.execute(_OWNER_OF_RUN, {"b_id": run_id}).first()
        return row[0] if row else None

    def runs_of(self, request_id: str) -> list[RunRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(_RUNS_OF, {"b_id": request_id}).all()
        return [_run_record(row._mapping) for row in rows]


def _run_record(m: RowMapping) -> RunRecord:
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
