"""Issue 10, "a deploy gate nobody can fool": which runs may speak for a request, deploys need
an explicit approval policy, and commands touch only configured repositories."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
import yaml
from webhook_examples import fixture

from bot.__main__ import main
from bot.config import ConfigError, parse_config
from tests.conftest import CHANNEL, DEFAULT_CONFIG, HEAD_SHA, REPO, Harness
from tests.test_cli import _env
from tests.test_deploy import (
    _approved,
    add_training_run,
    card_of,
)
from tests.test_settings_config import GOOD, run_serve


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _cfg() -> dict[str, Any]:
    return json.loads(json.dumps(DEFAULT_CONFIG))


def _titled_run(req: Any, *, event: str, created: float, run_id: int = 6001) -> dict[str, Any]:
    """GitHub's own workflow_run.completed example, given a title that names the request."""
    payload = copy.deepcopy(fixture("workflow_run.completed"))
    payload["repository"]["full_name"] = REPO
    payload["workflow_run"].update(
        {
            "id": run_id,
            "name": "deploy",
            "display_title": f"chatops {req.id}: ship it",
            "event": event,
            "status": "completed",
            "conclusion": "success",
            "created_at": _iso(created),
            "run_started_at": _iso(created),
            "head_sha": HEAD_SHA,
            "pull_requests": [],
            "html_url": f"https://github.com/{REPO}/actions/runs/{run_id}",
        }
    )
    return payload


def _rejected(h: Harness, reason: str) -> float:
    text = h.client.get("/metrics").text
    line = f'chatops_run_title_matches_rejected_total{{reason="{reason}"}}'
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


# -- 1. a run belongs to a request by title only when it can ---------------------------------


def test_a_pull_request_run_titled_like_the_deploy_is_not_the_deploys(
    harness: Harness, github, slack, caplog
) -> None:
    add_training_run(github)
    req = _approved(harness, github, slack)
    before = card_of(slack, req)
    caplog.set_level("INFO", logger="handlers.workflow_run")
    hijack = _titled_run(req, event="pull_request", created=time.time() + 60)
    assert harness.webhook("workflow_run", hijack).status_code == 202
    harness.settle()
    got = harness.store.get(req.id)
    assert got.status == "triggered"
    assert slack.thread_replies(CHANNEL, req.root_ts) == []
    assert card_of(slack, req) == before
    assert harness.store.runs_of(req.id) == []
    assert _rejected(harness, "not_a_dispatch_run") == 1
    logged = [r for r in caplog.records if r.getMessage().startswith("run title names")]
    assert len(logged) == 1 and logged[0].levelname == "INFO"
    assert "ship it" not in caplog.text  # ids only, never the title


def test_a_dispatch_run_created_before_the_dispatch_is_not_the_deploys(
    harness: Harness, github, slack
) -> None:
    add_training_run(github)
    req = _approved(harness, github, slack)
    started = harness.store.get(req.id).action_started_at
    assert started is not None  # the dispatch time is stored
    early = _titled_run(req, event="repository_dispatch", created=started - 120)
    assert harness.webhook("workflow_run", early).status_code == 202
    harness.settle()
    assert harness.store.get(req.id).status == "triggered"
    assert slack.thread_replies(CHANNEL, req.root_ts) == []
    assert _rejected(harness, "created_before_dispatch") == 1
    # The real run, created after the dispatch (within the clock skew), is followed.
    real = _titled_run(req, event="repository_dispatch", created=started - 5, run_id=6002)
    assert harness.webhook("workflow_run", real).status_code == 202
    harness.wait_until(lambda: harness.store.get(req.id).status == "succeeded", what="success")


def test_a_dispatch_run_of_another_workflow_is_not_the_deploys(make_harness, github, slack) -> None:
    add_training_run(github)
    cfg = _cfg()
    cfg["commands"]["deploy"]["workflow"] = "deploy.yml"
    h = make_harness(cfg)
    req = _approved(h, github, slack)
    other = _titled_run(req, event="repository_dispatch", created=time.time() + 1)
    other["workflow_run"]["path"] = ".github/workflows/anything.yml"
    assert h.webhook("workflow_run", other).status_code == 202
    h.settle()
    assert h.store.get(req.id).status == "triggered"
    assert _rejected(h, "other_workflow") == 1
    mine = _titled_run(req, event="repository_dispatch", created=time.time() + 1, run_id=6003)
    mine["workflow_run"]["path"] = ".github/workflows/deploy.yml"
    assert h.webhook("workflow_run", mine).status_code == 202
    h.wait_until(lambda: h.store.get(req.id).status == "succeeded", what="success")


