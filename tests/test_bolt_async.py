"""The HTTP endpoint's AsyncApp runs the handlers' sync listeners (bot/bolt_async.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any
from urllib.parse import urlencode

from slack_bolt.async_app import AsyncApp, AsyncBoltRequest
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.bolt_async import SyncListeners
from tests.doubles.slack_api import SlackDouble

SECRET = "test-signing-secret"


def _signed_command(command: str, text: str) -> AsyncBoltRequest:
    body = urlencode(
        {
            "team_id": "T0001",
            "channel_id": "C0001",
            "user_id": "U0001",
            "command": command,
            "text": text,
            "response_url": "",
            "trigger_id": "1.2.3",
        }
    )
    ts = str(int(time.time()))
    sig = SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body)
    headers = {
        "content-type": ["application/x-www-form-urlencoded"],
        "x-slack-request-timestamp": [ts],
        "x-slack-signature": [sig],
    }
    return AsyncBoltRequest(body=body, headers=headers)


def test_a_sync_listener_gets_sync_arguments_and_acks_from_the_thread_pool(
    slack: SlackDouble,
) -> None:
    """Registered through SyncListeners, a plain function runs off the event loop's thread,
    gets the sync WebClient and a sync ack/respond, and its ack() is Bolt's answer."""
    client = WebClient(token="xoxb-test-0000", base_url=slack.url)
    app = AsyncApp(
        client=AsyncWebClient(token="xoxb-test-0000", base_url=slack.url),
        signing_secret=SECRET,
        process_before_response=True,
    )
    seen: dict[str, Any] = {}

    @SyncListeners(app, client).command("/toy")
    def toy(ack: Any, command: dict[str, Any], client: Any, respond: Any) -> None:
        seen["thread"] = threading.get_ident()
        seen["client"] = client
        seen["respond_is_sync"] = not asyncio.iscoroutinefunction(respond)
        ack(text=f"got {command['text']}", response_type="ephemeral")

    async def dispatch() -> Any:
        seen["loop_thread"] = threading.get_ident()
        return await app.async_dispatch(_signed_command("/toy", "hi"))

    resp = asyncio.run(dispatch())
    assert resp.status == 200
    assert json.loads(resp.body) == {"text": "got hi", "response_type": "ephemeral"}
    assert seen["client"] is client
    assert seen["respond_is_sync"]
    assert seen["thread"] != seen["loop_thread"]


def test_an_async_listener_is_registered_unchanged(slack: SlackDouble) -> None:
    app = AsyncApp(
        client=AsyncWebClient(token="xoxb-test-0000", base_url=slack.url),
        signing_secret=SECRET,
        process_before_response=True,
    )

    @SyncListeners(app, WebClient(token="xoxb-test-0000", base_url=slack.url)).command("/toy")
    async def toy(ack: Any) -> None:
        await ack(text="async")

    resp = asyncio.run(app.async_dispatch(_signed_command("/toy", "")))
    assert (resp.status, resp.body) == (200, "async")  # Bolt answers a bare text as text
