"""Benchmarks of the real server on loopback; prints figures, asserts nothing.

    .venv/bin/python bench/run.py                  # everything, SQLite (about 3 minutes)
    .venv/bin/python bench/run.py --quick          # shorter runs (about 1.5 minutes)
    .venv/bin/python bench/run.py --database postgres
    .venv/bin/python bench/run.py --phases acks,intake

What runs where (each its own process, so no two share a GIL):
- the loopback Slack and GitHub doubles of the test suite (bench/doubles.py);
- `python -m bot serve` with production settings, a fresh database per phase;
- the floor, a bare Starlette + uvicorn app that only checks signatures (bench/floor.py);
- the load generators (bench/loadgen.py), two processes for 16+ connections.
See docs/benchmarks.md for what each figure means and the figures measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import loadgen  # noqa: E402

PY = sys.executable
SERVER_ARGS = ["-m", "bot", "serve"]  # profiling scripts may swap in a wrapper
SIGNING_SECRET = "bench-signing-secret-" + secrets.token_hex(8)
WEBHOOK_SECRET = "bench-webhook-secret-" + secrets.token_hex(8)
BOT_TOKEN = "xoxb-bench-0000000000-" + secrets.token_hex(12)
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REPO = "acme/ml-models"
CONFIG = f"""
repositories:
  default: {REPO}
commands:
  evaluate:
    trigger: label
    label: evaluate
  deploy:
    trigger: dispatch
    event_type: deploy
    approval:
      approvers: [U0APPROVER1, U0APPROVER2]
      required: 1
      expires_after_minutes: 30
    environments:
      production: {{}}
rate_limits:
  commands_per_minute: 1000
"""


# ------------------------------------------------------------------------------ processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in kB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def queue_depth(port: int) -> int | None:
    """The job pool's depth from GET /healthz (None when the server does not report it)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return json.loads(r.read()).get("queue_depth")
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}").get("queue_depth")
    except (OSError, ValueError):
        return None


