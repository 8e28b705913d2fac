"""Retention: the tables that only grow are pruned by age, in small batches.

Each batch is one short transaction (at most `batch` rows), so pruning a large backlog never
holds SQLite's single write lock, or PostgreSQL row locks, for long: commands and webhooks are
served between batches. Every batch selects its rows through an index (tests/test_query_plans).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Select, bindparam, delete, select

from bot import db
from bot.model import FINAL_STATES
from bot.store.base import StoreBase

_R, _D, _S, _A = db.requests.c, db.deliveries.c, db.sent.c, db.audit.c

# Finished requests: a final status, created AND last changed before the cutoff (a run re-run
# last week keeps an old request). Found through ix_requests_status_created.
_OLD_REQUESTS = (
    select(_R.id)
    .where(
        _R.status.in_(list(FINAL_STATES)),
        _R.created_at < bindparam("b_cutoff"),
        _R.updated_at < bindparam("b_cutoff"),
    )
    .limit(bindparam("b_batch"))
)
# Processed deliveries (the id keeps deduplicating redeliveries until then): ix_deliveries_received.
_OLD_DELIVERIES = (
    select(_D.id)
    .where(_D.received_at < bindparam("b_cutoff"), _D.processed_at.is_not(None))
    .limit(bindparam("b_batch"))
)
_OLD_SENT = select(_S.key).where(_S.at < bindparam("b_cutoff")).limit(bindparam("b_batch"))
_OLD_AUDIT = select(_A.id).where(_A.at < bindparam("b_cutoff")).limit(bindparam("b_batch"))


class Retention(StoreBase):
    """Pruning of finished requests (with their runs and approvals), deliveries, sent keys
    and, when asked, the audit trail."""

    def prune_requests(self, older_than: float, *, batch: int = 500, max_batches: int = 100) -> int:
        """Delete finished requests older than `older_than` seconds, with their runs and
        approvals (the audit trail keeps its own rows: it names requests by id only)."""
        total = 0
        for _ in range(max_batches):
            params = {"b_cutoff": self.clock() - older_than, "b_batch": batch}
            with self.engine.begin() as conn:
                ids = list(conn.execute(_OLD_REQUESTS, params).scalars())
                if not ids:
                    break
                conn.execute(delete(db.runs).where(db.runs.c.request_id.in_(ids)))
                conn.execute(delete(db.approvals).where(db.approvals.c.request_id.in_(ids)))
                conn.execute(delete(db.requests).where(_R.id.in_(ids)))
            total += len(ids)
            if len(ids) < batch:
                break
        return total

    def prune_deliveries(
        self, older_than: float, *, batch: int = 1000, max_batches: int = 100
    ) -> int:
        """Delete processed deliveries received more than `older_than` seconds ago."""
        return self._prune(_OLD_DELIVERIES, db.deliveries.c.id, older_than, batch, max_batches)

    def prune_sent(self, older_than: float, *, batch: int = 1000, max_batches: int = 100) -> int:
        """Forget side-effect keys older than `older_than` seconds (settings keep this longer
        than deliveries are kept, so a redelivery still finds its key)."""
        return self._prune(_OLD_SENT, db.sent.c.key, older_than, batch, max_batches)

    def prune_audit(self, older_than: float, *, batch: int = 1000, max_batches: int = 100) -> int:
        """Delete audit rows older than `older_than` seconds (only when retention is set)."""
        return self._prune(_OLD_AUDIT, db.audit.c.id, older_than, batch, max_batches)

    def _prune(
        self, query: Select[Any], key: Column[Any], older_than: float, batch: int, max_batches: int
    ) -> int:
        total = 0
        for _ in range(max_batches):
            params = {"b_cutoff": self.clock() - older_than, "b_batch": batch}
            with self.engine.begin() as conn:
                ids = list(conn.execute(query, params).scalars())
                if ids:
                    conn.execute(delete(key.table).where(key.in_(ids)))
            total += len(ids)
            if len(ids) < batch:
                break
        return total
