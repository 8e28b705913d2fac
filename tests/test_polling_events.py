"""Poll mode feeds `pull_request` synchronize and `deployment_status` to the router too: a head
pushed past an evaluated SHA, and a deploy's deployment states, reach the thread as they do
with webhooks — and nothing else does."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import HEAD_SHA, REPO, Harness
from tests.test_deploy import APPROVER, add_training_run, card_of, click, request_deploy
from tests.test_polling import _config, _iso, _replies, _start

NEW_SHA = "c" * 40
DEPLOY_SHA = "d" * 40


def test_a_push_to_an_evaluated_pull_request_is_noticed_in_poll_mode(
    make_harness, github, slack
) -> None:
    h = make_harness(_config())
    poller = h.bridge.poller
    req = _start(h, github)
    assert req.head_sha == HEAD_SHA
    assert poller.poll() == "done"  # the head is the evaluated SHA: nothing to say
    assert _replies(slack, req) == []
    github.add_pull(REPO, 42, head_sha=NEW_SHA)
    assert poller.poll() == "done"
    replies = _replies(slack, req)
    assert len(replies) == 1
    said = json.dumps(replies[0]["blocks"])
    assert f"`{HEAD_SHA[:7]}`, the head is now `{NEW_SHA[:7]}`" in said
    assert poller.poll() == "done"  # unchanged pull: a 304, and nothing said twice
    assert len(_replies(slack, req)) == 1
    assert github.requests_to("GET", r"/pulls/42$")[-1].status == 304


def _deploy_waiting(h: Harness, github: Any, slack: Any) -> tuple[Any, dict[str, Any]]:
    """An approved deploy in poll mode whose deploy workflow run the poller has linked."""
    add_training_run(github)
    req = request_deploy(h, slack)
    click(h, "deploy_approve", req, APPROVER)
    h.wait_until(lambda: h.store.get(req.id).status == "triggered", what="dispatched")
    h.settle()
    run = github.add_run(
        REPO,
        {
            "name": "deploy",
            "display_title": f"chatops {req.id}: deploy",
            "path": ".github/workflows/deploy.yml",
            "head_sha": DEPLOY_SHA,
            "status": "in_progress",
        },
    )
    assert h.bridge.poller.poll() == "done"
    assert h.store.run_owner(str(run["id"])) == req.id
    return h.store.get(req.id), run


def _deployment(github: Any, deployment_id: int, sha: str, states: list[str]) -> None:
    github.deployments.setdefault(REPO, []).insert(
        0,
        {
            "id": deployment_id,
            "sha": sha,
            "ref": "main",
            "task": "deploy",
            "payload": {},
            "environment": "production",
            "created_at": _iso(time.time()),
            "updated_at": _iso(time.time()),
        },
    )
    github.deployment_statuses[(REPO, deployment_id)] = [
        {
            "id": deployment_id * 10 + i,
            "state": state,
            "environment": "production",
            "environment_url": "https://ml.acme.example/production",
            "log_url": f"https://github.com/{REPO}/actions/runs/1/job/2",
            "description": "",
            "created_at": _iso(time.time()),
        }
        for i, state in reversed(list(enumerate(states)))  # GitHub lists the newest first
    ]


def test_deployment_states_of_a_deploy_reach_its_thread_in_poll_mode(
    make_harness, github, slack
) -> None:
    h = make_harness(_config())
    poller = h.bridge.poller
    req, _ = _deploy_waiting(h, github, slack)
    before = len(_replies(slack, req))
    _deployment(github, 501, DEPLOY_SHA, ["in_progress", "success"])
    assert poller.poll() == "done"
    h.settle()
    replies = _replies(slack, req)[before:]
    assert [("in_progress" in r["text"], "success" in r["text"]) for r in replies] == [
        (True, False),
        (False, True),
    ]
    assert "Deployment to <https://ml.acme.example/production|production>" in card_of(slack, req)
    listed = github.requests_to("GET", r"/deployments$")
    assert listed[-1].query.get("environment") == "production"
    assert poller.poll() == "done"  # nothing new: 304s, nothing said twice
    assert len(_replies(slack, req)) == before + 2
    assert github.requests_to("GET", r"/deployments/501/statuses$")[-1].status == 304
    assert github.requests_to("GET", r"/deployments$")[-1].status == 304
    # A new status of the same deployment does not change the list; it is still read.
    github.deployment_statuses[(REPO, 501)].insert(
        0, {"id": 5099, "state": "inactive", "environment": "production", "description": ""}
    )
    assert poller.poll() == "done"
    assert "inactive" in _replies(slack, req)[-1]["text"]


def test_a_deployment_to_the_environment_by_something_else_is_left_alone(
    make_harness, github, slack
) -> None:
    """A deployment at a commit no run of the deploy was seen at (a manual deploy, another
    workflow) is not the deploy's, though it is to the same environment at the same time."""
    h = make_harness(_config())
    req, _ = _deploy_waiting(h, github, slack)
    before = len(_replies(slack, req))
    _deployment(github, 601, "e" * 40, ["failure"])
    assert h.bridge.poller.poll() == "done"
    h.settle()
    assert len(_replies(slack, req)) == before
    assert "failure" not in card_of(slack, req)
    assert github.requests_to("GET", r"/deployments/601/statuses$") == []
