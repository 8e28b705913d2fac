"""Pending approvals past their deadline become `expired` (a periodic job, and at click time)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot import slacktext
from bot.deps import Deps
from bot.model import EXPIRED, PENDING_APPROVAL, Request
from bot.store import AuditLine
from handlers.lifecycle import refresh_root

if TYPE_CHECKING:
    from bot.scheduler import Housekeeping

EXPIRY_JOB = "deploy-expiry"
EXPIRY_EVERY_SECONDS = 15


def expire(deps: Deps, req: Request) -> bool:
    """pending_approval → expired, once; edits the card. False when something else came first."""
    # answer_due: GitHub's protection rules of the request hear `rejected` (gate.py).
    if not deps.store.update(
        req.id,
        only_if_status=(PENDING_APPROVAL,),
        status=EXPIRED,
        finished_at=deps.clock(),
        answer_due=1,
        audit=AuditLine(
            "bridge",
            "deploy.expired",
            "expired",
            f"no decision by {slacktext.hhmm(req.expires_at or deps.clock())}",
        ),
    ):
        return False
    refresh_root(deps, req)
    deps.jobs.submit(req.id)
    return True


def expire_due(deps: Deps) -> int:
    """The scheduled job: expire every pending approval past its deadline (catches up)."""
    n = 0
    for req in deps.store.expired_approvals(deps.clock()):
        if expire(deps, req):
            n += 1
    return n


def install(hk: Housekeeping, deps: Deps) -> None:
    """The expiry job (fixed id; state in the database, so a restart catches up)."""
    hk.add_interval(EXPIRY_JOB, lambda: expire_due(deps), EXPIRY_EVERY_SECONDS, now=True)
