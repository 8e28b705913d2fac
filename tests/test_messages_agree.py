"""Issue 15 item 6: messages that agree with themselves (ack, fallback text, card footer,
self-approval), through the real app and the Slack double."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import REPO, USER, Harness
from tests.test_deploy import APPROVER, RUN_ID, add_training_run, click, request_deploy


@pytest.fixture(autouse=True)
def _run(github: Any) -> None:
    add_training_run(github)


def _status_block(message: dict[str, Any]) -> str:
    return next(
        b["text"]["text"]
        for b in message["blocks"]
        if b.get("type") == "section" and b["text"]["text"].startswith("*Status:*")
    )


def test_evaluate_ack_says_only_what_is_known(harness: Harness, github, slack) -> None:
    resp = harness.slash("/evaluate", "999", response_url=slack.response_url("missing"))
    ack = resp.json()["text"]
    print("ACK:", ack)
    assert ack.startswith(f":hourglass_flowing_sand: Checking `{REPO}#999`… (request `")
    assert "On it" not in ack and "follow it in a thread" not in ack
    said = slack.wait_for("response_url", 1)[0]
    harness.settle()
    print("THEN:", said.params["text"])
    assert "does not exist" in said.params["text"]


def test_fallback_text_says_what_the_status_block_says(harness: Harness, github, slack) -> None:
    resp = harness.slash("/evaluate", "42")
    rid = resp.json()["text"].split("request `")[1][:12]
    harness.wait_until(lambda: (r := harness.store.get(rid)) and r.status == "triggered", what="t")
    harness.settle()
    req = harness.store.get(rid)
    root = slack.messages[(req.channel_id, req.root_ts)]
    print("ROOT TEXT:", root["text"], "| BLOCK:", _status_block(root))
    assert root["text"] == f"Evaluation of {REPO}#42: queued"
    assert _status_block(root) == "*Status:* :clock3: queued"

    deploy = request_deploy(harness, slack)
    card = slack.messages[(deploy.channel_id, deploy.root_ts)]
    print("CARD TEXT:", card["text"], "| BLOCK:", _status_block(card))
    assert card["text"].endswith(": waiting for approval")
    assert "pending_approval" not in card["text"]
    assert _status_block(card).startswith("*Status:* :raised_hand: waiting for approval")


def test_card_drops_who_may_approve_once_decided(harness: Harness, github, slack) -> None:
    req = request_deploy(harness, slack)
    before = json.dumps(slack.messages[(req.channel_id, req.root_ts)]["blocks"])
    assert "needs 1 approval from" in before
    click(harness, "deploy_approve", req, APPROVER)
    github.wait_for("POST", r"/dispatches$")
    harness.settle()
    after = slack.messages[(req.channel_id, req.root_ts)]["blocks"]
    print("FOOTER:", after[-1]["elements"][0]["text"])
    assert harness.store.get(req.id).status == "triggered"
    assert "needs 1 approval" not in json.dumps(after)
    assert after[-1]["elements"][0]["text"] == f"request `{req.id}`"


def test_self_approval_says_so_on_the_card(make_harness, github, slack, config_data) -> None:
    deploy = config_data["commands"]["deploy"]
    deploy["environments"] = {
        "staging": {"approval": {"approvers": [USER], "allow_self_approval": True}}
    }
    h = make_harness(config_data)
    req = request_deploy(h, slack, f"{RUN_ID} staging")
    click(h, "deploy_approve", req, USER)
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    blocks = slack.messages[(req.channel_id, req.root_ts)]["blocks"]
    said = next(
        e["text"]
        for b in blocks
        if b.get("type") == "context"
        for e in b["elements"]
        if "Approved by" in e["text"]
    )
    print("APPROVED:", said)
    assert said.startswith(
        f":white_check_mark: Approved by <@{USER}> (the requester; self-approval is allowed "
        "for staging) at "
    )
