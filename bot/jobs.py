"""Work off the request thread: requests and webhook deliveries, each under a DB lease."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError

from bot import logs
from bot.github import Retryable
from bot.slack import SlackFailure
from bot.store import Request, Store

log = logging.getLogger(__name__)

RequestWorker = Callable[[Request], None]
DeliveryHandler = Callable[[str, dict[str, Any]], object]


class RetryLater(Exception):
    """Raised by a worker to give the request back and try again after `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry in {seconds:.0f}s")
        self.seconds = seconds


# Slack error codes of an outage or a limit, not of a refusal (docs.slack.dev/apis/web-api).
_SLACK_TRANSIENT = ("ratelimited", "internal_error", "fatal_error", "service_unavailable")


def is_outage(exc: BaseException) -> bool:
    """Whether a failure may pass by itself (retry later), not one the payload causes (pure).

    GitHub's Retryable (rate limits, 5xx, timeouts), the database being unreachable, and Slack
    connection failures, 5xx answers and rate limits are outages; anything else (a payload a
    handler cannot use, a refusal such as not_in_channel, a bug) would fail again the same way.
    """
    if isinstance(exc, Retryable | RetryLater | OperationalError | DisconnectionError | OSError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, SlackFailure):
        error = exc.error
        return error.startswith(("connection:", "http_5")) or error in _SLACK_TRANSIENT
    return False


class Jobs:
    """Runs request steps and webhook deliveries on a bounded pool.

    Every unit of work is claimed with a conditional UPDATE first, so the pool, the recovery
    sweep and other replicas never carry out the same unit twice at the same time.
    """

    def __init__(self, store: Store, *, workers: int = 8, lease_seconds: float = 120.0) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chatops-job")
        self._workers: dict[str, RequestWorker] = {}
        self._delivery_handler: DeliveryHandler | None = None
        self._inflight = 0
        self._lock = threading.Lock()
        self.synchronous = False  # tests may run work inline

    def register(self, kind: str, worker: RequestWorker) -> None:
        self._workers[kind] = worker

    def on_delivery(self, handler: DeliveryHandler) -> None:
        self._delivery_handler = handler

    @property
    def depth(self) -> int:
        with self._lock:
            return self._inflight

    def _spawn(self, fn: Callable[[], None]) -> Future[None] | None:
        if self.synchronous:
            fn()
            return None

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

    # -- requests -----------------------------------------------------------------------
    def submit(self, request_id: str) -> Future[None] | None:
        return self._spawn(lambda: self.run_request(request_id))

    def run_request(self, request_id: str) -> None:
        with logs.context(request_id=request_id):
            self._run_request(request_id)

    def _run_request(self, request_id: str) -> None:
        if not self.store.claim(request_id, self.lease_seconds):
            return
        retry_in = 0.0
        try:
            req = self.store.get(request_id)
            if req is None:
                return
            worker = self._workers.get(req.kind)
            if worker is None:
                log.error(
                    "no worker for request kind", extra={"kind": req.kind, "request_id": req.id}
                )
                return
            worker(req)
        except RetryLater as exc:
            retry_in = exc.seconds
        except Retryable as exc:
            retry_in = 30.0
            log.warning(
                "request step will be retried",
                extra={"request_id": request_id, "error": exc.message},
            )
        except Exception:
            retry_in = 60.0
            log.exception(
                "request step failed; it will be retried", extra={"request_id": request_id}
            )
        finally:
            self.store.release(request_id, retry_in=retry_in)

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
        except Retryable as exc:
            log.warning(
                "delivery will be retried", extra={"delivery_id": delivery_id, "error": exc.message}
            )
            self.store.release_delivery(delivery_id, retry_in=30.0)
            return
        except Exception as exc:
            if is_outage(exc):
                log.warning(
                    "delivery will be retried",
                    extra={"delivery_id": delivery_id, "error": type(exc).__name__},
                )
                self.store.release_delivery(delivery_id, retry_in=60.0)
                return
            # The same payload would fail the same way on every retry: mark it failed once
            # (kept for an operator to look at until pruned) instead of five failing tries.
            log.exception(
                "delivery handling failed; not retried", extra={"delivery_id": delivery_id}
            )
            self.store.fail_delivery(delivery_id)
            return
        self.store.finish_delivery(delivery_id)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