def drain(port: int, timeout: float = 120.0) -> float:
    """Wait until the job pool is empty; seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        depth = queue_depth(port)
        if depth is None:
            time.sleep(2.0)  # no depth reported: give the jobs a moment, then count
            break
        if depth == 0:
            break
        time.sleep(0.1)
    return time.monotonic() - start


def http_get(port: int, path: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_healthy(port: int, proc: subprocess.Popen[bytes], deadline: float) -> float:
    """Seconds until GET /healthz answers 200 (polled every 5 ms)."""
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if http_get(port, "/healthz", 0.5) == 200:
                return time.perf_counter() - start
        time.sleep(0.005)
    raise RuntimeError("server did not become healthy in time")


def stop(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        # A deep job backlog after an ack run makes a graceful stop slow; the bench does not
        # need it (the requests are in a throwaway database).
        proc.kill()
        proc.wait()


class Doubles:
    def __init__(self, *, slack_tls: bool = False) -> None:
        self.proc = subprocess.Popen(
            [PY, str(BENCH / "doubles.py"), *(["--slack-tls"] if slack_tls else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # The doubles' servers print a traceback for each connection reset when a server
            # under test is stopped mid-request; that is expected here.
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("quit")
        self.proc.wait(5)


class Databases:
    """A fresh database per phase: a SQLite file, or a PostgreSQL database dropped afterwards."""

    def __init__(self, kind: str, tmp: Path, prefix: str = "bench") -> None:
        self.kind = kind
        self.tmp = tmp
        # Two sets of databases in one run (bench/history.py: empty and populated) must not
        # share names: a fresh database drops any of its name first.
        self.prefix = prefix
        self.made: list[str] = []

    def fresh(self) -> str:
        if self.kind == "sqlite":
            path = self.tmp / f"{self.prefix}-{len(self.made)}.db"
            self.made.append(str(path))
            return f"sqlite:///{path}"
        from sqlalchemy import create_engine, text

        name = f"chatops_{self.prefix}_{os.getpid()}_{len(self.made)}"
        engine = create_engine(
            PG_ADMIN.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
        )
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        self.made.append(name)
        return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"

    def cleanup(self) -> None:
        if self.kind != "postgres":
            return
        from sqlalchemy import create_engine, text

        engine = create_engine(
            PG_ADMIN.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
        )
        with engine.connect() as conn:
            for name in self.made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    cold_start: float
    database_url: str
    log: Path

    def rss_mb(self) -> tuple[float, float]:
        st = proc_status(self.proc.pid)
        return st.get("VmRSS", 0) / 1024, st.get("VmHWM", 0) / 1024


class Launcher:
    def __init__(self, doubles: Doubles, dbs: Databases, tmp: Path) -> None:
        self.doubles = doubles
        self.dbs = dbs
        self.tmp = tmp
        self.config = tmp / "chatops.yml"
        self.config.write_text(CONFIG)
        self.count = 0

    def bridge(self, database_url: str | None = None) -> Server:
        """`python -m bot serve` with production settings against the doubles, on a fresh
        database (or on `database_url`, one an earlier start made: a restart)."""
        info = self.doubles.info
        port = free_port()
        db = database_url or self.dbs.fresh()
        self.count += 1
        log = self.tmp / f"server-{self.count}.log"
        # A deployed process writes and reuses its bytecode (PYTHONDONTWRITEBYTECODE, set on
        # some machines, would make every start compile bot/ and handlers/ from source).
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.lower().endswith("_proxy") and k != "PYTHONDONTWRITEBYTECODE"
        } | {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": info["slack_url"],
            **({"SSL_CERT_FILE": info["slack_ca_file"]} if info.get("slack_ca_file") else {}),
            "GITHUB_APP_ID": str(info["app_id"]),
            "GITHUB_APP_PRIVATE_KEY": info["private_key_pem"],
            "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "GITHUB_API_URL": info["github_url"],
            "DATABASE_URL": db,
            "CHATOPS_CONFIG": str(self.config),
            "HOST": "127.0.0.1",
            "PORT": str(port),
        }
        t0 = time.perf_counter()
        with log.open("wb") as fh:
            proc = subprocess.Popen([PY, *SERVER_ARGS], cwd=ROOT, env=env, stdout=fh, stderr=fh)
        wait_healthy(port, proc, t0 + 30)
        cold = time.perf_counter() - t0  # from spawn, imports included
        return Server(proc, port, cold, db, log)

    def anchor(self) -> Server:
        """Bolt AsyncApp + one SQLite insert per ack (bench/anchor.py)."""
        port = free_port()
        self.count += 1
        info = self.doubles.info
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")} | {
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": info["slack_url"],
            # --slack-tls: the anchor trusts the double as the bridge does.
            **({"SSL_CERT_FILE": info["slack_ca_file"]} if info.get("slack_ca_file") else {}),
        }
        db = self.tmp / f"anchor-{self.count}.db"
        args = [PY, str(BENCH / "anchor.py"), str(port), str(db)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(port, proc, t0 + 30)
        return Server(proc, port, time.perf_counter() - t0, "", Path(os.devnull))

    def floor(self, raw: bool = False) -> Server:
        port = free_port()
        env = dict(
            os.environ, SLACK_SIGNING_SECRET=SIGNING_SECRET, GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET
        )
        args = [PY, str(BENCH / "floor.py"), str(port)] + (["raw"] if raw else [])
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(port, proc, t0 + 30)
        return Server(proc, port, time.perf_counter() - t0, "", Path(os.devnull))


# ------------------------------------------------------------------------------ load
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@dataclass
class Result:
    name: str
    connections: int
    seconds: float
    latencies: list[float]
    statuses: dict[str, int]
    errors: dict[str, int]
    peak_rss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    completed: int | None = None  # answered inside the window (None: use every latency)
    answered: dict[str, int] = field(default_factory=dict)  # every answer, warm-up included
    cpu_s: float = float("nan")  # server CPU seconds: from the first request to drained jobs

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        done = self.count if self.completed is None else self.completed
        return done / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU per answered request (its job included), ms."""
        n = sum(self.answered.values())
        return self.cpu_s * 1000 / n if n else float("nan")

    @property
    def over_3s(self) -> float:
        return sum(1 for x in self.latencies if x > 3000) / self.count if self.count else 0.0

    @property
    def failed(self) -> int:
        bad = sum(n for s, n in self.statuses.items() if not s.startswith("2"))
        return bad + sum(self.errors.values())


