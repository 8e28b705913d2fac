"""Approvals and the audit trail."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    bindparam,
    delete,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from bot import db
from bot.store.base import (
    _INSERT_AUDIT,
    AuditLine,
    StoreBase,
)

# Who approved a request, in order: built once (each card and click reads it).
_APPROVERS = (
    select(db.approvals.c.user_id)
    .where(db.approvals.c.request_id == bindparam("b_id"))
    .order_by(db.approvals.c.at)
)


class Approvals(StoreBase):
    """Approvals of deploy requests and the audit trail."""

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
        return [r["user_id"] for r in self._rows(_APPROVERS, {"b_id": request_id})]

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
        line = AuditLine(actor, action, outcome, detail)
        self._write_one(_INSERT_AUDIT, self._audit_values(request_id, line))
        self._audit_logged(request_id, line)

    def audit_rows(
        self, *, since: float = 0.0, request_id: str | None = None
    ) -> list[dict[str, Any]]:
        a = db.audit.c
        conds = [a.at >= since]
        if request_id:
            conds.append(a.request_id == request_id)
        with self.reader.connect() as conn:
            rows = conn.execute(select(db.audit).where(*conds).order_by(a.id)).all()
        return [dict(r._mapping) for r in rows]
