"""apscheduler housekeeping: recovery sweep, pruning, and (when leader) every periodic job.

All job state lives in the database, so the scheduler itself keeps jobs in memory with fixed
ids: a restart re-adds the same jobs and they catch up from the rows they read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Connection, Engine, text

from bot.cron import cron_trigger

if TYPE_CHECKING:
    from bot.jobs import Jobs
    from bot.liveness import Liveness
    from bot.settings import Secret, Settings
    from bot.store import Store

log = logging.getLogger(__name__)

LEADER_LOCK = 0x43484F50  # "CHOP": PostgreSQL advisory lock held by the scheduler leader


class Leadership:
    """Exactly one scheduler across replicas: a session-level PostgreSQL advisory lock.

    The lock lives as long as the holder's connection; if the process dies, PostgreSQL ends
    the session and another replica takes the lock on its next try. SQLite: one process only.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    @property
    def needs_lock(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def check(self) -> bool:
        if not self.needs_lock:
            return True
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT 1"))
                    return True
                except Exception:
                    log.warning("lost the scheduler lock's connection; will try to take it again")
                    self._drop()
            try:
                conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                got = bool(
                    conn.execute(
                        text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK}
                    ).scalar()
                )
            except Exception:
                log.exception("cannot reach the database to take the scheduler lock")
                return False
            if got:
                self._conn = conn
                log.info("this process now runs the scheduled jobs (leader)")
                return True
            conn.close()
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the connection is already broken
                self._conn.invalidate()
            self._conn = None

    def release(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_LOCK})
                    self._conn.close()
                except Exception:  # noqa: S110 - closing is best effort at shutdown
                    pass
                self._conn = None


def github_mode(configured: str, webhook_secret: Secret | None) -> str:
    """`poll` or `webhook`: `github.mode`, where `auto` polls when no webhook secret is set."""
    if configured == "poll" or (configured == "auto" and webhook_secret is None):
        return "poll"
    return "webhook"


@dataclass(frozen=True)
class HousekeepingTiming:
    """How often the jobs run (CHATOPS_*_SECONDS); tests shorten it, production keeps defaults."""

    sweep_seconds: float
    leader_check_seconds: float
    stale_after_seconds: float  # work untouched this long was interrupted
    takeover_seconds: float  # the takeover check (every replica): work whose holder died
    # Retention in days (CHATOPS_KEEP_*_DAYS; 0 = forever), pruned by prune() in batches.
    keep_requests_days: int = 90
    keep_deliveries_days: int = 7
    keep_sent_days: int = 30
    keep_audit_days: int = 0
    prune_seconds: float = 600.0  # how often the leader prunes

    @classmethod
    def from_settings(cls, s: Settings) -> HousekeepingTiming:
        return cls(
            sweep_seconds=s.sweep_seconds,
            leader_check_seconds=s.leader_check_seconds,
            stale_after_seconds=s.stale_after_seconds,
            takeover_seconds=s.heartbeat_seconds,
            keep_requests_days=s.keep_requests_days,
            keep_deliveries_days=s.keep_deliveries_days,
            keep_sent_days=s.keep_sent_days,
            keep_audit_days=s.keep_audit_days,
        )


