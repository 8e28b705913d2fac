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


class RunFacts(TypedDict, total=False):
    """The GitHub run a deploy names, as the worker read it when the card was made."""

    name: str | None
    url: str | None
    branch: str | None
    sha: str
    status: str
    conclusion: str | None


class PullHead(TypedDict):
    """The head of the run's PR when the card was made."""

    number: int
    sha: str
    url: str


class BranchHead(TypedDict):
    """The head of the run's branch when the card was made (a run of no PR)."""

    branch: str
    sha: str


class EarlierMetrics(TypedDict, total=False):
    comment_url: str | None
    author: str | None


class ShownMetrics(TypedDict, total=False):
    """The newest trusted metrics comment for the run's commit: the table the card shows."""

    id: int | None
    comment_url: str | None
    author: str | None
    trusted_as: str | None
    created_at: str | None
    body: str | None
    head_sha: str  # the run's commit the comment is for
    count: int  # how many trusted metrics comments there were for it
    earlier: list[EarlierMetrics]  # up to 5 of the others, newest first


class GateRule(TypedDict, total=False):
    """A custom deployment protection rule GitHub waits on (handlers/deploy/gate.py)."""

    run_id: int  # from the payload's deployment_callback_url, checked to be GitHub's own
    environment: str  # as GitHub names it: the callback's environment_name
    deployment_id: int
    answered: str  # approved | rejected | failed (GitHub refused the answer)


class GateFacts(TypedDict, total=False):
    """Who started a GitHub-initiated deploy (from the run, as GitHub's API reports it)."""

    actor: str  # the run's triggering actor (GitHub login)
    event: str  # the event that started the run (push, workflow_dispatch, ...)
    slack_user: str  # that login's Slack user (github_users), when configured


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
    run: RunFacts
    pr_head: PullHead
    branch_head: BranchHead
    metrics: ShownMetrics
    metrics_later: list[LaterMetrics]  # written by handlers/comments.py
    # written by handlers/deployment_status.py: the newest deployment status
    deployment_status_id: int
    deployment_state: str
    deployment_environment: str
    deployment_url: str | None
    # custom deployment protection rules (handlers/deploy/gate.py)
    gate_rules: list[GateRule]
    gate: GateFacts  # set on a request that GitHub's protection rule started
    dispatched_at_once: bool  # a `gate: github` deploy: dispatched before the approval
    # model deploys (handlers/deploy/models.py)
    model: ModelFacts
    mlflow_run: dict[str, Any]  # name, status, user, metrics {key: value}, read_at
    alias_after: dict[str, Any]  # alias, version, ok, error: models[].after_deploy_alias


def details_of(req: Request) -> DeployDetails:
    return cast(DeployDetails, req.details)
