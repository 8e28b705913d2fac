"""Issue 15 item 6: messages that agree with themselves (ack, fallback text, card footer,
self-approval), through the real app and the Slack double."""

from __future__ import annotations

from tests.conftest import REPO, Harness


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
