"""The SQLite writer queue: one writer at a time in this process; reads never wait."""

from __future__ import annotations

import threading
import time

from bot.db import _WriterQueue


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
