"""The Slack double answers like Slack: its answers to the methods the bridge calls, success and
failure, are checked against Slack's own response schemas (slack_spec.py). The `slack` fixture
of this folder checks every answer of every contract test the same way."""

from __future__ import annotations

from typing import Any

import pytest
import slack_spec
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.slack import SlackFailure, SlackOut, make_client
from tests.conftest import BOT_TOKEN, CHANNEL
from tests.doubles.slack_api import SlackDouble

pytestmark = pytest.mark.contract

SECTION = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Evaluation* of #42"}}]
HOME = {"type": "home", "blocks": SECTION}


def answer(client: WebClient, method: str, **params: Any) -> dict[str, Any]:
    try:
        data = client.api_call(method, json=params).data
    except SlackApiError as exc:
        data = exc.response.data
    assert isinstance(data, dict)
    return data


def test_answers_match_slacks_response_schemas(slack: SlackDouble) -> None:
    client = WebClient(token=BOT_TOKEN, base_url=slack.url)
    out = SlackOut(make_client(BOT_TOKEN, slack.url))
    # Successes, through the bridge's own Slack client where it has a method for it.
    assert out.auth_test()["user_id"] == slack.bot_user_id
    ts = out.post(CHANNEL, "Evaluation of #42", blocks=SECTION)
    out.post(CHANNEL, "reply", blocks=SECTION, thread_ts=ts, broadcast=True)
    out.update(CHANNEL, ts, "Evaluation of #42: running", blocks=SECTION)
    out.ephemeral(CHANNEL, "U0REQUESTER", "only you", blocks=SECTION)
    out.publish_home("U0REQUESTER", HOME)
    posted = answer(
        client,
        "chat.postMessage",
        channel=CHANNEL,
        text="with metadata",
        metadata={"event_type": "chatops_request", "event_payload": {"id": "0123456789ab"}},
    )
    assert posted["ok"] and posted["message"]["metadata"]
    # Failures Slack documents.
    assert answer(client, "chat.postMessage", channel="", text="x")["error"] == "channel_not_found"
    assert answer(client, "chat.postMessage", channel=CHANNEL, text="x" * 40_001)["error"] == (
        "msg_too_long"
    )
    assert answer(client, "chat.postMessage", channel=CHANNEL)["error"] == "no_text"
    assert (
        answer(client, "chat.update", channel=CHANNEL, ts="1700000000.000001", text="x")["error"]
        == "message_not_found"
    )
    assert answer(client, "chat.postEphemeral", channel=CHANNEL, text="x")["error"] == (
        "user_not_found"
    )
    assert answer(client, "views.publish", user_id="", view=HOME)["error"] == "invalid_arguments"
    bad = WebClient(token="nope", base_url=slack.url)
    assert answer(bad, "auth.test")["error"] == "invalid_auth"
    assert answer(WebClient(base_url=slack.url), "auth.test")["error"] == "not_authed"
    slack.not_member.add(CHANNEL)
    with pytest.raises(SlackFailure) as caught:
        out.post(CHANNEL, "x")
    assert caught.value.error == "not_in_channel" and "/invite" in caught.value.user_hint
    slack.fail_next("chat.update", "ratelimited", status=429, retry_after=0)
    assert answer(client, "chat.update", channel=CHANNEL, ts=ts, text="x")["error"] == "ratelimited"
    # Every method of the list was checked, none found unlike Slack (the fixture asserts it).
    assert set(slack.checked) == set(slack_spec.METHODS)  # type: ignore[attr-defined]
    assert slack.violations == []


def test_invalid_blocks_are_refused_like_slack(slack: SlackDouble) -> None:
    client = WebClient(token=BOT_TOKEN, base_url=slack.url)
    data = answer(client, "chat.postMessage", channel=CHANNEL, text="x", blocks=[{"type": "nope"}])
    assert data["error"] == "invalid_blocks" and data["response_metadata"]["messages"]
    assert [v for v in slack.violations if "unlike Slack" in v] == []
    slack.violations.clear()  # the refusal of the blocks is what this test wanted


def test_the_check_finds_answers_unlike_slack(slack_schemas: slack_spec.SlackSchemas) -> None:
    """The schema check itself: wrong shapes of the five answers are reported."""
    assert slack_schemas.problems(
        "auth.test",
        {
            "ok": True,
            "url": "x",
            "team": "A",
            "user": "b",
            "team_id": "T1",
            "user_id": "U1",
            "bot_id": "B1",
        },
    )
    assert slack_schemas.problems("chat.postMessage", {"ok": True, "channel": "C1", "ts": "1"})
    assert slack_schemas.problems("chat.postMessage", {"ok": False, "error": "made_up_error"})
    assert slack_schemas.problems(
        "chat.update", {"ok": True, "channel": "C0123ABCD", "ts": "1700000000.000100", "text": "x"}
    )
    assert slack_schemas.problems("chat.postEphemeral", {"ok": True})
    assert slack_schemas.problems("views.publish", {"ok": "yes"})
    good = {"ok": True, "message_ts": "1700000000.000100"}
    assert slack_schemas.problems("chat.postEphemeral", good) == []
