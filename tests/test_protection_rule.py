"""Issue 12: GitHub's custom deployment protection rule answered from Slack, through the real
ASGI app — the card, clicks, the reject modal, expiry, concurrent clicks, a callback that
fails, and `/deploy` on a `gate: github` environment (dispatch at once, rule matched to the
card by the run's title, answered by the approval)."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx
import pytest
from webhook_examples import fixture

from bot.github_data import protection_rule_run_id
from tests.conftest import CHANNEL, DEFAULT_CONFIG, HEAD_SHA, REPO, USER, Harness
from tests.test_crash_recovery import held, spawn, store, sweeps_ran, wait_until
from tests.test_deploy import (
    APPROVER,
    APPROVER2,
    RUN_ID,
    STRANGER,
    add_training_run,
    buttons,
    click,
    click_payload,
    ephemerals,
    request_deploy,
    submit_reject,
)
from tests.test_provenance import comment_payload, metrics_body, start_evaluation

__all__ = ["spawn", "store"]  # fixtures of tests/test_crash_recovery.py, used below

GATE_RUN = 7001
GATE_CHANNEL = "C0DEPLOYS"


@pytest.fixture(autouse=True)
def _training_run(github: Any) -> None:
    add_training_run(github)  # run 9001, what /deploy 9001 deploys


def gate_config(**deploy: Any) -> dict[str, Any]:
    """production is protected by the App on GitHub; gate cards go to C0DEPLOYS."""
    cfg = json.loads(json.dumps(DEFAULT_CONFIG))
    cfg["commands"]["deploy"]["environments"]["production"] = {"gate": "github"}
    cfg["commands"]["deploy"]["channel"] = GATE_CHANNEL
    cfg["commands"]["deploy"].update(deploy)
    return cfg


def add_deploy_run(github: Any, run_id: int = GATE_RUN, **fields: Any) -> dict[str, Any]:
    """A run of the deploy workflow that GitHub holds for the protection rule (a push)."""
    github.set_branch(REPO, "main", HEAD_SHA)
    run = {
        "id": run_id,
        "name": "deploy",
        "status": "waiting",
        "event": "push",
        "head_sha": HEAD_SHA,
        "head_branch": "main",
        "display_title": "Ship the wider layer",
        "path": ".github/workflows/deploy.yml",
        "triggering_actor": {"login": "octo-dev", "id": 77, "type": "User"},
        **fields,
    }
    return github.add_run(REPO, run)


def rule_payload(
    github: Any, run_id: int = GATE_RUN, *, environment: str = "production", deployment: int = 1
) -> dict[str, Any]:
    """The deployment_protection_rule payload GitHub sends (tests/fixtures, schema-checked in
    tests/contract/test_contract_webhooks.py), pointed at the test repository and run."""
    payload = copy.deepcopy(fixture("deployment_protection_rule.requested"))
    payload["repository"]["full_name"] = REPO
    payload["environment"] = environment
    payload["deployment"].update(id=deployment, sha=HEAD_SHA, environment=environment)
    payload["deployment_callback_url"] = (
        f"{github.url}/repos/{REPO}/actions/runs/{run_id}/deployment_protection_rule"
    )
    return payload


def send_rule(h: Harness, github: Any, **kw: Any) -> Any:
    assert h.webhook("deployment_protection_rule", rule_payload(github, **kw)).status_code == 202
    h.settle()


def gate_request(h: Harness) -> Any:
    found = [r for r in h.store.find(repo=REPO, kind="deploy") if r.trigger == "gate"]
    assert len(found) == 1, found
    return found[0]


def card_text(slack: Any, req: Any) -> str:
    """The card's text as a reader sees it: every section and context, one per line."""
    out = []
    for block in slack.messages[(req.channel_id, req.root_ts)]["blocks"]:
        if block["type"] == "section":
            out.append(block["text"]["text"])
        elif block["type"] == "context":
            out += [e.get("text", "") for e in block["elements"]]
        elif block["type"] == "actions":
            out.append("[" + "] [".join(e["text"]["text"] for e in block["elements"]) + "]")
        elif block["type"] == "table":
            out.append("(metrics table)")
    return "\n".join(out)


def thread_texts(slack: Any, req: Any) -> list[str]:
    return [
        c.params["text"]
        for c in slack.calls_to("chat.postMessage")
        if c.params.get("thread_ts") == req.root_ts
    ]