def drive(
    kind: str, port: int, connections: int, duration: float, warmup: float, **spec: Any
) -> Result:
    """Closed-loop load from one or two loadgen processes; results merged."""
    procs_n = 1 if connections < 16 else 2
    per = [connections // procs_n + (1 if i < connections % procs_n else 0) for i in range(procs_n)]
    procs = []
    for i, n in enumerate(per):
        body = {
            "kind": kind,
            "host": "127.0.0.1",
            "port": port,
            "connections": n,
            "duration": duration,
            "warmup": warmup,
            "worker": i,
            "seed": spec.pop("seed", 0) if i == 0 else secrets.randbits(20),
            "signing_secret": SIGNING_SECRET,
            "webhook_secret": WEBHOOK_SECRET,
            **spec,
        }
        p = subprocess.Popen(
            [PY, str(BENCH / "loadgen.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert p.stdin is not None
        p.stdin.write(json.dumps(body).encode())
        p.stdin.close()
        procs.append(p)
    lat: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    completed = 0
    answered: dict[str, int] = {}
    for p in procs:
        assert p.stdout is not None
        out = json.loads(p.stdout.read())
        p.wait()
        lat += out["latencies_ms"]
        completed += out["completed"]
        for k, v in out.get("answered", {}).items():
            answered[k] = answered.get(k, 0) + v
        for k, v in out["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in out["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return Result(
        kind, connections, duration, lat, statuses, errors, completed=completed, answered=answered
    )


# ------------------------------------------------------------------------------ phases
def phase_cold(launcher: Launcher, runs: int) -> dict[str, float]:
    """Starts on a fresh database (its schema made at start), then restarts on a database an
    earlier start made (the schema there already: how a deployment restarts)."""
    colds, restarts, idles = [], [], []
    # One start first, not counted: it writes the bytecode cache a restarted deployment has.
    first = launcher.bridge()
    stop(first.proc)
    for _ in range(runs):
        server = launcher.bridge()
        colds.append(server.cold_start)
        time.sleep(2.0)  # let the scheduler's first jobs run; then the process idles
        idles.append(server.rss_mb()[0])
        stop(server.proc)
        again = launcher.bridge(first.database_url)
        restarts.append(again.cold_start)
        stop(again.proc)
    return {
        "cold_start_s": statistics.median(colds),
        "cold_start_max_s": max(colds),
        "restart_s": statistics.median(restarts),
        "idle_rss_mb": statistics.median(idles),
    }


def phase_load(
    launcher: Launcher,
    target: str,
    kind: str,
    levels: list[int],
    duration: float,
    warmup: float,
    **spec: Any,
) -> list[Result]:
    results = []
    for c in levels:
        if target == "bridge":
            server = launcher.bridge()
        elif target == "anchor":
            server = launcher.anchor()
        else:
            server = launcher.floor(raw=target == "raw")
        try:
            cpu0 = proc_cpu(server.proc.pid)
            res = drive(kind, server.port, c, duration, warmup, **dict(spec))
            res.peak_rss_mb = server.rss_mb()[1]
            res.name = target
            if target == "bridge":
                res.extra["healthz_after"] = http_get(server.port, "/healthz", 5.0)
                res.extra["drain_s"] = drain(server.port)
            res.cpu_s = proc_cpu(server.proc.pid) - cpu0
        finally:
            stop(server.proc)
        if target == "bridge":
            launcher.doubles.ask("reset")
        results.append(res)
    return results


def workflow_run_body(
    template: dict[str, Any],
    n: int,
    request_id: str,
    head_sha: str,
    action: str,
    pr_number: int | None = None,
) -> bytes:
    """A workflow_run event of run n of a request (action in_progress or completed)."""
    payload = copy.deepcopy(template)
    payload["action"] = action
    payload["repository"]["full_name"] = REPO
    run = payload["workflow_run"]
    run_id = 5_000_000 + n
    run.update(
        {
            "id": run_id,
            "name": f"bench-run-{n}",
            # A label-triggered run is matched by its PR and head SHA; a title naming the
            # request is for runs the bridge dispatched (others are refused as impostors).
            "display_title": f"Evaluate PR {pr_number}"
            if pr_number is not None
            else f"chatops {request_id}: evaluate",
            "status": action,
            "conclusion": "success" if action == "completed" else None,
            "run_attempt": 1,
            "head_sha": head_sha,
            "event": "pull_request",
            "html_url": f"https://github.com/{REPO}/actions/runs/{run_id}",
        }
    )
    if pr_number is not None:
        # Matched by PR + head SHA only if the run started after the label went on.
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        run.update({"created_at": now, "run_started_at": now, "updated_at": now})
        for pr in run.get("pull_requests") or []:
            pr["number"] = pr_number
            pr.setdefault("head", {})["sha"] = head_sha
    return json.dumps(payload, separators=(",", ":")).encode()


def open_requests(database_url: str, want: int, timeout: float) -> list[tuple[str, str, int, str]]:
    """(request id, root ts, PR, head SHA) of requests that reached `triggered`, from the DB."""
    from sqlalchemy import create_engine, text

    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT id, root_ts, pr_number, head_sha FROM requests "
                        "WHERE status = 'triggered' AND root_ts IS NOT NULL"
                    )
                ).all()
            if len(rows) >= want or time.monotonic() > deadline:
                return [(r[0], r[1], r[2], r[3]) for r in rows]
            time.sleep(0.1)
    finally:
        engine.dispose()


async def paced_webhooks(
    port: int, bodies: list[bytes], rate: float
) -> tuple[list[float], list[float], int]:
    """Send each body at its scheduled time (open loop); returns send times and ack latencies.

    Both are counted from the scheduled time, so waiting for a free connection (the server
    being slow) is part of the latency rather than hidden by it (no coordinated omission).
    """
    pool: asyncio.Queue[loadgen.Connection] = asyncio.Queue()
    for _ in range(32):
        pool.put_nowait(await loadgen.connect("127.0.0.1", port))
    sent_at = [0.0] * len(bodies)
    acks: list[float] = []
    errors = 0
    start = time.perf_counter() + 0.1

    async def send(i: int, body: bytes) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        sent_at[i] = time.time()
        sig = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        raw = (
            f"POST /github/webhooks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-GitHub-Event: workflow_run\r\nX-GitHub-Delivery: bench-reply-{i}\r\n"
            f"X-Hub-Signature-256: sha256={sig}\r\n\r\n"
        ).encode() + body
        conn = await pool.get()
        if conn.lost:
            conn = await loadgen.connect("127.0.0.1", port)
        try:
            status = await conn.request(raw)
            if status != 202:
                errors += 1
        except (OSError, ConnectionError):
            errors += 1
        acks.append((time.perf_counter() - t0) * 1000)
        pool.put_nowait(conn)

    tasks = []
    for i, body in enumerate(bodies):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i, body)))
    await asyncio.gather(*tasks)
    return sent_at, acks, errors


