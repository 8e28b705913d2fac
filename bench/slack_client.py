"""One Slack Web API call, as the bridge makes it: slack_sdk's urllib exchange (a connection per
call) against bot/keepalive.py's reused connections, over http and over TLS; on reused
connections both through slack_sdk's api_call ("keepalive") and as SlackOut sends its calls
now, past slack_sdk's request building ("lean": KeepAliveWebClient.lean_call).

Runs `SlackOut.post` (chat.postMessage in a thread) against the test suite's Slack double on
loopback and prints, per transport: wall time per call, CPU of the calling thread per call
(the bridge's side only; the double runs in other threads), and the connections the double
accepted. Over TLS the double has a certificate made at start. As deployed, neither client is
given an SSL context: both trust SSL_CERT_FILE, here the system's CA bundle (when there is one)
plus the double's certificate. urllib builds a context, and so reads that file, for every new
connection; the keep-alive client builds one once. Usage:

    python bench/slack_client.py [--calls N]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from percall import arguments, thread_cpu  # noqa: E402
from slack_sdk import WebClient  # noqa: E402

from bot.keepalive import KeepAliveWebClient  # noqa: E402
from bot.slack import SlackOut, make_client  # noqa: E402
from tests.doubles.slack_api import SlackDouble  # noqa: E402
from tests.doubles.tls import with_system_cas  # noqa: E402


class _ThroughApiCall(KeepAliveWebClient):
    """Reused connections, but every call through slack_sdk's api_call (as before lean_call)."""

    lean = False  # type: ignore[assignment]


def measure(double: SlackDouble, transport: str, calls: int) -> tuple[float, float, int]:
    out = SlackOut(make_client("xoxb-bench", double.url))
    cls = {"urllib": WebClient, "keepalive": _ThroughApiCall, "lean": KeepAliveWebClient}[transport]
    client = cls(token="xoxb-bench", base_url=double.url, timeout=10)
    client.retry_handlers = out.client.retry_handlers
    out.client = client
    out.post("C0BENCH", "warm-up")
    opened = double.connections_accepted
    cpu0, t0 = thread_cpu(), time.perf_counter()
    for i in range(calls):
        out.post("C0BENCH", f"message {i}", thread_ts="1700000000.000100")
    wall, cpu = time.perf_counter() - t0, thread_cpu() - cpu0
    return wall * 1e6 / calls, cpu * 1e6 / calls, double.connections_accepted - opened


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, "Slack Web API call (chat.postMessage via SlackOut)", argv)
    for tls in (False, True):
        with SlackDouble(tls=tls) as double:
            if double.ca_file:
                os.environ["SSL_CERT_FILE"] = with_system_cas(double.ca_file)
            for transport in ("urllib", "keepalive", "lean"):
                wall, cpu, opened = measure(double, transport, args.calls)
                print(
                    f"  {'https' if tls else 'http':<5} {transport:<9}  wall {wall:7.0f} us/call"
                    f"   calling thread CPU {cpu:6.0f} us/call   connections opened {opened}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
