"""Checks every command shares: who may run it, how often, and in which repository."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bot import inline, logs
from bot.config import Access
from bot.deps import Deps
from bot.model import NewRequest, Request
from bot.refs import UsageError
from bot.slack import SlackFailure
from bot.slacktext import escape_mrkdwn
from bot.store import OverLimit

log = logging.getLogger(__name__)


def count_command(deps: Deps, command: str, outcome: str, *, why: str | None = None) -> None:
    """chatops_commands_total{command, outcome}: help, status, accepted, duplicate, refused,
    rate_limited, usage_error, already_running (and for mentions: the word, e.g.
    command="mention rerun").

    Also the log's "command answered" line, with `reason`: `why` (a rule's name), or the name
    of the UsageError being handled, or the rate limit's rule — never the text typed.
    """
    if deps.metrics is not None:
        deps.metrics.commands.labels(command, outcome).inc()
    if why is None and outcome == "usage_error":
        handling = sys.exc_info()[1]
        why = handling.name if isinstance(handling, UsageError) else None
    if why is None and outcome == "rate_limited":
        why = "rate_limits.commands_per_minute"
    extra = {"command": command, "outcome": outcome}
    log.info("command answered", extra={**extra, **({"reason": why} if why else {})})


_RULES = re.compile(r"\brules? `([^`]+)`(?: / `([^`]+)`)?")


def rule_of(refusal: str) -> str | None:
    """The rule(s) a refusal text names, e.g. `commands.deploy.allowed_channels` (pure)."""
    m = _RULES.search(refusal)
    return "/".join(g for g in m.groups() if g) if m else None


def resolve_repo(deps: Deps, explicit: str | None, channel_id: str) -> str:
    repo = explicit or deps.config.repository_for(channel_id)
    if not repo:
        raise UsageError(
            "No repository given and none is configured for this channel. Name it, e.g. "
            "`owner/repo#42`, or set `repositories.default` / `repositories.channels` in "
            "chatops.yml."
        )
    if not deps.config.repositories.permits(repo):
        # Refused before any GitHub call: the App may be installed on repositories that the
        # operator never meant this bridge to act on.
        raise UsageError(
            f"`{escape_mrkdwn(repo)}` is not a repository this bridge works on (setting "
            "`repositories.allowed`, besides `repositories.default` and `repositories.channels`, "
            "in chatops.yml). Ask an admin of this bridge to add it there."
        )
    return repo


@dataclass(frozen=True)
class Membership:
    """Whether a person is one of `users` or in one of `groups`; `unchecked`: the groups whose
    lookup failed before the person was found (group id, Slack's error)."""

    listed: bool
    unchecked: tuple[tuple[str, str], ...] = ()


def membership(deps: Deps, user_id: str, users: Sequence[str], groups: Sequence[str]) -> Membership:
    """The one check of "this user, or a member of these usergroups" (command access rules
    and deploy approvers alike). Slack's lookups are bounded and cached (bot/slack.py)."""
    if user_id in users:
        return Membership(True)
    unchecked: list[tuple[str, str]] = []
    for group in groups:
        try:
            if user_id in deps.slack.usergroup_members(group):
                return Membership(True)
        except SlackFailure as exc:
            log.warning("usergroup lookup failed", extra={"group": group, "error": exc.error})
            unchecked.append((group, exc.error))
    return Membership(False, tuple(unchecked))


def who_can(access: Access) -> str:
    parts = []
    if access.allowed_users:
        parts.append(", ".join(f"<@{u}>" for u in access.allowed_users))
    if access.allowed_usergroups:
        parts.append(", ".join(f"<!subteam^{g}>" for g in access.allowed_usergroups))
    return " or ".join(parts) or "an admin of this bridge"


def access_refusal(
    deps: Deps, command: str, access: Access, user_id: str, channel_id: str
) -> str | None:
    """Why this user may not run the command here, or None when allowed (Slack-side rules)."""
    if access.allowed_channels and channel_id not in access.allowed_channels:
        where = ", ".join(f"<#{c}>" for c in access.allowed_channels)
        return (
            f"`/{command}` is not enabled in this channel (rule "
            f"`commands.{command}.allowed_channels`). Use it in {where}, or ask an admin of this "
            "bridge to add this channel in chatops.yml."
        )
    if not access.allowed_users and not access.allowed_usergroups:
        return None
    found = membership(deps, user_id, access.allowed_users, access.allowed_usergroups)
    if found.listed:
        return None
    unchecked = [f"<!subteam^{g}> (Slack answered `{error}`)" for g, error in found.unchecked]
    slow = any(e.startswith("connection") or e == "ratelimited" for _, e in found.unchecked)
    text = (
        f"You are not allowed to run `/{command}` (rules `commands.{command}.allowed_users` / "
        f"`allowed_usergroups`). Ask {who_can(access)} to run it, or an admin of this bridge to "
        "add you in chatops.yml."
    )
    if unchecked:
        # Not a silent no: the person and the admin learn the check itself failed.
        why = (
            "Slack did not answer in time: please try again in a minute."
            if slow
            else "an admin must make sure the app has the `usergroups:read` scope."
        )
        text += f"\nI could not check your membership of {', '.join(unchecked)}; {why}"
    return text


def rate_limit_text(deps: Deps) -> str:
    limit = deps.config.rate_limits.commands_per_minute
    return (
        f"You ran {limit} commands in the last minute, which is this bridge's limit "
        "(rule `rate_limits.commands_per_minute`). Try again in a minute; an admin of this "
        "bridge can raise the limit in chatops.yml."
    )


def rate_refusal(deps: Deps, user_id: str) -> str | None:
    """An early count, NOT atomic: a parallel burst passes it together. Commands that store
    with `create_request(per_minute=...)` (see rate_limited) skip it: the store enforces it."""
    limit = deps.config.rate_limits.commands_per_minute
    if deps.store.count_recent(user_id, deps.clock() - 60) >= limit:
        return rate_limit_text(deps)
    return None


def rate_limited(deps: Deps, command: str, ack: Callable[..., Any]) -> None:
    """Answer a command that create_request refused with OverLimit."""
    count_command(deps, command, "rate_limited")
    ack(text=rate_limit_text(deps), response_type="ephemeral")


def github_permission_refusal(deps: Deps, access: Access, repo: str, user_id: str) -> str | None:
    """GitHub-side rule: the user's linked GitHub login needs a permission on the repository.

    Calls GitHub, so it runs off the request thread (after ack()).
    """
    needed = access.require_github_permission
    if needed is None:
        return None
    login = deps.config.github_users.get(user_id)
    if login is None:
        return (
            f"This command needs `{needed}` permission on {repo} (rule "
            "`require_github_permission`), and your Slack account is not linked to a GitHub "
            f"login. Ask an admin of this bridge to add `{user_id}: <your GitHub login>` under "
            "`github_users` in chatops.yml."
        )
    order = ["none", "read", "triage", "write", "maintain", "admin"]
    have = deps.github.permission(repo, login)
    if order.index(have if have in order else "none") < order.index(needed):
        return (
            f"GitHub user `{login}` has `{have}` permission on {repo}; this command needs "
            f"`{needed}` (rule `require_github_permission`). A repository admin can grant it."
        )
    return None


def refused(
    deps: Deps,
    command: str,
    access: Access,
    user_id: str,
    channel_id: str,
    ack: Callable[..., Any],
    *,
    check_rate: bool = True,
) -> bool:
    """Answer a person who may not run `command` here, or has run too many: whether they were.

    check_rate=False for a command whose insert enforces the limit atomically (one query less
    before the ack, and the only check that holds under a burst).
    """
    refusal, outcome = access_refusal(deps, command, access, user_id, channel_id), "refused"
    if refusal is None and check_rate:
        refusal, outcome = rate_refusal(deps, user_id), "rate_limited"
    if refusal is None:
        return False
    count_command(deps, command, outcome, why=rule_of(refusal))
    ack(text=refusal, response_type="ephemeral")
    return True


# -- what every slash command of a kind does before and after its own checks -------------------


@dataclass(frozen=True)
class Invocation:
    """A slash command as a kind reads it (Slack's payload, `command` in Bolt)."""

    text: str
    user_id: str
    channel_id: str
    response_url: str | None
    # Slack's trigger_id is unique per invocation: a retried delivery maps to one request.
    idempotency_key: str


def admitted(
    deps: Deps, command: str, access: Access, payload: dict[str, Any], ack: Callable[..., Any]
) -> Invocation | None:
    """The invocation of `/command`, or None when its sender may not run it here (told so).

    The rate limit is not counted here: `accept` stores with it, in the same statement as the
    insert (an early count would let a parallel burst through together).
    """
    inv = Invocation(
        text=str(payload.get("text") or "").strip(),
        user_id=str(payload.get("user_id") or ""),
        channel_id=str(payload.get("channel_id") or ""),
        response_url=payload.get("response_url"),
        idempotency_key=f"slack:{payload.get('trigger_id') or payload.get('response_url')}",
    )
    if refused(deps, command, access, inv.user_id, inv.channel_id, ack, check_rate=False):
        return None
    return inv


def answer_usage(
    deps: Deps, command: str, exc: UsageError, usage: str, ack: Callable[..., Any]
) -> None:
    """Answer command text that could not be read: what was wrong, then how to write it."""
    count_command(deps, command, "usage_error", why=exc.name)
    ack(text=f":warning: {exc}\n{usage}", response_type="ephemeral")


def accept(
    deps: Deps,
    command: str,
    new: NewRequest,
    ack: Callable[..., Any],
    said: Callable[[Request], str],
    *,
    audit_action: str | None = None,
    audit_detail: str = "",
) -> Request | None:
    """Store the request (rate-limited in the insert), ack with `said(req)`, and hand a new
    request to the job pool (a retried delivery finds the stored one and is only answered)."""

    def store() -> tuple[Request, bool]:
        return deps.store.create_request(
            new,
            audit_action=audit_action,
            audit_detail=audit_detail,
            per_minute=deps.config.rate_limits.commands_per_minute,
        )

    def answer(stored: Callable[[], tuple[Request, bool]]) -> Request | None:
        try:
            req, created = stored()
        except OverLimit:
            rate_limited(deps, command, ack)
            return None
        logs.bind(request_id=req.id)
        count_command(deps, command, "accepted" if created else "duplicate")
        ack(text=said(req), response_type="ephemeral")
        if created:
            deps.jobs.submit(req.id)
        return req

    # On the event loop (bot/inline.py) the write runs on the writer thread after the
    # listener returns, and `answer` then; on a thread, both now.
    return inline.write_then(store, answer)
