"""The SQLite writer queue: one writer at a time in this process; reads never wait."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine, create_engine, text

from bot.db import _WriterQueue, make_engine


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


# -- PostgreSQL: a pooled connection is pinged only after being idle ----------------------------


@pytest.fixture
def pg_url(pg_database: str | None) -> str:
    if pg_database is None:
        pytest.skip("PostgreSQL only (CHATOPS_TEST_DB)")
    return pg_database


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = engine.dialect.do_ping

    def counting(dbapi_conn: object) -> bool:
        seen.append(1)
        return real(dbapi_conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return seen


def test_connections_in_steady_use_are_not_pinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url, idle_ping_seconds=0.3)
    try:
        pings = _pings(engine, monkeypatch)
        for _ in range(50):
            _backend_pid(engine)
        assert pings == []  # a round trip saved per transaction
        time.sleep(0.4)
        _backend_pid(engine)
        assert pings == [1]  # idle long enough: checked before use
    finally:
        engine.dispose()


def test_an_idle_connection_the_server_ended_is_replaced_before_use(pg_url: str) -> None:
    engine = make_engine(pg_url, idle_ping_seconds=0.0)
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        pid = _backend_pid(engine)
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        time.sleep(0.1)
        assert _backend_pid(engine) != pid  # no error: a new connection answered
    finally:
        admin.dispose()
        engine.dispose()
