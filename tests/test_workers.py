"""`chatops-bridge serve --workers N`: N processes on PostgreSQL, one scheduler leader (issue 14).

The two-worker test starts the real command against the test database and watches it from
outside: the `processes` rows (each worker's own heartbeat), and PostgreSQL's lock table for
the scheduler's advisory lock (bot/scheduler.py LEADER_LOCK), whose holder is named by the
pid in its connection's application_name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import ProgrammingError

from bot.scheduler import LEADER_LOCK
from bot.startup import EXIT_CONFIG
from tests.doubles.github_api import app_key_pair

ROOT = Path(__file__).resolve().parents[1]
GOOD = {
    "SLACK_BOT_TOKEN": "xoxb-1-2-abc",
    "SLACK_SIGNING_SECRET": "s3cr3t-signing",
    "GITHUB_APP_ID": "123",
    "GITHUB_APP_PRIVATE_KEY": app_key_pair()[0],
    "GITHUB_WEBHOOK_SECRET": "whsec-123456",
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "GITHUB_"))}
    return {
        **env,
        **GOOD,
        "CHATOPS_CONFIG": str(tmp_path / "chatops.yml"),
        # Unreachable peers: these tests look at processes, not at Slack or GitHub.
        "SLACK_API_URL": f"http://127.0.0.1:{closed_port()}/api/",
        "GITHUB_API_URL": f"http://127.0.0.1:{closed_port()}",
        **extra,
    }


def test_more_than_one_worker_on_sqlite_is_refused_with_what_to_do(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "serve", "--workers", "2"],
        env=environment(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/chatops.db"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_CONFIG
    (line,) = [ln for ln in proc.stderr.splitlines() if "cannot start" in ln]
    assert "--workers 2 (CHATOPS_WORKERS) needs PostgreSQL" in line
    assert "set DATABASE_URL to a postgresql://" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "chatops.db").exists()  # refused before touching anything


def pg_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("several workers need PostgreSQL (CHATOPS_TEST_DB)")
    return database_url


@pytest.fixture
def watch(database_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url(database_url), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def children_of(parent: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and fields[0] != "Z":
                out.add(int(entry))
    return out


def leaders(engine: Engine) -> list[int]:
    """Pids of the processes holding the scheduler's advisory lock in this database."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = "
                "current_database()) AND l.classid = 0 AND l.objid = :key AND l.objsubid = 1"
            ),
            {"key": LEADER_LOCK},
        ).scalars()
        return [int(name.rsplit(" ", 1)[1]) for name in rows]


def heartbeats(engine: Engine) -> dict[int, float]:
    with engine.connect() as conn:
        try:
            rows = conn.execute(text("SELECT pid, heartbeat_at FROM processes")).all()
        except ProgrammingError:  # not migrated yet
            return {}
    return {int(pid): float(at) for pid, at in rows}


def test_two_workers_one_leader_each_with_its_own_heartbeat(
    tmp_path: Path, database_url: str, watch: Engine
) -> None:
    """Two workers share the port; each registers and beats in `processes`; exactly one holds
    the scheduler lock (and says so once in the log); when the leader is killed the other
    takes over, the supervisor starts a new worker, and there is still exactly one leader."""
    port = closed_port()
    env = environment(
        tmp_path,
        DATABASE_URL=database_url,
        HOST="127.0.0.1",
        PORT=str(port),
        CHATOPS_HEARTBEAT_SECONDS="0.2",
        CHATOPS_HOLDER_DEAD_SECONDS="2",
        CHATOPS_LEADER_CHECK_SECONDS="0.2",
    )
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--workers", "2"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    try:
        workers = wait_for(
            "two workers", lambda: len(children_of(proc.pid)) == 2 and children_of(proc.pid)
        )
        wait_for("both workers' process rows", lambda: set(heartbeats(watch)) == workers)
        first = heartbeats(watch)
        wait_for(
            "both heartbeats to move",
            lambda: all(at > first[pid] for pid, at in heartbeats(watch).items()),
        )
        (leader,) = wait_for("one leader", lambda: leaders(watch))
        assert leader in workers
        for _ in range(10):  # it stays one
            assert leaders(watch) == [leader]
            time.sleep(0.1)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        log.seek(0)
        said = [ln for ln in log.read().splitlines() if "now runs the scheduled jobs" in ln]
        assert len(said) == 1, said

        os.kill(leader, signal.SIGKILL)
        (other,) = workers - {leader}
        wait_for("a new leader", lambda: (now := leaders(watch)) and now[0] != leader)
        assert leaders(watch) == [other]  # the standby took over, the lock was free at once
        again = wait_for(
            "the supervisor to start a worker again",
            lambda: len(children_of(proc.pid)) == 2 and children_of(proc.pid),
        )
        assert other in again and leader not in again
        wait_for("the new worker's row", lambda: set(again) <= set(heartbeats(watch)))
        assert leaders(watch) == [other]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0
    assert not children_of(proc.pid)
