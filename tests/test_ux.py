"""What users see: help by permission, mentions in a request's thread, the App Home tab,
notification levels and coalesced root edits — all through the real HTTP app and the doubles."""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any

import pytest
from slack_sdk.models.views import View
from webhook_examples import fixture

from handlers.help import short_help
from handlers.lifecycle import refresh_root
from tests.conftest import CHANNEL, HEAD_SHA, REPO, USER, Harness

APPROVER = "U0APPROVER1"
STRANGER = "U0STRANGER1"
DEPLOYER = "U0DEPLOYER1"


# -- helpers ----------------------------------------------------------------------------------


def mention(
    h: Harness,
    text: str,
    *,
    user: str = USER,
    thread_ts: str | None = None,
    channel: str = CHANNEL,
    event_id: str | None = None,
) -> Any:
    """An app_mention event as Slack sends it (signed), optionally inside a thread."""
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": user,
        "text": f"<@UBOTBRIDGE> {text}",
        "ts": f"{time.time():.6f}",
        "channel": channel,
        "event_ts": f"{time.time():.6f}",
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    body = json.dumps(
        {
            "token": "unused",
            "team_id": "T0001",
            "api_app_id": "A0001",
            "type": "event_callback",
            "event_id": event_id or f"Ev{uuid.uuid4().hex[:10]}",
            "event_time": int(time.time()),
            "event": event,
        }
    )
    resp = h.slack_post(body, "application/json")
    assert resp.status_code == 200
    return resp


def start_evaluate(h: Harness, *, user: str = USER, pr: int = 42) -> Any:
    """/evaluate <pr>; return the request once its root is posted and the label is on."""
    resp = h.slash("/evaluate", str(pr), user=user)
    rid = resp.json()["text"].split("request `")[1][:12]
    h.wait_until(lambda: (r := h.store.get(rid)) and r.status == "triggered", what="triggered")
    h.settle()
    return h.store.get(rid)


def start_deploy(h: Harness, run_ref: str = "mlflow-run-7", *, user: str = USER) -> Any:
    resp = h.slash("/deploy", f"{run_ref} production", user=user)
    rid = resp.json()["text"].split("request `")[1][:12]
    h.wait_until(lambda: (r := h.store.get(rid)) and r.root_ts, what="approval card")
    h.settle()
    return h.store.get(rid)


def run_event(
    *, status: str, conclusion: str | None = None, run_id: int = 9001, name: str = "Evaluate"
) -> dict[str, Any]:
    payload = copy.deepcopy(fixture("workflow_run.completed"))
    payload["action"] = "completed" if status == "completed" else "in_progress"
    payload["repository"]["full_name"] = REPO
    payload["workflow_run"].update(
        {
            "id": run_id,
            "name": name,
            "display_title": "Evaluate model",
            "status": status,
            "conclusion": conclusion,
            "head_sha": HEAD_SHA,
            "event": "pull_request",
            "run_attempt": 1,
            "html_url": f"https://github.com/{REPO}/actions/runs/{run_id}",
            "created_at": "2099-01-01T00:00:00Z",
            "run_started_at": "2099-01-01T00:00:00Z",
            "updated_at": "2099-01-01T00:02:00Z",
            "pull_requests": [
                {
                    "number": 42,
                    "id": 1,
                    "url": "x",
                    "head": {
                        "ref": "f",
                        "sha": HEAD_SHA,
                        "repo": {"id": 1, "url": "x", "name": "ml-models"},
                    },
                    "base": {
                        "ref": "main",
                        "sha": "b" * 40,
                        "repo": {"id": 1, "url": "x", "name": "ml-models"},
                    },
                }
            ],
        }
    )
    return payload


def deliver(h: Harness, payload: dict[str, Any]) -> None:
    assert h.webhook("workflow_run", payload).status_code == 202
    h.settle()


def replies(slack: Any, req: Any) -> list[Any]:
    """Thread replies the bot posted (chat.postMessage calls in the request's thread)."""
    return [
        c for c in slack.calls_to("chat.postMessage") if c.params.get("thread_ts") == req.root_ts
    ]