class Housekeeping:
    def __init__(
        self,
        *,
        engine: Engine,
        store: Store,
        jobs: Jobs,
        liveness: Liveness,
        timing: HousekeepingTiming,
        github_mode: str,
        enabled: bool = True,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.liveness = liveness
        self.enabled = enabled
        self.leadership = Leadership(engine)
        self.is_leader = False
        self.leader_runs = 0  # leader-only job runs done by this process (GET /healthz)
        self.SWEEP_SECONDS = timing.sweep_seconds
        self.LEADER_CHECK_SECONDS = timing.leader_check_seconds
        self.STALE_AFTER = timing.stale_after_seconds
        self.TAKEOVER_SECONDS = timing.takeover_seconds
        self.timing = timing
        self.takeovers = 0  # units this process took over from a dead holder (GET /healthz)
        self.github_mode = github_mode
        self.scheduler = BackgroundScheduler(
            timezone=dt.UTC,
            # The job store is APScheduler's in-memory default on purpose: every job is added
            # at start with a fixed id (replace_existing=True) and reads its state from the
            # database, so a restart or a new leader loses nothing and no two schedulers ever
            # share a persistent job store (which APScheduler 3 does not support).
            job_defaults={
                # A job that could not run on time (busy pool, paused process) still runs once
                # when it can, instead of APScheduler's default of silently skipping after 1 s.
                "misfire_grace_time": 300,
                # Runs missed in a row (a long pause) collapse into one: every job works off
                # the database's current state, so running it twice in a row gains nothing.
                "coalesce": True,
                # A slow run (GitHub slow to answer a poll) is never overlapped by the next one,
                # which would only repeat the same calls and race on the same rows.
                "max_instances": 1,
            },
        )
        self._extra: list[Callable[[Housekeeping], None]] = []
        self._on_leadership: list[Callable[[], Any]] = []

    def add_jobs(self, installer: Callable[[Housekeeping], None]) -> None:
        """Feature modules add their periodic jobs through this (before start)."""
        self._extra.append(installer)

    def on_leadership(self, fn: Callable[[], Any]) -> None:
        """Run fn each time this process becomes the leader (after the recovery sweep)."""
        self._on_leadership.append(fn)

    def leader_job(self, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            if not self.is_leader:
                return
            self.leader_runs += 1
            try:
                fn()
            except Exception:
                log.exception("scheduled job failed", extra={"job": getattr(fn, "__name__", "?")})

        return run

    def add_interval(
        self, job_id: str, fn: Callable[[], Any], seconds: float, *, now: bool = False
    ) -> None:
        """A leader-only job every `seconds` (`now`: the first run at once)."""
        self._every(job_id, self.leader_job(fn), seconds, now=now)

    def _every(self, job_id: str, fn: Callable[[], Any], seconds: float, *, now: bool) -> None:
        """An interval job on this replica (leader or not: wrap fn in leader_job for that)."""
        self.scheduler.add_job(
            fn,
            "interval",
            seconds=seconds,
            id=job_id,
            replace_existing=True,
            next_run_time=dt.datetime.now(dt.UTC) if now else None,
        )

    def add_cron(
        self,
        job_id: str,
        fn: Callable[[], Any],
        crontab: str,
        *,
        timezone: str = "UTC",
        misfire_grace_time: int | None = None,
    ) -> None:
        """A leader-only job at the times of a 5-field cron expression in a timezone."""
        grace = {} if misfire_grace_time is None else {"misfire_grace_time": misfire_grace_time}
        self.scheduler.add_job(
            self.leader_job(fn),
            cron_trigger(crontab, timezone),
            id=job_id,
            replace_existing=True,
            **grace,
        )

    def start(self) -> None:
        if not self.enabled:
            return
        self._every("leadership", self.check_leadership, self.LEADER_CHECK_SECONDS, now=True)
        # On every replica, at start and every few seconds: work of a dead process is carried
        # out at once, not when its lease runs out (bot/liveness.py).
        self._every("takeover", self.takeover, self.TAKEOVER_SECONDS, now=True)
        self.add_interval("recovery-sweep", self.sweep, self.SWEEP_SECONDS, now=True)
        self.add_interval("prune-deliveries", self.prune, self.timing.prune_seconds)
        for installer in self._extra:
            installer(self)
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.leadership.release()
        self.is_leader = False

    def check_leadership(self) -> None:
        was = self.is_leader
        self.is_leader = self.leadership.check()
        if self.is_leader and not was:
            # Catch up at once on what the previous leader (or this process before a crash) left.
            self.sweep()
            for fn in self._on_leadership:
                try:
                    fn()
                except Exception:
                    log.exception("catch-up after taking the leadership failed")

    def state(self) -> str:
        if not self.enabled:
            return "disabled"
        if not self.scheduler.running:
            return "stopped"
        return "leader" if self.is_leader else "standby"

    # -- jobs -----------------------------------------------------------------------------
    def sweep(self) -> None:
        """Finish work accepted but never carried out (crash, restart, lost thread)."""
        store, jobs = self.store, self.jobs
        for req in store.to_carry_out(older_than=self.STALE_AFTER):
            log.info("recovering request", extra={"request_id": req.id, "status": req.status})
            jobs.submit(req.id)
        for delivery_id, event in store.pending_deliveries(older_than=self.STALE_AFTER):
            log.info("recovering webhook delivery", extra={"delivery_id": delivery_id})
            jobs.submit_delivery(delivery_id, event)

    def takeover(self) -> None:
        """Carry out the requests and deliveries whose holder's heartbeat stopped."""
        try:
            self.liveness.reap_local()
            request_ids, deliveries = self.store.orphaned()
        except Exception:
            log.warning("takeover check failed (database unreachable?)", exc_info=True)
            return
        for request_id in request_ids:
            log.info("taking over a request from a dead process", extra={"request_id": request_id})
            self.takeovers += 1
            self.jobs.submit(request_id)
        for delivery_id, event in deliveries:
            log.info(
                "taking over a webhook delivery from a dead process",
                extra={"delivery_id": delivery_id},
            )
            self.takeovers += 1
            self.jobs.submit_delivery(delivery_id, event)

    def prune(self) -> None:
        """Retention (docs/operations.md): each table pruned by age in short batches, so a
        large backlog never holds the database's write lock for long."""
        day = 24 * 3600
        t = self.timing
        steps: list[tuple[str, Callable[[float], int], float]] = [
            ("processes silent for a day", self.store.prune_processes, day),
            ("old deliveries", self.store.prune_deliveries, t.keep_deliveries_days * day),
            ("old poll state", self.store.prune_poll_state, 7 * day),
            ("old side-effect keys", self.store.prune_sent, t.keep_sent_days * day),
        ]
        if t.keep_requests_days:
            steps.append(
                ("finished requests", self.store.prune_requests, t.keep_requests_days * day)
            )
        if t.keep_audit_days:
            steps.append(("old audit rows", self.store.prune_audit, t.keep_audit_days * day))
        for what, prune, older_than in steps:
            n = prune(older_than)
            if n:
                log.info(f"pruned {what}", extra={"count": n})
