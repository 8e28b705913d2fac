"""This process's identity and heartbeat in the database, so leases know their holder.

Every process registers a row in `processes` at start and renews its `heartbeat_at` every
CHATOPS_HEARTBEAT_SECONDS from a thread of its own (not the job pool or the scheduler, which
may be busy). A unit of work (request, delivery) records the process holding it; a holder whose
heartbeat is older than CHATOPS_HOLDER_DEAD_SECONDS is dead, and any replica's takeover check
carries its work out at once instead of waiting for the lease to run out.

On one host, a process that is not running any more is dead without waiting for its heartbeat
to age: a restart takes over its predecessor's work at start. Pids only compare within one PID
namespace of one boot, so the host identity includes both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading

from bot.store import Store

log = logging.getLogger(__name__)


def host_identity() -> str:
    """hostname/boot id/PID namespace: equal only where comparing pids means something."""
    name = socket.gethostname()[:100]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: a unique identity, so only heartbeats decide
        return f"{name}/{secrets.token_hex(8)}"
    return f"{name}/{boot}/{pidns}"[:255]


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True
    return True


class Liveness:
    # Ids registered by this interpreter and not stopped (tests run several bridges in one).
    _here: set[str] = set()

    def __init__(self, store: Store, *, every: float = 2.0) -> None:
        self.store = store
        self.every = every
        self.host = host_identity()
        self.pid = os.getpid()
        self.id = f"{socket.gethostname()[:30]}:{self.pid}:{secrets.token_hex(4)}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def register(self) -> None:
        """Register this process (before it stores or claims anything)."""
        self.store.register_process(self.id, self.host, self.pid)
        self.store.process_id = self.id
        Liveness._here.add(self.id)

    def start(self) -> None:
        self.reap_local()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="chatops-heartbeat", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.beat()

    def beat(self) -> None:
        try:
            if not self.store.heartbeat(self.id):
                # Pruned while this process was stalled: its leases may have been taken over
                # (the conditional claims keep that safe); register again and carry on.
                log.warning("this process's heartbeat row was gone; registering again")
                self.store.register_process(self.id, self.host, self.pid)
            self.beats += 1
        except Exception:
            log.warning("could not write the heartbeat (database unreachable?)", exc_info=True)

    def reap_local(self) -> list[str]:
        """Forget processes of this host that are not running (a predecessor killed before this
        restart): their work is taken over at once, not when their heartbeat has aged."""
        try:
            dead = [
                pid_id
                for pid_id, pid in self.store.processes_on(self.host)
                if pid_id not in Liveness._here and (pid == self.pid or not pid_running(pid))
            ]
            if dead:
                self.store.forget_processes(dead)
                log.info("previous processes on this host are gone", extra={"processes": dead})
            return dead
        except Exception:
            log.warning("could not check this host's previous processes", exc_info=True)
            return []

    def stop(self) -> None:
        """Stop beating and leave: whatever this process still holds is taken over at once."""
        self._stop.set()
        Liveness._here.discard(self.id)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with contextlib.suppress(Exception):
            self.store.forget_processes([self.id])
