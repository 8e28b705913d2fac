"""The model deploy job: the version's facts from MLflow and the card (once), then one
repository_dispatch carrying the model (once); after a successful deploy, optionally an alias
set on the version in MLflow (`models[].after_deploy_alias`)."""

from __future__ import annotations

import logging
from typing import Any

from bot.deps import Deps
from bot.github import GitHubError, Retryable
from bot.mlflow import MlflowError, MlflowNotFound, MlflowUnavailable
from bot.model import APPROVED, PENDING_APPROVAL, SUCCEEDED, TRIGGERED, Request
from bot.slack import SlackFailure
from handlers import details
from handlers.common import github_permission_refusal
from handlers.deploy.facts import REGISTRY_USER, DeployDetails, ModelFacts, details_of
from handlers.deploy.locks import deploy_refusal
from handlers.deploy.model_card import model_of
from handlers.deploy.models import model_ref
from handlers.deploy.worker import approvers_for_payload
from handlers.lifecycle import (
    dispatch_once,
    ensure_root,
    fail,
    fail_or_wait,
    refresh_root,
    reply_once,
    retry_or_give_up,
    settle,
    tell_once,
)

log = logging.getLogger(__name__)


def carry_out(deps: Deps, req: Request) -> None:
    """As /deploy's job: facts and card (once), then the dispatch (once) when approved."""
    if req.status == PENDING_APPROVAL and req.root_ts:
        return
    if not req.root_ts:
        posted = _post_card(deps, req)
        if posted is None:
            return
        req = deps.store.get(req.id) or posted
    if req.status == APPROVED:
        if req.user_id == REGISTRY_USER and req.action_started_at is None:
            # Nobody's command and no approver's click checked the environment's lock: a
            # deploy the registry asks for to an `approval: none` environment is refused here,
            # before its dispatch, while someone holds the lock (not once a dispatch may have
            # been sent: action_started_at, lifecycle.dispatch_once).
            refusal = deploy_refusal(
                deps, req.repo, req.environment or "", req.user_id, req.channel_id
            )
            if refusal:
                fail(deps, req, refusal)
                return
        _dispatch(deps, req)


def _post_card(deps: Deps, req: Request) -> Request | None:
    try:
        if req.user_id != REGISTRY_USER:  # a person asked: /deploy's GitHub permission rule
            refusal = github_permission_refusal(
                deps, deps.config.commands.deploy, req.repo, req.user_id
            )
            if refusal:
                fail(deps, req, refusal)
                return None
        if not details_of(req).get("facts_checked"):
            _gather_facts(deps, req)
            req = deps.store.get(req.id) or req
    except Retryable as exc:
        retry_or_give_up(deps, req, exc)
        return None
    except GitHubError as exc:
        fail(deps, req, exc.message)
        return None
    except MlflowUnavailable as exc:
        tell_once(deps, req, "mlflow-retry-note", f"{exc.message}; I keep trying.")
        raise  # waited out by the job layer (bot/jobs.py: an MLflow outage)
    except MlflowError as exc:
        model = model_of(req) or {}
        hint = (
            "Check the model name and version (or alias) in MLflow."
            if isinstance(exc, MlflowNotFound)
            else None
        )
        _fail_visibly(deps, req, f"MLflow: {exc.message} ({model.get('name')})", hint=hint)
        return None
    try:
        return ensure_root(deps, req)
    except SlackFailure as exc:
        fail_or_wait(deps, req, exc)
        return None


def _fail_visibly(deps: Deps, req: Request, error: str, *, hint: str | None) -> None:
    """Fail; a request the registry asked for has nobody to tell ephemerally, so its card is
    posted showing the error (never a silent drop)."""
    fail(deps, req, error, hint=hint)
    current = deps.store.get(req.id) or req
    if current.user_id == REGISTRY_USER and not current.root_ts:
        try:
            ensure_root(deps, current)
        except SlackFailure as exc:
            log.warning("could not post the failed card", extra={"error": exc.error})


def _gather_facts(deps: Deps, req: Request) -> None:
    """The version (an alias typed by hand resolved here, once), its source run and metrics."""
    model = ModelFacts(**(model_of(req) or {}))
    registry = deps.mlflow
    facts = DeployDetails(facts_checked=True)
    if registry is not None:
        name = str(model.get("name"))
        if model.get("version"):
            version = registry.get_model_version(name, str(model["version"]))
        else:
            version = registry.get_version_by_alias(name, str(model.get("alias")))
        model["version"] = version.version
        model["run_id"] = version.run_id
        model["source"] = version.source
        model["registered_by"] = version.user_id
        model["status"] = version.status
        model["aliases"] = list(version.aliases)
        model["mlflow_host"] = registry.host
        if version.run_id:
            run = registry.get_run(version.run_id)
            facts["mlflow_run"] = {
                "name": run.name,
                "status": run.status,
                "user": run.user_id,
                "metrics": dict(sorted(run.metrics.items())),
                "read_at": deps.clock(),
            }
        deps.store.update(req.id, run_ref=model_ref(name, version.version))
    facts["model"] = model
    details.merge(deps, req.id, facts)


