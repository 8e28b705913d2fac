"""The floor: a bare Starlette + uvicorn app that only checks signatures, nothing else.

`python bench/floor.py PORT raw` instead serves a canned answer from a bare asyncio protocol
(no framework, no checks): it shows how fast the load generator itself can go.

POST /slack/events checks the Slack signature and 5-minute window and answers an ephemeral ack;
POST /github/webhooks checks X-Hub-Signature-256 and answers 202. Same uvicorn settings as
`chatops-bridge serve` (uvloop and httptools when installed). Usage:

    SLACK_SIGNING_SECRET=... GITHUB_WEBHOOK_SECRET=... python bench/floor.py PORT
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SLACK_SECRET = os.environ["SLACK_SIGNING_SECRET"].encode()
GITHUB_SECRET = os.environ["GITHUB_WEBHOOK_SECRET"].encode()


async def slack_events(request: Request) -> Response:
    body = await request.body()
    ts = request.headers.get("x-slack-request-timestamp", "")
    sig = request.headers.get("x-slack-signature", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return Response(status_code=401)
    expected = (
        "v0="
        + hmac.new(SLACK_SECRET, b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    )
    if not hmac.compare_digest(expected, sig):
        return Response(status_code=401)
    return JSONResponse({"response_type": "ephemeral", "text": "ok"})


async def github_webhooks(request: Request) -> Response:
    body = await request.body()
    sig = request.headers.get("x-hub-signature-256", "")
    expected = "sha256=" + hmac.new(GITHUB_SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, sig):
        return Response(status_code=401)
    return JSONResponse({"ok": True, "accepted": True}, status_code=202)


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/slack/events", slack_events, methods=["POST"]),
        Route("/github/webhooks", github_webhooks, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)


class RawAnswer:
    """Answers every request with the same bytes: the client's ceiling, not a server."""

    ANSWER = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
        b'{"ok":true}'
    )

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.transport.write(self.ANSWER)

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def eof_received(self) -> None:
        pass


def serve_raw(port: int) -> None:
    import asyncio

    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(RawAnswer, "127.0.0.1", port, backlog=2048)
        async with server:
            await server.serve_forever()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


if __name__ == "__main__" and sys.argv[2:] == ["raw"]:
    serve_raw(int(sys.argv[1]))
elif __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        backlog=2048,
    )
