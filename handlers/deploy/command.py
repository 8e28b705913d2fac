"""`/deploy <run-id> [environment]`: parse, check, store the request, ack; its help and status
(`/deploy lock|unlock|locks` are handed to handlers/deploy/locks.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.config import Access, ApprovalPolicy
from bot.deps import Deps
from bot.model import APPROVED, PENDING_APPROVAL, NewRequest, Request
from bot.refs import UsageError, is_lock_command, is_model_ref, parse_deploy_args
from bot.slacktext import escape_mrkdwn
from handlers.common import accept, admitted, answer_usage, count_command, resolve_repo
from handlers.deploy import locks
from handlers.deploy.facts import DEPLOY_KINDS
from handlers.deploy.gate import GATE
from handlers.deploy.models import handle_model_command
from handlers.deploy.policy import (
    NO_APPROVAL,
    excluded_self,
    unknown_environment,
    who_can_approve,
)
from handlers.status import LIMIT, status_list

Ack = Callable[..., Any]

USAGE = (
    "*Usage:* `/deploy <run-id> [environment]` — for example `/deploy 9876543210`, "
    "`/deploy 9876543210 staging`, `/deploy acme/ml-models@9876543210` or "
    "`/deploy https://github.com/acme/ml-models/actions/runs/9876543210`.\n"
    "A GitHub workflow run id shows the run's facts on the approval card; any other run id "
    "(an MLflow or W&B run, say) is passed to the deploy workflow as it is.\n"
    "`/deploy model:<name>@<version|alias> [environment]` deploys a registered model version "
    "(models listed under `models:` in chatops.yml; read from MLflow).\n"
    "`/deploy status [environment]` lists recent deploys (and locked environments); "
    "`/deploy help` shows this.\n" + locks.LOCK_USAGE
)


def usage(deps: Deps, channel_id: str) -> str:
    cmd = deps.config.commands.deploy
    repo = deps.config.repository_for(channel_id)
    where = (
        f"In this channel, a bare run id means a run of `{repo}`."
        if repo
        else "No default repository is set for this channel: name it as `owner/repo@<run-id>`."
    )
    envs = ", ".join(f"`{e}`" for e in cmd.environments)
    return (
        f"{USAGE}\n{where}\nEnvironments: {envs} (default `{cmd.default_environment}`). "
        f"Once approved I send a `{cmd.event_type}` repository_dispatch event."
    )


def _environment(deps: Deps, given: str | None) -> str | None:
    """The configured environment a user meant (GitHub compares names case-insensitively)."""
    cmd = deps.config.commands.deploy
    if given is None:
        return cmd.default_environment
    by_lower = {name.lower(): name for name in cmd.environments}
    return by_lower.get(given.lower())


def handle_command(deps: Deps, command: dict[str, Any], ack: Ack) -> Request | None:
    """Parse, check, store, then ack — inside Slack's 3 seconds. GitHub and the card: jobs."""
    cmd = deps.config.commands.deploy
    if is_lock_command(str(command.get("text") or "").strip()):
        # Locks have their own rule (the environment's approvers), checked there.
        locks.handle_command(deps, command, ack)
        return None
    inv = admitted(deps, "deploy", cmd, command, ack)
    if inv is None:
        return None
    if is_model_ref(inv.text):  # `/deploy model:<name>@<version|alias>`: a registered model
        return handle_model_command(deps, command, ack)
    try:
        args = parse_deploy_args(inv.text, allowed_hosts=deps.web_hosts)
        repo = resolve_repo(deps, args.repo, inv.channel_id)
    except UsageError as exc:
        answer_usage(deps, "deploy", exc, usage(deps, inv.channel_id), ack)
        return None
    environment = _environment(deps, args.environment)
    if environment is None:
        unknown_environment(deps, args.environment, ack)
        return None
    if cmd.approval_for(environment) is None:
        # Only when chatops.yml has no commands.deploy at all (start-up refuses a deploy section
        # without a policy): never deploy without approval by omission.
        count_command(deps, "deploy", "refused")
        ack(
            text=f":no_entry: `/deploy` is not set up: {cmd.missing_policy_text([environment])}. "
            "Ask an admin of this bridge to add it to chatops.yml.",
            response_type="ephemeral",
        )
        return None
    if locks.refused_by_lock(deps, repo, environment, inv.user_id, inv.channel_id, ack):
        return None
    policy = cmd.policy_for(environment)
    new = NewRequest(
        kind="deploy",
        repo=repo,
        trigger="dispatch",
        run_ref=args.run_id,
        environment=environment,
        event_type=cmd.event_type,
        channel_id=inv.channel_id,
        user_id=inv.user_id,
        response_url=inv.response_url,
        status=PENDING_APPROVAL if policy else APPROVED,
        expires_at=deps.clock() + policy.expires_after_minutes * 60 if policy else None,
        idempotency_key=inv.idempotency_key,
    )
    return accept(
        deps,
        "deploy",
        new,
        ack,
        lambda req: _ack_text(req, policy, inv.user_id, gated=cmd.gated(environment)),
        audit_action="deploy.requested",
        audit_detail=f"{repo} run {args.run_id} to {environment}"
        + ("" if policy else f"; {NO_APPROVAL}"),
    )


