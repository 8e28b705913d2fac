"""Start-up of this tree and another, alternated start by start: the seconds from spawning
`python -m bot serve` to its first /healthz 200, on a fresh database and on one an earlier
start made (a restart). On a host whose speed drifts from minute to minute, starts taken side
by side compare two trees where `bench/run.py --phases cold` run twice, minutes apart, does
not. Prints each start and the medians; asserts nothing.

    .venv/bin/python bench/starts.py --other /path/to/checkout [--database postgres] [--starts 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--other", required=True, help="the checkout to compare with")
    ap.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--starts", type=int, default=5, help="of each kind, per tree")
    args = ap.parse_args(argv)
    trees = {"this tree": ["-m", "bot", "serve"], args.other: run.server_from(args.other)}
    tmp = Path(tempfile.mkdtemp(prefix="chatops-starts-"))
    doubles = run.Doubles(slack_tls=False)
    dbs = run.Databases(args.database, tmp)
    launcher = run.Launcher(doubles, dbs, tmp)
    try:
        _compare(launcher, trees, args.database, args.starts)
    finally:
        doubles.close()
        dbs.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _compare(
    launcher: run.Launcher, trees: dict[str, list[str]], database: str, starts: int
) -> None:
    made: dict[str, str] = {}
    for name, server_args in trees.items():  # one start each first: bytecode, and a database
        run.SERVER_ARGS[:] = server_args
        first = launcher.bridge()
        run.stop(first.proc)
        made[name] = first.database_url
    print(f"starts · {database} · {starts} of each kind per tree, alternated")
    for kind in ("fresh database", "restart"):
        seconds: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(starts):
            for name, server_args in trees.items():
                run.SERVER_ARGS[:] = server_args
                server = launcher.bridge(None if kind == "fresh database" else made[name])
                seconds[name].append(server.cold_start)
                run.stop(server.proc)
        for name, values in seconds.items():
            shown = ", ".join(f"{v:.3f}" for v in values)
            print(f"  {kind:<15} {name}: {shown} s · median {statistics.median(values):.3f} s")


if __name__ == "__main__":
    sys.exit(main())
