"""Issue 12 through Prism: a protection-rule request, its card and the approval's callback,
every GitHub request validated against GitHub's own description (zero violations: the `gh`
fixture fails the test on any)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from github_contract import GitHubContract

from tests.conftest import Harness
from tests.doubles.slack_api import SlackDouble
from tests.test_deploy import APPROVER, click
from tests.test_protection_rule import GATE_CHANNEL, gate_config, rule_payload

pytestmark = pytest.mark.contract

RUN = 30433642  # GitHub's example workflow run, which Prism answers for every run id
CALLBACK = rf"/actions/runs/{RUN}/deployment_protection_rule$"


def test_protection_rule_flow_against_githubs_description(
    make_contract_harness: Callable[..., Harness], gh: GitHubContract, slack: SlackDouble
) -> None:
    h = make_contract_harness(gate_config())
    payload = rule_payload(gh, RUN)
    assert h.webhook("deployment_protection_rule", payload).status_code == 202
    h.settle()
    (req,) = [r for r in h.store.find(kind="deploy") if r.trigger == "gate"]
    assert req.channel_id == GATE_CHANNEL and req.root_ts
    ops = {r.operation for r in gh.requests}
    assert ("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}") in ops
    assert gh.requests_to("POST", CALLBACK) == []
    click(h, "deploy_approve", req, APPROVER)
    h.settle()
    (sent,) = gh.requests_to("POST", CALLBACK)
    assert sent.status == 204
    assert sent.operation == (
        "POST",
        "/repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule",
    )
    assert sent.body == {
        "environment_name": "production",
        "state": "approved",
        "comment": f"Approved in Slack by {APPROVER} (chatops request {req.id})",
    }
    assert sent.auth == "token"
