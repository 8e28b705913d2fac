"""One GitHub API call, as the bridge makes it: through PyGithub's Requester (requests, urllib3)
against GitHubApp's own exchange on bot/keepalive.py's pooled connections.

Runs `GitHubApp.get_pull` (a read) and `GitHubApp.add_label` (a write) against the test suite's
GitHub double on loopback and prints, per path: wall time per call and CPU of the calling
thread per call (the bridge's side only; the double runs in other threads). Each path mints
its installation token and opens its connection before the timing.
Usage:

    python bench/github_client.py [--calls N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from percall import arguments, thread_cpu  # noqa: E402

from bot.github import GitHubApp  # noqa: E402
from tests.doubles.github_api import GitHubDouble  # noqa: E402

REPO = "acme/ml-models"


def measure(gh: GitHubDouble, path: str, op: str, calls: int) -> tuple[float, float]:
    app = GitHubApp(app_id=gh.app_id, private_key=gh.private_key_pem, base_url=gh.url)
    if path == "pygithub":
        app.__dict__["_pool"] = None  # what a proxy in the environment does: the Requester
    app.get_pull(REPO, 7)  # the token, the imports, the first connection: not timed
    cpu0, t0 = thread_cpu(), time.perf_counter()
    for _ in range(calls):
        if op == "get_pull":
            app.get_pull(REPO, 7)
        else:
            app.add_label(REPO, 7, "evaluate")
    wall, cpu = time.perf_counter() - t0, thread_cpu() - cpu0
    return wall * 1e6 / calls, cpu * 1e6 / calls


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, "GitHub API call via GitHubApp", argv)
    with GitHubDouble() as gh:
        gh.add_repo(REPO, installation_id=5)
        gh.add_pull(REPO, 7, head_sha="a" * 40)
        for op in ("get_pull", "add_label"):
            for path in ("pygithub", "lean"):
                wall, cpu = measure(gh, path, op, args.calls)
                print(
                    f"  {op:<9} {path:<8}  wall {wall:7.0f} us/call"
                    f"   calling thread CPU {cpu:6.0f} us/call"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
