"""The anchor: Bolt's AsyncApp (its Starlette adapter) plus one durable SQLite insert per ack.

What an async Bolt app that stores each command before acking costs on this machine, with the
same uvicorn settings as the bridge: signature check, parse, one INSERT (WAL,
synchronous=NORMAL, its own transaction), then ack(). bench/run.py runs it beside the floor and
the bridge. Bolt's single-workspace authorization asks auth.test once, of the Slack double.

    SLACK_SIGNING_SECRET=... SLACK_API_URL=... python bench/anchor.py PORT DB_PATH
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from typing import Any

import uvicorn
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

db = sqlite3.connect(sys.argv[2], isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute(
    "CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, kind TEXT, user_id TEXT, "
    "channel_id TEXT, text TEXT, idempotency_key TEXT UNIQUE, created_at REAL)"
)

bolt = AsyncApp(
    client=AsyncWebClient(token="xoxb-anchor", base_url=os.environ["SLACK_API_URL"]),
    signing_secret=os.environ["SLACK_SIGNING_SECRET"],
    process_before_response=True,
)


@bolt.command(re.compile(".*"))
async def command(ack: Any, command: dict[str, Any]) -> None:
    cur = db.execute(
        "INSERT INTO requests (kind, user_id, channel_id, text, idempotency_key, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            command["command"].lstrip("/"),
            command["user_id"],
            command["channel_id"],
            command["text"],
            "slack:" + command["trigger_id"],
            time.time(),
        ),
    )
    await ack(text=f"Stored as request {cur.lastrowid}.", response_type="ephemeral")


handler = AsyncSlackRequestHandler(bolt)


async def slack_events(request: Request) -> Response:
    return await handler.handle(request)


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/slack/events", slack_events, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        backlog=2048,
    )
