"""Slash commands answered on the event loop, with their one write handed to a writer thread.

A slash command's listener (handlers/) is plain synchronous code. Run on the thread pool, each
command paid two thread hops and, under load, waited for the GIL and SQLite's writer lock among
40 pool threads and the job workers (bench/run.py: 0.6 ms of CPU for `/evaluate help`, 380
stored commands a second). Most commands need neither: they parse, check the configuration,
read a row or two, and store one request. So bot/bolt_async.py first runs a command's listener
*inline*, on the event loop, inside `running_inline()`; then:

- `write_then(work, then)` (the one durable write before the ack: `handlers.common.accept`)
  does not write on the loop. It records the step; once the listener has returned, the write
  runs on the writer thread (`WRITER`, one per process: no pool of threads queueing on SQLite's
  single writer lock) and `then` runs back on the loop with its outcome, acks and hands the new
  request to the job pool. Outside an inline run (a listener on a thread, Socket Mode, tests
  calling handlers), it is `then(work)`: the write happens in place, as before.
- anything that would block the loop on a peer or on the writer lock calls `guard(what)`: the
  Slack, GitHub and MLflow clients before any HTTP call, the database before any statement that
  is not a read. Inline, it raises `NeedsThread`, and bot/bolt_async.py runs the listener again
  from the start on the thread pool, where everything is allowed. Nothing was written by the
  inline attempt (writes are refused before they start, the one deferred write had not run),
  so the second run is the only one with effects. Examples: a usergroup-based access rule whose
  membership is not cached yet, `/deploy lock`, a status that reads GitHub.

`NeedsThread` is a BaseException so that a handler's `except Exception` (which turns failures
into explained answers) cannot swallow it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

log = logging.getLogger("bot.inline")

T = TypeVar("T")
R = TypeVar("R")

Outcome = Callable[[], Any]  # returns the write's result, or raises its exception


class NeedsThread(BaseException):
    """An inline listener reached a step that must not run on the event loop."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass
class Deferred:
    """What an inline run leaves to do after the listener returned: (write, then) pairs."""

    steps: list[tuple[Callable[[], Any], Callable[[Outcome], Any]]] = field(default_factory=list)


_INLINE: contextvars.ContextVar[Deferred | None] = contextvars.ContextVar(
    "chatops_inline", default=None
)


class Writer:
    """One thread per process that runs the deferred writes, in runs: it takes every write
    waiting (up to `max_run`) and carries them out under `run_scope(n)`, n the run's number of
    writes (bot/db.py `writer_run`: on SQLite the writer lock, taken once for the run and ahead
    of the job workers).

    Within a run the writes go in groups, each under `group_scope(n)` (bot/store
    `Store.write_group`: on SQLite one transaction for the group, each write in a savepoint;
    n the writes not yet done). A group closes once it has taken `group_seconds`, so the
    commit is shared by the writes of a few milliseconds and no write waits for more than
    that plus its commit. Outcomes are handed back when their group has ended, so an ack
    never precedes its commit; one failing write fails alone, and if a group's scope fails
    (its commit refused) every write of that group fails with it."""

    def __init__(
        self,
        run_scope: Callable[[int], AbstractContextManager[None]] = lambda n: nullcontext(),
        group_scope: Callable[[int], AbstractContextManager[None]] = lambda n: nullcontext(),
        max_run: int = 256,
        group_seconds: float = 0.005,
    ) -> None:
        self.max_run = max_run
        self.run_scope = run_scope
        self.group_scope = group_scope
        self.group_seconds = group_seconds
        self._waiting: queue.SimpleQueue[tuple[Callable[[], Any], Future[Outcome]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, work: Callable[[], Any]) -> Future[Outcome]:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._serve, name="chatops-ack-writer", daemon=True
                    )
                    self._thread.start()
        done: Future[Outcome] = Future()
        self._waiting.put((work, done))
        return done

    async def write(self, work: Callable[[], T]) -> T:
        """`work()` run on the writer thread, awaited on the loop: its result, or its exception
        raised here (GitHub and MLflow webhook intake: verify and parse on the loop, the one
        insert here, 202 after its commit)."""
        outcome = await asyncio.wrap_future(self.submit(work))
        return cast(T, outcome())

    def _serve(self) -> None:
        while True:
            run = [self._waiting.get()]
            while len(run) < self.max_run:
                try:
                    run.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            try:
                with self.run_scope(len(run)):
                    while run:
                        run = run[self._group(run) :]
            except Exception as exc:  # the run's lock was not given: what did not run fails
                log.error("write run not carried out", exc_info=True, extra={"writes": len(run)})
                for _, done in run:
                    done.set_result(functools.partial(_reraise, exc))

    def _group(self, pending: list[tuple[Callable[[], Any], Future[Outcome]]]) -> int:
        """Carry out the first writes of `pending` as one group; how many it took."""
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + self.group_seconds
        try:
            with self.group_scope(len(pending)):
                for work, _ in pending:
                    outcomes.append(_capture(work))
                    if time.monotonic() >= deadline:
                        break
        except Exception as exc:
            # The group's end did not commit: nothing that ran in it was kept.
            log.error(
                "write group not committed; each of its writes is answered as failed",
                exc_info=True,
                extra={"writes": len(outcomes)},
            )
            outcomes = [functools.partial(_reraise, exc)] * max(1, len(outcomes))
        for (_, done), outcome in zip(pending, outcomes, strict=False):
            done.set_result(outcome)
        return len(outcomes)


def active() -> bool:
    return _INLINE.get() is not None


def guard(what: str) -> None:
    """Refuse a blocking step (`what`: "Slack", "GitHub", "MLflow", "database write") inline."""
    if _INLINE.get() is not None:
        raise NeedsThread(what)


@contextmanager
def running_inline() -> Iterator[Deferred]:
    """The scope of one inline attempt; yields where its deferred steps are collected."""
    deferred = Deferred()
    token = _INLINE.set(deferred)
    try:
        yield deferred
    finally:
        _INLINE.reset(token)


def write_then(work: Callable[[], T], then: Callable[[Callable[[], T]], R]) -> R | None:
    """`then(outcome)` where `outcome()` returns `work()`'s result or raises its exception.

    On a thread: now, with the write done in place. Inline: deferred until the listener has
    returned (see `finish`), and None is returned now.
    """
    deferred = _INLINE.get()
    if deferred is None:
        return then(work)
    deferred.steps.append((work, then))
    return None


def _capture(work: Callable[[], Any]) -> Outcome:
    try:
        value = work()
    except Exception as exc:  # handed to `then`, which decides what it means
        return functools.partial(_reraise, exc)
    return lambda: value


def _reraise(exc: Exception) -> Any:
    raise exc


async def finish(deferred: Deferred, writer: Writer) -> None:
    """Run an inline listener's deferred writes on the writer thread, each `then` on the loop."""
    for work, then in deferred.steps:
        then(await asyncio.wrap_future(writer.submit(work)))
