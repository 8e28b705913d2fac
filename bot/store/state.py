"""Small state: processes and heartbeats, sent keys (first_time), ETags, schedule fires."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import (
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from bot import db
from bot.store.base import (
    StoreBase,
)

_INSERT_SENT = insert(db.sent)


class SmallState(StoreBase):
    """Processes (heartbeats), side-effect keys, ETags and schedule fires."""

    # -- processes (heartbeats) -----------------------------------------------------------
    def register_process(self, process_id: str, host: str, pid: int) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                insert(db.processes).values(
                    id=process_id, host=host, pid=pid, started_at=now, heartbeat_at=now
                )
            )

    def heartbeat(self, process_id: str) -> bool:
        """Renew this process's heartbeat; False when its row is gone (then it is re-added)."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(db.processes)
                .where(db.processes.c.id == process_id)
                .values(heartbeat_at=self.clock())
            ).rowcount
        return bool(changed)

    def processes_on(self, host: str) -> list[tuple[str, int]]:
        """(id, pid) of the processes that registered with this host identity."""
        p = db.processes.c
        with self.reader.connect() as conn:
            rows = conn.execute(select(p.id, p.pid).where(p.host == host)).all()
        return [(r[0], int(r[1])) for r in rows]

    def forget_processes(self, ids: Iterable[str]) -> int:
        """Remove process rows: their leases count as orphaned from now on."""
        ids = list(ids)
        if not ids:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(delete(db.processes).where(db.processes.c.id.in_(ids)))
        return int(result.rowcount)

    def prune_processes(self, older_than: float) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(db.processes).where(db.processes.c.heartbeat_at < self.clock() - older_than)
            )
        return int(result.rowcount)

    # -- side-effect keys ---------------------------------------------------------------
    def first_time(self, key: str) -> bool:
        """Claim an idempotency key for a side effect; True only for the first claimer."""
        try:
            self._write_one(_INSERT_SENT, {"key": key[:255], "at": self.clock()})
        except IntegrityError:
            return False
        return True

    def forget(self, key: str) -> None:
        """Give a key back after its side effect failed, so a retry may do it."""
        with self.engine.begin() as conn:
            conn.execute(delete(db.sent).where(db.sent.c.key == key[:255]))

    # -- polling and schedules ----------------------------------------------------------
    def etag(self, key: str) -> str | None:
        with self.reader.connect() as conn:
            row = conn.execute(
                select(db.poll_state.c.etag).where(db.poll_state.c.key == key)
            ).first()
        return row[0] if row else None

    def set_etag(self, key: str, etag: str | None) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(db.poll_state)
                .where(db.poll_state.c.key == key)
                .values(etag=etag, checked_at=now)
            ).rowcount
            if not changed:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(db.poll_state).values(key=key, etag=etag, checked_at=now)
                        )
                except IntegrityError:
                    pass

    def prune_poll_state(self, older_than: float) -> int:
        """Forget ETags not used for a while (PRs and SHAs nobody polls any more)."""
        with self.engine.begin() as conn:
            cutoff = self.clock() - older_than
            result = conn.execute(delete(db.poll_state).where(db.poll_state.c.checked_at < cutoff))
        return int(result.rowcount)

    def last_fire(self, name: str) -> float | None:
        s = db.schedule_state.c
        with self.reader.connect() as conn:
            row = conn.execute(select(s.last_fire_at).where(s.name == name)).first()
        return float(row[0]) if row else None

    def set_last_fire(self, name: str, at: float, *, previous: float | None) -> bool:
        """Advance a schedule's last fire time only from `previous`: one fire per due time."""
        s = db.schedule_state.c
        with self.engine.begin() as conn:
            if previous is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(db.schedule_state).values(name=name, last_fire_at=at))
                    return True
                except IntegrityError:
                    return False
            result = conn.execute(
                update(db.schedule_state)
                .where(s.name == name, s.last_fire_at == previous)
                .values(last_fire_at=at)
            )
        return bool(result.rowcount)
