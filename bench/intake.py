"""Header flood and slow clients against the real server on loopback; prints figures only.

    .venv/bin/python bench/intake.py                 # both phases (about 1 minute)
    .venv/bin/python bench/intake.py --phases flood  # or: stock, flood, halfopen

- stock: what stock uvicorn (httptools, then h11) does with one 100,000-header request to a
  trivial app: status and time to answer (uvicorn has no header-count limit of its own).
- flood: `python -m bot serve` gets `--flood` requests of 100,000 headers each (unsigned,
  to POST /slack/events; 2 senders, each request on a new connection), while GET /healthz is
  probed every 20 ms on fresh connections: status and time to answer of the flood requests,
  /healthz p50/p99 while the flood runs.
- halfopen: 1,100 connections that send nothing (half of them half a request head) are
  held for `--hold` seconds while /healthz is probed: its p50/p99 and failures, and how many
  of the 1,100 the server had closed by the end.

The server runs with a 1,024-descriptor limit (RLIMIT_NOFILE, as in the issue) and default
CHATOPS_* settings; this process raises its own soft limit to its hard limit only when 1,100
sockets would not fit (it prints so). Loopback only; counts and durations are bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import run  # noqa: E402  (bench/run.py: doubles, databases, the server launcher)

HEADERS = 100_000
FLOOD_HEAD = (
    b"POST /slack/events HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    + b"x-a: b\r\n" * HEADERS
    + b"content-type: application/x-www-form-urlencoded\r\ncontent-length: 0\r\n\r\n"
)


def one_request(port: int, payload: bytes, timeout: float = 120.0) -> tuple[int, float]:
    """(status or 0 for no answer, seconds from first byte sent to the answer's status line)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            with contextlib.suppress(OSError):
                s.sendall(payload)
            data = b""
            while b"\r\n" not in data:
                part = s.recv(4096)
                if not part:
                    break
                data += part
    except OSError:
        return 0, time.perf_counter() - t0
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, time.perf_counter() - t0


class Prober(threading.Thread):
    """GET /healthz every `every` seconds on a fresh connection; latency of each answer."""

    def __init__(self, port: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.ok: list[float] = []
        self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            status, seconds = one_request(
                self.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", 5.0
            )
            if status == 200:
                self.ok.append(seconds)
            else:
                self.failed += 1
            self.stopping.wait(self.every)

    def report(self, label: str) -> str:
        if not self.ok:
            return f"{label}: /healthz never answered 200 ({self.failed} failed)"
        ms = sorted(v * 1000 for v in self.ok)
        p50 = statistics.median(ms)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        return (
            f"{label}: /healthz p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms "
            f"({len(ms)} answered 200, {self.failed} failed)"
        )


def phase_stock() -> None:
    app = (
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http': return\n"
        "    body = str(len(scope['headers'])).encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "stockapp.py").write_text(app)
        for impl in ("httptools", "h11"):
            port = run.free_port()
            args = ["stockapp:app", "--app-dir", tmp, "--port", str(port), "--http", impl]
            proc = subprocess.Popen([run.PY, "-m", "uvicorn", *args, "--log-level", "critical"])
            try:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    with contextlib.suppress(OSError):
                        socket.create_connection(("127.0.0.1", port), 0.2).close()
                        break
                    time.sleep(0.05)
                status, seconds = one_request(port, FLOOD_HEAD)
                print(f"stock uvicorn ({impl}): {HEADERS:,} headers -> {status} in {seconds:.3f} s")
            finally:
                run.stop(proc)


def phase_flood(server: run.Server, count: int) -> None:
    prober = Prober(server.port)
    results: list[tuple[int, float]] = []

    def sender() -> None:
        for _ in range(count // 2):
            results.append(one_request(server.port, FLOOD_HEAD))

    senders = [threading.Thread(target=sender) for _ in range(2)]
    t0 = time.perf_counter()
    prober.start()  # probes only while the flood runs
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    elapsed = time.perf_counter() - t0
    prober.stopping.set()
    prober.join()
    statuses = sorted({s for s, _ in results})
    times = sorted(t for _, t in results)
    print(
        f"header flood: {len(results)} requests of {HEADERS:,} headers in {elapsed:.1f} s; "
        f"status {statuses}; time to answer min {times[0]:.3f} s, "
        f"median {statistics.median(times):.3f} s, max {times[-1]:.3f} s"
    )
    print(prober.report("during the header flood"))


def phase_halfopen(server: run.Server, count: int, hold: float) -> None:
    prober = Prober(server.port)
    prober.start()
    time.sleep(1.0)
    socks: list[socket.socket] = []
    refused = 0
    for i in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        except OSError:
            refused += 1
            continue
        if i % 2:
            with contextlib.suppress(OSError):
                s.sendall(b"POST /slack/events HTTP/1.1\r\nhost: x\r\n")  # never finished
        socks.append(s)
    print(f"half-open: {len(socks)} connections open ({refused} not accepted), holding {hold} s")
    time.sleep(hold)
    prober.stopping.set()
    prober.join()
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            closed += s.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    print(prober.report(f"during {count:,} half-open connections"))
    print(f"half-open: {closed} of {len(socks)} closed by the server within {hold} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phases", default="stock,flood,halfopen")
    parser.add_argument("--flood", type=int, default=2000, help="100,000-header requests")
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--hold", type=float, default=15.0, help="seconds to hold them")
    parser.add_argument(
        "--server-root", default=None, help="serve from another checkout (a before/after)"
    )
    args = parser.parse_args(argv)
    phases = args.phases.split(",")
    if "stock" in phases:
        phase_stock()
    if not {"flood", "halfopen"} & set(phases):
        return 0
    if args.server_root:
        run.ROOT = Path(args.server_root).resolve()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    tmp = Path(tempfile.mkdtemp(prefix="chatops-intake-bench-"))
    doubles = run.Doubles()
    dbs = run.Databases("sqlite", tmp)
    try:
        # The server inherits a 1,024-descriptor limit, as in the issue.
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        server = run.Launcher(doubles, dbs, tmp).bridge()
        need = args.connections + 64
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(need, hard)), hard))
        if soft < need:
            print(f"bench: raised its own file limit from {soft} to {min(need, hard)}")
        print(
            f"server: {run.ROOT}, pid {server.proc.pid}, RLIMIT_NOFILE 1024, "
            "default CHATOPS_* settings"
        )
        try:
            if "flood" in phases:
                phase_flood(server, args.flood)
            if "halfopen" in phases:
                phase_halfopen(server, args.connections, args.hold)
        finally:
            run.stop(server.proc)
    finally:
        doubles.close()
        dbs.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
