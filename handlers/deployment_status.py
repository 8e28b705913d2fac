"""`deployment_status` events of the deploy workflow become thread replies and card edits.

The deploy workflow's job names a GitHub `environment:`, so GitHub creates a deployment and
reports its states. A status is matched to a deploy request by, in order:
1. `deployment.payload.request_id` (for workflows that create deployments themselves);
2. `workflow_run.id` (newer payloads): the run already linked to a request by its
   `workflow_run` events, or else the run's `display_title` ("chatops <request_id>: …") when
   the run may speak for the request (handlers.workflow_run.title_refusal);
3. for payloads without `workflow_run`: the newest deploy of that repository to that
   environment whose dispatch started before the deployment was created.
"""

from __future__ import annotations

import logging
from typing import Any

from bot import logs, messages, slacktext
from bot.deps import Deps
from bot.github import GitHubError, NotFound, Retryable
from bot.github_data import CLOCK_SKEW, RunInfo, parse_time, run_from_payload
from bot.model import FAILED, SUCCEEDED, WAITING_FOR_RUNS, Request
from bot.slacktext import escape_mrkdwn
from handlers import details
from handlers.deploy import deployment_line
from handlers.deploy.facts import DEPLOY_KINDS, DeployDetails
from handlers.deploy.facts import details_of as deploy_details
from handlers.lifecycle import refresh_root, reply_once, request_id_in_title
from handlers.workflow_run import title_match

log = logging.getLogger(__name__)


def on_deployment_status(deps: Deps, payload: dict[str, Any]) -> None:
    repo = str((payload.get("repository") or {}).get("full_name") or "")
    deployment = payload.get("deployment")
    status = payload.get("deployment_status")
    if not repo or not isinstance(deployment, dict) or not isinstance(status, dict):
        return
    req = request_for_deployment(deps, repo, deployment, payload.get("workflow_run"))
    if req is not None:
        relay_deployment_status(deps, req, deployment, status)


def _request_id(deps: Deps, repo: str, deployment: dict[str, Any], run: Any) -> str | None:
    """The request id named by the deployment or its workflow run; "" when the run is not ours."""
    extra = deployment.get("payload")
    if isinstance(extra, dict) and isinstance(extra.get("request_id"), str):
        return str(extra["request_id"])
    if not isinstance(run, dict) or not run.get("id"):
        return None
    owner = deps.store.run_owner(str(run["id"]))
    if owner:
        return owner
    # The same rule as workflow_run events: a title counts only on a run the bridge dispatched.
    info: RunInfo
    if isinstance(run.get("display_title"), str) and run.get("event") and run.get("created_at"):
        try:
            info = run_from_payload(repo, run)
        except ValueError:
            return ""
    else:
        try:
            info = deps.github.get_run(repo, int(run["id"]))
        except NotFound:
            return ""
        except Retryable:
            raise
        except GitHubError as exc:
            log.warning(
                "cannot read a deployment's run", extra={"repo": repo, "error": exc.message}
            )
            return None
    rid = request_id_in_title(info.display_title)
    req = title_match(deps, rid, info) if rid else None
    return req.id if req is not None else ""


def request_for_deployment(
    deps: Deps, repo: str, deployment: dict[str, Any], run: Any
) -> Request | None:
    rid = _request_id(deps, repo, deployment, run)
    if rid == "":
        return None  # a run of some other workflow (GitHub Pages, a manual deploy, ...)
    if rid:
        req = deps.store.get(rid)
        found = req is not None and req.kind in DEPLOY_KINDS and req.repo == repo
        return req if found else None
    environment = deployment.get("environment")
    if not isinstance(environment, str) or not environment:
        return None
    created = parse_time(deployment.get("created_at"))
    for req in deps.store.find(
        repo=repo,
        kind="deploy",
        environment=environment,
        statuses=(*WAITING_FOR_RUNS, SUCCEEDED, FAILED),
        limit=10,
    ):
        started = req.action_started_at or req.created_at
        if created is None or created >= started - CLOCK_SKEW:
            return req
    return None


def deployment_reply(
    state: str, environment: str, url: str, log_url: str, description: str
) -> messages.Message:
    """A thread reply for one deployment state (pure)."""
    text = deployment_line(state, environment, url or None)
    if description:
        text += f"\n>{escape_mrkdwn(description)[:500]}"
    if log_url:
        text += f"\n{slacktext.slack_link(log_url, 'logs')}"
    return {
        "text": escape_mrkdwn(f"Deployment to {environment}: {state}"),
        "blocks": [slacktext.section(text)],
    }


def relay_deployment_status(
    deps: Deps, req: Request, deployment: dict[str, Any], status: dict[str, Any]
) -> None:
    """Reply once per (deployment, state); the card follows the newest status."""
    logs.bind(request_id=req.id)  # the delivery's log lines name the request from here on
    state = str(status.get("state") or "unknown")
    environment = str(
        status.get("environment") or deployment.get("environment") or req.environment or "?"
    )
    url = str(status.get("environment_url") or "")
    log_url = str(status.get("log_url") or status.get("target_url") or "")
    description = str(status.get("description") or "")
    msg = deployment_reply(state, environment, url, log_url, description)
    reply_once(deps, req, f"deployment:{req.id}:{deployment.get('id')}:{state}", msg)
    status_id = int(status.get("id") or 0)
    current = deps.store.get(req.id) or req
    if status_id < int(deploy_details(current).get("deployment_status_id") or 0):
        return  # an older status arrived late: the card keeps the newer one
    newest = DeployDetails(
        deployment_status_id=status_id,
        deployment_state=state,
        deployment_environment=environment,
        deployment_url=url or None,
    )
    details.merge(deps, req.id, newest)
    refresh_root(deps, req)
