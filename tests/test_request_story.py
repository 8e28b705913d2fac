"""One request's story in the log: `jq 'select(.request_id=="…")'` (docs/operations.md).

An /evaluate and a /deploy go through the real ASGI app and the doubles; the bridge's JSON
log lines are captured (its formatter and filters, as `serve` installs them), filtered by the
request id, printed (`pytest -s` shows them) and checked: every step, in order, and no text
anyone typed or the bridge wrote, nor any secret.
"""

from __future__ import annotations

import copy
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from webhook_examples import fixture

from bot import logs
from tests.conftest import (
    BOT_TOKEN,
    CHANNEL,
    REPO,
    SIGNING_SECRET,
    USER,
    WEBHOOK_SECRET,
    Harness,
)
from tests.test_deploy import APPROVER, RUN_ID, _iso_now, add_training_run, click, request_deploy
from tests.test_evaluate_flow import _run_payload


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]

    def text(self) -> str:
        return self.stream.getvalue()

    def story(self, request_id: str) -> list[dict[str, Any]]:
        """The lines `jq 'select(.request_id=="<id>")'` would show, printed as they are."""
        mine = [line for line in self.lines() if line.get("request_id") == request_id]
        for line in mine:
            print(json.dumps(line, ensure_ascii=False))
        return mine


@pytest.fixture
def captured(github: Any) -> Iterator[Captured]:
    """The bridge's JSON lines at INFO, through the handler `logs.setup` installs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    handler.addFilter(
        logs.Redactor([BOT_TOKEN, SIGNING_SECRET, WEBHOOK_SECRET, github.private_key_pem])
    )
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield Captured(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _matches(line: dict[str, Any], want: dict[str, Any]) -> bool:
    for key, value in want.items():
        if value is ... and key not in line:
            return False
        if value is not ... and line.get(key) != value:
            return False
    return True


def assert_in_order(story: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    """Each step matches a line after the previous step's line (other lines may sit between)."""
    at = 0
    for step in steps:
        while at < len(story) and not _matches(story[at], step):
            at += 1
        assert at < len(story), f"step {step} not found in order in the story"
        at += 1


def assert_nothing_typed_or_secret(
    cap: Captured, story: list[dict[str, Any]], typed: list[str], github: Any
) -> None:
    everything = cap.text()
    for text in typed:
        assert text not in everything, text
    for secret in (BOT_TOKEN, SIGNING_SECRET, WEBHOOK_SECRET, "xoxb-", "ghs_", "BEGIN"):
        assert secret not in everything, secret
    pem_line = github.private_key_pem.strip().splitlines()[1]
    assert pem_line not in everything
    # Nothing in the story even needed redacting: it never carried a secret or a response_url.
    assert "[redacted]" not in json.dumps(story)
    assert "/response/" not in everything  # the response_url (a capability) is never logged


def test_evaluate_story_from_command_to_metrics_table(
    harness: Harness, github: Any, slack: Any, captured: Captured
) -> None:
    typed = " acme/ml-models#42 "
    resp = harness.slash("/evaluate", typed, response_url=slack.response_url("story"))
    assert resp.status_code == 200
    slack.wait_for("chat.update", 1)
    harness.settle()
    req = harness.store.find(repo=REPO, pr_number=42)[0]
    started = _run_payload("in_progress", status="in_progress", conclusion=None)
    assert harness.webhook("workflow_run", started, delivery="d-started").status_code == 202
    slack.wait_for("chat.update", 2)
    harness.settle()
    done = _run_payload("completed", status="completed", conclusion="success")
    assert harness.webhook("workflow_run", done, delivery="d-done").status_code == 202
    slack.wait_for("chat.update", 3)
    harness.settle()
    comment = copy.deepcopy(fixture("issue_comment.created"))
    comment["repository"]["full_name"] = REPO
    comment["issue"]["number"] = 42
    comment["issue"]["pull_request"] = {"url": f"https://api.github.com/repos/{REPO}/pulls/42"}
    comment["comment"]["body"] = (
        "<!-- chatops:metrics -->\n### Evaluation\n| Source | Loss |\n|---|---:|\n"
        "| Head | 0.2317 |\n| Base | 0.2459 |\n"
    )
    comment["comment"]["user"].update({"login": "github-actions[bot]", "type": "Bot"})
    assert harness.webhook("issue_comment", comment, delivery="d-comment").status_code == 202
    slack.wait_for("chat.postMessage", 4)
    harness.settle()
    assert harness.store.get(req.id).status == "succeeded"

    story = captured.story(req.id)
    root = req.root_ts
    assert_in_order(
        story,
        [
            {"event": "request stored", "kind": "evaluate", "status": "accepted", "user_id": USER},
            {"event": "command answered", "command": "evaluate", "outcome": "accepted"},
            {"event": "Slack reply posted", "method": "chat.postMessage", "channel": CHANNEL},
            {"event": "GitHub action sent", "github_action": "add_label", "pr_number": 42},
            {"event": "request status changed", "from": "accepted", "to": "triggered"},
            {"event": "decision recorded", "action": "evaluate.triggered", "actor": "bridge"},
            {"event": "Slack reply posted", "method": "chat.update", "message_ts": root},
            {"event": "run matched", "run_id": "9001", "matched_by": "head_sha"},
            {"event": "Slack reply posted", "method": "chat.postMessage", "thread_ts": root},
            {"event": "request status changed", "from": "triggered", "to": "running"},
            {"event": "run matched", "matched_by": "link", "conclusion": "success"},
            {"event": "Slack reply posted", "method": "chat.postMessage", "thread_ts": root},
            {"event": "request status changed", "from": "running", "to": "succeeded"},
            {"event": "decision recorded", "action": "evaluate.finished", "outcome": "succeeded"},
            {"event": "Slack reply posted", "method": "chat.update", "message_ts": root},
            {"event": "Slack reply posted", "thread_ts": root, "delivery_id": "d-comment"},
        ],
    )
    by_event = {line["event"] for line in story}
    matched = [line for line in story if line["event"] == "run matched"]
    assert [line["delivery_id"] for line in matched] == ["d-started", "d-done"]
    assert {line["level"] for line in story} == {"info"}
    assert "request stored" in by_event
    pr_title = "Try a wider layer"  # the PR's title (conftest): text the bridge relays
    assert_nothing_typed_or_secret(
        captured, story, [typed.strip(), pr_title, "0.2317", "Checking", "Evaluation of"], github
    )