def dispatch_payload(deps: Deps, req: Request) -> dict[str, Any]:
    """Exactly these 9 keys (GitHub allows 10); /deploy's 7 keys carry the same meaning.
    requested_by: a Slack user id, or `mlflow:<event>` when the registry asked."""
    model = model_of(req) or {}
    requested_by = req.user_id
    if req.user_id == REGISTRY_USER:
        requested_by = f"mlflow:{model.get('event') or 'registry'}"
    return {
        "request_id": req.id,
        "model_name": model.get("name"),
        "model_version": model.get("version"),
        "run_id": model.get("run_id") or "",
        "environment": req.environment,
        "requested_by": requested_by,
        "approved_by": ",".join(approvers_for_payload(deps, req)),
        "slack_channel": req.channel_id,
        "slack_thread_ts": req.root_ts,
    }


def _dispatch(deps: Deps, req: Request) -> None:
    """repository_dispatch once, exactly as /deploy's (lifecycle.dispatch_once)."""
    event_type = req.event_type or deps.config.commands.deploy.event_type
    try:
        dispatch_once(deps, req, event_type, dispatch_payload(deps, req))
    except Retryable as exc:
        retry_or_give_up(deps, req, exc)
        return
    except GitHubError as exc:
        fail(deps, req, exc.message)
        return
    if deps.store.update(req.id, only_if_status=(APPROVED,), status=TRIGGERED):
        deps.store.audit(
            actor="bridge",
            action="deploy.dispatched",
            outcome="ok",
            request_id=req.id,
            detail=f"{event_type} to {req.repo}, {req.run_ref}, {req.environment}",
        )
    settle(deps, req)


def after_success(deps: Deps, req: Request) -> None:
    """`models[].after_deploy_alias`: once the deploy succeeded, set that alias on the version
    in MLflow, once, and say so in the thread (or why not). Outages of MLflow or Slack are
    raised: the event being handled is retried with backoff and comes back here, where the
    recorded outcome and the reply's key keep both steps to once."""
    req = deps.store.get(req.id) or req
    model = model_of(req) or {}
    spec = deps.config.model_named(str(model.get("name")))
    if req.status != SUCCEEDED or spec is None or spec.after_deploy_alias is None:
        return
    if not model.get("version"):
        return
    after = details_of(req).get("alias_after")
    if not isinstance(after, dict):
        # Two settles of one request can meet here (the dispatch's and a webhook's): one sets.
        claim = f"alias-after:{req.id}"
        if not deps.store.first_time(claim):
            return
        try:
            after = _set_alias(
                deps, req, str(model["name"]), spec.after_deploy_alias, model["version"]
            )
        except MlflowUnavailable:
            deps.store.forget(claim)  # not set: the retry of this event claims it again
            raise
        refresh_root(deps, req)
    name, alias, version = model.get("name"), after.get("alias"), after.get("version")
    text = (
        f":label: Deployed, so I set the alias `{alias}` on {name} version {version} in MLflow."
        if after.get("ok")
        else f":warning: Deployed, but I could not set the alias `{alias}` on {name} version "
        f"{version} in MLflow: {after.get('error')}"
    )
    try:
        reply_once(deps, req, f"{req.id}:alias-after", {"text": text})
    except SlackFailure as exc:
        if exc.is_outage:
            raise
        log.warning("could not say the alias outcome", extra={"error": exc.error})


def _set_alias(deps: Deps, req: Request, name: str, alias: str, version: str) -> dict[str, Any]:
    outcome: dict[str, Any] = {"alias": alias, "version": version, "ok": True}
    if deps.mlflow is None:
        outcome.update(ok=False, error="MLFLOW_TRACKING_URI is not set")
    else:
        try:
            deps.mlflow.set_alias(name, alias, version)
        except MlflowUnavailable:
            raise
        except MlflowError as exc:
            outcome.update(ok=False, error=exc.message)
    details.merge(deps, req.id, DeployDetails(alias_after=outcome))
    deps.store.audit(
        actor="bridge",
        action="deploy.alias_set",
        outcome="ok" if outcome["ok"] else "failed",
        request_id=req.id,
        detail=f"{name} version {version} alias {alias}"
        + ("" if outcome["ok"] else f": {outcome.get('error')}"),
    )
    return outcome