def answers(github: Any) -> list[dict[str, Any]]:
    return list(github.gate_answers)


# -- the card and the approval ----------------------------------------------------------------


def test_rule_posts_a_card_and_an_approval_answers_github_once(make_harness, github, slack) -> None:
    h = make_harness(gate_config())
    add_deploy_run(github)
    evaluation = start_evaluation(h, slack)  # metrics for the commit, from a trusted bot
    assert h.webhook("issue_comment", comment_payload(metrics_body("0.20"))).status_code == 202
    h.settle()
    assert evaluation.head_sha == HEAD_SHA
    send_rule(h, github)
    req = gate_request(h)
    assert (req.status, req.channel_id, req.environment) == (
        "pending_approval",
        GATE_CHANNEL,
        "production",
    )
    text = card_text(slack, req)
    print("Gate card as posted:\n" + text)
    for expected in (
        "GitHub asks to deploy to production",
        REPO,
        f"actions/runs/{GATE_RUN}",  # the run link
        HEAD_SHA[:7],  # the commit
        "`octo-dev` on GitHub",  # who triggered it, as GitHub reports the run
        "push event",
        f"Metrics for commit `{HEAD_SHA[:7]}`",  # relayed metrics, with their provenance
        "a comment by github-actions[bot]",
        "[Approve] [Reject]",
    ):
        assert expected in text, expected
    assert "not finished" not in text  # the held run is waiting: that is no warning
    assert answers(github) == []

    click(h, "deploy_approve", req, APPROVER)
    h.wait_until(lambda: answers(github), what="the callback")
    h.settle()
    print("Callback body (approved):", json.dumps(answers(github)[0]))
    assert answers(github) == [
        {
            "repo": REPO,
            "run_id": GATE_RUN,
            "environment_name": "production",
            "state": "approved",
            "comment": f"Approved in Slack by {APPROVER} (chatops request {req.id})",
        }
    ]
    done = h.store.get(req.id)
    assert done.status == "queued" and not done.answer_due  # follows the held run now
    assert buttons(slack, req) == []
    assert any("Answered GitHub's protection rule" in t for t in thread_texts(slack, req))
    assert github.dispatches == []  # GitHub started this run: nothing is dispatched
    actions = [r["action"] for r in h.store.audit_rows(request_id=req.id)]
    assert actions == [
        "deploy.gate_requested",
        "deploy.approved",
        "deploy.gate_answer",
    ]
    # The run's progress follows in the card's thread.
    run = add_deploy_run(github, status="completed", conclusion="success")
    payload = copy.deepcopy(fixture("workflow_run.completed"))
    payload["repository"]["full_name"] = REPO
    payload["workflow_run"].update({k: run[k] for k in ("id", "name", "status", "conclusion")})
    payload["workflow_run"].update(
        head_sha=HEAD_SHA, event="push", display_title="Ship the wider layer", pull_requests=[]
    )
    assert h.webhook("workflow_run", payload).status_code == 202
    h.settle()
    assert h.store.get(req.id).status == "succeeded"
    assert "Workflow deploy success" in thread_texts(slack, req)
    # A late click changes nothing and sends nothing.
    click(h, "deploy_approve", req, APPROVER2)
    h.settle()
    assert "already approved" in ephemerals(slack, APPROVER2)[-1].params["text"]
    assert len(answers(github)) == 1


def test_a_strangers_click_sends_nothing_and_says_who_can(make_harness, github, slack) -> None:
    h = make_harness(gate_config())
    add_deploy_run(github)
    send_rule(h, github)
    req = gate_request(h)
    click(h, "deploy_approve", req, STRANGER)
    click(h, "deploy_reject", req, STRANGER)
    h.settle()
    told = [c.params["text"] for c in ephemerals(slack, STRANGER)]
    assert f"<@{APPROVER}>" in told[0] and f"<@{APPROVER2}>" in told[0], told
    assert "can reject" in told[1] and "<@>" not in told[1], told
    assert answers(github) == [] and h.store.get(req.id).status == "pending_approval"


