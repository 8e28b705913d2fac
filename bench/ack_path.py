"""CPU of the endpoints' acks alone, in one process: the ASGI app called directly.

    .venv/bin/python bench/ack_path.py                        # help, /deploy, webhook intake
    .venv/bin/python bench/ack_path.py --only intake          # one kind
    .venv/bin/python bench/ack_path.py --root /path/to/other/checkout   # the same, other code
    .venv/bin/python bench/ack_path.py --database postgres

bench/run.py measures acks through uvicorn under load from other processes, where the figure
moves with the machine's other work by more than a small change to the ack path saves. This one
builds the bridge as `serve` does (JSON logs at INFO to /dev/null, the writer thread), calls its
ASGI app with signed slash commands one after the other (no socket, no uvicorn: the same for
every tree), and reads the process's CPU clock: the Starlette stack, Bolt's verification,
middleware and dispatch, the listener, and for `/deploy run-<hex>` the stored request's write
on the writer thread. Jobs are not run (the ack hands a new request to the pool; here that is
a no-op), so the figure is the ack's own. `/deploy` comes from 5,000 users, as in bench/run.py.
`intake` posts bench/run.py's 18.8 KiB `workflow_run.completed` delivery, signed, with a new
X-GitHub-Delivery each time: verified, parsed, checked, stored, 202 (its job not run either).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="per kind of ack")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose bot/ is measured")
    ap.add_argument("--only", choices=("help", "deploy", "intake"), help="one kind of ack")
    args = ap.parse_args(argv)
    sys.path[:0] = [str(BENCH)]
    import run  # bench/run.py: the doubles, databases and config

    sys.path.insert(0, str(Path(args.root).resolve()))
    tmp = Path(tempfile.mkdtemp(prefix="chatops-acks-"))
    doubles = run.Doubles()
    databases = run.Databases(args.database, tmp)
    try:
        figures = measure(args, run, doubles, databases.fresh(), tmp)
    finally:
        doubles.close()
        databases.cleanup()
    import inprocess

    inprocess.report(
        f"ack path, one process, ASGI app called directly · {args.database} · "
        f"load average {os.getloadavg()[0]:.2f}",
        figures,
        width=44,
    )
    return 0


def measure(
    args: argparse.Namespace, run: Any, doubles: Any, database_url: str, tmp: Path
) -> dict[str, str]:
    import inprocess

    signing = "acks-" + secrets.token_hex(8)
    with inprocess.bridge(
        run, doubles, database_url, tmp, signing_secret=signing, webhook_secret=signing
    ) as bridge:
        bridge.jobs.submit = lambda request_id: None
        bridge.jobs.submit_delivery = lambda delivery_id, event: None
        app = bridge.asgi()
        return asyncio.run(
            drive(app, signing, args.requests, args.rounds, args.only, webhook_body())
        )


def webhook_body() -> bytes:
    """The 18.8 KiB workflow_run.completed delivery bench/run.py's intake phase sends."""
    sys.path.insert(0, str(ROOT / "tests"))
    import json

    import webhook_examples

    payload = next(
        p
        for p in webhook_examples.payloads("workflow_run", "completed")
        if len(json.dumps(p)) > 19000
    )
    return json.dumps(payload, separators=(",", ":")).encode()


def post(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of a POST to `path` from a loopback client."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 3000),
    }


async def drive(
    app: Any, signing: str, count: int, rounds: int, only: str | None, webhook: bytes
) -> dict[str, str]:
    rnd = random.Random(7)
    users = [f"UB{i:06d}" for i in range(5000)]
    serial = itertools.count()

    def request(command: str, text: str) -> tuple[dict[str, Any], bytes]:
        user = rnd.choice(users)
        body = urlencode(
            {
                "token": "unused",
                "team_id": "T0001",
                "team_domain": "acme",
                "channel_id": "C0BENCH01",
                "channel_name": "bench",
                "user_id": user,
                "user_name": user.lower(),
                "command": command,
                "text": text,
                "api_app_id": "A0001",
                "response_url": "",
                "trigger_id": f"acks.{next(serial)}.{rnd.getrandbits(48):012x}",
            }
        ).encode()
        ts = str(int(time.time()))
        sig = hmac.new(signing.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
        headers = [
            (b"host", b"127.0.0.1:3000"),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
            (b"x-slack-request-timestamp", ts.encode()),
            (b"x-slack-signature", f"v0={sig.hexdigest()}".encode()),
        ]
        return post("/slack/events", headers), body

    def delivery(_command: str, _text: str) -> tuple[dict[str, Any], bytes]:
        """A signed GitHub delivery of `webhook`, a new X-GitHub-Delivery each time."""
        sig = hmac.new(signing.encode(), webhook, hashlib.sha256).hexdigest()
        headers = [
            (b"host", b"127.0.0.1:3000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(webhook)).encode()),
            (b"x-github-event", b"workflow_run"),
            (b"x-github-delivery", f"acks-{next(serial)}-{rnd.getrandbits(48):012x}".encode()),
            (b"x-hub-signature-256", f"sha256={sig}".encode()),
        ]
        return post("/github/webhooks", headers), webhook

    async def call(scope: dict[str, Any], body: bytes) -> tuple[int, bytes]:
        sent = False
        status, out = 0, bytearray()

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)  # a disconnect would come later; none does
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                out.extend(message.get("body", b""))

        await app(scope, receive, send)
        return status, bytes(out)

    figures: dict[str, str] = {}
    kinds = {
        "help": ("/evaluate help", "/evaluate", "help", request),
        "deploy": ("/deploy <tracker-run-id> (stored)", "/deploy", "run-{hex}", request),
        "intake": (f"webhook intake ({len(webhook) / 1024:.1f} KiB, stored)", "", "", delivery),
    }
    for label, command, text, build in [kinds[only]] if only else kinds.values():
        # One unmeasured call: first-use imports and Bolt's auth.test (cached after).
        await call(*build(command, text.replace("{hex}", f"{rnd.getrandbits(64):016x}")))
        per: list[float] = []
        on_loop: list[float] = []
        for _ in range(rounds):
            calls = [
                build(command, text.replace("{hex}", f"{rnd.getrandbits(64):016x}"))
                for _ in range(count)
            ]
            cpu0, loop0 = time.process_time(), time.thread_time()
            for scope, body in calls:
                status, answer = await call(scope, body)
                if status not in (200, 202) or b"error" in answer[:40]:
                    raise SystemExit(f"{label}: answered {status} {answer[:200]!r}")
            per.append((time.process_time() - cpu0) / count * 1e6)
            on_loop.append((time.thread_time() - loop0) / count * 1e6)
        figures[f"{label}: CPU per ack, µs (rounds)"] = ", ".join(f"{p:.0f}" for p in per)
        figures[f"{label}: of which the event loop's thread"] = ", ".join(
            f"{p:.0f}" for p in on_loop
        )
        figures[f"{label}: median"] = f"{statistics.median(per):.0f} µs"
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