FIRST_PR = 1000  # the reply phase's PRs: FIRST_PR, FIRST_PR + 1, … (bench/doubles.py `pulls`)


def send_commands(port: int, count: int) -> None:
    """`/evaluate N` for `count` distinct PRs, 16 at a time, each waiting for its ack.

    One PR each: the bridge settles a second evaluation of the same PR and head as a
    duplicate (one open evaluation per PR + head SHA), so one PR would give one run."""
    from concurrent.futures import ThreadPoolExecutor

    spec = {
        "signing_secret": SIGNING_SECRET,
        "host": "127.0.0.1",
        "port": port,
        "users": 5000,
        "text": "{n}",
        "first": FIRST_PR,
    }
    build = loadgen.slack_request_builder(spec, 0)
    raws = [build() for _ in range(count)]

    def send(raw: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(raw)
            s.recv(65536)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(send, raws))


def phase_reply(launcher: Launcher, rate: float, seconds: float) -> dict[str, Any]:
    """Each request's run is reported started, then finished a second later; every event
    should become one thread reply. Latency: webhook sent → reply received by the Slack double."""
    sys.path.insert(0, str(ROOT / "tests"))
    import uvloop
    import webhook_examples

    template = next(
        p
        for p in webhook_examples.payloads("workflow_run", "completed")
        if len(json.dumps(p)) > 19000
    )
    runs = int(rate * seconds) // 2
    lag = int(rate // 2)  # events are sent in pairs of steps: finished ~1 s after started
    launcher.doubles.ask(f"pulls {FIRST_PR} {runs}")
    server = launcher.bridge()
    try:
        cpu0, t0 = proc_cpu(server.proc.pid), time.monotonic()
        send_commands(server.port, runs)
        reqs = open_requests(server.database_url, runs, 180)
        if len(reqs) < runs:
            raise RuntimeError(f"only {len(reqs)} of {runs} requests reached 'triggered'")
        drain(server.port)
        cpu_commands = proc_cpu(server.proc.pid) - cpu0
        commands_s = time.monotonic() - t0
        events: list[tuple[str, int]] = []
        for step in range(runs + lag):
            if step < runs:
                events.append(("in_progress", step))
            if step >= lag:
                events.append(("completed", step - lag))
        bodies = [
            workflow_run_body(template, j, reqs[j][0], reqs[j][3], a, reqs[j][2]) for a, j in events
        ]
        # The thread roots the commands posted stay known to Slack's double: the relayed events
        # edit them (a plain `reset` forgot them, and every root edit failed message_not_found).
        launcher.doubles.ask("reset calls")
        time.sleep(1.0)  # let the last command jobs' stragglers (root edits) finish
        cpu1 = proc_cpu(server.proc.pid)
        connections0 = launcher.doubles.ask("slack connections")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            sent_at, acks, errors = runner.run(paced_webhooks(server.port, bodies, rate))
        # Wait for the thread replies to arrive at the Slack double.
        deadline = time.monotonic() + 60
        while True:
            replies = launcher.doubles.ask("replies")
            if len(replies) >= len(events) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        drain(server.port)
        cpu_relay = proc_cpu(server.proc.pid) - cpu1
        connections = launcher.doubles.ask("slack connections") - connections0
        peak = server.rss_mb()[1]
    finally:
        stop(server.proc)
    seen: dict[tuple[str, int], float] = {}
    for r in replies:
        words = (r["text"] or "").split()
        if len(words) == 3 and words[1].startswith("bench-run-"):
            kind = "in_progress" if words[2] == "started" else "completed"
            seen.setdefault((kind, int(words[1].removeprefix("bench-run-"))), r["at"])
    lat = [(seen[e] - sent_at[i]) * 1000 for i, e in enumerate(events) if e in seen]
    res = Result("reply", 0, seconds, lat, {"202": len(events) - errors}, {})
    if errors:
        res.errors["http"] = errors
    res.peak_rss_mb = peak
    res.extra = {
        "sent": len(events),
        "replied": len(seen),
        "requests": runs,
        "ack_p50": percentile(acks, 0.5),
        "ack_p99": percentile(acks, 0.99),
        "cpu_ms_per_command": cpu_commands * 1000 / runs,
        "commands_s": commands_s,
        "cpu_ms_per_event": cpu_relay * 1000 / max(1, len(seen)),
        "slack_connections": connections,
    }
    launcher.doubles.ask("reset")
    return {"result": res}


# ------------------------------------------------------------------------------ report
def row(label: str, r: Result, floor: Result | None = None) -> str:
    ratio = f"{r.throughput / floor.throughput:5.2f}x" if floor and floor.throughput else "     "
    errs = r.failed
    cpu = r.cpu_ms_per_request
    return (
        f"  {label:<22} c={r.connections:<4} {r.throughput:8.0f}/s {ratio}  "
        f"p50 {r.pct(0.5):7.2f}  p99 {r.pct(0.99):8.2f}  p99.9 {r.pct(0.999):8.2f} ms  "
        f">3s {r.over_3s * 100:5.2f}%  errors {errs:<5} peak RSS {r.peak_rss_mb:6.1f} MB  "
        f"CPU {cpu:6.2f} ms/req"
    )


def server_from(root: str) -> list[str]:
    """Arguments that run `chatops-bridge serve` from another checkout's bot package."""
    path = str(Path(root).resolve())
    code = (
        f"import sys; sys.path.insert(0, {path!r}); from bot.__main__ import main; sys.exit(main())"
    )
    return ["-c", code, "serve"]


def load_table(
    launcher: Launcher,
    title: str,
    kind: str,
    levels: list[int],
    duration: float,
    warmup: float,
    targets: tuple[tuple[str, str], ...],
    **spec: Any,
) -> dict[str, list[Result]]:
    """The floor, then each target, at each level (one fresh server per point); printed as
    rows with each target's ratio to the floor of the same level."""
    print(f"\n{title}")
    out: dict[str, list[Result]] = {}
    for target, _ in (("floor", ""), *targets):
        out[target] = phase_load(launcher, target, kind, levels, duration, warmup, **spec)
    for i, floor in enumerate(out["floor"]):
        print(row("floor (signature only)", floor))
        for target, label in targets:
            res = out[target][i]
            extra = ""
            if "healthz_after" in res.extra:
                extra = f"  /healthz after: {res.extra['healthz_after']}"
            print(row(label, res, floor) + extra)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--phases", default="cold,client,acks,help,intake,reply")
    ap.add_argument("--reply-rate", type=float, default=200.0, help="webhooks/s, reply phase")
    ap.add_argument(
        "--slack-tls",
        action="store_true",
        help="Slack's double over https, so each new connection costs a TLS handshake",
    )
    ap.add_argument("--keep", action="store_true", help="keep server logs and databases")
    ap.add_argument("--levels", default="1,16,64,256", help="ack concurrency levels")
    ap.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="run the loop on an empty database and on one with N finished requests "
        "(bench/history.py), side by side",
    )
    ap.add_argument(
        "--server-root",
        help="run the server from another checkout (e.g. main, for before/after figures)",
    )
    args = ap.parse_args(argv)
    phases = set(args.phases.split(","))
    duration, warmup = (3.0, 0.5) if args.quick else (8.0, 1.0)
    if args.history:
        import history

        if args.server_root:
            history.bench.SERVER_ARGS[:] = server_from(args.server_root)
        return history.compare(args, duration, warmup)
    if args.server_root:
        SERVER_ARGS[:] = server_from(args.server_root)
    levels = [int(x) for x in args.levels.split(",")]

    print(
        f"chatops-bridge benchmarks · {os.cpu_count()} CPUs · load average "
        f"{os.getloadavg()[0]:.2f} at start · Python {sys.version.split()[0]} "
        f"· database {args.database} · {'quick' if args.quick else 'full'} "
        f"({duration:.0f} s per point after {warmup:.1f} s warm-up)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="chatops-bench-"))
    doubles = Doubles(slack_tls=args.slack_tls)
    dbs = Databases(args.database, tmp)
    launcher = Launcher(doubles, dbs, tmp)
    try:
        if "cold" in phases:
            cold = phase_cold(launcher, 1 if args.quick else 3)
            print("\nStart-up")
            print(
                f"  cold start to first /healthz 200: {cold['cold_start_s']:.3f} s "
                f"(max {cold['cold_start_max_s']:.3f} s)   "
                f"idle RSS {cold['idle_rss_mb']:.1f} MB"
            )
            print(f"  restart on an existing database:  {cold['restart_s']:.3f} s (median)")
        if "client" in phases:
            raw = phase_load(launcher, "raw", "slash", [64], duration, warmup)[0]
            print("\nLoad generator ceiling (canned answers, no server work)")
            print(row("raw asyncio answer", raw))
        if "acks" in phases:
            load_table(
                launcher,
                "Stored-command acks (/deploy <tracker-run-id> from 5,000 users, signed; ratio = "
                "throughput / floor's; CPU = server CPU per ack, its job included)",
                "slash",
                levels,
                duration,
                warmup,
                (("anchor", "Bolt AsyncApp + insert"), ("bridge", "chatops-bridge")),
                command="/deploy",
                text="run-{hex}",
            )
        if "help" in phases:
            load_table(
                launcher,
                "/evaluate help (answered without a write)",
                "slash",
                [64],
                duration,
                warmup,
                (("bridge", "chatops-bridge"),),
                text="help",
            )
        if "intake" in phases:
            sys.path.insert(0, str(ROOT / "tests"))
            import webhook_examples

            payload = next(
                p
                for p in webhook_examples.payloads("workflow_run", "completed")
                if len(json.dumps(p)) > 19000
            )
            path = tmp / "workflow_run.json"
            path.write_bytes(json.dumps(payload, separators=(",", ":")).encode())
            size = path.stat().st_size
            print(
                f"\nWebhook intake (workflow_run completed, {size / 1024:.1f} KiB, "
                "verify + dedupe + persist)"
            )
            spec = {"payload_path": str(path)}
            floors = phase_load(launcher, "floor", "webhook", [16, 64], duration, warmup, **spec)
            ours = phase_load(launcher, "bridge", "webhook", [16, 64], duration, warmup, **spec)
            for f, o in zip(floors, ours, strict=True):
                print(row("floor (HMAC only)", f))
                print(row("chatops-bridge", o, f))
            print("  (bridge CPU per delivery includes its job: the run it names matches nothing)")
        if "reply" in phases:
            rate = args.reply_rate
            out = phase_reply(launcher, rate, 5.0 if args.quick else 10.0)
            r: Result = out["result"]
            print(
                f"\nWebhook -> Slack thread reply at a steady {rate:.0f} webhooks/s "
                f"({r.extra['requests']} requests, each run started then finished; "
                f"{r.extra['sent']} sent, {r.extra['replied']} replies seen)"
            )
            print(
                f"  reply latency p50 {r.pct(0.5):.1f}  p99 {r.pct(0.99):.1f}  "
                f"p99.9 {r.pct(0.999):.1f}  max {max(r.latencies, default=float('nan')):.1f} ms"
                f"   webhook ack p50 {r.extra['ack_p50']:.2f} p99 {r.extra['ack_p99']:.2f} ms"
                f"   errors {r.failed}   peak RSS {r.peak_rss_mb:.1f} MB"
            )
            print(
                f"  CPU per relayed event (intake + thread reply + root edit): "
                f"{r.extra['cpu_ms_per_event']:.2f} ms   CPU per command (/evaluate N: ack + "
                f"job up to `triggered`): {r.extra['cpu_ms_per_command']:.2f} ms "
                f"({r.extra['requests']} commands in {r.extra['commands_s']:.1f} s)"
            )
            print(
                f"  Slack connections opened while relaying: {r.extra['slack_connections']} "
                f"({r.extra['slack_connections'] / max(1, r.extra['replied']):.2f} per event; "
                f"Slack's double over {'https' if args.slack_tls else 'http'})"
            )
    finally:
        doubles.close()
        dbs.cleanup()
        if args.keep:
            print(f"\nserver logs and databases kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