def test_reject_with_a_reason_answers_rejected_with_it(make_harness, github, slack) -> None:
    h = make_harness(gate_config())
    add_deploy_run(github)
    send_rule(h, github)
    req = gate_request(h)
    click(h, "deploy_reject", req, APPROVER)
    view = slack.calls_to("views.open")[-1].params["view"]
    submit_reject(h, view, APPROVER, "loss regressed on the holdout set")
    h.wait_until(lambda: answers(github), what="the callback")
    h.settle()
    print("Callback body (rejected):", json.dumps(answers(github)[0]))
    assert answers(github) == [
        {
            "repo": REPO,
            "run_id": GATE_RUN,
            "environment_name": "production",
            "state": "rejected",
            "comment": f"Rejected in Slack by {APPROVER}: loss regressed on the holdout set "
            f"(chatops request {req.id})",
        }
    ]
    assert not h.store.get(req.id).answer_due


def test_the_answer_stays_due_while_github_is_being_answered(make_harness, github, slack) -> None:
    """A process killed while its callback is in flight must leave the step due, so that the
    takeover answers again: answer_due is cleared after the answer, not before it (before, a
    SIGKILL inside the call lost the answer: tests below, under load)."""
    h = make_harness(gate_config())
    add_deploy_run(github)
    send_rule(h, github)
    req = gate_request(h)
    seen: list[bool] = []
    answer_gate = h.bridge.github.answer_gate

    def watched(*args: Any, **kwargs: Any) -> Any:
        seen.append(h.store.get(req.id).answer_due)
        return answer_gate(*args, **kwargs)

    h.bridge.github.answer_gate = watched
    click(h, "deploy_approve", req, APPROVER)
    h.wait_until(lambda: answers(github), what="the callback")
    h.settle()
    assert seen == [True]
    assert not h.store.get(req.id).answer_due  # cleared once answered


def test_expiry_answers_rejected_expired(make_harness, github, slack, clock) -> None:
    h = make_harness(gate_config(), use_clock=True)
    add_deploy_run(github)
    send_rule(h, github)
    req = gate_request(h)
    clock.advance(30 * 60 + 1)
    hk = h.bridge.housekeeping
    for installer in hk._extra:
        installer(hk)
    hk.is_leader = True
    hk.scheduler.get_job("deploy-expiry").func()
    h.wait_until(lambda: answers(github), what="the callback")
    h.settle()
    print("Callback body (expired):", json.dumps(answers(github)[0]))
    (sent,) = answers(github)
    assert sent["state"] == "rejected" and sent["comment"].startswith("expired")
    assert sent["environment_name"] == "production"
    assert h.store.get(req.id).status == "expired"


@pytest.mark.parametrize("distinct", [True, False], ids=["20-approvers", "double-clicks"])
def test_twenty_concurrent_clicks_answer_github_once(
    make_harness, github, slack, monkeypatch, distinct: bool
) -> None:
    crowd = [f"U0CROWD{n:04d}" for n in range(20)]
    cfg = gate_config()
    cfg["commands"]["deploy"]["approval"]["approvers"] = [*crowd, APPROVER, APPROVER2]
    h = make_harness(cfg)
    add_deploy_run(github)
    send_rule(h, github)
    req = gate_request(h)
    users = crowd if distinct else [APPROVER, APPROVER2] * 10
    # Every click waits after writing its approval row, so all 20 race on the status change.
    barrier = threading.Barrier(len(users), timeout=30)
    record = h.store.add_approval

    def all_at_once(request_id: str, user_id: str) -> bool:
        recorded = record(request_id, user_id)
        barrier.wait()
        return recorded

    monkeypatch.setattr(h.store, "add_approval", all_at_once)
    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(
            pool.map(
                lambda u: h.interact(click_payload("deploy_approve", req, u)).status_code, users
            )
        )
    assert codes == [200] * 20
    h.wait_until(lambda: answers(github), what="the callback")
    h.settle()
    assert len(github.requests_to("POST", r"/deployment_protection_rule$")) == 1
    assert answers(github)[0]["state"] == "approved"


