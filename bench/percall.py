"""What bench/slack_client.py and bench/github_client.py share: the calling thread's CPU clock
and the command line with its first output line."""

from __future__ import annotations

import argparse
import os
import resource


def thread_cpu() -> float:
    """User + system CPU seconds of the calling thread (the peer's double runs in others)."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def arguments(doc: str, what: str, argv: list[str] | None) -> argparse.Namespace:
    """`--calls N`, parsed; prints what is measured, on what, under what load."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--calls", type=int, default=500)
    args = ap.parse_args(argv)
    print(
        f"{what} · {os.cpu_count()} CPUs · "
        f"load average {os.getloadavg()[0]:.2f} · {args.calls} calls per row"
    )
    return args