def test_deploy_story_from_command_through_approval_to_deployment(
    harness: Harness, github: Any, slack: Any, captured: Captured
) -> None:
    add_training_run(github)
    typed = f"{RUN_ID} production"
    req = request_deploy(harness, slack, typed)
    click(harness, "deploy_approve", req, APPROVER)
    github.wait_for("POST", r"/dispatches$")
    harness.settle()
    run = copy.deepcopy(fixture("workflow_run.completed"))
    run["repository"]["full_name"] = REPO
    run["workflow_run"].update(
        {
            "id": 5555,
            "name": "deploy",
            "display_title": f"chatops {req.id}: deploy {RUN_ID}",
            "event": "repository_dispatch",
            "created_at": _iso_now(),
            "status": "completed",
            "conclusion": "success",
            "pull_requests": [],
            "html_url": f"https://github.com/{REPO}/actions/runs/5555",
        }
    )
    assert harness.webhook("workflow_run", run, delivery="d-run").status_code == 202
    harness.wait_until(lambda: harness.store.get(req.id).status == "succeeded", what="success")
    harness.settle()
    status = copy.deepcopy(fixture("deployment_status.created"))
    status["repository"]["full_name"] = REPO
    status["deployment"]["created_at"] = _iso_now()
    status["deployment_status"]["description"] = "rolled out <!here> *v2*"
    assert harness.webhook("deployment_status", status, delivery="d-deploy").status_code == 202
    harness.wait_until(lambda: len(slack.thread_replies(CHANNEL, req.root_ts)) >= 2, what="reply")
    harness.settle()

    story = captured.story(req.id)
    root = req.root_ts
    assert_in_order(
        story,
        [
            {"event": "request stored", "kind": "deploy", "status": "pending_approval"},
            {"event": "command answered", "command": "deploy", "outcome": "accepted"},
            {"event": "Slack reply posted", "method": "chat.postMessage", "message_ts": root},
            {"event": "request status changed", "from": "pending_approval", "to": "approved"},
            {"event": "decision recorded", "action": "deploy.approved", "actor": APPROVER},
            {"event": "Slack reply posted", "method": "chat.update", "message_ts": root},
            {"event": "GitHub action sent", "github_action": "dispatch", "repo": REPO},
            {"event": "request status changed", "from": "approved", "to": "triggered"},
            {"event": "decision recorded", "action": "deploy.dispatched", "actor": "bridge"},
            {"event": "run matched", "run_id": "5555", "matched_by": "title", "stored": True},
            {"event": "Slack reply posted", "thread_ts": root, "delivery_id": "d-run"},
            {"event": "request status changed", "from": "triggered", "to": "succeeded"},
            {"event": "decision recorded", "action": "deploy.finished", "outcome": "succeeded"},
            {"event": "Slack reply posted", "thread_ts": root, "delivery_id": "d-deploy"},
            {"event": "Slack reply posted", "method": "chat.update", "delivery_id": "d-deploy"},
        ],
    )
    assert {line["level"] for line in story} == {"info"}
    assert_nothing_typed_or_secret(
        captured, story, [typed, "rolled out", "Deploy of run", "Asked for approval"], github
    )


def test_refusals_and_usage_errors_are_named_not_quoted(
    make_harness: Any, config_data: dict[str, Any], github: Any, slack: Any, captured: Captured
) -> None:
    config_data["commands"]["evaluate"]["allowed_channels"] = ["C0OTHER"]
    h = make_harness(config_data)
    h.slash("/evaluate", "42 <!channel> secret-plan")
    h.slash("/evaluate", "owner-typed-qq/x!y#42", channel="C0OTHER")
    h.slash("/deploy", "9001 prod-typo-xyz")
    h.slash("/deploy", "9001 production extra-words-qq")
    h.settle()
    answered = [line for line in captured.lines() if line["event"] == "command answered"]
    for line in answered:
        print(json.dumps(line))
    assert [(a["command"], a["outcome"], a.get("reason")) for a in answered] == [
        ("evaluate", "refused", "commands.evaluate.allowed_channels"),
        ("evaluate", "usage_error", "bad_repository_name"),
        ("deploy", "usage_error", "unknown_environment"),
        ("deploy", "usage_error", "too_many_words"),
    ]
    text = captured.text()
    for typed in ("secret-plan", "owner-typed-qq", "prod-typo-xyz", "extra-words-qq", "<!channel>"):
        assert typed not in text
