"""Deploys of registered model versions: asked by the MLflow registry (a signed webhook, stored
and handed over by bot/mlflow_intake.py) or by hand (`/deploy model:<name>@<version|alias>`).

Both make a `model_deploy` request that goes through /deploy's approval policy, card, clicks,
expiry and App Home; handlers/deploy/model_worker.py carries it out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bot import logs
from bot.config_base import ModelSpec
from bot.deps import Deps
from bot.model import APPROVED, PENDING_APPROVAL, NewRequest, Request
from bot.refs import UsageError, parse_model_args
from bot.slacktext import escape_mrkdwn
from bot.store import OverLimit
from handlers.common import count_command, rate_limited
from handlers.deploy import locks
from handlers.deploy.facts import MODEL_DEPLOY, REGISTRY_USER, ModelFacts
from handlers.deploy.model_card import model_of
from handlers.deploy.policy import NO_APPROVAL, excluded_self, unknown_environment, who_can_approve

log = logging.getLogger(__name__)

Ack = Callable[..., Any]

MODEL_USAGE = (
    "*Usage:* `/deploy model:<name>@<version> [environment]` or "
    "`/deploy model:<name>@<alias> [environment]` — for example `/deploy model:churn-model@7` "
    "or `/deploy model:churn-model@candidate staging`. The model must be listed under "
    "`models:` in chatops.yml; its version is read from MLflow."
)


def model_ref(name: str, version: str | None, alias: str | None = None) -> str:
    """requests.run_ref of a model deploy: MLflow's own model URI."""
    return f"models:/{name}/{version}" if version else f"models:/{name}@{alias}"


def what(req: Request, web_base: str) -> str:
    """A model deploy in a few words: "deploy of model `churn-model` v7 → *production*"."""
    model = model_of(req) or {}
    name = escape_mrkdwn(str(model.get("name") or "?"))[:60]
    which = f"v{model['version']}" if model.get("version") else f"@{model.get('alias') or '?'}"
    return f"deploy of model `{name}` {escape_mrkdwn(which)[:40]} → *{req.environment or '?'}*"


# -- asked by the registry ----------------------------------------------------------------------
def on_registry_event(deps: Deps, envelope: dict[str, Any]) -> None:
    """A stored MLflow delivery (router event `mlflow`): one request per configured model it
    asks for. Idempotent: the delivery id is the request's idempotency key, so a delivery
    handled again after a crash finds its request instead of making a second one."""
    entity, action = str(envelope["entity"]), str(envelope["action"])
    data: dict[str, Any] = envelope["data"]
    delivery_id = str(envelope["delivery_id"])
    for model, asked in deps.config.models_asked(entity, action, data):
        _registry_request(deps, model, asked, f"{entity}.{action}", delivery_id, data)


def _registry_request(
    deps: Deps, model: ModelSpec, asked: str, event: str, delivery_id: str, data: dict[str, Any]
) -> None:
    env = deps.config.model_environment(model)
    version = str(data["version"])
    ref = model_ref(model.name, version)
    key = f"mlflow:{delivery_id}:{model.name}"
    facts = ModelFacts(
        name=model.name,
        version=version,
        asked_by=asked,
        event=event,
        delivery_id=delivery_id,
        run_id=str(data["run_id"]) if isinstance(data.get("run_id"), str) else None,
    )
    # One open deploy per version and environment, decided by the insert itself: the same
    # version asked again (an alias set twice, a tag and an alias, two deliveries at the same
    # instant) while its card is open finds that card; a delivery handled again finds its own
    # request, which the job pool or the recovery sweep carries on.
    req, created = _store(
        deps, model, env, ref, facts, REGISTRY_USER, model.channel, key, None, one_open=True
    )
    logs.bind(request_id=req.id)
    if created:
        deps.jobs.submit(req.id)
    elif (model_of(req) or {}).get("delivery_id") != delivery_id:
        log.info(
            "registry event for a version with an open deploy request; no new card",
            extra={"request_id": req.id, "mlflow_event": event},
        )


