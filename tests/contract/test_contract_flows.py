"""The whole bridge (signed Slack commands, webhooks, job pool, database) with GitHub served by
Prism from GitHub's own description, and failures asserted on what the user sees in Slack."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from github_contract import GitHubContract
from webhook_examples import fixture

from tests.conftest import CHANNEL, DEFAULT_CONFIG, REPO, USER, Clock, Harness
from tests.doubles.slack_api import SlackDouble

pytestmark = pytest.mark.contract

PULL = rf"^/repos/{REPO}/pulls/42$"
LABELS = rf"^/repos/{REPO}/issues/42/labels$"
DISPATCH = rf"^/repos/{REPO}/dispatches$"


def config(**evaluate: Any) -> dict[str, Any]:
    data = copy.deepcopy(DEFAULT_CONFIG)
    data["commands"]["evaluate"].update(evaluate)
    return data


def run_payload(
    action: str, *, status: str, conclusion: str | None, sha: str, **extra: Any
) -> dict[str, Any]:
    """GitHub's real workflow_run payload, pointed at our repository, PR 42 and `sha`."""
    payload = copy.deepcopy(fixture("workflow_run.completed"))
    payload["action"] = action
    payload["repository"]["full_name"] = REPO
    run = payload["workflow_run"]
    run.update(
        {
            "id": 777001,
            "name": "Evaluate model",
            "status": status,
            "conclusion": conclusion,
            "head_sha": sha,
            "event": "pull_request",
            "created_at": "2099-01-01T00:00:00Z",
            "run_started_at": "2099-01-01T00:00:00Z",
            "updated_at": "2099-01-01T00:03:00Z",
        }
    )
    run["pull_requests"][0]["number"] = 42
    run["pull_requests"][0]["head"]["sha"] = sha
    run.update(extra)
    return payload


def start(h: Harness, slack: SlackDouble, text: str = "42", **kwargs: Any) -> Any:
    resp = h.slash("/evaluate", text, response_url=slack.response_url("cmd"), **kwargs)
    assert resp.status_code == 200 and resp.json()["response_type"] == "ephemeral"
    h.settle()
    (req,) = h.store.find(repo=REPO, pr_number=42)
    return req


def said(slack: SlackDouble) -> str:
    """Everything the requester was told: response_url, ephemerals and thread replies."""
    parts = []
    for call in slack.calls:
        if call.method in ("response_url", "chat.postEphemeral") or (
            call.method == "chat.postMessage" and call.params.get("thread_ts")
        ):
            parts.append(str(call.params.get("text", "")) + json.dumps(call.params.get("blocks")))
    return "\n".join(parts)


