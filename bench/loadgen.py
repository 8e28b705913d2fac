"""A small keep-alive HTTP/1.1 load generator (asyncio + uvloop + httptools), one process.

bench/run.py starts one or more of these as subprocesses, so the client does not share a GIL
with the server it measures. The spec comes as JSON on stdin; the result goes as JSON to stdout.

Closed loop: each connection sends its next request as soon as the answer to the previous one
arrived. Latency is measured from the first byte written to the last byte read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httptools

Build = Callable[[], bytes]


def slack_request_builder(spec: dict[str, Any], worker: int) -> Build:
    """Signed slash commands, each with its own trigger_id, from many users.

    spec: `command` (default /evaluate), `text` (default "42"; `{n}` is replaced by a number
    unique to this builder and `{hex}` by 16 random hex digits, e.g. a tracker run id), `users`.
    """
    secret = spec["signing_secret"].encode()
    host = f"{spec['host']}:{spec['port']}"
    users = [f"UB{i:06d}" for i in range(spec.get("users", 5000))]
    rnd = random.Random(spec.get("seed", 0) + worker)
    counter = itertools.count()
    text = spec.get("text", "42")
    command = spec.get("command", "/evaluate")
    first = spec.get("first", 0)

    def build() -> bytes:
        n = next(counter)
        user = rnd.choice(users)
        said = text.replace("{n}", str(first + n)).replace("{hex}", f"{rnd.getrandbits(64):016x}")
        body = urlencode(
            {
                "token": "unused",
                "team_id": "T0001",
                "team_domain": "acme",
                "channel_id": spec.get("channel", "C0BENCH01"),
                "channel_name": "bench",
                "user_id": user,
                "user_name": user.lower(),
                "command": command,
                "text": said,
                "api_app_id": "A0001",
                "response_url": "",
                "trigger_id": f"{worker}.{n}.{rnd.getrandbits(48):012x}",
            }
        ).encode()
        ts = str(int(time.time()))
        sig = hmac.new(secret, b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
        return (
            f"POST /slack/events HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nX-Slack-Request-Timestamp: {ts}\r\n"
            f"X-Slack-Signature: v0={sig}\r\n\r\n"
        ).encode() + body

    return build


def webhook_request_builder(spec: dict[str, Any], worker: int) -> Build:
    """Signed GitHub deliveries of one real payload, each with its own X-GitHub-Delivery."""
    with open(spec["payload_path"], "rb") as fh:
        body = fh.read()
    sig = hmac.new(spec["webhook_secret"].encode(), body, hashlib.sha256).hexdigest()
    host = f"{spec['host']}:{spec['port']}"
    event = spec.get("event", "workflow_run")
    prefix = f"{spec.get('seed', 0)}-{worker}-"
    counter = itertools.count()

    def build() -> bytes:
        return (
            f"POST /github/webhooks HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-GitHub-Event: {event}\r\n"
            f"X-GitHub-Delivery: {prefix}{next(counter)}\r\n"
            f"X-Hub-Signature-256: sha256={sig}\r\nUser-Agent: GitHub-Hookshot/bench\r\n\r\n"
        ).encode() + body

    return build


BUILDERS = {"slash": slack_request_builder, "webhook": webhook_request_builder}


class Connection(asyncio.Protocol):
    """One keep-alive connection that sends a request and waits for the whole answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[int] | None = None
        self.body: list[bytes] = []
        self.lost = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._finish_error(ConnectionError("connection closed"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    def _finish_error(self, exc: Exception) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    async def request(self, raw: bytes, timeout: float = 30.0) -> int:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.body = []
        timer = loop.call_later(timeout, self._finish_error, TimeoutError("no answer"))
        self.transport.write(raw)
        try:
            return await self.done
        finally:
            timer.cancel()


async def connect(host: str, port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Connection, host, port)
    return proto


async def closed_loop(spec: dict[str, Any], worker: int) -> dict[str, Any]:
    build = BUILDERS[spec["kind"]](spec, worker)
    host, port = spec["host"], spec["port"]
    start = time.perf_counter()
    warm_until = start + spec.get("warmup", 1.0)
    stop_at = warm_until + spec["duration"]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    timeout = spec.get("timeout", 30.0)
    completed = [0]  # answers that arrived inside the window: the throughput's numerator
    answered = Counter[str]()  # every answer, warm-up included (the work the server did)

    async def one_connection() -> None:
        conn: Connection | None = None
        while time.perf_counter() < stop_at:
            try:
                if conn is None or conn.lost:
                    conn = await connect(host, port)
                raw = build()
                t0 = time.perf_counter()
                status = await conn.request(raw, timeout)
                t1 = time.perf_counter()
            except (OSError, ConnectionError, TimeoutError, httptools.HttpParserError) as exc:
                if time.perf_counter() >= warm_until:
                    errors[type(exc).__name__] += 1
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                await asyncio.sleep(0.01)
                continue
            answered[str(status)] += 1
            if warm_until <= t1 <= stop_at:
                completed[0] += 1
            if t0 >= warm_until:
                latencies.append((t1 - t0) * 1000.0)
                statuses[str(status)] += 1
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(one_connection() for _ in range(spec["connections"])))
    return {
        "latencies_ms": latencies,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "seconds": spec["duration"],
        "completed": completed[0],
        "answered": dict(answered),
    }


def main() -> None:
    spec = json.loads(sys.stdin.read())
    import uvloop  # uvicorn[standard] brings it

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(closed_loop(spec, spec.get("worker", 0)))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
