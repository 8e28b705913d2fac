"""`/deploy <run-id> [environment]`: parse, check, store the request, ack; its help and status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot import logs
from bot.config import Access, ApprovalPolicy
from bot.deps import Deps
from bot.model import APPROVED, PENDING_APPROVAL, NewRequest, Request
from bot.refs import UsageError, is_model_ref, parse_deploy_args
from bot.slacktext import escape_mrkdwn
from bot.store import OverLimit
from handlers.common import count_command, rate_limited, refused, resolve_repo
from handlers.deploy.facts import DEPLOY_KINDS
from handlers.deploy.models import handle_model_command
from handlers.deploy.policy import NO_APPROVAL, excluded_self, who_can_approve
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
    "`/deploy status [environment]` lists recent deploys; `/deploy help` shows this."
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
    text = str(command.get("text") or "").strip()
    user_id = str(command.get("user_id") or "")
    channel_id = str(command.get("channel_id") or "")
    cmd = deps.config.commands.deploy
    # The rate limit is enforced by create_request below, in the same statement as the insert
    # (an early count would let a parallel burst through together).
    if refused(deps, "deploy", cmd, user_id, channel_id, ack, check_rate=False):
        return None
    if is_model_ref(text):  # `/deploy model:<name>@<version|alias>`: a registered model
        return handle_model_command(deps, command, ack)
    try:
        args = parse_deploy_args(text, allowed_hosts=deps.web_hosts)
        repo = resolve_repo(deps, args.repo, channel_id)
    except UsageError as exc:
        count_command(deps, "deploy", "usage_error")
        ack(text=f":warning: {exc}\n{usage(deps, channel_id)}", response_type="ephemeral")
        return None
    environment = _environment(deps, args.environment)
    if environment is None:
        count_command(deps, "deploy", "usage_error", why="unknown_environment")
        known = ", ".join(f"`{e}`" for e in cmd.environments)
        ack(
            text=f":warning: `{args.environment}` is not an environment I deploy to. "
            f"Known environments: {known} (`commands.deploy.environments` in chatops.yml).",
            response_type="ephemeral",
        )
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
    policy = cmd.policy_for(environment)
    try:
        req, created = _store(deps, command, repo, args.run_id, environment, policy)
    except OverLimit:
        rate_limited(deps, "deploy", ack)
        return None
    logs.bind(request_id=req.id)
    count_command(deps, "deploy", "accepted" if created else "duplicate")
    what = f"deploy of run `{req.run_ref}` to *{req.environment}* in `{req.repo}`"
    if req.status == PENDING_APPROVAL and policy is not None:
        who = who_can_approve(policy, exclude=excluded_self(policy, user_id))
        said = (
            f":raised_hand: Asked for approval: {what} (request `{req.id}`). The approval card "
            f"will appear in this channel; {who} can "
            f"approve it within {policy.expires_after_minutes} minutes."
        )
    else:
        said = (
            f":rocket: On it: {what} (request `{req.id}`); {NO_APPROVAL} "
            "(`approval: none`). I'll follow it in a thread in this channel."
        )
    ack(text=said, response_type="ephemeral")
    if created:
        deps.jobs.submit(req.id)
    return req


def _store(
    deps: Deps,
    command: dict[str, Any],
    repo: str,
    run_id: str,
    environment: str,
    policy: ApprovalPolicy | None,
) -> tuple[Request, bool]:
    cmd = deps.config.commands.deploy
    user_id = str(command.get("user_id") or "")
    channel_id = str(command.get("channel_id") or "")
    now = deps.clock()
    return deps.store.create_request(
        NewRequest(
            kind="deploy",
            repo=repo,
            trigger="dispatch",
            run_ref=run_id,
            environment=environment,
            event_type=cmd.event_type,
            channel_id=channel_id,
            user_id=user_id,
            response_url=command.get("response_url"),
            status=PENDING_APPROVAL if policy else APPROVED,
            expires_at=now + policy.expires_after_minutes * 60 if policy else None,
            idempotency_key=f"slack:{command.get('trigger_id') or command.get('response_url')}",
        ),
        audit_action="deploy.requested",
        audit_detail=f"{repo} run {run_id} to {environment}"
        + ("" if policy else f"; {NO_APPROVAL}"),
        per_minute=deps.config.rate_limits.commands_per_minute,
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
    """`/deploy` text that asks for the same deploy again."""
    if req.run_ref and req.environment:
        return f"{req.repo}@{req.run_ref} {req.environment}"
    return None


def deploy_status(deps: Deps, text: str, channel_id: str) -> str:
    """The newest deploys started in this channel, all or to one environment (only this
    channel's: a listing must not show what was asked in a private channel)."""
    text = text.strip()
    if not text:
        reqs = _deploys(deps, channel_id=channel_id)
        return status_list(
            "Latest deploys in this channel",
            reqs,
            empty="None yet: start one with `/deploy <run-id> [environment]`.",
            web_base=deps.web_base,
        )
    envs = deps.config.commands.deploy.environments
    env = {e.lower(): e for e in envs}.get(text.split()[0].lower())
    if env is None:
        known = ", ".join(f"`{e}`" for e in envs)
        return (
            f":warning: `{escape_mrkdwn(text[:60])}` is not an environment I deploy to. "
            f"Known environments: {known}.\n*Usage:* `/deploy status [environment]`."
        )
    reqs = _deploys(deps, channel_id=channel_id, environment=env)
    return status_list(
        f"Latest deploys to {env} from this channel",
        reqs,
        empty=f"None yet: start one with `/deploy <run-id> {env}`.",
        web_base=deps.web_base,
    )


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
