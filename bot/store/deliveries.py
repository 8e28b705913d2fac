"""Webhook deliveries: dedupe by delivery id, leases, retries (pruning: retention.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from bot import db
from bot.store.base import (
    StoreBase,
    _free_or_orphaned,
)

_INSERT_DELIVERY = insert(db.deliveries)
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


class Deliveries(StoreBase):
    """Webhook deliveries: recorded before the 202, claimed, finished, retried, pruned."""

    # -- webhook deliveries -------------------------------------------------------------
    def record_delivery(
        self, delivery_id: str, event: str, action: str | None, payload: str
    ) -> bool:
        """Store a delivery once; False for a redelivery of an id already seen."""
        try:
            self._write_one(
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
        # One statement (RETURNING: SQLite 3.35+, PostgreSQL): claim and read together.
        row = self._write_one(_CLAIM_DELIVERY, params).first()
        return row["payload"] if row else None

    def finish_delivery(self, delivery_id: str) -> None:
        self._write_one(
            _UPDATE_DELIVERY, {"b_id": delivery_id, "processed_at": self.clock(), "payload": None}
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
        with self.reader.connect() as conn:
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
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(d.id, d.event).where(*conds).order_by(d.received_at).limit(limit)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def last_delivery_at(self) -> float | None:
        with self.reader.connect() as conn:
            v = conn.execute(select(func.max(db.deliveries.c.received_at))).scalar()
        return float(v) if v is not None else None
