"""The SQLite writer queue: one writer at a time, and a request's writes before background ones."""

from __future__ import annotations

import threading
import time

from bot.db import _WriterQueue, ack_path


def _wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_writes_on_the_answer_path_go_before_queued_background_writes() -> None:
    queue = _WriterQueue()
    order: list[str] = []
    holder: dict[str, object] = {}
    queue.enter(holder, "INSERT INTO x VALUES (1)")  # a job's transaction is open

    def write(name: str) -> None:
        info: dict[str, object] = {}
        queue.enter(info, "UPDATE x SET y = 1")
        order.append(name)
        queue.leave(info)

    background = [threading.Thread(target=write, args=(f"job{i}",)) for i in range(3)]
    for t in background:
        t.start()
    _wait_for(lambda: len(queue._normal._waiters) == 3, "three background writers queued")  # type: ignore[attr-defined]
    ack = threading.Thread(target=ack_path(write), args=("ack",))
    ack.start()
    _wait_for(lambda: queue._urgent_waiting == 1, "the ack's writer queued")
    queue.leave(holder)
    for t in [*background, ack]:
        t.join(5)
    assert order[0] == "ack"
    assert sorted(order[1:]) == ["job0", "job1", "job2"]


def test_reads_never_wait_and_one_writer_at_a_time() -> None:
    queue = _WriterQueue()
    first: dict[str, object] = {}
    queue.enter(first, "INSERT INTO x VALUES (1)")
    queue.enter({}, "  select 1")  # a read while a write is open: no waiting
    inside: list[int] = []
    done = threading.Event()

    def second() -> None:
        info: dict[str, object] = {}
        queue.enter(info, "DELETE FROM x")
        inside.append(1)
        queue.leave(info)
        done.set()

    threading.Thread(target=second).start()
    time.sleep(0.05)
    assert inside == []  # still waiting for the first writer
    queue.leave(first)
    assert done.wait(5) and inside == [1]
