"""Work off the request thread: requests and webhook deliveries, each under a DB lease."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from bot import logs
from bot.github import Retryable
from bot.messages import duration
from bot.metrics import Metrics
from bot.mlflow import MlflowUnavailable
from bot.model import ACCEPTED, APPROVED, ERROR, PENDING_APPROVAL, Request
from bot.slack import SlackFailure
from bot.store import Store

log = logging.getLogger(__name__)

RequestWorker = Callable[[Request], None]
DeliveryHandler = Callable[[str, dict[str, Any]], object]
# Called once when a request is given up: (request, what failed, attempts). handlers/lifecycle.py
# marks it `error` and tells the requester.
GiveUpHandler = Callable[[Request, str, int], None]
GIVE_UP_FROM = (ACCEPTED, PENDING_APPROVAL, APPROVED)  # the states a request step works from


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a unit of work again.

    An outage (GitHub or Slack answering 5xx or 429, a rate limit, no answer at all) is waited
    out: the next try comes after the time the unit has been waiting so far (so 2, 2, 4, 8, …
    seconds: doubling), at least `base`, at most `cap`, with jitter, and never before a
    Retry-After or rate-limit reset the peer gave; only after `horizon` seconds is it given
    up. Any other failure (a bug, a refusal that will not change) is retried `max_failures`
    times in all, `base` * 2**n apart, then given up loudly.
    """

    base: float = 2.0
    cap: float = 300.0
    horizon: float = 24 * 3600.0
    max_failures: int = 5
    jitter: float = 0.2

    def outage_wait(self, waited: float, retry_at: float | None, now: float) -> float:
        wait = min(self.cap, max(self.base, waited)) * random.uniform(1 - self.jitter, 1)
        if retry_at is not None and retry_at > now:
            # The peer said when: go then (and a little after, so replicas do not stampede).
            wait = min(max(wait, retry_at - now + random.uniform(0.2, 1.0)), self.horizon)
        return wait

    def failure_wait(self, failures: int) -> float:
        return min(self.cap, self.base * 2 ** max(failures - 1, 0)) * random.uniform(
            1 - self.jitter, 1
        )


def outage_of(exc: BaseException) -> tuple[str, float | None] | None:
    """(peer, when it said to come back) when exc means a peer is down, else None."""
    if isinstance(exc, Retryable):
        return "GitHub", exc.retry_at
    if isinstance(exc, SlackFailure) and exc.is_outage:
        return "Slack", exc.retry_at
    if isinstance(exc, MlflowUnavailable):
        return "MLflow", exc.retry_at
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError):
        return "database", None  # the database went away
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "database", None
    return None


# A handler that fails on the payload itself (a field missing or of the wrong type that intake's
# checks did not cover) would fail the same way on every try: such a delivery is given up at
# once instead of being retried (issue 10); any other failure gets the attempts cap (issue 15).
PAYLOAD_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or ""
    outage = isinstance(exc, Retryable | MlflowUnavailable)
    return f"{type(exc).__name__}: {text}"[:300] if not outage else text


