"""CPU of the relay path alone: a fixed number of workflow_run deliveries, one thread, no load.

    .venv/bin/python bench/relay.py                          # 400 requests, 800 events, SQLite
    .venv/bin/python bench/relay.py --database postgres --slack-tls
    .venv/bin/python bench/relay.py --root /path/to/other/checkout   # the same loop, other code
    .venv/bin/python bench/relay.py --work evaluate          # command jobs instead (or deploy)

bench/run.py's reply phase measures the relay under load (webhooks at a steady rate, every
thread busy), where the figure moves with the machine's other work. This one stores each
delivery as the intake does, then runs its job (claim, match, run upsert, thread reply, status,
root edit, finish) on the calling thread, one after the other, and reads that thread's CPU
clock: the cost of one relayed event with nothing else running, comparable between two trees
(`--root`). Each request gets a started and a finished event; every root edit is sent
(root_edit_seconds 0). Slack and GitHub are bench/doubles.py's, in their own process.

`--work evaluate` / `--work deploy` run command jobs the same way: each request stored as the
command's ack stores it (`/evaluate N` for its own open PR, labelled; `/deploy run-<hex>` for
production, waiting for approval), then its job on this thread (`/evaluate`: PR read, root
message, label; `/deploy`: facts, approval card), the first one unmeasured (it pays the
first GitHub call's imports). The ack itself is not in the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--slack-tls", action="store_true", help="Slack's double over https")
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose bot/ is measured")
    ap.add_argument(
        "--work", choices=("events", "evaluate", "deploy"), default="events", help="what to run"
    )
    ap.add_argument(
        "--statements", action="store_true", help="also print each SQL statement's count per unit"
    )
    args = ap.parse_args(argv)

    # The tree measured comes first on the path; the bench helpers and the webhook corpus next.
    sys.path[:0] = [str(BENCH), str(ROOT / "tests")]
    import run  # bench/run.py: the doubles, databases and the workflow_run body
    import webhook_examples

    sys.path.insert(0, str(Path(args.root).resolve()))  # ahead of what run.py put first

    tmp = Path(tempfile.mkdtemp(prefix="chatops-relay-"))
    doubles = run.Doubles(slack_tls=args.slack_tls)
    databases = run.Databases(args.database, tmp)
    try:
        info = doubles.info
        if info.get("slack_ca_file"):
            os.environ["SSL_CERT_FILE"] = info["slack_ca_file"]
        figures = measure(args, run, webhook_examples, doubles, databases.fresh(), tmp)
    finally:
        doubles.close()
        databases.cleanup()
    import inprocess

    tls = "https" if args.slack_tls else "http"
    inprocess.report(f"relay path, one thread · {args.database} · Slack over {tls}", figures)
    return 0


def measure(
    args: argparse.Namespace,
    run: Any,
    webhook_examples: Any,
    doubles: Any,
    database_url: str,
    tmp: Path,
) -> dict[str, str]:
    import inprocess
    import yaml

    config = yaml.safe_load(run.CONFIG)
    config["rate_limits"]["root_edit_seconds"] = 0
    log_path = os.environ.get("RELAY_LOG", os.devnull)
    with inprocess.bridge(
        run, doubles, database_url, tmp, config=config, log_path=log_path
    ) as bridge:
        sql = Statements(bridge.engine)
        if args.work != "events":
            figures = commands(args.work, args.requests, bridge, run, doubles, sql)
        else:
            figures = relay(args.requests, bridge, run, webhook_examples, doubles, sql)
        if args.statements:
            figures.update(sql.breakdown())
        return figures


class Statements:
    """Counts the SQL statements and commits the measured code sends, at the driver.

    Deterministic where CPU figures are not: two trees compared on an unsteady host differ here
    only if their code does. The store runs its hot statements on pooled DBAPI connections, past
    SQLAlchemy's execution events, so the count is taken below it: SQLite's trace callback (every
    statement, BEGIN and COMMIT included) and, on PostgreSQL, a psycopg cursor class that counts
    its executes plus a count of the connection's commits. An autocommit statement is a
    transaction of its own; BEGIN…COMMIT around statements costs two more round trips on
    PostgreSQL. Counting is on only inside `counting()`; the intake's insert of each delivery is
    left out, so the figure is the job's. While counting, a statement's text is only kept; it is
    folded into its shape after the measured run (`breakdown`), so the CPU figures do not carry
    the bench's own regular expressions (folding each statement as it ran was ~8 % of the CPU
    per relayed event that py-spy put on the measured thread).
    """

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.on = False
        self.units = 0
        self.seen: list[str] = []  # the text of each statement counted, folded later
        self.commits = 0
        self.postgres = engine.dialect.name == "postgresql"
        if self.postgres:
            import psycopg

            counter = self

            class Counting(psycopg.Cursor):  # type: ignore[misc]
                def execute(self, query: Any, *rest: Any, **kw: Any) -> Any:
                    counter.statement(str(query))
                    return super().execute(query, *rest, **kw)

            commit = psycopg.Connection.commit

            def counted_commit(conn: Any) -> None:
                if counter.on:
                    counter.commits += 1
                commit(conn)

            psycopg.Connection.commit = counted_commit  # type: ignore[method-assign]
            self._cursor = Counting
        # Hooked once per connection (at connect), not at every checkout: a pool event per
        # checkout is CPU the measured thread would pay for the bench. The pool is emptied so
        # that every connection from now on is a new one (engine-level events outlive it).
        event.listen(engine, "connect", self._connected)
        engine.dispose()

    def _connected(self, dbapi_connection: Any, record: Any) -> None:
        if self.postgres:
            dbapi_connection.cursor_factory = self._cursor
        else:
            dbapi_connection.set_trace_callback(self._sqlite)

    def _sqlite(self, text: str) -> None:
        word = text.split(None, 1)[0].upper()
        if word == "COMMIT":
            self.commits += self.on
        elif word != "BEGIN":
            self.statement(text)

    def statement(self, text: str) -> None:
        if self.on:
            self.seen.append(text)

    @property
    def statements(self) -> dict[str, int]:
        """Each statement's shape and how many times it ran."""
        shapes: dict[str, int] = {}
        for text in self.seen:
            # SQLite's trace gives the statement with its values written in: fold them back.
            folded = re.sub(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b", "?", text)
            key = " ".join(folded.split())[:100]
            shapes[key] = shapes.get(key, 0) + 1
        return shapes

    def counting(self) -> Any:
        import contextlib

        @contextlib.contextmanager
        def scope() -> Any:
            self.on = True
            try:
                yield
            finally:
                self.on = False
                self.units += 1

        return scope()

    def figures(self) -> dict[str, str]:
        n = max(self.units, 1)
        statements = len(self.seen)
        figures = {
            "SQL statements per unit": f"{statements / n:.2f}",
            "BEGIN…COMMIT transactions per unit": f"{self.commits / n:.2f}",
        }
        if self.postgres:  # psycopg sends BEGIN and COMMIT as round trips of their own
            figures["round trips per unit"] = f"{(statements + 2 * self.commits) / n:.2f}"
        return figures

    def breakdown(self) -> dict[str, str]:
        n = max(self.units, 1)
        ranked = sorted(self.statements.items(), key=lambda kv: -kv[1])
        return {
            f"  statement {i + 1}": f"{count / n:5.2f} x  {text}"
            for i, (text, count) in enumerate(ranked)
        }


def relay(
    count: int, bridge: Any, run: Any, webhook_examples: Any, doubles: Any, sql: Statements
) -> dict[str, str]:
    from bot.model import TRIGGERED, NewRequest

    store, slack, jobs = bridge.store, bridge.slack, bridge.jobs
    template = next(
        p
        for p in webhook_examples.payloads("workflow_run", "completed")
        if len(json.dumps(p)) > 19000
    )
    channel = "C0BENCH01"
    reqs = []
    for n in range(count):
        sha = f"{n:040x}"
        req, _ = store.create_request(
            NewRequest(
                kind="evaluate",
                repo=run.REPO,
                pr_number=1000 + n,
                head_sha=sha,
                trigger="label",
                channel_id=channel,
                user_id="U0BENCH01",
                idempotency_key=f"relay:{uuid.uuid4()}",
            )
        )
        root_ts = slack.post(channel, f"root of {req.id}")  # the root the events edit
        store.update(req.id, status=TRIGGERED, root_ts=root_ts, action_started_at=time.time() - 5)
        reqs.append((req.id, sha, 1000 + n))
    bodies = []
    for n, (rid, sha, pr) in enumerate(reqs):
        for action in ("in_progress", "completed"):
            body = run.workflow_run_body(template, n, rid, sha, action, pr)
            bodies.append((f"relay-{uuid.uuid4()}", action, body.decode()))
    walls: list[float] = []
    connections0 = doubles.ask("slack connections")
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for delivery_id, action, body in bodies:
        t = time.perf_counter()
        store.record_delivery(delivery_id, "workflow_run", action, body)
        with sql.counting():
            jobs.run_delivery(delivery_id, "workflow_run")
        walls.append((time.perf_counter() - t) * 1000)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    connections = doubles.ask("slack connections") - connections0
    done = sum(1 for rid, _, _ in reqs if store.get(rid).status == "succeeded")
    walls.sort()
    return {
        "events": f"{len(bodies)} ({count} requests: started, finished)",
        "requests succeeded": f"{done} of {count}",
        "CPU per event (this thread)": f"{cpu * 1000 / len(bodies):.2f} ms",
        "wall per event p50 / p99": (
            f"{statistics.median(walls):.2f} / {walls[int(0.99 * (len(walls) - 1))]:.2f} ms"
        ),
        "events per second (one thread)": f"{len(bodies) / wall:.0f}",
        "Slack connections opened": str(connections),
        **sql.figures(),
    }


def commands(
    kind: str, count: int, bridge: Any, run: Any, doubles: Any, sql: Statements
) -> dict[str, str]:
    from bot.model import PENDING_APPROVAL, NewRequest

    store, jobs = bridge.store, bridge.jobs
    first = 5000  # PRs of their own (the double's `pulls`), one per /evaluate
    if kind == "evaluate":
        doubles.ask(f"pulls {first} {count + 1}")
    ids = []
    for n in range(count + 1):  # the first one, not measured, pays the first-use imports
        who: dict[str, Any] = {
            "channel_id": "C0BENCH01",
            "user_id": f"U0BENCH{n % 5000:05d}",
            "idempotency_key": f"commands:{uuid.uuid4()}",
        }
        if kind == "evaluate":
            new = NewRequest(
                kind="evaluate", repo=run.REPO, pr_number=first + n, trigger="label", **who
            )
        else:
            new = NewRequest(
                kind="deploy",
                repo=run.REPO,
                trigger="dispatch",
                run_ref=f"run-{uuid.uuid4().hex[:12]}",
                environment="production",
                event_type="deploy",
                status=PENDING_APPROVAL,
                expires_at=time.time() + 1800,
                **who,
            )
        req, _ = store.create_request(new)
        ids.append(req.id)
    jobs.run_request(ids.pop(0))
    walls: list[float] = []
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for rid in ids:
        t = time.perf_counter()
        with sql.counting():
            jobs.run_request(rid)
        walls.append((time.perf_counter() - t) * 1000)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    done = [store.get(rid) for rid in ids]
    reached = sum(1 for r in done if r.root_ts and r.status in ("triggered", PENDING_APPROVAL))
    walls.sort()
    return {
        "jobs": f"{count} /{kind} commands",
        "reached their root / card": f"{reached} of {count}",
        "CPU per job (this thread)": f"{cpu * 1000 / count:.2f} ms",
        "wall per job p50 / p99": (
            f"{statistics.median(walls):.2f} / {walls[int(0.99 * (len(walls) - 1))]:.2f} ms"
        ),
        "jobs per second (one thread)": f"{count / wall:.0f}",
        **sql.figures(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