def test_a_failed_callback_is_retried_with_backoff_then_given_up_in_the_thread(
    make_harness, github, slack
) -> None:
    from bot.jobs import RetryPolicy

    h = make_harness(gate_config())
    h.bridge.jobs.policy = RetryPolicy(base=0.05, cap=0.05, horizon=3600)
    add_deploy_run(github)
    send_rule(h, github)
    req = gate_request(h)
    # GitHub down twice, then up: the answer goes through once.
    github.fail("POST", r"/deployment_protection_rule$", 502, times=2)
    click(h, "deploy_approve", req, APPROVER)
    h.wait_until(lambda: answers(github), timeout=10, what="the callback after the outage")
    h.settle()
    assert len(github.requests_to("POST", r"/deployment_protection_rule$")) == 3
    assert [a["state"] for a in answers(github)] == ["approved"]
    notes = thread_texts(slack, req)
    assert sum("I will retry" in t for t in notes) == 1, notes  # told once, not per attempt

    # Another held run, approved while GitHub stays down past the outage horizon.
    h.bridge.jobs.policy = RetryPolicy(base=0.05, cap=0.05, horizon=0.3)
    github.fail("POST", r"/deployment_protection_rule$", 502, times=1000)
    add_deploy_run(github, run_id=GATE_RUN + 1)
    send_rule(h, github, run_id=GATE_RUN + 1)
    second = next(r for r in h.store.find(repo=REPO, kind="deploy") if r.id != req.id)
    click(h, "deploy_approve", second, APPROVER)
    h.wait_until(
        lambda: any("gave up" in t for t in thread_texts(slack, second)),
        timeout=10,
        what=f"the give-up in the thread: {thread_texts(slack, second)}",
    )
    h.settle()
    notes = thread_texts(slack, second)
    print("Thread of the callback given up:\n" + "\n".join(notes))
    assert sum(t.startswith("GitHub is having trouble") for t in notes) == 1
    assert not h.store.get(second.id).answer_due  # nothing is retried any more
    assert [a["run_id"] for a in answers(github)] == [GATE_RUN]
    assert h.store.audit_rows(request_id=second.id)[-1]["action"] == "deploy.given_up"


def test_a_refused_callback_is_not_retried_and_the_thread_says_so(
    make_harness, github, slack
) -> None:
    h = make_harness(gate_config())
    add_deploy_run(github)
    send_rule(h, github)
    req = gate_request(h)
    github.fail("POST", r"/deployment_protection_rule$", 422, times=5)
    click(h, "deploy_approve", req, APPROVER)
    h.wait_until(
        lambda: any("GitHub refused my answer" in t for t in thread_texts(slack, req)),
        what="the refusal in the thread",
    )
    h.settle()
    assert len(github.requests_to("POST", r"/deployment_protection_rule$")) == 1


# -- what the bridge never does ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/repos/{repo}/actions/runs/7001/deployment_protection_rule",
        "{api}/repos/other/repo/actions/runs/7001/deployment_protection_rule",
        "{api}/repos/{repo}/actions/runs/7001/cancel",
        "{api}/repos/{repo}/actions/runs/7001/deployment_protection_rule?x=1",
        "{api}/repos/{repo}/actions/runs/0/deployment_protection_rule",
    ],
)
def test_a_callback_url_that_is_not_githubs_own_is_never_called(
    make_harness, github, slack, url: str
) -> None:
    h = make_harness(gate_config())
    add_deploy_run(github)
    payload = rule_payload(github)
    payload["deployment_callback_url"] = url.format(api=github.url, repo=REPO)
    assert h.webhook("deployment_protection_rule", payload).status_code == 202
    h.settle()
    assert h.store.find(repo=REPO, kind="deploy") == []
    assert github.requests_to("POST", r".") == [] or all(
        "deployment_protection_rule" not in r.path for r in github.requests_to("POST", r".")
    )
    assert protection_rule_run_id(github.url, REPO, payload["deployment_callback_url"]) is None


def test_a_rule_for_an_unconfigured_environment_is_rejected_at_once(
    make_harness, github, slack
) -> None:
    """The decision point where environment locks (issue 12 item 3) also answer."""
    h = make_harness(gate_config())
    add_deploy_run(github)
    send_rule(h, github, environment="qa")
    (sent,) = answers(github)
    assert sent["state"] == "rejected" and "qa is not configured" in sent["comment"]
    assert h.store.find(repo=REPO, kind="deploy") == []


