"""Environment locks: `/deploy lock <environment> [reason]`, `/deploy unlock <environment>`,
`/deploy locks`. A locked environment refuses `/deploy` (and, through lock_refusal_for_gate,
GitHub's protection-rule requests) for everyone but the holder; an expired lock stops blocking
at once, and a housekeeping job removes it and says so where it was taken.

Locks are per repository + environment: the repository `/deploy` would use in the channel
(or `owner/repo` named before the environment). Who may lock: the environment's approvers (with
`approval: none`, whoever may run `/deploy` there); who may unlock: those and the holder.
The reason is typed by a person: escaped wherever it is shown, never logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bot.deps import Deps
from bot.refs import UsageError, parse_lock_args
from bot.slack import SlackFailure
from bot.slacktext import INVISIBLE, escape_mrkdwn, iso_utc, slack_date
from bot.store import EnvLock
from handlers.common import access_refusal, count_command, membership, resolve_repo, rule_of
from handlers.deploy.policy import who_can_approve

if TYPE_CHECKING:
    from bot.scheduler import Housekeeping

log = logging.getLogger(__name__)

Ack = Callable[..., Any]

LOCK_USAGE = (
    "`/deploy lock [owner/repo] <environment> [reason]` stops deploys to an environment until "
    "`/deploy unlock [owner/repo] <environment>`; `/deploy locks` lists the locks. "
    "Approvers of the environment may lock and unlock it, and whoever locked it may unlock it."
)
EXPIRY_JOB = "deploy-lock-expiry"
EXPIRY_EVERY_SECONDS = 60
# A notice Slack cannot take (an outage) is retried at each run, for at most this long after
# the expiry; the lock stopped blocking at its expiry either way.
NOTICE_HORIZON_SECONDS = 24 * 3600
MAX_LISTED = 20


# -- words ------------------------------------------------------------------------------------


def environment_named(deps: Deps, given: str) -> str | None:
    """The configured environment a name means (GitHub compares names case-insensitively)."""
    envs = deps.config.commands.deploy.environments
    return {name.lower(): name for name in envs}.get(given.lower())


def _env(deps: Deps, lock: EnvLock) -> str:
    return escape_mrkdwn(environment_named(deps, lock.environment) or lock.environment)


def _reason(lock: EnvLock) -> str:
    return f"“{escape_mrkdwn(lock.reason)}”" if lock.reason else "_no reason given_"


def _since(lock: EnvLock) -> str:
    text = f"since {slack_date(lock.locked_at)}"
    if lock.expires_at is not None:
        text += f", until {slack_date(lock.expires_at)}"
    return text


def unlock_command(deps: Deps, lock: EnvLock, channel_id: str) -> str:
    """`/deploy unlock production`, naming the repository when this channel uses another."""
    here = (deps.config.repository_for(channel_id) or "").lower()
    repo = "" if here == lock.repo else f"{lock.repo} "
    return f"`/deploy unlock {escape_mrkdwn(repo)}{_env(deps, lock)}`"


def who_may_lock(deps: Deps, environment: str) -> str:
    """Who may lock (and unlock) an environment, in words."""
    policy = deps.config.commands.deploy.policy_for(environment)
    if policy is None:
        return "whoever may run `/deploy` here (the environment needs no approval)"
    return f"its approvers ({who_can_approve(policy)})"


def describe(deps: Deps, lock: EnvLock) -> str:
    """One line: *production* in `acme/ml-models`: locked by @x since …: “reason”."""
    return (
        f"• :lock: *{_env(deps, lock)}* in `{escape_mrkdwn(lock.repo)}`: locked by "
        f"<@{lock.user_id}> {_since(lock)}: {_reason(lock)}"
    )


def lock_lines(deps: Deps, locks: list[EnvLock], *, budget: int = 2900) -> str:
    """One line per lock, oldest first, within `budget` characters (a section holds 3,000:
    a line is never cut, which could break a mention or a date in half)."""
    lines: list[str] = []
    size = 0
    for lock in locks[:MAX_LISTED]:
        line = describe(deps, lock)
        if size + len(line) > budget:
            break
        lines.append(line)
        size += len(line) + 1
    if len(lines) < len(locks):
        lines.append(f"… and {len(locks) - len(lines)} more")
    return "\n".join(lines)


def locks_text(deps: Deps) -> str:
    """`/deploy locks`: every lock in force (a lock binds everyone who deploys there)."""
    locks = deps.store.active_locks()
    if not locks:
        return f"*Environment locks*\nNo environment is locked.\n{LOCK_USAGE}"
    return f"*Environment locks*\n{lock_lines(deps, locks)}\n{LOCK_USAGE}"


def status_lines(deps: Deps, channel_id: str, environment: str | None = None) -> str:
    """For `/deploy status [environment]`: the locks of this channel's repository (on that
    environment), or "" when none."""
    repo = deps.config.repository_for(channel_id)
    locks = deps.store.active_locks(repo) if repo else []
    if environment is not None:
        locks = [lock for lock in locks if lock.environment == environment.lower()]
    return f"*Locked environments*\n{lock_lines(deps, locks)}" if locks else ""


# -- checks -----------------------------------------------------------------------------------


def permission_refusal(
    deps: Deps, environment: str, user_id: str, channel_id: str, *, verb: str
) -> str | None:
    """Why this person may not lock/unlock the environment (holders aside), or None."""
    cmd = deps.config.commands.deploy
    policy = cmd.policy_for(environment)
    if policy is None:
        refusal = access_refusal(deps, "deploy", cmd, user_id, channel_id)
        if refusal is None:
            return None
        return (
            f"*{environment}* needs no approval, so whoever may run `/deploy` may {verb} it. "
            + refusal
        )
    found = membership(deps, user_id, policy.approvers, policy.approver_usergroups)
    if found.listed:
        return None
    text = (
        f"You cannot {verb} *{environment}*: only {who_may_lock(deps, environment)} can "
        "(rule `approvers` / `approver_usergroups`)."
    )
    if found.unchecked:
        groups = ", ".join(f"<!subteam^{g}> (Slack answered `{e}`)" for g, e in found.unchecked)
        text += f"\nI could not check your membership of {groups}; please try again in a minute."
    return text


def deploy_refusal(
    deps: Deps, repo: str, environment: str, user_id: str, channel_id: str
) -> str | None:
    """Why `/deploy` to this environment is refused (someone else's lock), or None."""
    lock = deps.store.lock_of(repo, environment)
    if lock is None or lock.user_id == user_id:
        return None
    return (
        f":lock: Deploys to *{_env(deps, lock)}* in `{escape_mrkdwn(lock.repo)}` are locked by "
        f"<@{lock.user_id}> {_since(lock)}: {_reason(lock)}.\n"
        f"To deploy, ask <@{lock.user_id}> (who locked it) or "
        f"{who_may_lock(deps, environment)} to run {unlock_command(deps, lock, channel_id)}. "
        "Other environments are not affected."
    )


def refused_by_lock(
    deps: Deps, repo: str, environment: str, user_id: str, channel_id: str, ack: Callable[..., Any]
) -> bool:
    """Answer a deploy command to an environment someone else locked (ephemeral); True if so."""
    locked = deploy_refusal(deps, repo, environment, user_id, channel_id)
    if locked is None:
        return False
    count_command(deps, "deploy", "refused", why="environment_locked")
    ack(text=locked, response_type="ephemeral")
    return True


def lock_refusal_for_gate(
    deps: Deps,
    repo: str,
    environment: str,
    github_login: str | None,
    slack_user: str | None = None,
) -> str | None:
    """For GitHub's protection-rule gate: None when the environment is free, `slack_user` (the
    Slack requester of the /deploy the held run belongs to) holds the lock, or `github_login`
    is the holder's linked login (`github_users`); else the comment to send GitHub with
    `rejected`, e.g. "locked by @alice: release freeze (since …)"."""
    lock = deps.store.lock_of(repo, environment)
    if lock is None or (slack_user is not None and slack_user == lock.user_id):
        return None
    holder = deps.config.github_users.get(lock.user_id)
    if holder is not None and github_login is not None and holder.lower() == github_login.lower():
        return None
    who = f"@{holder}" if holder else f"Slack user {lock.user_id}"
    # Plain text for GitHub, not mrkdwn; invisible characters dropped as everywhere.
    reason = re.sub(f"[{INVISIBLE}]", "", lock.reason) or "no reason given"
    name = environment_named(deps, lock.environment) or environment
    return (
        f"locked by {who}: {reason} (since {iso_utc(lock.locked_at)}; "
        f"unlock in Slack with /deploy unlock {name})"
    )


# -- the commands -----------------------------------------------------------------------------


def handle_command(deps: Deps, command: dict[str, Any], ack: Ack) -> None:
    """`/deploy lock|unlock|locks …`: answered before the ack returns (no GitHub call)."""
    text = str(command.get("text") or "").strip()
    user_id = str(command.get("user_id") or "")
    channel_id = str(command.get("channel_id") or "")
    try:
        args = parse_lock_args(text)
        if args.action == "locks":
            count_command(deps, "deploy", "status")
            ack(text=locks_text(deps), response_type="ephemeral")
            return
        repo = resolve_repo(deps, args.repo, channel_id)
    except UsageError as exc:
        count_command(deps, "deploy", "usage_error")
        ack(text=f":warning: {exc}\n*Usage:* {LOCK_USAGE}", response_type="ephemeral")
        return
    assert args.environment is not None  # parse_lock_args: lock and unlock name one
    environment = environment_named(deps, args.environment)
    if environment is None:
        count_command(deps, "deploy", "usage_error", why="unknown_environment")
        known = ", ".join(f"`{e}`" for e in deps.config.commands.deploy.environments)
        ack(
            text=f":warning: `{escape_mrkdwn(args.environment[:80])}` is not an environment I "
            f"deploy to. Known environments: {known}.\n*Usage:* {LOCK_USAGE}",
            response_type="ephemeral",
        )
        return
    if args.action == "lock":
        _lock(deps, repo, environment, args.reason, user_id, channel_id, ack)
    else:
        _unlock(deps, repo, environment, user_id, channel_id, ack)


def _refuse(deps: Deps, refusal: str, ack: Ack) -> None:
    count_command(deps, "deploy", "refused", why=rule_of(refusal))
    ack(text=f":no_entry: {refusal}", response_type="ephemeral")


def _lock(
    deps: Deps, repo: str, env: str, reason: str, user_id: str, channel_id: str, ack: Ack
) -> None:
    refusal = permission_refusal(deps, env, user_id, channel_id, verb="lock")
    if refusal is not None:
        deps.store.audit_lock_refusal(actor=user_id, repo=repo, environment=env, what="lock")
        _refuse(deps, refusal, ack)
        return
    hours = deps.config.commands.deploy.lock_expires_after_hours
    attempt = deps.store.take_lock(
        repo=repo,
        environment=env,
        user_id=user_id,
        channel_id=channel_id,
        reason=reason,
        expires_at=deps.clock() + hours * 3600 if hours else None,
    )
    lock = attempt.lock
    if not attempt.taken:
        count_command(deps, "deploy", "refused", why="already_locked")
        by = "you" if lock.user_id == user_id else f"<@{lock.user_id}>"
        unlock = unlock_command(deps, lock, channel_id)
        ack(
            text=f":lock: *{env}* in `{escape_mrkdwn(lock.repo)}` is already locked by {by} "
            f"{_since(lock)}: {_reason(lock)}. To lock it anew, {unlock} first.",
            response_type="ephemeral",
        )
        return
    count_command(deps, "deploy", "accepted")
    until = (
        f" or until it expires {slack_date(lock.expires_at)}" if lock.expires_at is not None else ""
    )
    said = (
        f":lock: <@{user_id}> locked deploys to *{env}* in `{escape_mrkdwn(lock.repo)}`: "
        f"{_reason(lock)}. `/deploy` to *{env}* is refused for everyone else until "
        f"{unlock_command(deps, lock, channel_id)}{until}."
    )
    if attempt.replaced is not None:
        said += f"\n(The lock <@{attempt.replaced.user_id}> took had expired.)"
    # In the channel: everyone who might deploy there should see the lock (and its reason).
    ack(text=said, response_type="in_channel")


def _unlock(deps: Deps, repo: str, env: str, user_id: str, channel_id: str, ack: Ack) -> None:
    lock = deps.store.lock_of(repo, env)
    if lock is None:
        count_command(deps, "deploy", "refused", why="not_locked")
        ack(
            text=f"*{env}* in `{escape_mrkdwn(repo.lower())}` is not locked; deploys to it need "
            "only their approval.",
            response_type="ephemeral",
        )
        return
    if lock.user_id != user_id:
        refusal = permission_refusal(deps, env, user_id, channel_id, verb="unlock")
        if refusal is not None:
            deps.store.audit_lock_refusal(actor=user_id, repo=repo, environment=env, what="unlock")
            _refuse(deps, f"{refusal} <@{lock.user_id}> locked it and may unlock it too.", ack)
            return
    if not deps.store.release_lock(lock, actor=user_id):
        count_command(deps, "deploy", "refused", why="not_locked")
        ack(text=f"*{env}* was unlocked meanwhile.", response_type="ephemeral")
        return
    count_command(deps, "deploy", "accepted")
    ack(
        text=f":unlock: <@{user_id}> unlocked *{env}* in `{escape_mrkdwn(lock.repo)}` (locked by "
        f"<@{lock.user_id}> {slack_date(lock.locked_at)}: {_reason(lock)}). Deploys to it are "
        "possible again.",
        response_type="in_channel",
    )


# -- expiry -----------------------------------------------------------------------------------


def expire_locks(deps: Deps) -> int:
    """The housekeeping job: remove expired locks (audited once), each announced once in the
    channel where it was taken. Returns how many it removed."""
    removed = 0
    now = deps.clock()
    for lock in deps.store.expired_locks():
        key = f"lock-expired:{lock.lock_id}"
        if deps.store.first_time(key):
            text = (
                f":unlock: The lock on *{_env(deps, lock)}* in `{escape_mrkdwn(lock.repo)}` that "
                f"<@{lock.user_id}> took {slack_date(lock.locked_at)} ({_reason(lock)}) has "
                "expired (`commands.deploy.lock_expires_after_hours`). Deploys to it are possible "
                "again."
            )
            try:
                deps.slack.post(lock.channel_id, text)
            except SlackFailure as exc:
                waited = now - (lock.expires_at or now)
                if exc.is_outage and waited < NOTICE_HORIZON_SECONDS:
                    deps.store.forget(key)  # the next run says it (the lock blocks no more)
                    log.warning("lock expiry notice waits for Slack", extra={"error": exc.error})
                    continue
                log.warning("could not announce a lock's expiry", extra={"error": exc.error})
        if deps.store.release_lock(lock, actor="bridge", expired=True):
            removed += 1
    return removed


def install(hk: Housekeeping, deps: Deps) -> None:
    """The lock expiry job (fixed id; state in the database, so a restart catches up)."""
    hk.add_interval(EXPIRY_JOB, lambda: expire_locks(deps), EXPIRY_EVERY_SECONDS, now=True)
