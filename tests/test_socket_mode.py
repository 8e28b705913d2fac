"""Socket Mode: Slack traffic over a WebSocket (no public URL); webhooks and health stay on PORT."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.server import Server, ServerConnection, serve

from tests.conftest import CHANNEL, REPO, USER


class SocketModeDouble:
    """A loopback stand-in for Slack's Socket Mode endpoint: sends envelopes, records acks."""

    def __init__(self) -> None:
        self.acks: queue.Queue[dict[str, Any]] = queue.Queue()
        self.connections: list[ServerConnection] = []
        self.connected = threading.Event()
        self.server: Server = serve(self._handle, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/link/?ticket=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handle(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        ws.send(
            json.dumps(
                {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0001"}}
            )
        )
        self.connected.set()
        for message in ws:
            self.acks.put(json.loads(message))

    def send(self, envelope: dict[str, Any]) -> None:
        self.connections[-1].send(json.dumps(envelope))

    def ack_for(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.acks.get(timeout=0.1)
            except queue.Empty:
                continue
            if msg.get("envelope_id") == envelope_id:
                return msg
        raise AssertionError(f"no ack for {envelope_id}")

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def socket_double(slack) -> Iterator[SocketModeDouble]:
    double = SocketModeDouble()
    slack.socket_mode_url = double.url
    yield double
    double.close()


def _command(text: str) -> dict[str, Any]:
    return {
        "token": "unused",
        "team_id": "T0001",
        "team_domain": "acme",
        "channel_id": CHANNEL,
        "channel_name": "ml",
        "user_id": USER,
        "user_name": "requester",
        "command": "/evaluate",
        "text": text,
        "api_app_id": "A0001",
        "response_url": "",
        "trigger_id": f"{time.time_ns()}.socket",
    }


def test_evaluate_over_socket_mode(make_harness, socket_double, github, slack) -> None:
    h = make_harness(SLACK_APP_TOKEN="xapp-1-A0001-0000-abcdef", SLACK_SIGNING_SECRET="")
    assert socket_double.connected.wait(5), "the bridge did not open the Socket Mode connection"
    socket_double.send(
        {
            "envelope_id": "env-1",
            "type": "slash_commands",
            "accepts_response_payload": True,
            "payload": _command("42"),
        }
    )
    ack = socket_double.ack_for("env-1")
    assert "Checking" in ack["payload"]["text"]
    github.wait_for("POST", r"/repos/acme/ml-models/issues/42/labels$")
    slack.wait_for("chat.update", 1)
    h.settle()
    assert h.store.find(repo=REPO, pr_number=42)[0].status == "triggered"
    # Slack's HTTP endpoint is off in Socket Mode; GitHub webhooks and health are still served.
    assert h.client.post("/slack/events", content=b"x").status_code in (404, 405)
    assert h.client.get("/healthz").json()["slack_mode"] == "socket"
    assert h.webhook("star", {"action": "created"}).status_code == 202


def test_bad_command_over_socket_mode_is_explained(make_harness, socket_double, github) -> None:
    make_harness(SLACK_APP_TOKEN="xapp-1-A0001-0000-abcdef", SLACK_SIGNING_SECRET="")
    assert socket_double.connected.wait(5)
    socket_double.send(
        {
            "envelope_id": "env-2",
            "type": "slash_commands",
            "accepts_response_payload": True,
            "payload": _command("not-a-pr"),
        }
    )
    ack = socket_double.ack_for("env-2")
    assert "/evaluate 42" in ack["payload"]["text"]
    assert github.requests == []