class _Timers:
    """One thread that runs callbacks at their due time (the next attempt of a unit). In memory
    only: lease_until in the database is the durable record, which any sweep honours."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._count = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._count), fn))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="chatops-retry-timer", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                log.exception("a scheduled retry could not be started")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()


class RetryLater(Exception):
    """Raised by a worker to give the request back and try again after `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry in {seconds:.0f}s")
        self.seconds = seconds


class Jobs:
    """Runs request steps and webhook deliveries on a bounded pool.

    Every unit of work is claimed with a conditional UPDATE first, so the pool, the recovery
    sweep and other replicas never carry out the same unit twice at the same time.
    """

    def __init__(
        self,
        store: Store,
        *,
        workers: int = 8,
        lease_seconds: float = 120.0,
        policy: RetryPolicy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.policy = policy or RetryPolicy()
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chatops-job")
        self._timers = _Timers()
        self._workers: dict[str, RequestWorker] = {}
        self._delivery_handler: DeliveryHandler | None = None
        self._give_up: GiveUpHandler | None = None
        self._inflight = 0
        self._lock = threading.Lock()

    def register(self, kind: str, worker: RequestWorker) -> None:
        self._workers[kind] = worker

    def on_delivery(self, handler: DeliveryHandler) -> None:
        self._delivery_handler = handler

    def on_give_up(self, handler: GiveUpHandler) -> None:
        self._give_up = handler

    @property
    def depth(self) -> int:
        with self._lock:
            return self._inflight

    def _spawn(self, fn: Callable[[], None]) -> Future[None] | None:
        def wrapped() -> None:
            try:
                fn()
            finally:
                with self._lock:
                    self._inflight -= 1

        with self._lock:
            self._inflight += 1
        try:
            return self._pool.submit(wrapped)
        except RuntimeError:  # pool shut down: the sweep picks the work up at next start
            with self._lock:
                self._inflight -= 1
            return None

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run `fn` on the pool after `delay` seconds (in memory: lost with the process).
        One timer thread for all of them, not a thread per wait."""
        self._timers.call_later(delay, lambda: self._spawn(fn))

    # -- requests -----------------------------------------------------------------------
    def submit(self, request_id: str) -> Future[None] | None:
        return self._spawn(lambda: self.run_request(request_id))

    def run_request(self, request_id: str) -> None:
        with logs.context(request_id=request_id):
            self._run_request(request_id)

    def _run_request(self, request_id: str) -> None:
        req = self.store.claim(request_id, self.lease_seconds)
        if req is None:
            return
        retry_in = 0.0
        after: dict[str, Any] = {}
        try:
            worker = self._workers.get(req.kind)
            if worker is None:
                log.error(
                    "no worker for request kind", extra={"kind": req.kind, "request_id": req.id}
                )
                return
            worker(req)
            if req.failures or req.waiting_since is not None:
                after = {"failures": 0, "waiting_since": None, "waiting_on": None}
        except RetryLater as exc:
            retry_in = exc.seconds
        except Exception as exc:
            failures, since, attempts = req.failures, req.waiting_since, req.attempts
            retry_in, after = self._after_failure(
                "request", request_id, exc, failures, since, attempts
            )
            if retry_in < 0:  # given up
                retry_in = 0.0
                what = after.pop("_what")
                self._tell_give_up(req, what, attempts)
        finally:
            self.store.release(request_id, retry_in=retry_in, **after)
        if retry_in > 0:
            self._retry_later(retry_in, lambda: self.submit(request_id))

    def _after_failure(
        self,
        unit: str,
        unit_id: str,
        exc: Exception,
        failures: int,
        waiting_since: float | None,
        attempts: int,
    ) -> tuple[float, dict[str, Any]]:
        """(seconds to the next attempt, or -1 to give up; columns to store) after a failure."""
        now = self.store.clock()
        ids = {f"{unit}_id": unit_id}
        outage = outage_of(exc)
        if outage is not None:
            peer, retry_at = outage
            since = waiting_since if waiting_since is not None else now
            waited = now - since
            if waited < self.policy.horizon:
                wait = self.policy.outage_wait(waited, retry_at, now)
                log.warning(
                    f"{peer} is unavailable; {unit} waits and retries",
                    extra={
                        **ids,
                        "peer": peer,
                        "error": _describe(exc),
                        "retry_in": round(wait, 1),
                        "waiting_for": round(waited, 1),
                    },
                )
                self._count("chatops_unit_retries", unit, peer)
                return wait, {"waiting_since": since, "waiting_on": peer}
            what = f"{peer} has been unavailable for {duration(waited)} (last: {_describe(exc)})"
            log.error(f"{unit} given up: {peer} unavailable too long", extra={**ids, "error": what})
            self._count("chatops_units_given_up", unit, "outage_horizon")
            return -1.0, {"_what": what, "waiting_since": None, "waiting_on": None}
        failures += 1
        if unit == "delivery" and isinstance(exc, PAYLOAD_ERRORS):
            log.error(
                "delivery handling failed on its payload; not retried",
                exc_info=exc,
                extra={**ids, "error": type(exc).__name__},
            )
            self._count("chatops_units_given_up", unit, "payload")
            return -1.0, {"_what": _describe(exc), "failures": failures}
        if failures < self.policy.max_failures:
            wait = self.policy.failure_wait(failures)
            log.exception(
                f"{'delivery handling' if unit == 'delivery' else 'request step'} failed; "
                "it will be retried",
                extra={**ids, "failures": failures, "retry_in": round(wait, 1)},
            )
            self._count("chatops_unit_retries", unit, "failure")
            return wait, {"failures": failures, "waiting_since": None, "waiting_on": None}
        log.error(
            f"{unit} failed {failures} times; giving up",
            exc_info=exc,
            extra={**ids, "failures": failures, "attempts": attempts},
        )
        self._count("chatops_units_given_up", unit, "failure")
        return -1.0, {"_what": _describe(exc), "failures": failures}

    def _tell_give_up(self, req: Request, what: str, attempts: int) -> None:
        if self._give_up is not None:
            try:
                self._give_up(req, what, attempts)
            except Exception:
                log.exception("could not record or tell that the request was given up")
        # Whatever happened above, the request is not carried out again (no-op when the
        # handler has marked it already).
        self.store.update(
            req.id,
            only_if_status=GIVE_UP_FROM,
            status=ERROR,
            error=f"gave up after {attempts} attempts: {what}",
            finished_at=self.store.clock(),
        )
        self.store.update(req.id, answer_due=0)  # no step (a protection rule's answer) is due

    def _count(self, name: str, unit: str, why: str) -> None:
        if self.metrics is None:
            return
        if name == "chatops_units_given_up":
            self.metrics.units_given_up.labels(unit, why).inc()
        else:
            self.metrics.unit_retries.labels(unit, why).inc()

    def _retry_later(self, seconds: float, fn: Callable[[], object]) -> None:
        self._timers.call_later(seconds, fn)

    # -- webhook deliveries -------------------------------------------------------------
    def submit_delivery(self, delivery_id: str, event: str) -> Future[None] | None:
        return self._spawn(lambda: self.run_delivery(delivery_id, event))

    def run_delivery(self, delivery_id: str, event: str) -> None:
        with logs.context(delivery_id=delivery_id, github_event=event):
            self._run_delivery(delivery_id, event)

    def _run_delivery(self, delivery_id: str, event: str) -> None:
        raw = self.store.claim_delivery(delivery_id, self.lease_seconds)
        if raw is None or self._delivery_handler is None:
            return
        try:
            payload = json.loads(raw)
            self._delivery_handler(event, payload)
        except Exception as exc:
            failures, waiting_since = self.store.delivery_retry_state(delivery_id)
            retry_in, after = self._after_failure(
                "delivery", delivery_id, exc, failures, waiting_since, 0
            )
            if retry_in < 0:
                self.store.fail_delivery(delivery_id, after["_what"])
                return
            self.store.release_delivery(delivery_id, retry_in=retry_in, **after)
            self._retry_later(retry_in, lambda: self.submit_delivery(delivery_id, event))
            return
        self.store.finish_delivery(delivery_id)

    def shutdown(self, wait: bool = True) -> None:
        self._timers.stop()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
