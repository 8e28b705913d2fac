"""/deploy through the real ASGI app: approval card, signed button clicks, the reject modal,
expiry, restart, dispatch exactly once, and deployment progress back in the thread."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import webhook_examples as wx
import yaml
from webhook_examples import fixture

from bot.config import parse_config
from bot.model import NewRequest
from handlers.deploy import warnings_for
from tests.conftest import CHANNEL, HEAD_SHA, REPO, USER, Harness

APPROVER = "U0APPROVER1"
APPROVER2 = "U0APPROVER2"
STRANGER = "U0STRANGER1"
RUN_ID = 9001
PAYLOAD_KEYS = {
    "request_id",
    "run_id",
    "environment",
    "requested_by",
    "approved_by",
    "slack_channel",
    "slack_thread_ts",
}


# -- helpers --------------------------------------------------------------------------------


def add_training_run(github: Any) -> None:
    """Run 9001 of acme/ml-models: a successful training run of PR #42's head."""
    github.add_run(
        REPO,
        {
            "id": RUN_ID,
            "name": "train",
            "status": "completed",
            "conclusion": "success",
            "head_sha": HEAD_SHA,
            "head_branch": "feature",
            "event": "pull_request",
            "pull_requests": [_pr_ref(42, HEAD_SHA)],
        },
    )


@pytest.fixture(autouse=True)
def _run(github: Any) -> None:
    add_training_run(github)


def _pr_ref(number: int, sha: str) -> dict[str, Any]:
    repo = {"id": 1, "url": "x", "name": "ml-models"}
    return {
        "number": number,
        "id": number,
        "url": "x",
        "head": {"ref": "feature", "sha": sha, "repo": repo},
        "base": {"ref": "main", "sha": "b" * 40, "repo": repo},
    }


def _config(data: dict[str, Any], **approval: Any) -> dict[str, Any]:
    data["commands"]["deploy"]["approval"].update(approval)
    return data


def request_deploy(
    h: Harness, slack: Any, text: str = str(RUN_ID), *, user: str = USER, card: bool = True
) -> Any:
    """Send /deploy; return the stored request once its card is posted (when `card`)."""
    resp = h.slash("/deploy", text, user=user, response_url=slack.response_url(uuid.uuid4().hex))
    assert resp.status_code == 200
    body = resp.json()
    assert body["response_type"] == "ephemeral"
    m = re.search(r"request `([0-9a-f]{12})`", body["text"])
    assert m, body["text"]
    rid = m[1]
    if card:
        h.wait_until(lambda: (h.store.get(rid) or None) and h.store.get(rid).root_ts, what="card")
    h.settle()
    return h.store.get(rid)