# ------------------------------------------------------------------ the happy paths
def test_evaluate_flow_against_githubs_description(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    h = make_contract_harness()
    req = start(h, slack)
    assert req.status == "triggered"
    # What the bot sent GitHub, each request validated by Prism against the description.
    ops = [(r.operation, r.status) for r in gh.requests]
    assert ops[:2] == [
        (("GET", "/repos/{owner}/{repo}/installation"), 200),
        (("POST", "/app/installations/{installation_id}/access_tokens"), 201),
    ]
    assert (("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"), 200) in ops
    (added,) = gh.requests_to("POST", LABELS)
    assert added.body == {"labels": ["evaluate"]} and added.status == 200
    assert len(gh.tokens_issued) == 1
    head = req.head_sha
    assert head and len(head) == 40  # from GitHub's example pull request
    root = next(c for c in slack.calls_to("chat.postMessage") if not c.params.get("thread_ts"))
    assert root.params["channel"] == CHANNEL and f"<@{USER}>" in json.dumps(root.params["blocks"])

    # GitHub's real workflow_run payloads, for that head, come back into the thread.
    for action, status, conclusion in (
        ("requested", "queued", None),
        ("in_progress", "in_progress", None),
        ("completed", "completed", "success"),
    ):
        r = h.webhook(
            "workflow_run", run_payload(action, status=status, conclusion=conclusion, sha=head)
        )
        assert r.status_code == 202
        h.settle()
    req = h.store.get(req.id)
    assert req is not None and req.status == "succeeded"
    replies = slack.thread_replies(CHANNEL, req.root_ts or "")
    text = " ".join(m["text"] + json.dumps(m.get("blocks")) for m in replies)
    assert "started" in text and "success" in text and "3m" in text
    # A metrics comment on the PR becomes a table in the thread.
    comment = copy.deepcopy(fixture("issue_comment.created"))
    comment["repository"]["full_name"] = REPO
    comment["issue"]["number"] = 42
    comment["issue"]["pull_request"] = {"url": f"{gh.url}/repos/{REPO}/pulls/42"}
    comment["comment"]["body"] = (
        "<!-- chatops:metrics -->\n| Source | Loss |\n|---|---:|\n"
        "| Head | 0.231 |\n| Base | 0.245 |\n"
    )
    comment["comment"]["user"]["type"] = "Bot"  # only trusted authors' metrics are relayed
    assert h.webhook("issue_comment", comment).status_code == 202
    h.settle()
    last = slack.thread_replies(CHANNEL, req.root_ts or "")[-1]
    assert any(b["type"] == "table" for b in last["blocks"])
    # The Slack double's answers were checked against Slack's own schemas on the way.
    assert slack.checked.get("chat.postMessage", 0) >= 3 and slack.checked.get("chat.update")


def test_dispatch_trigger_and_permission_rule(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    cfg = config(trigger="dispatch", event_type="evaluate", require_github_permission="write")
    cfg["github_users"] = {USER: "octocat"}
    h = make_contract_harness(cfg)
    req = start(h, slack)
    assert req.status == "triggered"
    (perm,) = gh.requests_to("GET", rf"^/repos/{REPO}/collaborators/octocat/permission$")
    assert perm.status == 200
    (sent,) = gh.requests_to("POST", DISPATCH)
    assert sent.status == 204  # Prism accepted it: event_type and ≤ 10 payload keys
    assert sent.body["event_type"] == "evaluate"
    assert sent.body["client_payload"]["request_id"] == req.id
    assert len(sent.body["client_payload"]) <= 10


# ------------------------------------------------------------------ failures, as users see them
def test_pull_request_not_found(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    gh.documented("GET", PULL, 404)
    req = start(make_contract_harness(), slack)
    assert req.status == "error"
    assert "acme/ml-models#42 does not exist" in said(slack)
    assert gh.requests_to("POST", LABELS) == []


def test_app_not_installed(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    gh.documented("GET", rf"^/repos/{REPO}/installation$", 404)
    req = start(make_contract_harness(), slack)
    assert req.status == "error"
    text = said(slack)
    assert "The GitHub App is not installed on acme/ml-models" in text and "Install App" in text
    assert gh.requests_to("GET", PULL) == []


def test_missing_permission(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    gh.forbidden("POST", LABELS)
    req = start(make_contract_harness(), slack)
    assert req.status == "error"
    replies = slack.thread_replies(CHANNEL, req.root_ts)
    assert len(replies) == 1
    text = replies[0]["text"] + json.dumps(replies[0]["blocks"])
    assert "Resource not accessible by integration" in text and "permission" in text
    root = slack.messages[(CHANNEL, req.root_ts)]  # the root's status line says it too
    assert root["text"].endswith(": could not start")  # the label the block shows
    assert "Resource not accessible by integration" in json.dumps(root["blocks"])


def test_validation_failed(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    gh.documented("POST", LABELS, 422)
    req = start(make_contract_harness(), slack)
    assert req.status == "error"
    assert "GitHub refused to add the label 'evaluate'" in said(slack)
    assert "Validation Failed" in said(slack)


def test_rate_limited_says_when_and_retries_then(
    make_contract_harness: Callable[..., Harness],
    gh: GitHubContract,
    slack: SlackDouble,
    clock: Clock,
) -> None:
    reset = gh.rate_limited("GET", PULL, reset_in=300)
    h = make_contract_harness(use_clock=True)
    req = start(h, slack)
    assert req.status == "accepted"
    when = time.strftime("%H:%M UTC", time.gmtime(reset))
    assert f"I will retry after {when}" in said(slack)
    # Before the reset nothing happens; after it, the job layer retries and succeeds.
    h.bridge.jobs.run_request(req.id)
    assert len(gh.requests_to("GET", PULL)) == 1
    clock.advance(reset - clock() + 1)
    h.bridge.jobs.run_request(req.id)
    req = h.store.get(req.id)
    assert req is not None and req.status == "triggered"
    assert [r.status for r in gh.requests_to("GET", PULL)] == [403, 200]
    assert said(slack).count("I will retry") == 1  # told once, not at every attempt


def test_secondary_rate_limit_on_the_label_is_retried_by_the_sweep(
    make_contract_harness: Callable[..., Harness],
    gh: GitHubContract,
    slack: SlackDouble,
    clock: Clock,
) -> None:
    gh.secondary_rate_limited("POST", LABELS, retry_after=120)
    h = make_contract_harness(use_clock=True)
    req = start(h, slack)
    assert req.status == "accepted" and req.root_ts  # the thread exists: it says so there
    replies = slack.thread_replies(CHANNEL, req.root_ts)
    assert any("I will retry after" in m["text"] + json.dumps(m.get("blocks")) for m in replies)
    clock.advance(120 + h.bridge.housekeeping.STALE_AFTER + 1)
    h.bridge.housekeeping.sweep()
    h.settle()
    req = h.store.get(req.id)
    assert req is not None and req.status == "triggered"
    assert [r.status for r in gh.requests_to("POST", LABELS)] == [429, 200]


def test_bad_gateway_read_retried_within_budget(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    """One 502 on a read: retried at once by urllib3, the user sees a normal flow."""
    gh.bad_gateway("GET", PULL)
    req = start(make_contract_harness(), slack)
    assert req.status == "triggered"
    assert [r.status for r in gh.requests_to("GET", PULL)] == [502, 200]
    assert "trouble" not in said(slack)


def test_bad_gateway_past_budget_is_reported_retried_and_finally_given_up(
    make_contract_harness: Callable[..., Harness],
    gh: GitHubContract,
    slack: SlackDouble,
    clock: Clock,
) -> None:
    gh.bad_gateway("GET", PULL, times=3)  # one try + two read retries: the budget
    h = make_contract_harness(use_clock=True)
    req = start(h, slack)
    assert req.status == "accepted"
    assert "GitHub is having trouble (502)" in said(slack) and "I will retry" in said(slack)
    # The job layer retries (an outage: after seconds, doubling) and gets through.
    clock.advance(31)
    h.bridge.jobs.run_request(req.id)
    assert h.store.get(req.id).status == "triggered"  # type: ignore[union-attr]

    # A GitHub that stays down past the outage horizon: the user is told it gave up.
    from bot.jobs import RetryPolicy

    h.bridge.jobs.policy = RetryPolicy(horizon=600)
    gh.bad_gateway("GET", PULL, times=3 * 20)
    h.slash("/evaluate", "42", response_url=slack.response_url("again"))
    h.settle()
    again = next(r for r in h.store.find(repo=REPO, pr_number=42) if r.id != req.id)
    for _ in range(2):
        clock.advance(331)
        h.bridge.jobs.run_request(again.id)
    again = h.store.get(again.id)
    assert again is not None and again.status == "error"
    assert "gave up after 3 attempts" in (again.error or "")
    assert "GitHub has been unavailable for 11m" in said(slack)


def test_bad_gateway_on_dispatch_is_repeated_with_the_same_request_id(
    make_contract_harness: Callable[..., Harness],
    gh: GitHubContract,
    slack: SlackDouble,
    clock: Clock,
) -> None:
    """A 502 may hide a dispatch GitHub accepted: no blind retry; the job retries later, looks
    for the run first, and a repeat carries the same request id."""
    gh.bad_gateway("POST", DISPATCH, applied=True)
    h = make_contract_harness(config(trigger="dispatch", event_type="evaluate"), use_clock=True)
    req = start(h, slack)
    assert len(gh.requests_to("POST", DISPATCH)) == 1
    assert "I will retry" in said(slack)
    clock.advance(31)
    h.bridge.jobs.run_request(req.id)
    assert h.store.get(req.id).status == "triggered"  # type: ignore[union-attr]
    first, second = gh.requests_to("POST", DISPATCH)
    assert first.body == second.body and second.body["client_payload"]["request_id"] == req.id
    assert gh.requests_to("GET", rf"^/repos/{REPO}/actions/runs$"), "looked for the run first"


def test_slow_github_past_the_client_timeout(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    gh.slow("GET", PULL, 1.6)
    req = start(make_contract_harness(app_options={"timeout": 1}), slack)
    assert req.status == "triggered"  # the read was retried
    assert len(gh.requests_to("GET", PULL)) == 2


def test_slack_rate_limit_on_a_thread_reply(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    """Slack 429 on the reply: slack_sdk waits Retry-After and posts it; nothing is lost."""
    h = make_contract_harness()
    req = start(h, slack)
    before = len(slack.calls_to("chat.postMessage"))
    slack.fail_next("chat.postMessage", "ratelimited", status=429, retry_after=1)
    payload = run_payload("completed", status="completed", conclusion="failure", sha=req.head_sha)
    assert h.webhook("workflow_run", payload).status_code == 202
    h.settle(timeout=10)
    posts = slack.calls_to("chat.postMessage")[before:]
    assert len(posts) == 2 and posts[1].at - posts[0].at >= 0.9
    replies = slack.thread_replies(CHANNEL, req.root_ts)
    assert len(replies) == 1 and "failure" in replies[0]["text"] + json.dumps(replies[0]["blocks"])
    assert h.store.get(req.id).status == "failed"  # type: ignore[union-attr]


def test_slack_not_in_channel_tells_user_to_invite_the_bot(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    slack.not_member.add(CHANNEL)
    req = start(make_contract_harness(), slack)
    assert req.status == "error" and not req.root_ts
    assert "/invite @chatops-bridge" in said(slack)
    assert gh.requests_to("POST", LABELS) == []  # nothing started that nobody could follow
