"""CPU per call of the store's hot reads and writes, one thread, no load: the reads every relayed
event and job makes (a request by id, a run's link with its request, a request's runs, a run's
owner, a PR's open evaluations) and the writes (a request stored with its audit row, a claim and
its release, a status update, a details merge, a reply's key, a delivery stored, claimed and
finished, an audit row).

    .venv/bin/python bench/store_reads.py                       # SQLite
    .venv/bin/python bench/store_reads.py --database postgres   # a scratch database, dropped after
    .venv/bin/python bench/store_reads.py --root /path/to/other/checkout   # the same, other code

A call's figure is the median of `--rounds` rounds of `--calls` calls each (process CPU clock,
so the database server's own CPU is not in it on PostgreSQL). bench/relay.py measures a whole
relayed event, whose spread on a shared host can be as wide as one statement's cost; this
isolates the store's calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("CHATOPS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose bot/ is measured")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    sys.path.insert(0, args.root)
    from sqlalchemy import create_engine, text

    from bot.db import make_engine, migrate
    from bot.model import NewRequest
    from bot.store import Store

    tmp = tempfile.mkdtemp(prefix="chatops-reads-")
    admin: Any = None
    name = f"chatops_reads_{os.getpid()}"
    if args.database == "sqlite":
        url = f"sqlite:///{tmp}/reads.db"
    else:
        admin = create_engine(
            PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    try:
        migrate(engine)
        store = Store(engine)

        def new(key: str, pr: int) -> NewRequest:
            return NewRequest(
                kind="evaluate",
                repo="acme/models",
                trigger="label",
                channel_id="C1",
                user_id="U1",
                idempotency_key=key,
                pr_number=pr,
                head_sha="a" * 40,
            )

        req, _ = store.create_request(new("bench-reads", 42), audit_action="requested")
        store.upsert_run(
            run_id="7001",
            request_id=req.id,
            repo="acme/models",
            name="eval",
            status="completed",
            conclusion="success",
            attempt=1,
            html_url="https://github.com/acme/models/actions/runs/7001",
            head_sha="a" * 40,
            started_at=time.time(),
        )
        calls = {
            "get (request by id)": lambda: store.get(req.id),
            "linked_request (run link + request)": lambda: store.linked_request("7001"),
            "runs_of (a request's runs)": lambda: store.runs_of(req.id),
            "run_owner": lambda: store.run_owner("7001"),
            "find (a PR's open evaluations)": lambda: store.find(
                repo="acme/models",
                pr_number=42,
                kind="evaluate",
                statuses=("accepted", "triggered", "queued", "running"),
                limit=5,
            ),
        }
        n = iter(range(10**9))  # fresh keys and ids for the writes that insert
        calls.update(
            {
                "create_request (+ audit row)": lambda: store.create_request(
                    new(f"bench-create-{next(n)}", 43), audit_action="requested"
                ),
                "claim + release": lambda: (store.claim(req.id), store.release(req.id)),
                "update (a column)": lambda: store.update(req.id, action_started_at=time.time()),
                "update_and_merge (status if + details)": lambda: store.update_and_merge(
                    req.id, {"note": "n"}, only_if_status=("accepted",), status="accepted"
                ),
                "first_time (a reply's key)": lambda: store.first_time(f"reply:{next(n)}"),
                "delivery: record + claim + finish": lambda: _delivery(store, f"d-{next(n)}"),
                "audit (a row)": lambda: store.audit(
                    actor="U1", action="checked", outcome="ok", request_id=req.id
                ),
            }
        )
        print(
            f"store calls · {args.database} · code {args.root} · {args.rounds} rounds of "
            f"{args.calls} calls · load average {os.getloadavg()[0]:.2f}"
        )
        for label, call in calls.items():
            for _ in range(100):
                call()
            per_call = []
            for _ in range(args.rounds):
                t0 = time.process_time()
                for _ in range(args.calls):
                    call()
                per_call.append((time.process_time() - t0) / args.calls * 1e6)
            print(
                f"  {label:<38} {statistics.median(per_call):7.1f} µs CPU per call "
                f"(rounds {min(per_call):.1f}-{max(per_call):.1f})"
            )
    finally:
        engine.dispose()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    return 0


def _delivery(store: Any, delivery_id: str) -> None:
    store.record_delivery(delivery_id, "workflow_run", "completed", '{"bench": 1}')
    store.claim_delivery(delivery_id)
    store.finish_delivery(delivery_id)


if __name__ == "__main__":
    raise SystemExit(main())
