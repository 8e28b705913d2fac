"""CPU of one log line through the production handler (bot/logs.py: ids from the scope, the
redactor, the JSON formatter) into /dev/null: the "command answered" line every command's ack
writes. Three rounds of N lines, µs of process CPU per line. Usage:

    python bench/log_line.py [--lines N] [--root /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(args.root).resolve()))
    from bot import logs

    out, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115
    logs.setup(fmt="json", secrets=["xoxb-bench-0123456789"], level="INFO")
    log = logging.getLogger("handlers.common")
    rounds = []
    for _ in range(3):
        started = time.process_time()
        with logs.context(request_id="0123456789ab"):
            for _ in range(args.lines):
                log.info("command answered", extra={"command": "evaluate", "outcome": "help"})
        rounds.append((time.process_time() - started) / args.lines * 1e6)
    sys.stderr.close()
    sys.stderr = out
    print(
        f"one log line · load average {os.getloadavg()[0]:.2f} · {args.lines} lines per round: "
        + ", ".join(f"{r:.1f}" for r in rounds)
        + " µs of CPU each"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