def test_gate_config_needs_a_channel() -> None:
    from bot.config import ConfigError, parse_config

    cfg = gate_config()
    del cfg["commands"]["deploy"]["channel"]
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert "commands.deploy.channel is needed" in str(err.value)
    cfg["repositories"]["channels"] = {CHANNEL: REPO}
    assert parse_config(cfg).gate_channel(REPO) == CHANNEL


# -- /deploy through the gate ------------------------------------------------------------------


def test_deploy_to_a_gated_environment_dispatches_at_once_and_the_approval_answers(
    make_harness, github, slack
) -> None:
    h = make_harness(gate_config())
    req = request_deploy(h, slack)  # /deploy 9001 → production (gate: github)
    assert req.status == "pending_approval"
    # Dispatched at once, before any approval: GitHub holds the deploy job instead.
    assert [d["client_payload"]["request_id"] for d in github.dispatches] == [req.id]
    assert github.dispatches[0]["client_payload"]["approved_by"] == ""
    text = card_text(slack, req)
    assert "GitHub holds its deploy job until this request is approved" in text
    # The deploy workflow's run, titled with the request id, reaches its protected job.
    add_deploy_run(
        github,
        event="repository_dispatch",
        display_title=f"chatops {req.id}: deploy {RUN_ID} to production",
        triggering_actor={"login": "chatops-bridge[bot]", "id": 9, "type": "Bot"},
    )
    send_rule(h, github)
    assert [r.id for r in h.store.find(repo=REPO, kind="deploy")] == [req.id]  # no new card
    assert answers(github) == []
    assert any("GitHub holds the deploy job" in t for t in thread_texts(slack, req))
    click(h, "deploy_approve", req, APPROVER)
    h.wait_until(lambda: answers(github), what="the callback")
    h.settle()
    print("Callback body (/deploy through the gate):", json.dumps(answers(github)[0]))
    assert answers(github) == [
        {
            "repo": REPO,
            "run_id": GATE_RUN,
            "environment_name": "production",
            "state": "approved",
            "comment": f"Approved in Slack by {APPROVER} (chatops request {req.id})",
        }
    ]
    assert len(github.dispatches) == 1  # not dispatched again at the approval
    assert h.store.get(req.id).status in ("triggered", "queued")
    # The run GET that matched the rule: its display_title named the request.
    assert github.requests_to("GET", rf"/actions/runs/{GATE_RUN}$")


def test_a_rule_for_a_deploy_approved_earlier_is_answered_at_once(
    make_harness, github, slack
) -> None:
    h = make_harness(gate_config())
    req = request_deploy(h, slack)
    click(h, "deploy_approve", req, APPROVER)
    h.settle()
    assert h.store.get(req.id).status == "triggered" and answers(github) == []
    add_deploy_run(
        github,
        event="repository_dispatch",
        display_title=f"chatops {req.id}: deploy {RUN_ID} to production",
    )
    send_rule(h, github)
    assert [a["state"] for a in answers(github)] == ["approved"]
    assert len(github.dispatches) == 1


def test_a_push_run_titled_like_a_request_gets_its_own_card(make_harness, github, slack) -> None:
    """A run title is evidence only for runs the bridge dispatched (title_match): a push whose
    commit message names a pending /deploy does not ride on that request's approval."""
    h = make_harness(gate_config())
    req = request_deploy(h, slack)
    add_deploy_run(github, display_title=f"chatops {req.id}: sneaky")  # event: push
    send_rule(h, github)
    gate = gate_request(h)
    assert gate.id != req.id and gate.status == "pending_approval"
    click(h, "deploy_approve", req, APPROVER)
    h.settle()
    assert answers(github) == []  # the /deploy approval does not answer the push's rule
    assert USER not in (gate.user_id,)


