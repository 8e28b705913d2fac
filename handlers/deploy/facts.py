"""The keys a deploy request keeps in Request.details (handlers/details.py): what the card shows."""

from __future__ import annotations

from typing import Any, TypedDict, cast

from bot.model import Request


class LaterMetrics(TypedDict, total=False):
    """A newer metrics comment for the card's commit, named on a card that keeps its table."""

    id: int | None
    comment_url: str
    author: str
    created_at: str


# Both kinds share the approval card, clicks, expiry and the deploy workflow.
DEPLOY = "deploy"  # /deploy <run-id>
MODEL_DEPLOY = "model_deploy"  # a registered model version (MLflow webhook or /deploy model:…)
DEPLOY_KINDS = (DEPLOY, MODEL_DEPLOY)
# requests.user_id of a deploy the registry asked for (no Slack user asked; never an approver).
REGISTRY_USER = "mlflow"


class ModelFacts(TypedDict, total=False):
    """A registered model version, as the signed webhook and MLflow's REST API said."""

    name: str
    version: str  # empty until an alias typed by hand is resolved
    alias: str  # `/deploy model:name@alias`: the alias typed
    asked_by: str  # what asked: "alias candidate", "tag deploy=true", "new version"
    event: str  # the registry event, e.g. model_version_alias.created (webhook only)
    delivery_id: str  # X-MLflow-Delivery-Id (webhook only)
    run_id: str | None  # the source run of the version
    source: str | None
    registered_by: str | None  # MLflow's user_id of the version, when it has one
    status: str | None  # READY, PENDING_REGISTRATION, FAILED_REGISTRATION
    aliases: list[str]  # the version's aliases when the card was made
    mlflow_host: str  # where the facts were read; empty: MLFLOW_TRACKING_URI not set


class DeployDetails(TypedDict, total=False):
    facts_checked: bool  # the worker looked the run up (or found it is not a GitHub run id)
    run: dict[str, Any]  # name, url, branch, sha, status, conclusion of the GitHub run
    pr_head: dict[str, Any]  # number, sha, url: the head of the run's PR when the card was made
    branch_head: dict[str, Any]  # branch, sha: the head of the run's branch (no PR)
    metrics: dict[str, Any]  # the newest trusted metrics comment for the run's commit
    metrics_later: list[LaterMetrics]  # written by handlers/comments.py
    # written by handlers/deployment_status.py: the newest deployment status
    deployment_status_id: int
    deployment_state: str
    deployment_environment: str
    deployment_url: str | None
    # model deploys (handlers/deploy/models.py)
    model: ModelFacts
    mlflow_run: dict[str, Any]  # name, status, user, metrics {key: value}, read_at
    alias_after: dict[str, Any]  # alias, version, ok, error: models[].after_deploy_alias


def details_of(req: Request) -> DeployDetails:
    return cast(DeployDetails, req.details)
