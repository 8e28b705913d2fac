"""Who may approve or reject a deploy (approvers, usergroups, self-approval, GitHub permission)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.config import Access, ApprovalPolicy
from bot.deps import Deps
from bot.github import GitHubError
from bot.model import Request
from bot.slacktext import escape_mrkdwn
from handlers.common import count_command, github_permission_refusal, membership
from handlers.deploy.facts import REGISTRY_USER

# Said on the card, the ack and the audit when an environment has `approval: none`.
NO_APPROVAL = "no approval required by config"


def who_can_approve(policy: ApprovalPolicy, *, exclude: str | None = None) -> str:
    people = [f"<@{u}>" for u in policy.approvers if u != exclude]
    groups = [f"members of <!subteam^{g}>" for g in policy.approver_usergroups]
    names = people + groups
    if not names:
        return "nobody else"
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def excluded_self(policy: ApprovalPolicy, requester: str) -> str | None:
    """The requester, when the policy does not let them approve their own deploy."""
    return None if policy.allow_self_approval else requester


def _is_listed(deps: Deps, policy: ApprovalPolicy, user_id: str) -> bool:
    """A listed approver, or a member of an approver usergroup (a failed lookup: not listed)."""
    return membership(deps, user_id, policy.approvers, policy.approver_usergroups).listed


def approval_refusal(
    deps: Deps, req: Request, policy: ApprovalPolicy | None, user_id: str
) -> str | None:
    """Why this person may not approve this request, or None when they may."""
    env = req.environment or "?"
    if policy is None:
        return f"*{env}*: {NO_APPROVAL}, so there is nothing to approve."
    if not _is_listed(deps, policy, user_id):
        return (
            f"You cannot approve deploys to *{env}* (rule `approvers` / `approver_usergroups`). "
            f"{capital(who_can_approve(policy, exclude=excluded_self(policy, req.user_id)))} can."
        )
    if user_id and user_id == req.user_id and not policy.allow_self_approval:
        return (
            "You asked for this deploy, so someone else must approve it (rule "
            f"`allow_self_approval: false`): {who_can_approve(policy, exclude=user_id)}."
        )
    if policy.require_github_permission:
        rule = Access(require_github_permission=policy.require_github_permission)
        try:
            refusal = github_permission_refusal(deps, rule, req.repo, user_id)
        except GitHubError as exc:
            return f"I could not check your GitHub permission ({exc.message}). Try again."
        if refusal:
            return f"To approve: {refusal}"
    return None


def rejection_refusal(
    deps: Deps, req: Request, policy: ApprovalPolicy | None, user_id: str
) -> str | None:
    """The requester may withdraw; approvers may reject. Everyone else is told who can."""
    if (user_id and user_id == req.user_id) or (
        policy is not None and _is_listed(deps, policy, user_id)
    ):
        return None
    who = who_can_approve(policy) if policy else "nobody"
    asker = (
        f"<@{req.user_id}> (who asked) or " if req.user_id and req.user_id != REGISTRY_USER else ""
    )
    return (
        f"Only {asker}an approver ({who}) can reject this deploy "
        "(rule `approvers` / `approver_usergroups`)."
    )


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def policy_of(deps: Deps, req: Request) -> ApprovalPolicy | None:
    return deps.config.commands.deploy.policy_for(req.environment or "")


def approved_by(req: Request, required: int, approvals: list[str]) -> list[str]:
    """Who decided, in approval order: the click that completed the approval plus the earliest
    other approvals (a concurrent click that came too late is recorded, but not counted)."""
    if not req.decided_by:
        return []
    others = [u for u in approvals if u != req.decided_by][: max(required - 1, 0)]
    chosen = [u for u in approvals if u in others or u == req.decided_by]
    return chosen if req.decided_by in chosen else [*chosen, req.decided_by]


def may_cancel(deps: Deps, req: Request, user_id: str) -> bool:
    """Besides the requester (always), whoever may reject the deploy may cancel it."""
    policy = policy_of(deps, req)
    return policy is not None and rejection_refusal(deps, req, policy, user_id) is None


def unknown_environment(deps: Deps, given: str | None, ack: Callable[..., Any]) -> None:
    """Answer a deploy command that named an environment chatops.yml does not know."""
    count_command(deps, "deploy", "usage_error", why="unknown_environment")
    known = ", ".join(f"`{e}`" for e in deps.config.commands.deploy.environments)
    ack(
        text=f":warning: `{escape_mrkdwn(str(given))[:80]}` is not an environment I deploy to. "
        f"Known environments: {known} (`commands.deploy.environments` in chatops.yml).",
        response_type="ephemeral",
    )
