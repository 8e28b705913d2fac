"""The test suite's loopback Slack and GitHub doubles in a process of their own, for bench/run.py.

Prints one JSON line with their URLs and the App's key, then answers commands on stdin, one
JSON line each: `reset` (forget recorded calls and posted messages), `reset calls` (the calls
only: the messages posted so far can still be edited), `replies` (thread replies with the time the
double received them), `counts` (calls per method), `pulls FIRST COUNT` (open PRs FIRST… of
REPO, each with its own head SHA: `pull_head(n)`; answers their numbers and SHAs), `slack
connections` (TCP connections Slack's double has accepted), `quit`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tests.doubles.github_api import GitHubDouble  # noqa: E402
from tests.doubles.slack_api import SlackDouble  # noqa: E402
from tests.doubles.tls import with_system_cas  # noqa: E402

REPO = "acme/ml-models"
HEAD_SHA = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"


def pull_head(number: int) -> str:
    """The head SHA of bench PR `number` (distinct per PR, so each /evaluate is its own)."""
    return hashlib.sha1(f"bench-pr-{number}".encode()).hexdigest()


def main() -> None:
    # `--slack-tls`: Slack's double serves https (a certificate made at start; the bridge
    # trusts it through SSL_CERT_FILE), so that a connection costs a TLS handshake as with
    # slack.com.
    slack = SlackDouble(tls="--slack-tls" in sys.argv[1:]).start()
    github = GitHubDouble().start()
    github.add_repo(REPO, installation_id=101)
    github.add_pull(REPO, 42, head_sha=HEAD_SHA, title="Try a wider layer")
    # The double counts GitHub's 5,000 requests an hour; a benchmark spends that in seconds.
    github.rate_remaining = 10**9
    print(
        json.dumps(
            {
                "slack_url": slack.url,
                # What the bridge trusts (SSL_CERT_FILE): the system's CAs and the double's, so
                # that a new TLS context costs what it costs in production.
                "slack_ca_file": with_system_cas(slack.ca_file) if slack.ca_file else None,
                "github_url": github.url,
                "app_id": github.app_id,
                "private_key_pem": github.private_key_pem,
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        cmd = line.strip()
        if cmd in ("reset", "reset calls"):
            slack.reset()
            github.reset()
            github.rate_remaining = 10**9
            if cmd == "reset":  # `reset calls` keeps the posted messages (they can be edited)
                with slack._cond:
                    slack.messages.clear()
            out: object = {"ok": True}
        elif cmd == "replies":
            out = [
                {"text": c.params.get("text"), "at": c.at, "thread_ts": c.params["thread_ts"]}
                for c in slack.calls_to("chat.postMessage")
                if c.params.get("thread_ts")
            ]
        elif cmd == "counts":
            counts: dict[str, int] = {}
            for c in list(slack.calls):
                counts[c.method] = counts.get(c.method, 0) + 1
            for r in list(github.requests):
                key = f"github {r.method} {r.status}"
                counts[key] = counts.get(key, 0) + 1
            counts["slack_violations"] = len(slack.violations)
            out = counts
        elif cmd == "slack connections":
            out = slack.connections_accepted
        elif cmd.startswith("pulls "):
            # `pulls FIRST COUNT`: COUNT more open PRs, numbered from FIRST, a head SHA each (the
            # reply phase; bench/history.py: fork PRs, matched by head SHA alone).
            first, count = (int(x) for x in cmd.split()[1:3])
            out = []
            for number in range(first, first + count):
                sha = pull_head(number)
                github.add_pull(REPO, number, head_sha=sha, title=f"Bench PR {number}")
                out.append({"number": number, "head_sha": sha})
        elif cmd == "quit":
            break
        else:
            out = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(out), flush=True)
    slack.stop()
    github.stop()


if __name__ == "__main__":
    main()
