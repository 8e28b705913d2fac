"""Recovery and outage times through the real server (`python -m bot serve`) and the loopback
doubles, with production timing settings (nothing shortened). Prints one line per figure.

    .venv/bin/python bench/outages.py                       # every scenario, SQLite
    .venv/bin/python bench/outages.py restart label-502     # some of them
    CHATOPS_TEST_DB=postgres .venv/bin/python bench/outages.py replica-kill

Scenarios (see issue 15):
- restart:      SIGKILL while the /evaluate job is inside GET /pulls/42, immediate restart →
                seconds from the kill until the label is on the PR (one label).
- replica-kill: two processes on PostgreSQL; the one holding the command is SIGKILLed →
                seconds until the survivor has put the label on (one label).
- replica-kill-remote: the same, the holder's row moved to another host first, so only its
                heartbeat's age tells the survivor it died.
- label-502:    GitHub answers the label POST 502 twice → seconds from the ack to the label.
- rate-limit:   GitHub's rate limit is spent, resetting 3 s later → seconds from the ack to
                the label.
- slack-down:   Slack answers 503 for 20 s while the run finishes → seconds from Slack's
                return until the thread reply (and how many replies).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import yaml  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from bot.db import make_engine  # noqa: E402
from bot.store import Store  # noqa: E402
from tests.conftest import (  # noqa: E402
    CHANNEL,
    DEFAULT_CONFIG,
    HEAD_SHA,
    REPO,
    _pg_admin_url,
    make_env,
)
from tests.doubles.github_api import GitHubDouble  # noqa: E402
from tests.doubles.slack_api import SlackDouble  # noqa: E402
from tests.test_crash_recovery import Server, held, run_payload  # noqa: E402

TIMEOUT = 400.0


class BenchServer(Server):
    """The test suite's server, with a minute to start (a loaded machine imports slowly)."""

    def start(self) -> BenchServer:
        for _ in range(3):
            try:
                super().start()
                return self
            except AssertionError:
                if self.proc is None or self.proc.poll() is not None:
                    raise
                # still starting: give it more time
                wait(lambda: self._up(), 20)
                return self
        return self

    def _up(self) -> bool:
        try:
            return bool(self.http.get("/healthz", timeout=1).status_code == 200)
        except Exception:
            return False