def test_poll_mode_applies_the_same_rule(make_harness, github, slack) -> None:
    """The poller lists only repository_dispatch runs created since the dispatch; what the
    query cannot rule out (another workflow of the same event) is refused the same way."""
    add_training_run(github)
    cfg = _cfg()
    cfg["github"] = {"mode": "poll"}
    cfg["commands"]["deploy"]["workflow"] = "deploy.yml"
    h = make_harness(cfg)
    req = _approved(h, github, slack)
    github.add_run(
        REPO,
        {
            "id": 6100,
            "name": "anything",
            "path": ".github/workflows/anything.yml",
            "display_title": f"chatops {req.id}: not the deploy",
            "event": "repository_dispatch",
            "status": "completed",
            "conclusion": "success",
        },
    )
    assert h.bridge.poller.poll() == "done"
    assert h.store.get(req.id).status == "triggered"
    assert slack.thread_replies(CHANNEL, req.root_ts) == []
    assert _rejected(h, "other_workflow") == 1


# -- 3. only configured repositories -------------------------------------------------------

SECRET_REPO = "other-org/secret-repo"


@pytest.mark.parametrize(
    "command, text",
    [
        ("/evaluate", f"{SECRET_REPO}#8"),
        ("/deploy", f"{SECRET_REPO}@123456"),
        ("/evaluate status", f"{SECRET_REPO}#8"),
    ],
)
def test_an_unconfigured_repository_is_refused_without_calling_github(
    harness: Harness, github, slack, command: str, text: str
) -> None:
    github.add_repo(SECRET_REPO, installation_id=777)  # the App is installed there
    github.add_pull(SECRET_REPO, 8, head_sha="8" * 40)
    name, _, sub = command.partition(" ")
    resp = harness.slash(name, f"{sub} {text}".strip())
    assert resp.status_code == 200
    body = resp.json()
    print(body["text"])
    assert body["response_type"] == "ephemeral"
    assert f"`{SECRET_REPO}` is not a repository this bridge works on" in body["text"]
    assert "`repositories.allowed`" in body["text"]
    harness.settle()
    assert github.requests == []
    assert harness.store.find() == []
    assert slack.calls_to("chat.postMessage") == []


def test_repositories_allowed_lets_a_command_reach_a_repository(
    make_harness, config_data, github, slack
) -> None:
    github.add_repo(SECRET_REPO, installation_id=777)
    github.add_pull(SECRET_REPO, 8, head_sha="8" * 40)
    config_data["repositories"]["allowed"] = ["Other-Org/Secret-Repo"]  # GitHub ignores case
    h = make_harness(config_data)
    assert h.slash("/evaluate", f"{SECRET_REPO}#8").status_code == 200
    github.wait_for("POST", r"/labels$")
    h.settle()
    assert h.store.find()[0].repo == SECRET_REPO


def test_a_deploy_url_of_another_host_is_refused(harness: Harness, github, slack) -> None:
    resp = harness.slash("/deploy", f"https://evil.example/{REPO}/actions/runs/123456")
    body = resp.json()
    print(body["text"])
    assert body["response_type"] == "ephemeral"
    assert "`evil.example` is not a GitHub host this bridge serves" in body["text"]
    harness.settle()
    assert github.requests == [] and harness.store.find() == []


def test_a_schedule_outside_the_configured_repositories_is_refused_at_start(
    config_data,
) -> None:
    config_data["schedules"] = [
        {
            "name": "nightly",
            "cron": "0 3 * * *",
            "event_type": "retrain",
            "repository": SECRET_REPO,
            "channel": CHANNEL,
        }
    ]
    with pytest.raises(ConfigError) as err:
        parse_config(config_data)
    print(err.value.problems)
    assert err.value.problems == [
        "chatops.yml: (top level): schedules[0].repository "
        f"{SECRET_REPO} is not a configured repository: add it to repositories.allowed "
        "(or use repositories.default / repositories.channels)"
    ]
    config_data["repositories"]["allowed"] = [SECRET_REPO]
    assert parse_config(config_data).schedules[0].repository == SECRET_REPO


