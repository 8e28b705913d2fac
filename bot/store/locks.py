"""Environment locks (`/deploy lock`): at most one per repository + environment, audited.

Each change is one transaction that also writes its audit row, so the trail and the locks
never disagree. Of concurrent lock attempts exactly one wins: the table's primary key refuses
the others' inserts (on SQLite and PostgreSQL alike), and they are told who holds it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, or_, select
from sqlalchemy.exc import IntegrityError

from bot import db
from bot.store.base import _INSERT_AUDIT, StoreBase, log

LOCK_TAKEN = "deploy.lock"
LOCK_RELEASED = "deploy.unlock"
LOCK_EXPIRED = "deploy.lock.expired"
LOCK_REFUSED = "deploy.lock.refused"


@dataclass(frozen=True)
class EnvLock:
    """A lock on deploys to one environment of one repository (both lower-cased)."""

    repo: str
    environment: str
    lock_id: str
    user_id: str
    channel_id: str
    reason: str
    locked_at: float
    expires_at: float | None

    def active(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True)
class LockAttempt:
    """What `take_lock` did: `lock` is the lock in force (the new one when `taken`, else the
    holder's); `replaced` an expired lock the new one took the place of."""

    taken: bool
    lock: EnvLock
    replaced: EnvLock | None = None


def _lock_from(row: Any) -> EnvLock:
    """A lock from a SQLAlchemy row or a lean read's dict (StoreBase._rows)."""
    m = getattr(row, "_mapping", row)
    return EnvLock(
        repo=m["repo"],
        environment=m["environment"],
        lock_id=m["lock_id"],
        user_id=m["user_id"],
        channel_id=m["channel_id"],
        reason=m["reason"] or "",
        locked_at=m["locked_at"],
        expires_at=m["expires_at"],
    )


def _key(repo: str, environment: str) -> Any:
    t = db.env_locks.c
    return (t.repo == repo.lower(), t.environment == environment.lower())


# Read before every deploy's ack: built once (building the select per call cost more Python
# than the read itself: a third of the event loop's time per /deploy under load, py-spy).
_LOCK_OF = select(db.env_locks).where(
    db.env_locks.c.repo == bindparam("b_repo"),
    db.env_locks.c.environment == bindparam("b_env"),
)


class Locks(StoreBase):
    """Environment locks and their audit rows."""

    def _audit_in(
        self,
        conn: Connection,
        lock: EnvLock,
        *,
        actor: str,
        action: str,
        outcome: str,
        detail: str | None = None,
    ) -> None:
        # The detail holds the reason a person typed: it stays in the database, not in logs.
        if detail is None:
            detail = f"{lock.repo} {lock.environment}: {lock.reason}".strip()
        conn.execute(
            _INSERT_AUDIT,
            {
                "at": self.clock(),
                "request_id": None,
                "actor": actor,
                "action": action,
                "outcome": outcome,
                "detail": detail,
            },
        )
        log.info(
            "decision recorded",
            extra={"action": action, "outcome": outcome, "actor": actor, "lock_id": lock.lock_id},
        )

    def take_lock(
        self,
        *,
        repo: str,
        environment: str,
        user_id: str,
        channel_id: str,
        reason: str,
        expires_at: float | None,
    ) -> LockAttempt:
        """Lock the environment for user_id, unless someone holds an unexpired lock on it."""
        for _attempt in range(5):
            now = self.clock()
            lock = EnvLock(
                repo=repo.lower(),
                environment=environment.lower(),
                lock_id=secrets.token_hex(8),
                user_id=user_id,
                channel_id=channel_id,
                reason=reason,
                locked_at=now,
                expires_at=expires_at,
            )
            try:
                with self.engine.begin() as conn:
                    row = conn.execute(select(db.env_locks).where(*_key(repo, environment))).first()
                    replaced = None
                    if row is not None:
                        old = _lock_from(row)
                        if old.active(now):
                            return LockAttempt(False, old)
                        # An expired lock nobody cleaned up yet: this attempt ends it (once:
                        # a concurrent attempt deletes nothing and then loses the insert).
                        gone = conn.execute(
                            delete(db.env_locks).where(db.env_locks.c.lock_id == old.lock_id)
                        ).rowcount
                        if gone:
                            self._audit_in(
                                conn, old, actor="bridge", action=LOCK_EXPIRED, outcome="expired"
                            )
                            replaced = old
                    conn.execute(
                        insert(db.env_locks).values(
                            repo=lock.repo,
                            environment=lock.environment,
                            lock_id=lock.lock_id,
                            user_id=user_id,
                            channel_id=channel_id,
                            reason=reason,
                            locked_at=now,
                            expires_at=expires_at,
                        )
                    )
                    self._audit_in(conn, lock, actor=user_id, action=LOCK_TAKEN, outcome="locked")
                return LockAttempt(True, lock, replaced)
            except IntegrityError:
                # Another attempt inserted first: read again, and report its holder.
                continue
        raise RuntimeError("could not settle a lock attempt after 5 tries")

    def lock_of(self, repo: str, environment: str) -> EnvLock | None:
        """The unexpired lock on this repository + environment, if any."""
        # A lean read (StoreBase._rows): it is on every /deploy's ack, where SQLAlchemy's
        # execution layer cost a tenth of the ack's CPU (docs/benchmarks.md).
        rows = self._rows(_LOCK_OF, {"b_repo": repo.lower(), "b_env": environment.lower()})
        lock = _lock_from(rows[0]) if rows else None
        return lock if lock is not None and lock.active(self.clock()) else None

    def active_locks(self, repo: str | None = None) -> list[EnvLock]:
        """Unexpired locks (of one repository, or all), oldest first."""
        t = db.env_locks.c
        conds = [or_(t.expires_at.is_(None), t.expires_at > self.clock())]
        if repo is not None:
            conds.append(t.repo == repo.lower())
        with self.reader.connect() as conn:
            rows = conn.execute(select(db.env_locks).where(*conds).order_by(t.locked_at)).all()
        return [_lock_from(r) for r in rows]

    def expired_locks(self) -> list[EnvLock]:
        """Locks past their expiry that are still stored (for the housekeeping job)."""
        t = db.env_locks.c
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(db.env_locks)
                .where(t.expires_at.is_not(None), t.expires_at <= self.clock())
                .order_by(t.expires_at)
            ).all()
        return [_lock_from(r) for r in rows]

    def release_lock(self, lock: EnvLock, *, actor: str, expired: bool = False) -> bool:
        """Remove exactly this lock (by its lock_id) and audit it: unlocked by actor, or
        expired. False when it was gone already (unlocked, expired or replaced meanwhile)."""
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(db.env_locks).where(db.env_locks.c.lock_id == lock.lock_id)
            ).rowcount
            if gone:
                action, outcome = (
                    (LOCK_EXPIRED, "expired") if expired else (LOCK_RELEASED, "unlocked")
                )
                self._audit_in(conn, lock, actor=actor, action=action, outcome=outcome)
        return bool(gone)

    def audit_lock_refusal(self, *, actor: str, repo: str, environment: str, what: str) -> None:
        """A lock or unlock this person may not do: who tried what, on what (not their reason)."""
        lock = EnvLock(repo.lower(), environment.lower(), "-", actor, "", "", self.clock(), None)
        with self.engine.begin() as conn:
            self._audit_in(
                conn,
                lock,
                actor=actor,
                action=LOCK_REFUSED,
                outcome="refused",
                detail=f"{lock.repo} {lock.environment}: {what}",
            )