def wait(predicate: Any, timeout: float = TIMEOUT) -> float:
    """Seconds (monotonic clock) at which predicate first held; raises on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(str(predicate))


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.slack = SlackDouble().start()
        self.github = GitHubDouble().start()
        self.github.add_repo(REPO, installation_id=101)
        self.github.add_pull(REPO, 42, head_sha=HEAD_SHA, title="Try a wider layer")
        self.github.rate_remaining = 10**9
        admin = _pg_admin_url()
        self._admin = admin
        if admin is None:
            self.database_url = f"sqlite:///{tmp / 'chatops.db'}"
        else:
            self.dbname = f"chatops_bench_{os.getpid()}_{int(time.time())}"
            eng = create_engine(admin, isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.dbname}"'))
            eng.dispose()
            self.database_url = admin.rsplit("/", 1)[0] + "/" + self.dbname
        cfg = tmp / "chatops.yml"
        cfg.write_text(yaml.safe_dump(DEFAULT_CONFIG))
        self.env = make_env(
            self.slack, self.github, self.database_url, cfg, CHATOPS_LOG_FORMAT="json"
        )
        self.servers: list[Server] = []
        self.engine = make_engine(self.database_url)
        self.store = Store(self.engine)

    def server(self) -> Server:
        s = BenchServer(dict(self.env), self.tmp / f"server-{len(self.servers)}.log")
        self.servers.append(s)
        return s

    def labels_posted(self) -> int:
        return len(self.github.requests_to("POST", r"/issues/42/labels$"))

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        self.engine.dispose()
        self.slack.stop()
        self.github.stop()
        if self._admin is not None:
            eng = create_engine(self._admin, isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": self.dbname},
                )
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.dbname}"'))
            eng.dispose()


def restart(w: World) -> str:
    s = w.server().start()
    w.github.fail("GET", r"/pulls/42$", 0, delay=2.0)
    assert s.slash("42").status_code == 200
    wait(lambda: held(w.github), 10)
    s.kill()
    t0 = time.monotonic()
    s.start()
    t1 = wait(lambda: w.github.labels(REPO, 42) == ["evaluate"])
    time.sleep(1)
    return f"restart: label {t1 - t0:.1f}s after the SIGKILL (labels posted: {w.labels_posted()})"


def replica_kill(w: World, *, remote: bool = False) -> str:
    name = "replica-kill" + ("-remote" if remote else "")
    if w._admin is None:
        return f"{name}: skipped (needs CHATOPS_TEST_DB=postgres)"
    a, b = w.server().start(), w.server().start()
    w.github.fail("GET", r"/pulls/42$", 0, delay=2.0)
    if remote:
        # As if the holder ran on another machine: the survivor cannot see its pid is gone,
        # only that its heartbeat stops (CHATOPS_HOLDER_DEAD_SECONDS, 10 s by default).
        assert a.proc is not None
        with w.engine.begin() as conn:
            conn.execute(
                text("UPDATE processes SET host = 'another-machine' WHERE pid = :p"),
                {"p": a.proc.pid},
            )
    assert a.slash("42").status_code == 200
    wait(lambda: held(w.github), 10)
    a.kill()
    t0 = time.monotonic()
    t1 = wait(lambda: w.github.labels(REPO, 42) == ["evaluate"])
    time.sleep(1)
    return (
        f"{name}: survivor labelled {t1 - t0:.1f}s after the SIGKILL "
        f"(labels posted: {w.labels_posted()}; survivor {b.health().get('scheduler')})"
    )


def label_502(w: World) -> str:
    s = w.server().start()
    w.github.fail("POST", r"/issues/42/labels$", 502, times=2)
    t0 = time.monotonic()
    assert s.slash("42").status_code == 200
    t1 = wait(lambda: w.github.labels(REPO, 42) == ["evaluate"])
    return f"label-502: label {t1 - t0:.1f}s after the ack (label POSTs: {w.labels_posted()})"


def rate_limit(w: World) -> str:
    s = w.server().start()
    reset = int(time.time()) + 3
    w.github.fail(
        "GET",
        r"/pulls/42$",
        403,
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
        body={"message": "API rate limit exceeded for installation ID 101."},
        times=1,
    )
    t0 = time.monotonic()
    assert s.slash("42").status_code == 200
    t1 = wait(lambda: w.github.labels(REPO, 42) == ["evaluate"])
    return (
        f"rate-limit: label {t1 - t0:.1f}s after the ack "
        f"({t1 - t0 - 3:.1f}s after the reset; label POSTs: {w.labels_posted()})"
    )


def slack_down(w: World) -> str:
    s = w.server().start()
    assert s.slash("42").status_code == 200
    wait(lambda: w.github.labels(REPO, 42) == ["evaluate"], 60)
    req = w.store.find(repo=REPO)[0]
    wait(lambda: (r := w.store.get(req.id)) is not None and r.status == "triggered", 60)
    req = w.store.get(req.id)
    assert req is not None and req.root_ts
    w.slack.go_down(20)
    back = time.monotonic() + 20
    assert s.webhook("workflow_run", run_payload(req, "completed", "success")).status_code == 202
    root = req.root_ts
    t1 = wait(lambda: len(w.slack.thread_replies(CHANNEL, root)) >= 1)
    time.sleep(2)
    n = len(w.slack.thread_replies(CHANNEL, root))
    return f"slack-down: reply {t1 - back:.1f}s after Slack came back (replies: {n})"


SCENARIOS = {
    "restart": restart,
    "replica-kill": replica_kill,
    "replica-kill-remote": lambda w: replica_kill(w, remote=True),
    "label-502": label_502,
    "rate-limit": rate_limit,
    "slack-down": slack_down,
}


def main() -> None:
    names = sys.argv[1:] or list(SCENARIOS)
    keep = os.environ.get("BENCH_KEEP")  # a directory: keep the servers' logs there
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            w = World(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=keep) if keep else tmp))
            try:
                print(SCENARIOS[name](w), flush=True)
            except TimeoutError:
                print(f"{name}: not done within {TIMEOUT:.0f}s", flush=True)
            finally:
                w.close()


if __name__ == "__main__":
    main()