# -- crash between the click and the callback ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_killed_between_the_decision_and_the_callback_answers_once_after_restart(
    spawn, store, github, slack, decision: str
) -> None:
    """SIGKILL while the decision's card edit is in flight: the decision (and answer_due) is
    committed, the callback not sent. The restarted server's sweep sends exactly one."""
    add_deploy_run(github)
    server = spawn(gate_config()).start()
    assert server.webhook("deployment_protection_rule", rule_payload(github)).status_code == 202
    req = wait_until(
        lambda: next((r for r in store.find(repo=REPO) if r.root_ts), None), what="the card"
    )
    edits = len(slack.calls_to("chat.update"))
    slack.delay_next("chat.update", 5.0)  # hold the decision's card edit; kill inside it
    # The recovery sweep (every 0.5 s here) may pick the decided request up during the hold:
    # its callback then never reaches GitHub either (a 502 after 2 s, after the kill).
    github.fail("POST", r"/deployment_protection_rule$", 502, times=1, delay=2.0)

    def decide() -> None:
        with contextlib.suppress(httpx.HTTPError):
            if decision == "approve":
                server.interact(click_payload("deploy_approve", req, APPROVER))
            else:
                server.interact(reject_submission(req, APPROVER, "not tonight"))

    sender = threading.Thread(target=decide, daemon=True)
    sender.start()
    wait_until(lambda: held(slack), what="the decision's card edit")
    time.sleep(0.1)
    server.kill()
    sender.join(10)
    wait_until(lambda: len(slack.calls_to("chat.update")) > edits, what="the held edit")
    stored = store.get(req.id)
    assert stored is not None and stored.decided_by == APPROVER
    assert (
        stored.status in (("approved", "triggered", "queued"), ("rejected",))[decision == "reject"]
    )
    assert github.gate_answers == []  # nothing reached GitHub before the kill
    server.start()
    wait_until(lambda: github.gate_answers, timeout=30, what="the callback after the restart")
    sweeps_ran(server, 6)
    assert len(github.gate_answers) == 1  # one answer GitHub accepted
    (sent,) = github.gate_answers
    assert sent["state"] == ("approved" if decision == "approve" else "rejected")
    assert sent["environment_name"] == "production"
    # Under load a worker's 2 s lease can run out inside the held callback, and a second
    # worker answers; the first one's retry then finds nothing left and clears the flag.
    wait_until(lambda: not store.get(req.id).answer_due, timeout=30, what="answer_due cleared")
    assert len(github.gate_answers) == 1