# -- 2. no approval policy is refused; `approval: none` is said out loud --------------------

NO_POLICY = {
    "repositories": {"default": REPO},
    "commands": {"deploy": {"event_type": "deploy", "environments": {"production": {}}}},
}
MISSING = (
    "commands.deploy: no approval policy for production: set commands.deploy.approval or "
    "commands.deploy.environments.production.approval (approvers: [...]), or write "
    "`approval: none` there to deploy without approval"
)


def test_check_refuses_a_deploy_without_an_approval_policy(
    slack, github, database_url, tmp_path, capsys
) -> None:
    env = _env(slack, github, database_url, tmp_path, NO_POLICY)
    code = main(["check"], env=env)
    out = capsys.readouterr().out
    print(out, f"exit code {code}")
    assert code == 2
    assert f"FAIL {tmp_path / 'chatops.yml'}: {MISSING}" in out
    assert slack.calls == [] and github.requests == []


def test_serve_refuses_a_deploy_without_an_approval_policy(tmp_path) -> None:
    cfg = tmp_path / "chatops.yml"
    cfg.write_text(yaml.safe_dump(NO_POLICY))
    proc = run_serve({**GOOD, "CHATOPS_CONFIG": str(cfg)}, cwd=tmp_path)
    print(proc.stderr, f"exit code {proc.returncode}")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"chatops-bridge cannot start: the config file has problems:\n  - {cfg}: {MISSING}\n"
    )


def test_approval_none_deploys_at_once_and_says_so(make_harness, github, slack) -> None:
    add_training_run(github)
    cfg = copy.deepcopy(NO_POLICY)
    cfg["commands"]["deploy"]["approval"] = "none"
    h = make_harness(cfg)
    resp = h.slash("/deploy", "9001")
    ack = resp.json()["text"]
    print(ack)
    # Like /evaluate's ack: only what is known before the job reads the run.
    assert ack.startswith(f":hourglass_flowing_sand: Checking run `9001` of `{REPO}` before ")
    assert "deploying it to *production*… (request `" in ack and "On it" not in ack
    assert "no approval required by config (`approval: none`)" in ack
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    req = h.store.find(kind="deploy")[0]
    assert github.dispatches[0]["client_payload"]["approved_by"] == ""
    assert "production*: no approval required by config" in card_of(slack, req)
    rows = h.store.audit_rows(request_id=req.id)
    requested = next(r for r in rows if r["action"] == "deploy.requested")
    assert requested["outcome"] == "approved"
    assert requested["detail"].endswith("; no approval required by config")


def test_without_a_deploy_section_deploy_is_refused(make_harness, github, slack) -> None:
    h = make_harness({"repositories": {"default": REPO}})
    resp = h.slash("/deploy", "9001")
    print(resp.json()["text"])
    assert resp.json()["response_type"] == "ephemeral"
    assert "`/deploy` is not set up: no approval policy for production" in resp.json()["text"]
    h.settle()
    assert github.requests == [] and h.store.find() == []


def test_a_deployment_of_a_pull_request_run_titled_like_the_deploy_is_ignored(
    harness: Harness, github, slack
) -> None:
    """deployment_status events name their run; its title counts only as workflow_run's do."""
    add_training_run(github)
    req = _approved(harness, github, slack)
    before = card_of(slack, req)
    payload = copy.deepcopy(fixture("deployment_status.created"))
    payload["repository"]["full_name"] = REPO
    payload["deployment"]["created_at"] = _iso(time.time())
    payload["workflow_run"] = copy.deepcopy(
        _titled_run(req, event="pull_request", created=time.time())["workflow_run"]
    )
    assert harness.webhook("deployment_status", payload).status_code == 202
    harness.settle()
    assert slack.thread_replies(CHANNEL, req.root_ts) == []
    assert card_of(slack, req) == before
    assert _rejected(harness, "not_a_dispatch_run") == 1