def _ack_text(req: Request, policy: ApprovalPolicy | None, user_id: str, *, gated: bool) -> str:
    """What the requester is told at once: only what is known before the job reads the run."""
    what = f"deploy of run `{req.run_ref}` to *{req.environment}* in `{req.repo}`"
    if req.status == PENDING_APPROVAL and policy is not None:
        who = who_can_approve(policy, exclude=excluded_self(policy, user_id))
        return (
            f":raised_hand: Asked for approval: {what} (request `{req.id}`). The approval card "
            f"will appear in this channel; {who} can "
            f"approve it within {policy.expires_after_minutes} minutes."
        ) + (
            f" *{req.environment}* is protected by this bridge on GitHub: I start the deploy "
            "workflow now, and GitHub holds its deploy job until the approval."
            if gated
            else ""
        )
    return (
        f":hourglass_flowing_sand: Checking run `{req.run_ref}` of `{req.repo}` before "
        f"deploying it to *{req.environment}*… (request `{req.id}`); {NO_APPROVAL} "
        "(`approval: none`)."
    )


def help_usage(deps: Deps, channel_id: str) -> str:
    """The usage in `/deploy help`: with each environment's approval rule."""
    approvals = []
    cmd = deps.config.commands.deploy
    for env in cmd.environments:
        policy = cmd.policy_for(env)
        if policy is None:
            approvals.append(f"`{env}`: no approval")
        else:
            n = policy.required
            who = who_can_approve(policy)
            approvals.append(f"`{env}`: {n} approval{'s' if n > 1 else ''} from {who}")
    return usage(deps, channel_id) + "\nApprovals: " + "; ".join(approvals) + "."


def access(deps: Deps) -> Access:
    return deps.config.commands.deploy


def what(req: Request, web_base: str) -> str:
    """A deploy in a few words: "deploy of run `123` → *production*"."""
    run = escape_mrkdwn(str(req.run_ref or "?"))[:60]
    return f"deploy of run `{run}` → *{escape_mrkdwn(req.environment or '?')}*"


def rerun_text(req: Request) -> str | None:
    """`/deploy` text that asks for the same deploy again (not for a run GitHub held: its
    run id names the deploy run itself, not what to deploy)."""
    if req.trigger == GATE:
        return None
    if req.run_ref and req.environment:
        return f"{req.repo}@{req.run_ref} {req.environment}"
    return None


def deploy_status(deps: Deps, text: str, channel_id: str) -> str:
    """The newest deploys started in this channel, all or to one environment (only this
    channel's: a listing must not show what was asked in a private channel)."""
    text = text.strip()
    if not text:
        locked = locks.status_lines(deps, channel_id)
        reqs = _deploys(deps, channel_id=channel_id)
        listing = status_list(
            "Latest deploys in this channel",
            reqs,
            empty="None yet: start one with `/deploy <run-id> [environment]`.",
            web_base=deps.web_base,
        )
        return f"{locked}\n{listing}" if locked else listing
    envs = deps.config.commands.deploy.environments
    env = {e.lower(): e for e in envs}.get(text.split()[0].lower())
    if env is None:
        known = ", ".join(f"`{e}`" for e in envs)
        return (
            f":warning: `{escape_mrkdwn(text[:60])}` is not an environment I deploy to. "
            f"Known environments: {known}.\n*Usage:* `/deploy status [environment]`."
        )
    reqs = _deploys(deps, channel_id=channel_id, environment=env)
    listing = status_list(
        f"Latest deploys to {env} from this channel",
        reqs,
        empty=f"None yet: start one with `/deploy <run-id> {env}`.",
        web_base=deps.web_base,
    )
    locked = locks.status_lines(deps, channel_id, env)
    return f"{locked}\n{listing}" if locked else listing


def _deploys(deps: Deps, *, channel_id: str, environment: str | None = None) -> list[Request]:
    """The newest deploys of both kinds (runs and registered model versions), newest first."""
    found = [
        req
        for kind in DEPLOY_KINDS
        for req in deps.store.find(
            kind=kind, channel_id=channel_id, environment=environment, limit=LIMIT
        )
    ]
    return sorted(found, key=lambda r: r.created_at, reverse=True)[:LIMIT]