def reject_submission(req: Any, user: str, reason: str) -> dict[str, Any]:
    """The reject modal's view_submission, as Slack sends it."""
    return {
        "type": "view_submission",
        "team": {"id": "T0001", "domain": "acme"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0001"},
        "api_app_id": "A0001",
        "token": "unused",
        "trigger_id": "1.2",
        "view": {
            "id": "V00000001",
            "team_id": "T0001",
            "type": "modal",
            "callback_id": "deploy_reject_reason",
            "private_metadata": req.id,
            "state": {
                "values": {
                    "reason": {"reason_input": {"type": "plain_text_input", "value": reason}}
                }
            },
            "hash": "1.abc",
        },
        "response_urls": [],
        "is_enterprise_install": False,
    }


# -- setup: check and start ---------------------------------------------------------------------


def test_check_verifies_the_gate_permissions_event_and_mode(
    slack, github, database_url, tmp_path, capsys
) -> None:
    """`chatops-bridge check` with `gate: github`: deployments: write and actions: read on the
    installation, the Deployment protection rule event, and webhook mode."""
    from bot.__main__ import main
    from tests.test_cli import _env

    github.add_repo(
        "acme/limited",
        installation_id=102,
        permissions={"metadata": "read", "pull_requests": "read", "contents": "write"},
    )
    cfg = gate_config()
    cfg["repositories"]["allowed"] = ["acme/limited"]
    env = _env(slack, github, database_url, tmp_path, cfg)
    assert main(["check"], env=env) == 1
    out = capsys.readouterr().out
    assert "the App needs deployments: write (`gate: github` answers protection rules)" in out
    assert "acme/limited: the App needs actions: read" in out
    assert "does not subscribe to the *Deployment protection rule* event" in out
    assert f"{REPO}: the App needs deployments" not in out  # REPO's installation has it

    github.events.append("deployment_protection_rule")
    github.add_repo("acme/limited", installation_id=102)  # now with every permission
    env = _env(slack, github, database_url, tmp_path, {**cfg, "github": {"mode": "poll"}})
    assert main(["check"], env=env) == 1
    out = capsys.readouterr().out
    assert "only arrives by webhook" in out and "production" in out
    assert "Deployment protection rule* event" not in out
    env = _env(slack, github, database_url, tmp_path, cfg)
    assert main(["check"], env=env) == 0, capsys.readouterr().out


def test_serve_says_at_start_that_poll_mode_cannot_see_the_rule() -> None:
    from bot.config import parse_config
    from bot.startup import gate_mode_problem

    cfg = parse_config(gate_config())
    said = gate_mode_problem(cfg, "poll")
    assert said is not None and "only arrives by webhook" in said and "production" in said
    assert gate_mode_problem(cfg, "webhook") is None
    assert gate_mode_problem(parse_config(DEFAULT_CONFIG), "poll") is None


def test_a_held_run_github_cannot_find_is_rejected_with_why(make_harness, github, slack) -> None:
    """The run cannot be read (gone, no actions: read): the card says why and GitHub hears
    `rejected` — never a job left waiting silently."""
    h = make_harness(gate_config())
    add_deploy_run(github)
    github.fail("GET", rf"/actions/runs/{GATE_RUN}$", 404, times=10)  # GitHub cannot find it
    send_rule(h, github)
    h.wait_until(lambda: answers(github), what="the callback")
    h.settle()
    (sent,) = answers(github)
    assert sent["state"] == "rejected" and "could not carry out" in sent["comment"]
    req = gate_request(h)
    assert req.status == "error" and "was not found" in (req.error or "")


def test_cancel_in_the_thread_answers_rejected_and_rerun_is_refused(
    make_harness, github, slack
) -> None:
    from tests.test_ux import mention

    h = make_harness(gate_config())
    add_deploy_run(github)
    send_rule(h, github)
    req = gate_request(h)
    mention(h, "rerun", user=APPROVER, thread_ts=req.root_ts, channel=GATE_CHANNEL)
    h.settle()
    assert "cannot run a `deploy` request again" in ephemerals(slack, APPROVER)[-1].params["text"]
    mention(h, "cancel", user=APPROVER, thread_ts=req.root_ts, channel=GATE_CHANNEL)
    h.wait_until(lambda: answers(github), what="the callback")
    h.settle()
    (sent,) = answers(github)
    assert sent["state"] == "rejected"
    assert sent["comment"] == f"cancelled in Slack by {APPROVER} (chatops request {req.id})"
    assert h.store.get(req.id).status == "cancelled"


# -- environment locks at the gate (issue 12 item 3) -------------------------------------------


def lock_env(h: Harness, user: str, text: str) -> str:
    resp = h.slash("/deploy", f"lock {text}", user=user)
    assert resp.status_code == 200
    h.settle()
    return str(resp.json().get("text") or "")


def test_a_rule_for_a_locked_environment_is_rejected_with_the_locks_reason(
    make_harness, github, slack
) -> None:
    h = make_harness(gate_config())
    add_deploy_run(github)
    lock_env(h, APPROVER, "production model freeze until the audit")
    send_rule(h, github)
    (sent,) = answers(github)
    print("Callback body (locked environment):", json.dumps(sent))
    assert sent["state"] == "rejected" and sent["environment_name"] == "production"
    assert sent["comment"].startswith(f"locked by Slack user {APPROVER}: model freeze")
    assert [r for r in h.store.find(repo=REPO, kind="deploy") if r.trigger == "gate"] == []
    # Unlocked: the next rule gets a card again.
    h.slash("/deploy", "unlock production", user=APPROVER)
    h.settle()
    add_deploy_run(github, run_id=GATE_RUN + 1)
    send_rule(h, github, run_id=GATE_RUN + 1)
    assert len(answers(github)) == 1
    assert gate_request(h).status == "pending_approval"


def test_the_lock_holders_own_deploy_passes_the_gate(make_harness, github, slack) -> None:
    """The holder of a lock may still deploy: the rule of the run of their /deploy is answered
    by the approval, not rejected by their own lock."""
    h = make_harness(gate_config())
    lock_env(h, APPROVER, "production only I ship today")
    req = request_deploy(h, slack, user=APPROVER)
    add_deploy_run(
        github,
        event="repository_dispatch",
        display_title=f"chatops {req.id}: deploy {RUN_ID} to production",
        triggering_actor={"login": "chatops-bridge[bot]", "id": 9, "type": "Bot"},
    )
    send_rule(h, github)
    assert answers(github) == []  # waits for the approval: not refused by the holder's lock
    click(h, "deploy_approve", req, APPROVER2)
    h.wait_until(lambda: answers(github), what="the callback")
    assert [a["state"] for a in answers(github)] == ["approved"]
