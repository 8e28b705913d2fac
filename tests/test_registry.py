"""manifest.yml and the registered listeners agree: every command/event has a handler and back."""

from __future__ import annotations

from pathlib import Path

import yaml

import handlers
from tests.conftest import Harness

ROOT = Path(__file__).resolve().parents[1]


def _manifest() -> dict:
    return yaml.safe_load((ROOT / "manifest.yml").read_text())


def test_manifest_commands_match_registered_commands() -> None:
    declared = {c["command"] for c in _manifest()["features"]["slash_commands"]}
    assert declared == set(handlers.SLASH_COMMANDS)


def test_manifest_events_match_registered_events() -> None:
    declared = set(_manifest()["settings"]["event_subscriptions"]["bot_events"])
    assert declared == set(handlers.SLACK_EVENTS)


def test_every_declared_command_is_handled(harness: Harness) -> None:
    for command in handlers.SLASH_COMMANDS:
        resp = harness.slash(command, "help")
        assert resp.status_code == 200, command
        assert resp.json()["response_type"] == "ephemeral"


def test_every_action_id_is_handled(harness: Harness) -> None:
    for action_id in handlers.ACTION_IDS:
        resp = harness.interact(
            {
                "type": "block_actions",
                "user": {"id": "U0NOBODY1"},
                "team": {"id": "T0001"},
                "api_app_id": "A0001",
                "trigger_id": "1.2",
                "channel": {"id": "C0TESTCHAN"},
                "container": {"type": "message", "message_ts": "1.1", "channel_id": "C0TESTCHAN"},
                "message": {"ts": "1.1"},
                "response_url": "",
                "actions": [
                    {
                        "action_id": action_id,
                        "block_id": "b",
                        "type": "button",
                        "value": "000000000000",
                        "action_ts": "1.3",
                    }
                ],
            }
        )
        assert resp.status_code == 200, action_id


def test_every_event_is_handled(harness: Harness) -> None:
    for event_type in handlers.SLACK_EVENTS:
        event = {
            "type": event_type,
            "user": "U0NOBODY1",
            "channel": "C0TESTCHAN",
            "ts": "1.1",
            "event_ts": "1.1",
            "tab": "home",
            "text": "<@UBOTBRIDGE> help",
        }
        resp = harness.event(event)
        assert resp.status_code == 200, event_type


def test_unregistered_command_is_not_silently_accepted(harness: Harness) -> None:
    resp = harness.slash("/nosuchcommand", "x")
    assert resp.status_code == 404