def _store(
    deps: Deps,
    model: ModelSpec,
    env: str,
    ref: str,
    facts: ModelFacts,
    user_id: str,
    channel_id: str,
    key: str,
    command: dict[str, Any] | None,
    *,
    per_minute: int | None = None,
    one_open: bool = False,
) -> tuple[Request, bool]:
    cmd = deps.config.commands.deploy
    policy = cmd.policy_for(env)
    now = deps.clock()
    return deps.store.create_request(
        NewRequest(
            kind=MODEL_DEPLOY,
            repo=model.repository,
            trigger="dispatch",
            run_ref=ref,
            environment=env,
            event_type=cmd.event_type,
            channel_id=channel_id,
            user_id=user_id,
            response_url=(command or {}).get("response_url"),
            status=PENDING_APPROVAL if policy else APPROVED,
            expires_at=now + policy.expires_after_minutes * 60 if policy else None,
            idempotency_key=key,
            details={"model": dict(facts)},
        ),
        audit_action="deploy.requested",
        audit_detail=f"{model.repository} {ref} to {env}"
        + (f" ({facts['asked_by']}, {facts['event']})" if facts.get("event") else "")
        + ("" if policy else f"; {NO_APPROVAL}"),
        per_minute=per_minute,
        one_open_per_ref=one_open,
    )


# -- asked by hand --------------------------------------------------------------------------------
def handle_model_command(deps: Deps, command: dict[str, Any], ack: Ack) -> Request | None:
    """`/deploy model:<name>@<version|alias> [environment]` (access checked by the caller).

    Pure checks only before the ack; the version (and an alias) is read from MLflow in the
    job, inside which an outage can be waited out."""
    text = str(command.get("text") or "").strip()
    user_id = str(command.get("user_id") or "")
    channel_id = str(command.get("channel_id") or "")
    try:
        args = parse_model_args(text)
    except UsageError as exc:
        count_command(deps, "deploy", "usage_error")
        ack(text=f":warning: {exc}\n{MODEL_USAGE}", response_type="ephemeral")
        return None
    model = deps.config.model_named(args.name)
    if model is None:
        count_command(deps, "deploy", "usage_error", why="unknown_model")
        known = ", ".join(f"`{m.name}`" for m in deps.config.models) or "none"
        ack(
            text=f":warning: `{escape_mrkdwn(args.name)}` is not a model I deploy "
            f"(`models:` in chatops.yml lists: {known}).",
            response_type="ephemeral",
        )
        return None
    if deps.mlflow is None:
        count_command(deps, "deploy", "refused", why="mlflow_not_configured")
        ack(
            text=":no_entry: I cannot deploy a model version by hand here: MLFLOW_TRACKING_URI "
            "is not set, so I cannot read the version (its run, metrics and aliases) from "
            "MLflow. Ask an admin of this bridge to set it, or deploy by its run: "
            "`/deploy <run-id>`.",
            response_type="ephemeral",
        )
        return None
    env = _environment(deps, args.environment, model)
    if env is None:
        unknown_environment(deps, args.environment, ack)
        return None
    if locks.refused_by_lock(deps, model.repository, env, user_id, channel_id, ack):
        return None
    facts = ModelFacts(name=model.name, version=args.version or "")
    if args.alias:
        facts["alias"] = args.alias
    key = f"slack:{command.get('trigger_id') or command.get('response_url')}"
    ref = model_ref(model.name, args.version, args.alias)
    try:
        req, created = _store(
            deps,
            model,
            env,
            ref,
            facts,
            user_id,
            channel_id,
            key,
            command,
            per_minute=deps.config.rate_limits.commands_per_minute,
        )
    except OverLimit:
        rate_limited(deps, "deploy", ack)
        return None
    logs.bind(request_id=req.id)
    count_command(deps, "deploy", "accepted" if created else "duplicate")
    ack(text=_accepted_text(deps, req, user_id), response_type="ephemeral")
    if created:
        deps.jobs.submit(req.id)
    return req


def _environment(deps: Deps, given: str | None, model: ModelSpec) -> str | None:
    cmd = deps.config.commands.deploy
    if given is None:
        return deps.config.model_environment(model)
    return {name.lower(): name for name in cmd.environments}.get(given.lower())


def _accepted_text(deps: Deps, req: Request, user_id: str) -> str:
    policy = deps.config.commands.deploy.policy_for(req.environment or "")
    what_ = f"deploy of `{req.run_ref}` to *{req.environment}* in `{req.repo}`"
    if req.status == PENDING_APPROVAL and policy is not None:
        who = who_can_approve(policy, exclude=excluded_self(policy, user_id))
        return (
            f":raised_hand: Asked for approval: {what_} (request `{req.id}`). I'm reading the "
            f"version from MLflow; the approval card will appear in this channel, and {who} can "
            f"approve it within {policy.expires_after_minutes} minutes."
        )
    return (
        f":rocket: On it: {what_} (request `{req.id}`); {NO_APPROVAL} (`approval: none`). "
        "I'll follow it in a thread in this channel."
    )
