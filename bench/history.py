"""`bench/run.py --history N`: the same loop on an empty and on a populated database.

The populated database holds N finished requests (with a run, a side-effect key and, for a
quarter of them, a processed delivery each), spread the way a busy installation's history is:
40 % in the repository the load uses, the rest over 49 others; about seven requests per PR, a
head SHA each, 200 channels, 3,000 users, a year of creation times. They go in with one
INSERT ... SELECT per table (a recursive CTE on SQLite, generate_series on PostgreSQL), into a
template that the server under test migrated itself; every phase then starts on a copy of it
(file copy on SQLite, CREATE DATABASE ... TEMPLATE on PostgreSQL). PostgreSQL gets ANALYZE
(autovacuum does that in production); SQLite plans without statistics, as it does in production.

The loop, each phase on a fresh server: stored-command acks (64 connections), webhook intake
(64 connections), relayed webhooks (each run started then finished, thread reply latency),
and 100 `workflow_run` events of fork PRs (empty `pull_requests`, matched by head SHA) sent
at once, timed until the last thread reply arrives.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import run as bench  # bench/run.py
from sqlalchemy import create_engine, text

YEAR = 365 * 86400.0
FORK_PRS = 100
FORK_PR_BASE = 70_000


def engine_for(url: str) -> Any:
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def _series(dialect: str, start: int, stop: int) -> str:
    """A row per i in [start, stop) as `s(i)`."""
    if dialect == "postgresql":
        return f"(SELECT generate_series({start}, {stop - 1}) AS i) AS s"
    return (
        f"(WITH RECURSIVE r(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM r "
        f"WHERE i < {stop - 1}) SELECT i FROM r) AS s"
    )


def seed(url: str, n: int, chunk: int = 100_000) -> float:
    """Insert n finished requests (and their runs, keys, deliveries); returns seconds taken."""
    t0 = time.perf_counter()
    engine = engine_for(url)
    dialect = engine.dialect.name
    pg = dialect == "postgresql"
    pad = "lpad(CAST(s.i AS TEXT), 11, '0')" if pg else "printf('%011d', s.i)"
    sha = "lpad(to_hex(s.i), 40, '0')" if pg else "printf('%040x', s.i)"
    cat = "||"
    now = time.time()
    step = YEAR / max(n, 1)
    created = f"({now - YEAR} + s.i * {step})"
    repo = (
        f"CASE WHEN s.i % 5 < 2 THEN '{bench.REPO}' "
        f"ELSE 'acme/repo-' {cat} CAST(s.i % 49 AS TEXT) END"
    )
    status = (
        "CASE s.i % 20 WHEN 0 THEN 'error' WHEN 1 THEN 'cancelled' WHEN 2 THEN 'duplicate' "
        "WHEN 3 THEN 'failed' WHEN 4 THEN 'failed' WHEN 5 THEN 'failed' ELSE 'succeeded' END"
    )
    rid = f"'h' {cat} {pad}"
    requests = (
        'INSERT INTO requests (id, kind, idempotency_key, repo, pr_number, head_sha, "trigger", '
        "channel_id, user_id, root_ts, status, details, created_at, updated_at, lease_until, "
        "attempts, action_started_at, finished_at, failures, answer_due) "
        f"SELECT {rid}, 'evaluate', 'history:' {cat} CAST(s.i AS TEXT), {repo}, "
        f"(s.i / 7) % 20000, {sha}, 'label', 'CH' {cat} CAST(s.i % 200 AS TEXT), "
        f"'UH' {cat} CAST(s.i % 3000 AS TEXT), CAST(1500000000 + s.i AS TEXT) {cat} '.000100', "
        f"{status}, '{{}}', {created}, {created} + 600, 0, 1, {created} + 1, {created} + 600, 0, 0 "
        "FROM {series}"
    )
    runs = (
        "INSERT INTO runs (run_id, request_id, repo, name, status, conclusion, attempt, "
        "html_url, head_sha, started_at, updated_at) "
        f"SELECT CAST(900000000 + s.i AS TEXT), {rid}, {repo}, 'evaluate', 'completed', "
        f"'success', 1, NULL, {sha}, {created} + 30, {created} + 600 FROM {{series}}"
    )
    sent = (
        'INSERT INTO sent ("key", at) '
        f"SELECT 'reply:' {cat} {rid} {cat} '/completed', {created} + 600 FROM {{series}}"
    )
    deliveries = (
        "INSERT INTO deliveries (id, event, action, received_at, processed_at, lease_until, "
        "attempts, failures) "
        f"SELECT 'history-' {cat} CAST(s.i AS TEXT), 'workflow_run', 'completed', "
        f"{created} + 600, {created} + 601, 0, 1, 0 FROM {{series}} WHERE s.i % 4 = 0"
    )
    try:
        for start in range(0, n, chunk):
            series = _series(dialect, start, min(n, start + chunk))
            with engine.begin() as conn:
                for statement in (requests, runs, sent, deliveries):
                    conn.execute(text(statement.replace("{series}", series)))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if pg:
                conn.execute(text("VACUUM ANALYZE"))
            else:
                conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        engine.dispose()
    return time.perf_counter() - t0


class HistoryDatabases(bench.Databases):
    """Fresh databases that are copies of one seeded template."""

    def __init__(self, kind: str, tmp: Path, rows: int) -> None:
        super().__init__(kind, tmp, prefix="history")
        self.template: str | None = None
        self.rows = rows  # what every copy must hold (checked: a copy of the wrong database
        # once made the populated run measure an almost empty one)

    def fresh(self) -> str:
        if self.template is None:
            return super().fresh()
        if self.kind == "sqlite":
            path = self.tmp / f"history-copy-{len(self.made)}.db"
            shutil.copyfile(self.template.removeprefix("sqlite:///"), path)
            self.made.append(str(path))
            return self._checked(f"sqlite:///{path}")
        name = f"chatops_history_copy_{len(self.made)}_{time.monotonic_ns()}"
        template = self.template.rsplit("/", 1)[1]
        admin = create_engine(
            bench.PG_ADMIN.replace("postgresql://", "postgresql+psycopg://"),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        admin.dispose()
        self.made.append(name)
        return self._checked(bench.PG_ADMIN.rsplit("/", 1)[0] + f"/{name}")

    def _checked(self, url: str) -> str:
        engine = engine_for(url)
        try:
            with engine.connect() as conn:
                held = conn.execute(text("SELECT count(*) FROM requests")).scalar_one()
        finally:
            engine.dispose()
        if held < self.rows:
            raise RuntimeError(f"the populated copy holds {held:,} requests, not {self.rows:,}")
        return url


def make_template(launcher: bench.Launcher, dbs: HistoryDatabases, n: int) -> float:
    """The server under test migrates an empty database; then n requests go in. Seconds."""
    server = launcher.bridge()
    bench.stop(server.proc)
    seconds = seed(server.database_url, n)
    dbs.template = server.database_url
    return seconds


# ------------------------------------------------------------------------------ relayed events
def run_event(
    template: dict[str, Any], n: int, number: int, head_sha: str, action: str, fork: bool
) -> bytes:
    """A workflow_run event of PR `number`'s run n. A fork PR's run has no pull_requests: only
    its head SHA ties it to the evaluation."""
    payload = copy.deepcopy(template)
    payload["action"] = action
    payload["repository"]["full_name"] = bench.REPO
    run = payload["workflow_run"]
    run_id = 8_000_000 + n
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    pulls = copy.deepcopy(run.get("pull_requests") or [{}])[:1]
    for pull in pulls:
        pull["number"] = number
        pull.setdefault("head", {})["sha"] = head_sha
    run.update(
        {
            "id": run_id,
            "name": f"bench-run-{n}",
            "display_title": f"PR {number}",
            "status": action,
            "conclusion": "success" if action == "completed" else None,
            "run_attempt": 1,
            "head_sha": head_sha,
            "event": "pull_request",
            "pull_requests": [] if fork else pulls,
            "created_at": now,
            "run_started_at": now,
            "html_url": f"https://github.com/{bench.REPO}/actions/runs/{run_id}",
        }
    )
    return json.dumps(payload, separators=(",", ":")).encode()


def evaluate_prs(port: int, numbers: list[int]) -> None:
    """`/evaluate <n>` once per PR, 16 at a time."""
    raws = []
    for number in numbers:
        spec = {
            "signing_secret": bench.SIGNING_SECRET,
            "host": "127.0.0.1",
            "port": port,
            "text": str(number),
            "seed": number,  # a trigger_id of its own: not a retry of the previous command
        }
        raws.append(bench.loadgen.slack_request_builder(spec, 0)())

    def send(raw: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(raw)
            s.recv(65536)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(send, raws))


def triggered(url: str, base: int, want: int, timeout: float) -> list[tuple[int, str, str]]:
    """(PR, head SHA, root ts) of the evaluations of PRs from `base` once `want` are triggered."""
    engine = engine_for(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT pr_number, head_sha, root_ts FROM requests WHERE status = "
                        "'triggered' AND root_ts IS NOT NULL AND pr_number >= :base"
                    ),
                    {"base": base},
                ).all()
            if len(rows) >= want or time.monotonic() > deadline:
                return sorted((r[0], r[1], r[2]) for r in rows)
            time.sleep(0.1)
    finally:
        engine.dispose()


def phase_relay(
    launcher: bench.Launcher,
    template: dict[str, Any],
    *,
    prs: int,
    rate: float,
    fork: bool,
    base: int,
) -> dict[str, Any]:
    """An evaluation per PR, then its run's events (fork: one completion each, sent at once;
    otherwise started, then finished about a second later, at a steady `rate`). Latency:
    webhook sent -> thread reply received by the Slack double; drain: first event sent ->
    last reply received."""
    import uvloop

    launcher.doubles.ask(f"pulls {base} {prs}")
    server = launcher.bridge()
    try:
        evaluate_prs(server.port, list(range(base, base + prs)))
        reqs = triggered(server.database_url, base, prs, 300)
        if len(reqs) < prs * 0.95:
            raise RuntimeError(f"only {len(reqs)} of {prs} evaluations reached 'triggered'")
        if len(reqs) < prs:  # a slow straggler is not worth the run: go on with the others
            print(f"  ({len(reqs)} of {prs} evaluations reached 'triggered' in time)")
            prs = len(reqs)
        events: list[tuple[str, int]] = []
        if fork:
            events = [("completed", j) for j in range(prs)]
        else:
            lag = max(1, int(rate // 2))
            for step in range(prs + lag):
                if step < prs:
                    events.append(("in_progress", step))
                if step >= lag:
                    events.append(("completed", step - lag))
        bodies = [run_event(template, j, reqs[j][0], reqs[j][1], a, fork) for a, j in events]
        # No reset here: the Slack double would forget the root messages, and every root edit
        # would be answered message_not_found. Replies are told apart by their runs' names.
        cpu0 = bench.proc_cpu(server.proc.pid)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            sent_at, _acks, errors = runner.run(bench.paced_webhooks(server.port, bodies, rate))
        deadline = time.monotonic() + 120
        finished_sent = sum(1 for kind, _ in events if kind == "completed")
        last, quiet_since = -1, time.monotonic()
        while True:
            replies = [
                r for r in launcher.doubles.ask("replies") if "bench-run-" in (r["text"] or "")
            ]
            finished = sum(1 for r in replies if not (r["text"] or "").endswith(" started"))
            if len(replies) != last:
                last, quiet_since = len(replies), time.monotonic()
            if len(replies) >= len(events) or time.monotonic() > deadline:
                break
            # Every finished run answered and nothing new for 2 s: the rest were "started"
            # events handled after their run had finished (no reply, by design).
            if finished >= finished_sent and time.monotonic() - quiet_since > 2:
                break
            time.sleep(0.05)
        cpu = bench.proc_cpu(server.proc.pid) - cpu0
        peak = server.rss_mb()[1]
    finally:
        bench.stop(server.proc)
    launcher.doubles.ask("reset")
    seen: dict[tuple[str, int], float] = {}
    for r in replies:
        words = (r["text"] or "").split()
        if len(words) == 3 and words[1].startswith("bench-run-"):
            kind = "in_progress" if words[2] == "started" else "completed"
            seen.setdefault((kind, int(words[1].removeprefix("bench-run-"))), r["at"])
    lat = [(seen[e] - sent_at[i]) * 1000 for i, e in enumerate(events) if e in seen]
    drain = max(seen.values(), default=float("nan")) - min(sent_at)
    res = bench.Result("relay", 0, drain, lat, {"202": len(events) - errors}, {})
    res.peak_rss_mb = peak
    res.cpu_s = cpu  # events sent -> last reply (the evaluations before them not included)
    # A run's "started" event handled after its "finished" one (two processes, or a queue
    # longer than the second between them) rightly gets no reply: the run's record only moves
    # forward. So replies to finished runs are counted apart: each of those must arrive.
    finished = sum(1 for kind, _ in seen if kind == "completed")
    res.extra = {
        "sent": len(events),
        "replied": len(seen),
        "drain_s": drain,
        "finished_replied": finished,
        "finished_sent": sum(1 for kind, _ in events if kind == "completed"),
    }
    return {"result": res}


# ------------------------------------------------------------------------------ the loop
def loop(launcher: bench.Launcher, duration: float, warmup: float, rate: float) -> dict[str, Any]:
    sys.path.insert(0, str(bench.ROOT / "tests"))
    import webhook_examples

    template = next(
        p
        for p in webhook_examples.payloads("workflow_run", "completed")
        if len(json.dumps(p)) > 19000
    )
    path = launcher.tmp / "workflow_run.json"
    path.write_bytes(json.dumps(template, separators=(",", ":")).encode())
    out: dict[str, Any] = {}
    out["acks"] = bench.phase_load(launcher, "bridge", "slash", [64], duration, warmup)[0]
    out["intake"] = bench.phase_load(
        launcher, "bridge", "webhook", [64], duration, warmup, payload_path=str(path)
    )[0]
    seconds = 5.0 if duration < 5 else 10.0
    out["reply"] = phase_relay(
        launcher, template, prs=int(rate * seconds) // 2, rate=rate, fork=False, base=60_000
    )["result"]
    out["fork"] = phase_relay(
        launcher, template, prs=FORK_PRS, rate=2000.0, fork=True, base=FORK_PR_BASE
    )["result"]
    return out


def compare(args: Any, duration: float, warmup: float) -> int:
    """Run the loop on an empty database, then on one with args.history requests; print both."""
    n = args.history
    print(
        f"chatops-bridge history benchmark · {os.cpu_count()} CPUs · load average "
        f"{os.getloadavg()[0]:.2f} at start · database {args.database} · server code "
        f"{' '.join(bench.SERVER_ARGS[:2])} · {duration:.0f} s per point after {warmup:.1f} s"
    )
    tmp = Path(tempfile.mkdtemp(prefix="chatops-history-"))
    doubles = bench.Doubles()
    empty_dbs = bench.Databases(args.database, tmp)
    (tmp / "history").mkdir()
    full_dbs = HistoryDatabases(args.database, tmp / "history", n)
    empty = bench.Launcher(doubles, empty_dbs, tmp)
    full = bench.Launcher(doubles, full_dbs, tmp / "history")
    try:
        seconds = make_template(full, full_dbs, n)
        print(f"\nHistory: {n:,} finished requests seeded in {seconds:.1f} s", flush=True)
        results = {"empty": loop(empty, duration, warmup, args.reply_rate)}
        results[f"{n:,} requests"] = loop(full, duration, warmup, args.reply_rate)
    finally:
        doubles.close()
        empty_dbs.cleanup()
        full_dbs.cleanup()
        if full_dbs.template and args.database == "postgres":
            full_dbs.made.append(full_dbs.template.rsplit("/", 1)[1])
            full_dbs.cleanup()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nThe same loop on an empty database and on one with {n:,} finished requests")
    print(
        f"  {'database':<18} {'acks/s':>8} {'p99 ms':>8} {'intake/s':>9} {'p99 ms':>8} "
        f"{'reply p50':>10} {'p99 ms':>8} {'replies':>9} {'100 fork-PR events':>19}"
    )
    for label, r in results.items():
        acks, intake, reply, fork = r["acks"], r["intake"], r["reply"], r["fork"]
        print(
            f"  {label:<18} {acks.throughput:8.0f} {acks.pct(0.99):8.1f} "
            f"{intake.throughput:9.0f} {intake.pct(0.99):8.1f} {reply.pct(0.5):10.1f} "
            f"{reply.pct(0.99):8.1f} {reply.extra['replied']:>4}/{reply.extra['sent']:<4} "
            f"{fork.extra['drain_s']:7.2f} s ({fork.extra['drain_s'] * 1000 / FORK_PRS:5.1f} "
            f"ms each, {fork.extra['replied']} replied)"
        )
    # Wall times on a shared 2-core host move by tens of percent between identical runs; the
    # server's CPU per unit of work is the steadier figure.
    print("\n  server CPU per unit, ms")
    print(
        f"  {'database':<18} {'ack + its job':>14} {'intake':>8} {'relayed event':>14} "
        f"{'fork-PR event':>14}"
    )
    for label, r in results.items():
        acks, intake, reply, fork = r["acks"], r["intake"], r["reply"], r["fork"]
        print(
            f"  {label:<18} {acks.cpu_ms_per_request:14.2f} {intake.cpu_ms_per_request:8.2f} "
            f"{reply.cpu_s * 1000 / max(reply.extra['sent'], 1):14.2f} "
            f"{fork.cpu_s * 1000 / max(fork.extra['sent'], 1):14.2f}"
        )
    return 0
