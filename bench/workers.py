"""1 -> N serving processes side by side (`serve --workers N`, PostgreSQL); prints figures.

    .venv/bin/python bench/workers.py                 # 1 and 2 workers, PostgreSQL
    .venv/bin/python bench/workers.py --workers 1,2,3 --rate 300

For each worker count, on a fresh database and a fresh server (CHATOPS_WORKERS=N): stored
command acks at 32 connections (bench/run.py's loadgen), and relayed webhooks: an evaluation
per PR, then each run's `workflow_run` events (started, finished about a second later) sent at
a steady rate; relayed/s is thread replies received by the Slack double ÷ seconds from the
first event sent to the last reply.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import history  # noqa: E402
import run as bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database", choices=("postgres",), default="postgres")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--rate", type=float, default=300.0, help="webhooks/s in the relay phase")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each load point")
    # Each process keeps a pool of up to 64 PostgreSQL connections (bot/db.py); 2 workers at
    # 64 load connections can pass a default max_connections of 100 on a shared server.
    ap.add_argument("--connections", type=int, default=32, help="ack load connections")
    ap.add_argument("--job-workers", default="8", help="CHATOPS_JOB_WORKERS of each process")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",")]
    print(
        f"chatops-bridge serve --workers · {os.cpu_count()} CPUs · load average "
        f"{os.getloadavg()[0]:.2f} at start · PostgreSQL · {args.seconds:.0f} s per point · "
        f"{args.connections} connections · {args.job_workers} job workers per process"
    )
    sys.path.insert(0, str(bench.ROOT / "tests"))
    import webhook_examples

    template = next(
        p
        for p in webhook_examples.payloads("workflow_run", "completed")
        if len(json.dumps(p)) > 19000
    )
    tmp = Path(tempfile.mkdtemp(prefix="chatops-workers-"))
    doubles = bench.Doubles()
    dbs = bench.Databases(args.database, tmp)
    launcher = bench.Launcher(doubles, dbs, tmp)
    rows = []
    try:
        for n in counts:
            os.environ["CHATOPS_WORKERS"] = str(n)  # the launcher passes its environment on
            os.environ["CHATOPS_JOB_WORKERS"] = args.job_workers
            acks = bench.phase_load(
                launcher, "bridge", "slash", [args.connections], args.seconds, 1.0
            )[0]
            prs = int(args.rate * args.seconds) // 2
            relay = history.phase_relay(
                launcher, template, prs=prs, rate=args.rate, fork=False, base=60_000
            )["result"]
            rows.append((n, acks, relay))
    finally:
        os.environ.pop("CHATOPS_WORKERS", None)
        os.environ.pop("CHATOPS_JOB_WORKERS", None)
        doubles.close()
        dbs.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\n  {'workers':<8} {'acks/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   "
        f"{'relayed/s':>9} {'reply p50':>10} {'p99 ms':>8} {'replies':>10} {'finished runs':>14}"
    )
    for n, acks, relay in rows:
        drain = relay.extra["drain_s"]
        print(
            f"  {n:<8} {acks.throughput:8.0f} {acks.pct(0.5):8.1f} {acks.pct(0.99):8.1f} "
            f"{acks.failed:7d}   {relay.extra['replied'] / drain:9.0f} {relay.pct(0.5):10.1f} "
            f"{relay.pct(0.99):8.1f} {relay.extra['replied']:>5}/{relay.extra['sent']:<5}"
            f"{relay.extra['finished_replied']:>8}/{relay.extra['finished_sent']:<5}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
