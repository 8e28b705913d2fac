"""Storage: every state change of a request is one SQL statement, conditional where it races.

Store is composed from one part per table group, sharing the engine and the clock (StoreBase):
new_requests (rate-limited create, take_head), requests (update, details, leases, sweeps,
finds), deliveries, runs, approvals (with the audit trail), locks (environment locks),
state (processes, sent keys, ETags, schedule fires) and retention (pruning by age, in batches).
"""

from __future__ import annotations

from bot.store.approvals import Approvals
from bot.store.base import AuditLine, OverLimit
from bot.store.deliveries import Deliveries
from bot.store.locks import EnvLock, LockAttempt, Locks
from bot.store.new_requests import HeadTaken, NewRequests
from bot.store.retention import Retention
from bot.store.runs import Runs
from bot.store.state import SmallState


class Store(NewRequests, Deliveries, Runs, Approvals, Locks, SmallState, Retention):
    """All of the bridge's SQL, one method per state change or query."""


__all__ = ["AuditLine", "EnvLock", "HeadTaken", "LockAttempt", "OverLimit", "Store"]