def click(h: Harness, action_id: str, req: Any, user: str, *, from_home: bool = False) -> Any:
    """A button click as Slack sends it from the channel card, or from the App Home tab."""
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T0001"},
        "team": {"id": "T0001", "domain": "acme"},
        "api_app_id": "A0001",
        "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:12]}",
        "actions": [
            {
                "action_id": action_id,
                "block_id": f"deploy_decision:{req.id}",
                "type": "button",
                "value": req.id,
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    if from_home:
        payload["container"] = {"type": "view", "view_id": "V00000001"}
        payload["view"] = {"id": "V00000001", "type": "home", "blocks": []}
    else:
        payload["container"] = {
            "type": "message",
            "message_ts": req.root_ts,
            "channel_id": req.channel_id,
            "is_ephemeral": False,
        }
        payload["channel"] = {"id": req.channel_id}
        payload["message"] = {"ts": req.root_ts, "type": "message", "text": "card"}
        payload["response_url"] = ""
    resp = h.interact(payload)
    assert resp.status_code == 200
    h.settle()
    return resp


# -- help -------------------------------------------------------------------------------------


@pytest.fixture
def guarded(config_data: dict[str, Any]) -> dict[str, Any]:
    """/deploy only for DEPLOYER; /evaluate only in CHANNEL; another channel with its own repo."""
    config_data["commands"]["deploy"]["allowed_users"] = [DEPLOYER]
    config_data["commands"]["evaluate"]["allowed_channels"] = [CHANNEL]
    config_data["repositories"]["channels"] = {"C0FORECAST": "acme/forecasting"}
    return config_data


def test_help_shows_only_the_commands_this_user_may_run(make_harness, guarded) -> None:
    """Usage and examples for what the person may run here, the channel's repository, and why
    the rest is not available; someone else in the same channel sees more."""
    h = make_harness(guarded)
    text = h.slash("/evaluate", "help", user=USER).json()["text"]
    print("\n--- /evaluate help (requester) ---\n" + text)
    assert "Repository for this channel: `acme/ml-models`" in text
    assert "`/evaluate 42`" in text and "@chatops-bridge rerun" in text
    assert "/deploy 9876543210" not in text  # no usage of what they may not run ...
    assert "_Not available to you here:_\n• `/deploy`: You are not allowed to run `/deploy`" in text
    assert f"Ask <@{DEPLOYER}>" in text  # ... but who can

    text = h.slash("/deploy", "help", user=USER).json()["text"]
    assert "You are not allowed to run `/deploy`" in text and "`/evaluate 42`" in text

    text = h.slash("/deploy", "help", user=DEPLOYER).json()["text"]
    assert text.index("`/deploy 9876543210 staging`") < text.index("`/evaluate 42`")

    text = h.slash("/evaluate", "", user=DEPLOYER).json()["text"]
    assert "`/deploy 9876543210 staging`" in text and "`/evaluate 42`" in text
    assert "Approvals: `production`: 1 approval from <@U0APPROVER1>" in text
    assert "Not available" not in text

    text = h.slash("/evaluate", "help", user=USER, channel="C0FORECAST").json()["text"]
    assert "Repository for this channel: `acme/forecasting`" in text
    assert "You may not run any command in this channel." in text
    assert "`/evaluate` is not enabled in this channel (rule " in text


def test_wrong_argument_answers_with_usage_and_the_channel_repository(
    make_harness, guarded
) -> None:
    """A wrong argument is explained with the command's usage, its examples and the repository
    a bare number would mean in this channel; in another channel, that channel's repository."""
    h = make_harness(guarded)
    body = h.slash("/evaluate", "forty-two").json()
    assert body["response_type"] == "ephemeral"
    text = body["text"]
    assert text.startswith(":warning: `forty-two` is not a pull request reference.")
    assert "*Usage:* `/evaluate <pr>`" in text and "`/evaluate acme/ml-models#42`" in text
    assert "a bare number means a pull request of `acme/ml-models`" in text

    text = h.slash("/deploy", "9001 production extra", user=DEPLOYER).json()["text"]
    assert "Too many words" in text and "`/deploy 9876543210 staging`" in text
    assert "a bare run id means a run of `acme/ml-models`" in text
    text = h.slash("/deploy", "9001 production extra", user=DEPLOYER, channel="C0FORECAST")
    assert "a bare run id means a run of `acme/forecasting`" in text.json()["text"]


def test_help_in_a_thread_by_mention(harness: Harness, slack) -> None:
    req = start_evaluate(harness)
    mention(harness, "help", thread_ts=req.root_ts)
    said = slack.wait_for("chat.postEphemeral")[-1].params
    assert said["user"] == USER and said["thread_ts"] == req.root_ts
    assert "`/evaluate 42`" in said["text"] and "@chatops-bridge cancel" in said["text"]


def test_mention_outside_a_request_thread_gets_short_help(harness: Harness, slack) -> None:
    mention(harness, "status")
    mention(harness, "status", thread_ts="1699999999.000100")  # a thread, but no request's
    said = slack.wait_for("chat.postEphemeral", 2)
    assert [c.params["text"] for c in said] == [short_help(), short_help()]
    assert "use `/evaluate <pr>` or `/deploy <run-id>` in a channel" in said[0].params["text"]
    assert slack.calls_to("chat.postMessage") == []


# -- mentions in a request's thread -----------------------------------------------------------


def test_mention_status_replies_in_the_thread_once(harness: Harness, slack) -> None:
    req = start_evaluate(harness)
    deliver(harness, run_event(status="in_progress"))
    before = len(replies(slack, req))
    mention(harness, "status", thread_ts=req.root_ts, event_id="EvSTATUS01")
    mention(harness, "status", thread_ts=req.root_ts, event_id="EvSTATUS01")  # Slack's retry
    got = replies(slack, req)[before:]
    assert len(got) == 1
    blocks = json.dumps(got[0].params["blocks"])
    assert f"*Request `{req.id}`*" in blocks and "running" in blocks
    assert f"<https://github.com/{REPO}/actions/runs/9001|Evaluate>: in_progress" in blocks


def test_mention_rerun_starts_the_same_request_again(harness: Harness, github, slack) -> None:
    """Same PR, a new request by whoever asked, through the slash command's own path; the
    event id is the idempotency key, so Slack's retry of the event starts nothing more."""
    req = start_evaluate(harness)
    deliver(harness, run_event(status="completed", conclusion="failure"))  # then: run it again
    mention(harness, "rerun", user=STRANGER, thread_ts=req.root_ts, event_id="EvRERUN001")
    harness.settle()
    mention(harness, "rerun", user=STRANGER, thread_ts=req.root_ts, event_id="EvRERUN001")
    harness.wait_until(lambda: len(harness.store.find(repo=REPO, pr_number=42)) == 2)
    new = harness.store.find(repo=REPO, pr_number=42)[0]
    harness.wait_until(lambda: harness.store.get(new.id).status == "triggered", what="rerun")
    harness.settle()
    assert new.id != req.id and new.user_id == STRANGER and new.channel_id == CHANNEL
    assert len(harness.store.find(repo=REPO, pr_number=42)) == 2
    note = replies(slack, req)[-1].params["text"]
    assert f"<@{STRANGER}> asked for this again: request `{new.id}`" in note
    # The label was already on the PR: removed and added again, so the workflow runs again.
    assert len(github.requests_to("DELETE", r"/issues/42/labels/evaluate$")) == 1
    assert len(github.requests_to("POST", r"/issues/42/labels$")) == 2
    assert harness.store.get(new.id).root_ts not in (None, req.root_ts)


def test_rerun_is_refused_to_someone_who_may_not_run_the_command(
    make_harness, config_data, slack
) -> None:
    config_data["commands"]["evaluate"]["allowed_users"] = [USER]
    h = make_harness(config_data)
    req = start_evaluate(h)
    mention(h, "rerun", user=STRANGER, thread_ts=req.root_ts)
    said = slack.wait_for("chat.postEphemeral")[-1].params
    assert said["user"] == STRANGER and "You are not allowed to run `/evaluate`" in said["text"]
    assert len(h.store.find(repo=REPO)) == 1


def test_mention_rerun_of_a_deploy_asks_for_approval_again(harness: Harness, github, slack) -> None:
    req = start_deploy(harness)
    mention(harness, "rerun", user=DEPLOYER, thread_ts=req.root_ts)
    new = harness.wait_until(
        lambda: [r for r in harness.store.find(kind="deploy") if r.id != req.id], what="rerun"
    )[0]
    assert (new.run_ref, new.environment, new.user_id) == ("mlflow-run-7", "production", DEPLOYER)
    assert new.status == "pending_approval"
    assert f"request `{new.id}`" in replies(slack, req)[-1].params["text"]
    assert github.dispatches == []


def test_mention_cancel_by_the_requester_stops_the_run(harness: Harness, github, slack) -> None:
    req = start_evaluate(harness)
    github.add_run(REPO, {"id": 9001, "status": "in_progress", "head_sha": HEAD_SHA})
    deliver(harness, run_event(status="in_progress"))
    assert harness.store.get(req.id).status == "running"

    mention(harness, "cancel", user=STRANGER, thread_ts=req.root_ts)
    said = slack.wait_for("chat.postEphemeral")[-1].params
    assert said["user"] == STRANGER and f"Only <@{USER}> (who asked) can cancel" in said["text"]
    assert harness.store.get(req.id).status == "running"

    mention(harness, "cancel", thread_ts=req.root_ts)
    assert harness.store.get(req.id).status == "cancelled"
    assert len(github.requests_to("POST", r"/actions/runs/9001/cancel$")) == 1
    note = replies(slack, req)[-1].params["text"]
    assert f"<@{USER}> cancelled this request." in note
    assert "Asked GitHub to cancel the workflow run Evaluate." in note
    assert "cancelled" in json.dumps(slack.calls_to("chat.update")[-1].params["blocks"])
    assert [r["action"] for r in harness.store.audit_rows(request_id=req.id)][-1] == (
        "evaluate.cancelled"
    )

    mention(harness, "cancel", thread_ts=req.root_ts)
    said = slack.wait_for("chat.postEphemeral", 2)[-1].params
    assert "has already ended (cancelled); there is nothing to cancel" in said["text"]


def test_cancel_explains_a_missing_actions_write_permission(
    harness: Harness, github, slack
) -> None:
    github.add_repo(
        REPO,
        installation_id=101,
        permissions={
            "metadata": "read",
            "contents": "write",
            "issues": "write",
            "pull_requests": "write",
            "actions": "read",
        },
    )
    github.add_pull(REPO, 42, head_sha=HEAD_SHA)
    req = start_evaluate(harness)
    github.add_run(REPO, {"id": 9001, "status": "in_progress", "head_sha": HEAD_SHA})
    deliver(harness, run_event(status="in_progress"))
    mention(harness, "cancel", thread_ts=req.root_ts)
    assert harness.store.get(req.id).status == "cancelled"
    note = replies(slack, req)[-1].params["text"]
    assert "the GitHub App needs the `actions: write` permission" in note


def test_cancel_of_a_pending_deploy_withdraws_the_approval(harness: Harness, github, slack) -> None:
    req = start_deploy(harness)
    assert req.status == "pending_approval"
    mention(harness, "cancel", thread_ts=req.root_ts)
    assert harness.store.get(req.id).status == "cancelled"
    assert "cancelled this approval request" in replies(slack, req)[-1].params["text"]
    click(harness, "deploy_approve", req, APPROVER)
    said = slack.wait_for("chat.postEphemeral")[-1].params
    assert said["user"] == APPROVER and said["text"].endswith(f"is already cancelled by <@{USER}>.")
    assert github.dispatches == []


def test_a_request_that_ended_is_named_in_words_not_its_raw_status(
    harness: Harness, github, slack
) -> None:
    """A click on a card, or `cancel` in a thread, of a request that could not start says so in
    the words the root shows, never `error`."""
    req = start_deploy(harness)
    harness.store.update(req.id, only_if_status=("pending_approval",), status="error", error="x")
    click(harness, "deploy_approve", req, APPROVER)
    said = slack.wait_for("chat.postEphemeral")[-1].params["text"]
    assert said == "This deploy request is no longer waiting for approval (now: could not start)."
    mention(harness, "cancel", thread_ts=req.root_ts)
    said = slack.wait_for("chat.postEphemeral", 2)[-1].params["text"]
    assert said.endswith("has already ended (could not start); there is nothing to cancel.")
    assert harness.store.get(req.id).status == "error" and github.dispatches == []


def test_a_run_that_starts_after_its_deploy_was_cancelled_is_stopped_too(
    harness: Harness, github, slack
) -> None:
    """Approved and dispatched, then cancelled before GitHub created the run: when the run
    shows up, the bridge cancels it (once) instead of following it."""
    req = start_deploy(harness)
    click(harness, "deploy_approve", req, APPROVER)
    harness.wait_until(lambda: harness.store.get(req.id).status == "triggered", what="dispatch")
    mention(harness, "cancel", thread_ts=req.root_ts)
    assert harness.store.get(req.id).status == "cancelled"
    assert github.requests_to("POST", r"/actions/runs/\d+/cancel$") == []  # no run yet

    github.add_run(REPO, {"id": 7001, "status": "in_progress", "event": "repository_dispatch"})
    late = run_event(status="in_progress", run_id=7001, name="Deploy")
    late["workflow_run"].update(
        {"display_title": f"chatops {req.id}: deploy", "event": "repository_dispatch"}
    )
    late["workflow_run"]["pull_requests"] = []
    deliver(harness, late)
    assert len(github.requests_to("POST", r"/actions/runs/7001/cancel$")) == 1
    note = replies(slack, req)[-1].params["text"]
    assert "started after this request was cancelled" in note
    assert "Asked GitHub to cancel the workflow run Deploy." in note
    assert harness.store.get(req.id).status == "cancelled"

    again = copy.deepcopy(late)
    again["workflow_run"]["updated_at"] = "2099-01-01T00:03:00Z"
    deliver(harness, again)  # another event of the same run: not cancelled twice
    assert len(github.requests_to("POST", r"/actions/runs/7001/cancel$")) == 1


# -- status and history -----------------------------------------------------------------------


def test_status_lists_the_latest_requests_with_state_and_links(
    harness: Harness, github, slack
) -> None:
    """`/evaluate status [pr]` and `/deploy status [env]`: newest first, each with a link to
    its thread, what it is, its state and who asked; filters by PR and by environment."""
    first = start_evaluate(harness)
    deliver(harness, run_event(status="in_progress"))
    # New commits, so the second evaluation of #42 is not "already running" (one per head SHA).
    github.add_pull(REPO, 42, head_sha="c" * 40, labels=["evaluate"])
    second = start_evaluate(harness, user=STRANGER)
    deploy = start_deploy(harness)

    def link(req: Any) -> str:
        return f"<https://slack.com/archives/{CHANNEL}/p{req.root_ts.replace('.', '')}|{req.id}>"

    body = harness.slash("/evaluate", "status").json()
    print("\n--- /evaluate status ---\n" + body["text"])
    assert body["response_type"] == "ephemeral"
    text = body["text"]
    assert text.startswith("*Latest evaluations in this channel*\n")
    lines = text.splitlines()[1:]
    assert [line.split("|")[1].split(">")[0] for line in lines] == [second.id, first.id]
    assert link(first) in lines[1] and link(second) in lines[0]
    assert f"|{REPO}#42>" in lines[0]  # the pull request, linked
    assert "running" in lines[1] and "queued" in lines[0]
    assert f"<@{STRANGER}>" in lines[0] and f"<@{USER}>" in lines[1]
    assert deploy.id not in text

    text = harness.slash("/evaluate", "status #42").json()["text"]
    assert text.startswith(f"*Latest evaluations of {REPO}#42 in this channel*")
    assert first.id in text and second.id in text
    # Another channel (say a private one) does not see this channel's requests.
    text = harness.slash("/evaluate", "status #42", channel="C0OTHER001").json()["text"]
    assert first.id not in text and "None yet" in text
    text = harness.slash("/evaluate", "status 7").json()["text"]
    assert f"None yet: start one with `/evaluate {REPO}#7`." in text
    text = harness.slash("/evaluate", "status nonsense").json()["text"]
    assert "is not a pull request reference" in text and "`/evaluate status <pr>`" in text

    text = harness.slash("/deploy", "status").json()["text"]
    assert text.startswith("*Latest deploys in this channel*") and link(deploy) in text
    assert "waiting for approval" in text and first.id not in text
    text = harness.slash("/deploy", "status Production").json()["text"]
    assert text.startswith("*Latest deploys to production from this channel*")
    assert deploy.id in text and "run `mlflow-run-7`" in text
    text = harness.slash("/deploy", "status production", channel="C0OTHER001").json()["text"]
    assert deploy.id not in text and "None yet" in text
    text = harness.slash("/deploy", "status staging").json()["text"]
    assert "None yet: start one with `/deploy <run-id> staging`." in text
    text = harness.slash("/deploy", "status moon").json()["text"]
    assert "`moon` is not an environment I deploy to" in text
    assert "`production`, `staging`" in text


# -- App Home ---------------------------------------------------------------------------------


def _home(slack: Any, user: str) -> dict[str, Any]:
    call = [c for c in slack.calls_to("views.publish") if c.params["user_id"] == user][-1]
    return call.params["view"]


def test_app_home_shows_approvals_requests_and_health(harness: Harness, github, slack) -> None:
    """An approver sees the pending deploy with the card's own buttons; the requester sees
    their requests with thread links; both see the bridge's health. Valid per slack_sdk."""
    evaluation = start_evaluate(harness)
    deploy = start_deploy(harness)
    harness.event(
        {
            "type": "app_home_opened",
            "user": APPROVER,
            "channel": "D0APPROVER",
            "tab": "home",
            "event_ts": "1.1",
        }
    )
    view = _home(slack.wait_for("views.publish") and slack, APPROVER)
    View(**view).validate_json()
    print("\n--- App Home of an approver (views.publish) ---\n" + json.dumps(view, indent=1))
    actions = [b for b in view["blocks"] if b["type"] == "actions"]
    assert len(actions) == 1
    buttons = {e["action_id"]: e["value"] for e in actions[0]["elements"]}
    assert buttons == {"deploy_approve": deploy.id, "deploy_reject": deploy.id}
    text = json.dumps(view)
    assert "Database: ok" in text and "Scheduler: disabled" in text
    assert "1 installation reachable" in text
    assert "Last GitHub webhook: none received yet" in text

    deliver(harness, run_event(status="in_progress"))  # the health section now has a webhook
    harness.event(
        {
            "type": "app_home_opened",
            "user": USER,
            "channel": "D0USER",
            "tab": "home",
            "event_ts": "1.2",
        }
    )
    slack.wait_for("views.publish", 2)
    view = _home(slack, USER)
    View(**view).validate_json()
    text = json.dumps(view)
    assert "Nothing is waiting for your approval." in text  # no self-approval
    for req, state in ((evaluation, "running"), (deploy, "waiting for approval")):
        link = f"https://slack.com/archives/{CHANNEL}/p{req.root_ts.replace('.', '')}"
        line = next(ln for ln in text.split("\\n") if f"<{link}|{req.id}>" in ln)
        assert state in line
    assert "Last GitHub webhook: " in text and " ago" in text

    # Approve from the Home tab: the same handler decides, and the tab is published again.
    click(harness, "deploy_approve", deploy, APPROVER, from_home=True)
    github.wait_for("POST", r"/dispatches$")
    harness.settle()
    assert harness.store.get(deploy.id).status in ("approved", "triggered")
    view = _home(slack, APPROVER)
    assert "Nothing is waiting for your approval." in json.dumps(view)


def test_home_view_is_valid_when_full(harness: Harness) -> None:
    """Ten pending approvals and ten requests still make one valid view (≤ 100 blocks)."""
    from handlers.home import build_home

    for i in range(12):
        harness.slash("/deploy", f"mlflow-{i} production", user=f"U0ASKER{i:04d}")
    harness.settle()
    view = build_home(harness.bridge.deps, APPROVER)
    View(**view).validate_json()
    assert sum(b["type"] == "actions" for b in view["blocks"]) == 10


# -- notification levels ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("notify", "conclusion", "expected"),
    [
        ("all", "success", ["started", "finished"]),
        ("finished", "success", ["finished"]),
        ("finished", "failure", ["finished"]),
        ("failures", "success", []),
        ("failures", "failure", ["finished"]),
    ],
)
def test_notify_level_decides_which_replies_are_posted(
    make_harness, config_data, slack, notify: str, conclusion: str, expected: list[str]
) -> None:
    config_data["channels"] = {CHANNEL: {"notify": notify}}
    h = make_harness(config_data)
    req = start_evaluate(h)
    deliver(h, run_event(status="in_progress"))
    deliver(h, run_event(status="completed", conclusion=conclusion))
    got = ["started" if " started" in c.params["text"] else "finished" for c in replies(slack, req)]
    assert got == expected
    assert h.store.get(req.id).status == ("succeeded" if conclusion == "success" else "failed")
    assert "reply_broadcast" not in json.dumps([c.params for c in replies(slack, req)])


def test_broadcast_failures_shows_a_failure_in_the_channel(
    make_harness, config_data, slack
) -> None:
    config_data["channels"] = {CHANNEL: {"notify": "failures", "broadcast_failures": True}}
    h = make_harness(config_data)
    req = start_evaluate(h)
    deliver(h, run_event(status="completed", conclusion="failure"))
    (reply,) = replies(slack, req)
    assert reply.params["reply_broadcast"] is True


@pytest.mark.parametrize(("notify", "relayed"), [("finished", True), ("failures", False)])
def test_metrics_comments_follow_the_notify_level(
    make_harness, config_data, slack, notify: str, relayed: bool
) -> None:
    config_data["channels"] = {CHANNEL: {"notify": notify}}
    h = make_harness(config_data)
    req = start_evaluate(h)
    payload = copy.deepcopy(fixture("issue_comment.created"))
    payload["repository"]["full_name"] = REPO
    payload["issue"]["number"] = 42
    payload["issue"]["pull_request"] = {"url": "x"}
    payload["comment"]["body"] = (
        "<!-- chatops:metrics -->\n| Metric | Head |\n|---|---:|\n| loss | 0.2 |\n"
    )
    payload["comment"]["user"]["type"] = "Bot"  # metrics come from the workflow's bot
    assert h.webhook("issue_comment", payload).status_code == 202
    h.settle()
    assert len(replies(slack, req)) == (1 if relayed else 0)


# -- coalesced root edits ---------------------------------------------------------------------


def test_deferred_root_edits_wait_on_one_timer_and_run_on_the_job_pool(
    make_harness, config_data, slack
) -> None:
    """A burst across many threads defers an edit per root: each wait must not be a thread of
    its own (a thousand roots, a thousand threads), and the edit runs on the job pool."""
    import threading

    from handlers import lifecycle

    h = make_harness(config_data)
    req = start_evaluate(h)
    ran: list[str] = []
    all_ran = threading.Event()
    real = lifecycle.refresh_root

    def recording(deps: Any, request: Any, *, trailing: bool = False) -> None:
        ran.append(threading.current_thread().name)
        if len(ran) == 100:
            all_ran.set()
        real(deps, request, trailing=trailing)

    lifecycle.refresh_root = recording  # type: ignore[assignment]
    try:
        before = threading.active_count()
        for _ in range(100):
            lifecycle._edit_later(h.bridge.deps, req, 0.3)
        waiting = threading.active_count() - before
        assert all_ran.wait(10)
    finally:
        lifecycle.refresh_root = real
    assert waiting <= 1  # at most the timer thread, started on first use
    assert all(name.startswith("chatops-job") for name in ran), set(ran)


def test_root_edits_are_coalesced_and_the_final_edit_is_immediate(
    make_harness, config_data, slack, clock
) -> None:
    """A burst of run events inside one interval gives one trailing edit with the newest state;
    an identical state gives no edit; the final state is edited at once."""
    clock.now = float(int(clock.now) // 2 * 2)  # start of a slot: the trailing edit is 2 s later
    config_data["rate_limits"] = {"root_edit_seconds": 2}
    h = make_harness(config_data, use_clock=True)
    req = start_evaluate(h)
    updates = lambda: [c for c in slack.calls_to("chat.update") if c.params["ts"] == req.root_ts]  # noqa: E731
    assert len(updates()) == 1  # accepted → queued

    for run_id in (9001, 9002, 9003, 9004, 9005):  # a busy workflow: five runs start at once
        deliver(h, run_event(status="in_progress", run_id=run_id, name=f"shard-{run_id}"))
    assert len(updates()) == 1  # all inside the slot of the first edit
    h.wait_until(lambda: len(updates()) == 2, what="the trailing edit")
    trailing = json.dumps(updates()[-1].params["blocks"])
    assert "running" in trailing and all(f"shard-{n}" in trailing for n in range(9001, 9006))

    clock.advance(2)
    deliver(h, run_event(status="in_progress", run_id=9005, name="shard-9005"))  # redelivery
    assert len(updates()) == 2  # nothing changed: no edit, even in a fresh slot

    for run_id in (9001, 9002, 9003, 9004, 9005):
        deliver(
            h,
            run_event(
                status="completed", conclusion="success", run_id=run_id, name=f"shard-{run_id}"
            ),
        )
    final = updates()[-1]
    assert "succeeded" in json.dumps(final.params["blocks"])  # at once, not after the slot
    n = len(updates())
    assert n <= 4
    # A trailing edit still pending from the last slot finds nothing new to show. Run it here
    # rather than sleeping until its timer fires: no test waits on the wall clock.
    refresh_root(h.bridge.deps, req, trailing=True)
    assert len(updates()) == n
