"""The App Home tab: approvals waiting for this person, their recent requests, environment
locks, bridge health."""

from __future__ import annotations

import logging
from typing import Any

from bot import messages, slacktext
from bot.deps import Deps
from bot.github import GitHubError
from bot.model import Request
from bot.slack import SlackFailure
from bot.slacktext import slack_date
from handlers import kinds
from handlers.deploy import locks as env_locks
from handlers.status import request_line

log = logging.getLogger(__name__)

MAX_APPROVALS = 10
RECENT = 10
INSTALLATIONS_CACHE_SECONDS = 300.0

Block = dict[str, Any]


# -- pure rendering ---------------------------------------------------------------------------


def header(text: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": text[:150]}}


def health_lines(health: dict[str, Any], installations: str) -> str:
    db = health.get("database", "?")
    dot = ":large_green_circle:" if db == "ok" else ":red_circle:"
    lines = [f"{dot} Database: {db}"]
    age = health.get("last_webhook_age_seconds")
    mode = health.get("github_mode", "webhook")
    if mode == "poll":
        lines.append(":large_blue_circle: GitHub: polled (no webhooks in this mode)")
    elif age is None:
        lines.append(":white_circle: Last GitHub webhook: none received yet")
    else:
        lines.append(f":large_green_circle: Last GitHub webhook: {messages.duration(age)} ago")
    for peer in (health.get("peers") or {}).values():
        if isinstance(peer, dict) and peer.get("status") == "unavailable":
            # "GitHub: unavailable since 02:31 UTC, 3 units waiting" (work resumes by itself)
            lines.append(f":red_circle: {peer.get('summary', '')}; retrying on its own")
    lines.append(f":gear: Scheduler: {health.get('scheduler', '?')}")
    lines.append(f":key: GitHub App: {installations}")
    lines.append(f":inbox_tray: Work in flight: {health.get('queue_depth', 0)}")
    return "\n".join(lines)


def home_view(
    *,
    approvals: list[list[Block]],
    recent: list[Request],
    health: dict[str, Any],
    installations: str,
    now: float,
    web_base: str = "https://github.com",
    locked: str = "",
) -> dict[str, Any]:
    """The Home tab (≤ 100 blocks: two per approval, at most 10 of them, plus 15).
    `locked`: the environment locks in force, one line each ("" when none)."""
    blocks: list[Block] = [header("Waiting for your approval")]
    if approvals:
        for item in approvals[:MAX_APPROVALS]:
            blocks += item
    else:
        blocks.append(slacktext.context("Nothing is waiting for your approval."))
    blocks += [{"type": "divider"}, header("Your recent requests")]
    if recent:
        lines, size = [], 0
        for req in recent:
            line = request_line(req, web_base)
            if size + len(line) > 2900:  # one section holds 3,000 characters
                break
            lines.append(line)
            size += len(line) + 1
        blocks.append(slacktext.section("\n".join(lines)))
    else:
        blocks.append(
            slacktext.context("None yet. `/evaluate help` in a channel shows what you may run.")
        )
    blocks += [{"type": "divider"}, header("Locked environments")]
    blocks.append(
        slacktext.section(locked)
        if locked
        else slacktext.context("No environment is locked. `/deploy lock <environment>` locks one.")
    )
    blocks += [
        {"type": "divider"},
        header("Bridge health"),
        slacktext.section(health_lines(health, installations)),
        slacktext.context(
            f"Updated {slack_date(now)} · `/evaluate help` or `/deploy help` in a channel lists "
            "what you may run there."
        ),
    ]
    return {"type": "home", "blocks": blocks}


# -- gathering and publishing -----------------------------------------------------------------


def pending_for(deps: Deps, user_id: str) -> list[list[Block]]:
    """Requests waiting for this person's decision, as each kind finds them (deploys: pending
    approvals this person may give now and has not given yet), each drawn by its kind as a
    few blocks with its buttons (two per item: the view's 100-block limit holds)."""
    out: list[list[Block]] = []
    for kind in kinds.REGISTRY.all():
        if kind.awaiting is not None:
            out += kind.awaiting(deps, user_id)
    return out[:MAX_APPROVALS]


def installations_line(deps: Deps) -> str:
    """How many App installations GitHub lists; cached, as the tab opens often."""
    now = deps.clock()
    cached = deps.caches.installations
    if cached.value is not None and now - cached.at < INSTALLATIONS_CACHE_SECONDS:
        return cached.value
    try:
        n = len(deps.github.installations())
        line = f"{n} installation{'s' if n != 1 else ''} reachable"
    except GitHubError as exc:
        line = f"unreachable ({exc.message})"
    cached.at, cached.value = now, line
    return line


def build_home(deps: Deps, user_id: str) -> dict[str, Any]:
    health: dict[str, Any] = deps.health() if deps.health is not None else {}
    return home_view(
        approvals=pending_for(deps, user_id),
        recent=deps.store.find(user_id=user_id, limit=RECENT),
        health=health,
        installations=installations_line(deps),
        now=deps.clock(),
        web_base=deps.web_base,
        locked=env_locks.lock_lines(deps, deps.store.active_locks()),
    )


def publish(deps: Deps, user_id: str) -> None:
    deps.slack.publish_home(user_id, build_home(deps, user_id))


def on_home_opened(deps: Deps, event: dict[str, Any]) -> None:
    if event.get("tab", "home") != "home" or not event.get("user"):
        return
    publish(deps, str(event["user"]))


def after_click(deps: Deps, body: dict[str, Any], *, any_surface: bool = False) -> None:
    """After a decision made from the Home tab (or a modal, which may have been opened from
    it: any_surface), show that person the new state of their tab. Best effort."""
    if not any_surface and (body.get("container") or {}).get("type") != "view":
        return
    user_id = (body.get("user") or {}).get("id")
    if not user_id:
        return
    try:
        publish(deps, str(user_id))
    except SlackFailure as exc:
        log.warning("could not refresh the Home tab", extra={"error": exc.error})