def click_payload(
    action_id: str, req: Any, user: str, *, thread_ts: str | None = None
) -> dict[str, Any]:
    """A block_actions payload in the shape Slack sends for a button on the card."""
    message: dict[str, Any] = {
        "type": "message",
        "ts": req.root_ts,
        "bot_id": "B0001",
        "text": "Deploy …",
    }
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": req.root_ts,
        "channel_id": req.channel_id,
        "is_ephemeral": False,
    }
    if thread_ts:
        message["thread_ts"] = thread_ts
        container["thread_ts"] = thread_ts
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0001"},
        "api_app_id": "A0001",
        "token": "unused",
        "container": container,
        "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:16]}",
        "team": {"id": "T0001", "domain": "acme"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": req.channel_id, "name": "ml"},
        "message": message,
        "state": {"values": {}},
        "response_url": "https://hooks.slack.com/actions/T0001/1/abc",
        "actions": [
            {
                "action_id": action_id,
                "block_id": "deploy_decision",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": req.id,
                "style": "primary",
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def click(h: Harness, action_id: str, req: Any, user: str, **kw: Any) -> Any:
    resp = h.interact(click_payload(action_id, req, user, **kw))
    assert resp.status_code == 200
    return resp


def submit_reject(h: Harness, view: dict[str, Any], user: str, reason: str | None) -> Any:
    """A view_submission of the reject modal as Slack sends it."""
    submitted = {
        **view,
        "id": "V00000001",
        "team_id": "T0001",
        "state": {
            "values": {"reason": {"reason_input": {"type": "plain_text_input", "value": reason}}}
        },
        "hash": "1.abc",
    }
    payload = {
        "type": "view_submission",
        "team": {"id": "T0001", "domain": "acme"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0001"},
        "api_app_id": "A0001",
        "token": "unused",
        "trigger_id": "1.2",
        "view": submitted,
        "response_urls": [],
        "is_enterprise_install": False,
    }
    resp = h.interact(payload)
    assert resp.status_code == 200
    return resp


def card_of(slack: Any, req: Any) -> str:
    """The card as Slack currently shows it (blocks of the latest post or update)."""
    return json.dumps(slack.messages[(req.channel_id, req.root_ts)]["blocks"])


def buttons(slack: Any, req: Any) -> list[str]:
    blocks = slack.messages[(req.channel_id, req.root_ts)]["blocks"]
    return [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]


def ephemerals(slack: Any, user: str) -> list[Any]:
    return [c for c in slack.calls_to("chat.postEphemeral") if c.params["user"] == user]


def audit_actions(h: Harness, req: Any) -> list[str]:
    return [row["action"] for row in h.store.audit_rows(request_id=req.id)]


# -- the card -------------------------------------------------------------------------------


def test_deploy_posts_approval_card_with_run_facts(harness: Harness, github, slack) -> None:
    req = request_deploy(harness, slack)
    assert req.status == "pending_approval"
    assert req.kind == "deploy" and req.environment == "production"
    assert req.run_ref == str(RUN_ID) and req.head_sha == HEAD_SHA
    assert req.expires_at == pytest.approx(req.created_at + 30 * 60)
    roots = [c for c in slack.calls_to("chat.postMessage") if "thread_ts" not in c.params]
    assert len(roots) == 1 and roots[0].params["channel"] == CHANNEL
    card = card_of(slack, req)
    for expected in (
        f"<@{USER}>",
        "production",
        REPO,
        str(RUN_ID),
        "train",
        "feature",
        HEAD_SHA[:7],
        "success",
        f"actions/runs/{RUN_ID}",
        "waiting for approval",
        f"<!date^{int(req.created_at)}^",  # when it was asked, in each reader's time zone
    ):
        assert expected in card, expected
    assert buttons(slack, req) == ["deploy_approve", "deploy_reject"]
    blocks = slack.messages[(req.channel_id, req.root_ts)]["blocks"]
    approve = next(b for b in blocks if b["type"] == "actions")["elements"][0]
    assert approve["style"] == "primary" and approve["confirm"]["confirm"]["text"] == "Approve"
    assert approve["value"] == req.id
    assert github.dispatches == []
    assert audit_actions(harness, req) == ["deploy.requested"]


def test_card_warns_about_unfinished_run_and_moved_pr_head(harness: Harness, github, slack) -> None:
    github.add_pull(REPO, 42, head_sha="d" * 40)  # the PR moved on after the run
    github.add_run(
        REPO,
        {
            "id": 9002,
            "name": "train",
            "status": "in_progress",
            "head_sha": HEAD_SHA,
            "pull_requests": [_pr_ref(42, HEAD_SHA)],
        },
    )
    evaluation, _ = harness.store.create_request(
        NewRequest(
            kind="evaluate",
            repo=REPO,
            trigger="label",
            channel_id=CHANNEL,
            user_id=USER,
            idempotency_key="k-eval",
            pr_number=42,
            head_sha=HEAD_SHA,
            status="succeeded",
        )
    )
    harness.store.merge_details(
        evaluation.id,
        {
            "metrics_comments": [
                {
                    "id": 1,
                    "commit": HEAD_SHA,
                    "author": "github-actions[bot]",
                    "author_type": "Bot",
                    "trusted_as": "bot",
                    "created_at": "2099-01-01T00:05:00Z",
                    "comment_url": "https://github.com/acme/ml-models/pull/42#issuecomment-1",
                    "body": "<!-- chatops:metrics -->\n| Source | Loss |\n|---|---:|\n"
                    "| Head | 0.2 |\n",
                }
            ]
        },
    )
    req = request_deploy(harness, slack, "9002 staging")
    card = card_of(slack, req)
    assert "not finished" in card
    assert f"metrics are for `{HEAD_SHA[:7]}`; the head of PR #42 is now `ddddddd`" in card
    blocks = slack.messages[(req.channel_id, req.root_ts)]["blocks"]
    assert [b for b in blocks if b["type"] == "table"], "relayed metrics are shown as a table"


def test_card_warns_when_the_branch_moved_past_the_run(harness: Harness, github, slack) -> None:
    """A run of a branch (no PR): the card compares its commit with the branch's head."""
    github.set_branch(REPO, "release/2.1", "e" * 40)
    github.add_run(
        REPO,
        {
            "id": 9003,
            "name": "train",
            "status": "completed",
            "conclusion": "success",
            "head_sha": HEAD_SHA,
            "head_branch": "release/2.1",
            "pull_requests": [],
        },
    )
    req = request_deploy(harness, slack, "9003 staging")
    card = card_of(slack, req)
    assert (
        f"This run is for `{HEAD_SHA[:7]}`; the head of branch `release/2.1` is now `eeeeeee`"
        in card
    )
    assert github.requests_to("GET", r"/branches/release%2F2\.1$")
    # The branch at the run's commit, or gone: no warning, and the card is still posted.
    github.set_branch(REPO, "release/2.1", HEAD_SHA)
    assert "head of branch" not in card_of(slack, request_deploy(harness, slack, "9003 production"))
    github.add_run(
        REPO,
        {
            "id": 9004,
            "name": "train",
            "status": "completed",
            "conclusion": "success",
            "head_sha": HEAD_SHA,
            "head_branch": "deleted-branch",
            "pull_requests": [],
        },
    )
    assert "head of branch" not in card_of(slack, request_deploy(harness, slack, "9004 staging"))


def test_opaque_run_id_is_passed_through(harness: Harness, github, slack) -> None:
    req = request_deploy(harness, slack, "mlflow-7f3a9c staging")
    assert "Not a GitHub workflow run id" in card_of(slack, req)
    assert github.requests_to("GET", r"/actions/runs/") == []
    click(harness, "deploy_approve", req, APPROVER)
    github.wait_for("POST", r"/dispatches$")
    harness.settle()
    assert github.dispatches[0]["client_payload"]["run_id"] == "mlflow-7f3a9c"
    assert github.dispatches[0]["client_payload"]["environment"] == "staging"


# -- approvals ------------------------------------------------------------------------------


def test_approve_by_approver_dispatches_once_with_exact_payload(
    harness: Harness, github, slack
) -> None:
    req = request_deploy(harness, slack)
    click(harness, "deploy_approve", req, APPROVER)
    github.wait_for("POST", r"/dispatches$")
    harness.settle()
    assert len(github.dispatches) == 1
    sent = github.dispatches[0]
    assert sent["event_type"] == "deploy" and sent["repo"] == REPO
    assert sent["client_payload"] == {
        "request_id": req.id,
        "run_id": str(RUN_ID),
        "environment": "production",
        "requested_by": USER,
        "approved_by": APPROVER,
        "slack_channel": CHANNEL,
        "slack_thread_ts": req.root_ts,
    }
    assert set(sent["client_payload"]) == PAYLOAD_KEYS
    done = harness.store.get(req.id)
    assert done.status == "triggered" and done.decided_by == APPROVER
    assert buttons(slack, req) == []
    assert f"Approved by <@{APPROVER}> at" in card_of(slack, req)
    assert audit_actions(harness, req) == [
        "deploy.requested",
        "deploy.approved",
        "deploy.dispatched",
    ]
    # A late second click is told the state and changes nothing.
    click(harness, "deploy_approve", req, APPROVER2)
    harness.settle()
    assert "already approved" in ephemerals(slack, APPROVER2)[-1].params["text"]
    assert len(github.dispatches) == 1


def test_requester_may_not_approve_own_deploy(harness: Harness, github, slack) -> None:
    req = request_deploy(harness, slack)  # USER is listed as an approver too
    updates = len(slack.calls_to("chat.update"))
    click(harness, "deploy_approve", req, USER)
    harness.settle()
    said = ephemerals(slack, USER)[-1].params
    assert "someone else must approve" in said["text"] and f"<@{APPROVER}>" in said["text"]
    assert "thread_ts" not in said  # no active thread: Slack would not show it there
    assert github.dispatches == []
    assert harness.store.get(req.id).status == "pending_approval"
    assert len(slack.calls_to("chat.update")) == updates  # the card does not change
    refused = [r for r in harness.store.audit_rows(request_id=req.id) if r["outcome"] == "refused"]
    assert [(r["actor"], r["action"]) for r in refused] == [(USER, "deploy.approval")]
    assert "someone else must approve" in refused[0]["detail"]


def test_stranger_is_told_who_can_approve_in_the_thread(harness: Harness, github, slack) -> None:
    req = request_deploy(harness, slack)
    click(harness, "deploy_approve", req, STRANGER, thread_ts=req.root_ts)
    harness.settle()
    said = ephemerals(slack, STRANGER)[-1].params
    assert f"<@{APPROVER}>" in said["text"] and f"<@{APPROVER2}>" in said["text"]
    assert said["thread_ts"] == req.root_ts
    assert github.dispatches == []
    assert harness.store.approvers_of(req.id) == []


@pytest.mark.parametrize("distinct", [True, False], ids=["20-approvers", "double-clicks"])
def test_twenty_concurrent_clicks_dispatch_exactly_once(
    make_harness, github, slack, config_data, monkeypatch, distinct: bool
) -> None:
    """20 clicks at once: by 20 different approvers (all race to the status change), or
    double clicks of two approvers (the approvals table absorbs the repeats)."""
    crowd = [f"U0CROWD{n:04d}" for n in range(20)]
    h = make_harness(_config(config_data, approvers=[*crowd, APPROVER, APPROVER2]))
    req = request_deploy(h, slack)
    users = crowd if distinct else [APPROVER, APPROVER2] * 10
    # Without a gate the clicks mostly run one after the other (each takes milliseconds) and
    # the later ones stop at "already approved" before racing. The barrier holds every click
    # after its approval row is written, so all 20 then race on the status change itself.
    # (The timeout only breaks a deadlock if the app ever stopped handling clicks in parallel.)
    gate = threading.Barrier(len(users), timeout=30)
    record = h.store.add_approval

    def all_at_once(request_id: str, user_id: str) -> bool:
        recorded = record(request_id, user_id)
        gate.wait()
        return recorded

    monkeypatch.setattr(h.store, "add_approval", all_at_once)
    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(
            pool.map(
                lambda u: h.interact(click_payload("deploy_approve", req, u)).status_code,
                users,
            )
        )
    assert codes == [200] * 20
    # Each click is handled before its HTTP answer (process_before_response), so once all 20
    # answers are in, every job they submitted is known to the pool: settle() waits for them.
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    assert len(github.requests_to("POST", r"/dispatches$")) == 1
    assert h.store.get(req.id).status == "triggered"
    assert [a for a in audit_actions(h, req) if a == "deploy.approved"] == ["deploy.approved"]
    winner = h.store.get(req.id).decided_by
    assert github.dispatches[0]["client_payload"]["approved_by"] == winner
    # Every other click was told why it changed nothing.
    told = slack.calls_to("chat.postEphemeral")
    assert len(told) == 19
    if distinct:
        assert sorted(c.params["user"] for c in told) == sorted(u for u in users if u != winner)
    for said in told:
        assert "already" in said.params["text"], said.params["text"]
        assert not re.search(r"waiting for (0|-\d)", said.params["text"])


def test_double_click_that_lost_the_race_is_not_told_to_wait(
    harness: Harness, github, slack
) -> None:
    """The first click of a double click recorded the approval but has not decided yet."""
    req = request_deploy(harness, slack)
    assert harness.store.add_approval(req.id, APPROVER)  # the first click, still in flight
    click(harness, "deploy_approve", req, APPROVER)
    harness.settle()
    said = ephemerals(slack, APPROVER)[-1].params["text"]
    assert said == "You approved this deploy already.", said
    assert github.dispatches == []


def test_approval_racing_a_rejection_is_not_counted(
    make_harness, github, slack, config_data, monkeypatch
) -> None:
    """required: 2 — the request is rejected between the click's check and its approval row."""
    h = make_harness(_config(config_data, required=2))
    req = request_deploy(h, slack)
    record = h.store.add_approval

    def rejected_meanwhile(request_id: str, user_id: str) -> bool:
        h.store.update(request_id, status="rejected", decided_by=APPROVER2)
        return record(request_id, user_id)

    monkeypatch.setattr(h.store, "add_approval", rejected_meanwhile)
    click(h, "deploy_approve", req, APPROVER)
    h.settle()
    assert "already rejected" in ephemerals(slack, APPROVER)[-1].params["text"]
    assert h.store.approvers_of(req.id) == []
    assert "deploy.approval" not in audit_actions(h, req)
    assert github.dispatches == []


def test_two_required_approvals(make_harness, github, slack, config_data) -> None:
    h = make_harness(_config(config_data, required=2))
    req = request_deploy(h, slack)
    click(h, "deploy_approve", req, APPROVER)
    h.settle()
    assert github.dispatches == []
    assert f"1 of 2: <@{APPROVER}>" in card_of(slack, req)
    assert buttons(slack, req) == ["deploy_approve", "deploy_reject"]
    click(h, "deploy_approve", req, APPROVER)  # the same person twice counts once
    h.settle()
    assert "already" in ephemerals(slack, APPROVER)[-1].params["text"]
    assert github.dispatches == []
    click(h, "deploy_approve", req, APPROVER2)
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    assert len(github.dispatches) == 1
    assert github.dispatches[0]["client_payload"]["approved_by"] == f"{APPROVER},{APPROVER2}"
    assert f"Approved by <@{APPROVER}> and <@{APPROVER2}>" in card_of(slack, req)


def test_usergroup_members_may_approve(make_harness, github, slack, config_data) -> None:
    config_data["commands"]["deploy"]["approval"] = {
        "approver_usergroups": ["S0SRETEAM"],
        "required": 1,
    }
    slack.usergroups["S0SRETEAM"] = ["U0SRE00001"]
    h = make_harness(config_data)
    req = request_deploy(h, slack)
    click(h, "deploy_approve", req, STRANGER)
    h.settle()
    assert "<!subteam^S0SRETEAM>" in ephemerals(slack, STRANGER)[-1].params["text"]
    click(h, "deploy_approve", req, "U0SRE00001")
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    assert len(github.dispatches) == 1


def test_environment_without_policy_dispatches_at_once(
    make_harness, github, slack, config_data
) -> None:
    deploy = config_data["commands"]["deploy"]
    deploy["environments"] = {
        "production": {"approval": deploy.pop("approval")},
        "staging": {"approval": "none"},  # the explicit way; a missing policy is refused
    }
    h = make_harness(config_data)
    req = request_deploy(h, slack, f"{RUN_ID} staging")
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    assert len(github.dispatches) == 1
    assert github.dispatches[0]["client_payload"]["approved_by"] == ""
    assert h.store.get(req.id).status == "triggered"
    assert buttons(slack, req) == [] and "no approval required by config" in card_of(slack, req)


def test_approver_needs_github_permission_when_required(
    make_harness, github, slack, config_data
) -> None:
    config_data["github_users"] = {APPROVER: "alice", APPROVER2: "bob"}
    h = make_harness(_config(config_data, require_github_permission="write"))
    github.set_permission(REPO, "alice", "read")
    github.set_permission(REPO, "bob", "maintain")
    req = request_deploy(h, slack)
    click(h, "deploy_approve", req, APPROVER)
    h.settle()
    assert "`read` permission" in ephemerals(slack, APPROVER)[-1].params["text"]
    assert github.dispatches == []
    click(h, "deploy_approve", req, APPROVER2)
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    assert len(github.dispatches) == 1


def test_policy_defaults_and_per_environment_override(
    make_harness, github, slack, config_data
) -> None:
    """Only `approvers` given: required 1, no self-approval, 30 minutes. The first environment
    is the default, and its own `approval` replaces the command's for its requests."""
    deploy = config_data["commands"]["deploy"]
    deploy["approval"] = {"approvers": [APPROVER, APPROVER2, USER]}
    # The harness writes chatops.yml with sorted keys: "canary" is first in the file too.
    deploy["environments"] = {
        "canary": {
            "approval": {
                "approvers": [USER],
                "allow_self_approval": True,
                "expires_after_minutes": 120,
            }
        },
        "production": {},
    }
    h = make_harness(config_data)

    prod = request_deploy(h, slack, f"{RUN_ID} production")
    assert prod.expires_at == pytest.approx(prod.created_at + 30 * 60)
    click(h, "deploy_approve", prod, USER)
    h.settle()
    assert "someone else must approve" in ephemerals(slack, USER)[-1].params["text"]
    assert h.store.get(prod.id).status == "pending_approval"

    resp = h.slash("/deploy", str(RUN_ID))
    assert f"<@{USER}> can approve it within 120 minutes" in resp.json()["text"]
    rid = re.search(r"request `([0-9a-f]{12})`", resp.json()["text"])[1]
    h.wait_until(lambda: h.store.get(rid).root_ts, what="card")
    h.settle()
    canary = h.store.get(rid)
    assert canary.environment == "canary"  # the first configured environment
    assert canary.expires_at == pytest.approx(canary.created_at + 120 * 60)
    click(h, "deploy_approve", canary, APPROVER)  # an approver of production only
    h.settle()
    said = ephemerals(slack, APPROVER)[-1].params["text"]
    assert "cannot approve deploys to *canary*" in said and f"<@{USER}> can" in said
    click(h, "deploy_approve", canary, USER)  # self-approval is allowed in canary
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    assert len(github.dispatches) == 1
    sent = github.dispatches[0]["client_payload"]
    assert sent["request_id"] == canary.id and sent["approved_by"] == USER
    assert h.store.get(prod.id).status == "pending_approval"


def test_default_environment_is_the_first_in_the_file() -> None:
    cfg = parse_config(
        {
            "repositories": {"default": REPO},
            "commands": {
                "deploy": {"approval": "none", "environments": {"staging": {}, "production": {}}}
            },
        }
    )
    assert cfg.commands.deploy.default_environment == "staging"


# -- rejection and expiry ---------------------------------------------------------------------


def test_reject_opens_modal_and_card_shows_who_and_why(harness: Harness, github, slack) -> None:
    req = request_deploy(harness, slack)
    payload = click_payload("deploy_reject", req, APPROVER2)
    assert harness.interact(payload).status_code == 200
    opened = slack.wait_for("views.open")[-1].params
    assert opened["trigger_id"] == payload["trigger_id"]
    view = opened["view"]
    assert view["callback_id"] == "deploy_reject_reason" and view["private_metadata"] == req.id
    resp = submit_reject(harness, view, APPROVER2, "loss regressed <!channel>")
    assert resp.text in ("", "null") or resp.json().get("response_action") is None
    harness.settle()
    done = harness.store.get(req.id)
    assert done.status == "rejected" and done.decided_by == APPROVER2
    assert done.reason == "loss regressed <!channel>"
    card = card_of(slack, req)
    assert f"Rejected by <@{APPROVER2}>" in card and "loss regressed &lt;!channel&gt;" in card
    assert buttons(slack, req) == []
    click(harness, "deploy_approve", req, APPROVER)
    harness.settle()
    assert "already rejected" in ephemerals(slack, APPROVER)[-1].params["text"]
    assert github.dispatches == []
    assert audit_actions(harness, req) == ["deploy.requested", "deploy.rejected"]


def test_reject_without_reason_and_stranger_cannot_reject(harness: Harness, github, slack) -> None:
    req = request_deploy(harness, slack)
    click(harness, "deploy_reject", req, STRANGER)
    harness.settle()
    assert slack.calls_to("views.open") == []
    assert "can reject" in ephemerals(slack, STRANGER)[-1].params["text"]
    click(harness, "deploy_reject", req, USER)  # the requester may withdraw
    view = slack.wait_for("views.open")[-1].params["view"]
    submit_reject(harness, view, USER, None)
    harness.settle()
    assert harness.store.get(req.id).status == "rejected"
    assert "no reason given" in card_of(slack, req)


def test_reject_submitted_after_approval_shows_error_in_modal(
    harness: Harness, github, slack
) -> None:
    req = request_deploy(harness, slack)
    click(harness, "deploy_reject", req, APPROVER2)
    view = slack.wait_for("views.open")[-1].params["view"]
    click(harness, "deploy_approve", req, APPROVER)
    github.wait_for("POST", r"/dispatches$")
    resp = submit_reject(harness, view, APPROVER2, "too late")
    body = resp.json()
    assert body["response_action"] == "errors"
    assert "already approved" in body["errors"]["reason"]
    harness.settle()
    assert harness.store.get(req.id).status == "triggered"


def test_click_after_expiry_is_refused(make_harness, github, slack, clock) -> None:
    h = make_harness(use_clock=True)
    req = request_deploy(h, slack)
    clock.advance(30 * 60 + 1)
    click(h, "deploy_approve", req, APPROVER)
    h.settle()
    assert "already expired" in ephemerals(slack, APPROVER)[-1].params["text"]
    assert github.dispatches == []
    assert h.store.get(req.id).status == "expired"
    assert buttons(slack, req) == [] and "Expired at" in card_of(slack, req)


def test_expiry_job_marks_expired_and_edits_card(make_harness, github, slack, clock) -> None:
    h = make_harness(use_clock=True)
    early = request_deploy(h, slack)
    clock.advance(10 * 60)
    late = request_deploy(h, slack, f"{RUN_ID} staging")
    hk = h.bridge.housekeeping
    for installer in hk._extra:
        installer(hk)
    job = hk.scheduler.get_job("deploy-expiry")
    assert job is not None and job.trigger.interval.total_seconds() == 15
    hk.is_leader = True
    job.func()  # nothing is due yet
    assert h.store.get(early.id).status == "pending_approval"
    clock.advance(21 * 60)  # as if the process had been down past the first deadline
    job.func()
    assert h.store.get(early.id).status == "expired"
    assert h.store.get(late.id).status == "pending_approval"
    assert "Expired at" in card_of(slack, early) and buttons(slack, early) == []
    assert buttons(slack, late) == ["deploy_approve", "deploy_reject"]
    updates = len(slack.calls_to("chat.update"))
    job.func()  # once only
    assert len(slack.calls_to("chat.update")) == updates
    assert audit_actions(h, early)[-1] == "deploy.expired"
    assert github.dispatches == []


def test_card_warns_when_the_run_failed() -> None:
    run = {"status": "completed", "conclusion": "failure", "sha": HEAD_SHA}
    assert warnings_for({"run": run}) == ["The run did not succeed (conclusion: *failure*)."]
    assert warnings_for({"run": {**run, "conclusion": "success"}}) == []


# -- restarts and crashes -------------------------------------------------------------------


def test_buttons_work_after_a_restart(make_harness, github, slack) -> None:
    first = make_harness()
    req = request_deploy(first, slack)
    second = make_harness()  # a new process on the same database
    assert second.bridge is not first.bridge
    assert second.store.get(req.id).root_ts == req.root_ts
    click(second, "deploy_approve", req, APPROVER)
    github.wait_for("POST", r"/dispatches$")
    second.settle()
    assert len(github.dispatches) == 1
    assert github.dispatches[0]["client_payload"]["request_id"] == req.id


def test_expiry_catches_up_after_a_restart_and_buttons_still_work(
    make_harness, github, slack, clock
) -> None:
    """Two cards; the process is down past the first one's deadline; a new instance on the same
    database expires that one at its first run, and the other card's buttons still work."""
    first = make_harness(use_clock=True)
    early = request_deploy(first, slack)
    clock.advance(10 * 60)
    late = request_deploy(first, slack, f"{RUN_ID} staging")
    clock.advance(21 * 60)  # down: early's deadline passes, late's does not
    second = make_harness(use_clock=True)
    assert second.bridge is not first.bridge
    hk = second.bridge.housekeeping
    for installer in hk._extra:
        installer(hk)
    hk.is_leader = True
    hk.scheduler.get_job("deploy-expiry").func()
    assert second.store.get(early.id).status == "expired"
    assert "Expired at" in card_of(slack, early) and buttons(slack, early) == []
    assert buttons(slack, late) == ["deploy_approve", "deploy_reject"]
    click(second, "deploy_approve", early, APPROVER)
    second.settle()
    assert "already expired" in ephemerals(slack, APPROVER)[-1].params["text"]
    click(second, "deploy_approve", late, APPROVER)
    github.wait_for("POST", r"/dispatches$")
    second.settle()
    assert len(github.dispatches) == 1
    assert github.dispatches[0]["client_payload"]["request_id"] == late.id
    assert second.store.get(late.id).status == "triggered"


def test_sweep_posts_a_card_lost_in_a_crash_once(make_harness, github, slack, clock) -> None:
    h = make_harness(use_clock=True)
    # Stored and acknowledged, then the process died before the job ran.
    req, _ = h.store.create_request(
        NewRequest(
            kind="deploy",
            repo=REPO,
            trigger="dispatch",
            channel_id=CHANNEL,
            user_id=USER,
            idempotency_key="slack:lost",
            run_ref=str(RUN_ID),
            environment="production",
            event_type="deploy",
            status="pending_approval",
            expires_at=clock() + 1800,
        )
    )
    clock.advance(60)
    h.bridge.housekeeping.sweep()
    h.wait_until(lambda: h.store.get(req.id).root_ts, what="card")
    h.settle()
    clock.advance(60)
    h.bridge.housekeeping.sweep()
    h.settle()
    roots = [c for c in slack.calls_to("chat.postMessage") if "thread_ts" not in c.params]
    assert len(roots) == 1
    assert h.store.get(req.id).status == "pending_approval"
    assert github.dispatches == []


@pytest.mark.parametrize("run_started", [True, False])
def test_lost_dispatch_answer_is_not_repeated_blindly(
    make_harness, github, slack, clock, run_started: bool
) -> None:
    """GitHub accepted the dispatch but the answer was a 502: the retry looks for the run."""
    h = make_harness(use_clock=True)
    req = request_deploy(h, slack)
    github.fail("POST", r"/dispatches$", 502, applied=True)
    click(h, "deploy_approve", req, APPROVER)
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    assert h.store.get(req.id).status == "approved"  # not known to have arrived
    if run_started:
        github.add_run(
            REPO,
            {
                "id": 7777,
                "name": "deploy",
                "status": "queued",
                "display_title": f"chatops {req.id}: deploy {RUN_ID} to production",
            },
        )
    clock.advance(120)
    h.bridge.housekeeping.sweep()
    h.wait_until(lambda: h.store.get(req.id).status == "triggered", what="triggered")
    h.settle()
    posts = github.requests_to("POST", r"/dispatches$")
    assert len(posts) == (1 if run_started else 2)
    assert {d["client_payload"]["request_id"] for d in github.dispatches} == {req.id}
    assert audit_actions(h, req).count("deploy.dispatched") == 1


# -- progress in the thread -----------------------------------------------------------------


def _approved(h: Harness, github: Any, slack: Any) -> Any:
    req = request_deploy(h, slack)
    click(h, "deploy_approve", req, APPROVER)
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    return h.store.get(req.id)


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def test_workflow_run_of_the_deploy_reaches_its_thread(harness: Harness, github, slack) -> None:
    req = _approved(harness, github, slack)
    run = copy.deepcopy(fixture("workflow_run.completed"))
    run["repository"]["full_name"] = REPO
    run["workflow_run"].update(
        {
            "id": 5555,
            "name": "deploy",
            "display_title": f"chatops {req.id}: deploy 9001",
            "event": "repository_dispatch",
            "created_at": _iso_now(),  # runs created before the dispatch are not the deploy's
            "status": "completed",
            "conclusion": "success",
            "pull_requests": [],
            "html_url": f"https://github.com/{REPO}/actions/runs/5555",
        }
    )
    assert harness.webhook("workflow_run", run).status_code == 202
    harness.wait_until(lambda: harness.store.get(req.id).status == "succeeded", what="success")
    harness.settle()
    replies = slack.thread_replies(CHANNEL, req.root_ts)
    assert any("deploy" in r["text"] and "success" in r["text"] for r in replies)
    assert "succeeded" in card_of(slack, req)


def test_deployment_status_fixture_replies_once_and_updates_card(
    harness: Harness, github, slack
) -> None:
    req = _approved(harness, github, slack)
    payload = copy.deepcopy(fixture("deployment_status.created"))
    payload["repository"]["full_name"] = REPO
    payload["deployment"]["created_at"] = _iso_now()
    payload["deployment_status"]["environment_url"] = "https://ml.acme.example/production"
    payload["deployment_status"]["description"] = "rolled out <!here> *v2*"
    assert harness.webhook("deployment_status", payload).status_code == 202
    harness.wait_until(lambda: slack.thread_replies(CHANNEL, req.root_ts), what="reply")
    harness.settle()
    assert harness.webhook("deployment_status", payload).status_code == 202  # new delivery id
    harness.settle()
    replies = slack.thread_replies(CHANNEL, req.root_ts)
    assert len(replies) == 1
    text = json.dumps(replies[0]["blocks"])
    assert "<https://ml.acme.example/production|production>" in text and "success" in text
    assert "&lt;!here&gt;" in text and "<!here>" not in text
    assert "Deployment to <https://ml.acme.example/production|production>" in card_of(slack, req)


def test_deployment_status_of_an_unrelated_run_is_ignored(harness: Harness, github, slack) -> None:
    req = _approved(harness, github, slack)
    payload = copy.deepcopy(wx.payloads("deployment_status")[1]) if wx.available() else None
    if payload is None:
        pytest.skip("needs `npm ci` for the newer deployment_status example")
    payload["repository"]["full_name"] = REPO  # run 289782451 is unknown: GitHub answers 404
    harness.webhook("deployment_status", payload)
    harness.settle()
    assert slack.thread_replies(CHANNEL, req.root_ts) == []


@pytest.mark.skipif(not wx.available(), reason="needs `npm ci` (@octokit/webhooks-examples)")
def test_every_deployment_status_example_reaches_the_thread(
    harness: Harness, github, slack
) -> None:
    req = _approved(harness, github, slack)
    examples = wx.payloads("deployment_status")
    for payload in examples:
        payload["repository"]["full_name"] = REPO
        payload["deployment"]["created_at"] = _iso_now()
        run = payload.get("workflow_run")
        if run:  # newer payloads name the run; GitHub knows its display title
            github.add_run(
                REPO,
                {
                    "id": run["id"],
                    "name": run["name"],
                    "display_title": f"chatops {req.id}: deploy",
                },
            )
        assert harness.webhook("deployment_status", payload).status_code == 202
        harness.settle()
    replies = slack.thread_replies(CHANNEL, req.root_ts)
    states = {(p["deployment"]["id"], p["deployment_status"]["state"]) for p in examples}
    assert len(replies) == len(states) == 2  # once per (deployment, state)
    assert any("in_progress" in r["text"] for r in replies)


# -- bad input ------------------------------------------------------------------------------


def test_bad_input_is_explained_and_changes_nothing(harness: Harness, github, slack) -> None:
    cases = {
        "": "/deploy <run-id>",
        "help": "/deploy <run-id>",
        "9001 moon": "`production`, `staging`",
        "9001 production extra": "Too many words",
        "not/a/repo@12": "not a repository name",
        f"{harness.bridge.deps.web_base}/acme/ml-models/pull/4": "not a workflow run",
        "https://evil.example/acme/ml-models/actions/runs/5": "not a GitHub host",
    }
    for text, expected in cases.items():
        resp = harness.slash("/deploy", text)
        assert resp.status_code == 200
        body = resp.json()
        assert body["response_type"] == "ephemeral"
        assert expected in body["text"], (text, body["text"])
    harness.settle()
    assert harness.store.find() == []
    assert github.requests == []
    assert slack.calls_to("chat.postMessage") == []


def test_run_of_another_repository_is_explained_and_nothing_is_posted(
    make_harness, config_data, github, slack
) -> None:
    config_data["repositories"]["allowed"] = ["other/unknown"]  # configured, not installed
    harness = make_harness(config_data)
    github.add_repo("acme/other", installation_id=101)
    github.add_run(
        "acme/other", {"id": 4242, "name": "train", "status": "completed", "conclusion": "success"}
    )
    request_deploy(harness, slack, "4242", card=False)  # run 4242 is not in acme/ml-models
    request_deploy(harness, slack, "other/unknown@5", card=False)
    said = slack.wait_for("response_url", 2)
    harness.settle()
    texts = " ".join(c.params["text"] for c in said)
    assert "4242 was not found in acme/ml-models" in texts
    assert "not installed" in texts
    assert slack.calls_to("chat.postMessage") == []
    assert github.dispatches == []
    assert {r.status for r in harness.store.find(kind="deploy")} == {"error"}


def test_status_subcommand_is_delegated(harness: Harness, github, slack) -> None:
    req = request_deploy(harness, slack)
    resp = harness.slash("/deploy", "status")
    assert resp.status_code == 200 and resp.json()["response_type"] == "ephemeral"
    assert req.id in resp.json()["text"] or str(RUN_ID) in resp.json()["text"]


# -- the example deploy workflow ------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_id", "conclusion", "rc", "github_run"),
    [
        ("9001", "success", 0, "true"),
        ("9001", "failure", 1, None),
        ("mlflow-7f3a9c", "", 0, "false"),  # opaque: passed on, GitHub is not asked
        ("$(touch pwned)", "", 1, None),
    ],
)
def test_example_workflow_check_accepts_opaque_run_ids(
    tmp_path: Any, run_id: str, conclusion: str, rc: int, github_run: str | None
) -> None:
    """The `check` step of examples/workflows/deploy.yml, run by bash with a stub `gh`."""
    doc = yaml.safe_load(
        (Path(__file__).parent.parent / "examples/workflows/deploy.yml").read_text()
    )
    step = next(s for s in doc["jobs"]["check"]["steps"] if s.get("id") == "request")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gh = bin_dir / "gh"
    gh.write_text(
        '#!/bin/sh\necho "$@" >> "$GH_CALLS"\n'
        f'case "$1" in api) echo "{conclusion}";; run) echo 0;; esac\n'
    )
    gh.chmod(0o755)
    out = tmp_path / "output"
    out.write_text("")
    calls = tmp_path / "calls"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "GH_CALLS": str(calls),
        "GITHUB_OUTPUT": str(out),
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_RUN_ID": "123",
        "GITHUB_WORKFLOW_REF": f"{REPO}/.github/workflows/deploy.yml@refs/heads/main",
        "REQUEST_ID": "0a1b2c3d4e5f",
        "RUN_ID": run_id,
        "ENVIRONMENT": "production",
    }
    done = subprocess.run(
        ["bash", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == rc, done.stdout + done.stderr
    assert not (tmp_path / "pwned").exists()
    asked = calls.read_text() if calls.exists() else ""
    assert ("actions/runs/" in asked) == run_id.isdigit()
    if github_run is not None:
        assert f"github_run={github_run}" in out.read_text()
        assert "repeat=false" in out.read_text()


def test_a_failed_usergroup_lookup_never_lets_an_approval_through(
    make_harness, github, slack, config_data
) -> None:
    """Fail closed: when Slack cannot say who is in the approvers' group, even a member's
    click is refused (and told why), and nothing is dispatched."""
    config_data["commands"]["deploy"]["approval"] = {
        "approver_usergroups": ["S0SRETEAM"],
        "required": 1,
    }
    slack.usergroups["S0SRETEAM"] = ["U0SRE00001"]
    h = make_harness(config_data)
    req = request_deploy(h, slack)
    slack.fail_next("usergroups.users.list", "missing_scope", times=5)
    click(h, "deploy_approve", req, "U0SRE00001")
    h.settle()
    assert ephemerals(slack, "U0SRE00001"), "the clicker is told"
    assert slack.calls_to("usergroups.users.list")
    assert github.dispatches == []
    assert h.store.get(req.id).status == "pending_approval"
