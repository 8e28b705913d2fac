"""`@chatops-bridge status | rerun | cancel | help` in a request's thread (slash commands cannot
be used in threads, so a mention is how people act on the request a thread belongs to)."""

from __future__ import annotations

import logging
import re
from typing import Any

from bot import logs
from bot.deps import Deps
from bot.messages import status_words
from bot.model import CANCELLED, OPEN_STATES, PENDING_APPROVAL, Request
from bot.slack import SlackFailure
from handlers import details, kinds, status
from handlers.common import count_command
from handlers.details import ThreadDetails
from handlers.help import help_text, short_help
from handlers.lifecycle import refresh_root, stop_runs

log = logging.getLogger(__name__)

WORDS = ("status", "rerun", "cancel", "help")
_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")


def mention_word(text: str) -> str:
    """The first word after the mentions, lower-cased ("" when there is none). Pure."""
    words = _MENTION.sub(" ", text or "").split()
    return words[0].lower().strip(".!?,:") if words else ""


def on_mention(deps: Deps, body: dict[str, Any], event: dict[str, Any]) -> None:
    """Slack retries an event without a 2xx answer in 3 s: the event id makes a repeat a no-op."""
    user_id = str(event.get("user") or "")
    channel_id = str(event.get("channel") or "")
    if not user_id or not channel_id:
        return
    event_id = str(body.get("event_id") or f"{channel_id}:{event.get('ts')}")
    key = f"slack-event:{event_id}"
    if not deps.store.first_time(key):
        return
    try:
        _act(deps, event_id, event, user_id, channel_id)
    except SlackFailure as exc:  # Slack refused our answer: its retry would be refused too
        log.warning("could not answer a mention", extra={"error": exc.error})
    except Exception:
        deps.store.forget(key)  # let Slack's retry try again
        raise


def _act(deps: Deps, event_id: str, event: dict[str, Any], user_id: str, channel_id: str) -> None:
    thread_ts = event.get("thread_ts")
    word = mention_word(str(event.get("text") or ""))
    req = deps.store.request_by_thread(channel_id, str(thread_ts)) if thread_ts else None
    if req is None:
        count_command(deps, "mention", "outside_request")
        _ephemeral(deps, channel_id, user_id, short_help(), thread_ts)
        return
    logs.bind(request_id=req.id)
    if word not in WORDS or word == "help":
        count_command(deps, "mention help", "ok")
        text = help_text(deps, user_id, req.channel_id)
        if word not in WORDS and word:
            text = f"I do not know `{word[:30]}`.\n\n{text}"
        _ephemeral(deps, channel_id, user_id, text, thread_ts)
        return
    if word == "status":
        count_command(deps, "mention status", "ok")
        msg = status.status_reply(req, deps.store.runs_of(req.id), web_base=deps.web_base)
        deps.slack.post(channel_id, msg["text"], blocks=msg["blocks"], thread_ts=req.root_ts)
    elif word == "rerun":
        rerun(deps, req, user_id, event_id)
    else:
        cancel(deps, req, user_id)


def _ephemeral(deps: Deps, channel_id: str, user_id: str, text: str, thread_ts: Any = None) -> None:
    try:
        deps.slack.ephemeral(channel_id, user_id, text, thread_ts=thread_ts or None)
    except SlackFailure as exc:
        log.warning("could not answer a mention", extra={"error": exc.error})


def _say(deps: Deps, req: Request, text: str) -> None:
    deps.slack.post(req.channel_id, text, thread_ts=req.root_ts)


def rerun(deps: Deps, req: Request, user_id: str, event_id: str) -> None:
    """The same request again, through the same code path as the slash command (its checks,
    its store.create_request and jobs.submit); the event id is its idempotency key."""
    kind = kinds.get(req.kind)
    text = kind.rerun_text(req)
    handle = kind.handle_command
    if text is None or handle is None:
        count_command(deps, "mention rerun", "refused")
        _ephemeral(
            deps,
            req.channel_id,
            user_id,
            f"I cannot run a `{req.kind}` request again from its thread.",
            req.root_ts,
        )
        return
    said: list[str] = []
    new = handle(
        deps,
        {
            "text": text,
            "user_id": user_id,
            "channel_id": req.channel_id,
            "trigger_id": f"event-{event_id}",
        },
        lambda text="", **_: said.append(str(text)),
    )
    answer = said[-1] if said else ""
    if new is None:  # refused (access, rate limit) or no longer valid: tell only the asker
        count_command(deps, "mention rerun", "refused")
        _ephemeral(deps, req.channel_id, user_id, answer, req.root_ts)
        return
    count_command(deps, "mention rerun", "accepted")
    _say(deps, req, f":repeat: <@{user_id}> asked for this again: request `{new.id}`.\n{answer}")


def _may_cancel(deps: Deps, req: Request, user_id: str) -> bool:
    return user_id == req.user_id or kinds.get(req.kind).may_cancel(deps, req, user_id)


def cancel(deps: Deps, req: Request, user_id: str) -> None:
    """Open → cancelled with one conditional update; then ask GitHub to stop its runs."""

    def nothing_done(outcome: str, said: str) -> None:
        count_command(deps, "mention cancel", outcome)
        _ephemeral(deps, req.channel_id, user_id, said, req.root_ts)

    if not req.is_open:
        ended = status_words(req.status)
        nothing_done(
            "already_final",
            f"Request `{req.id}` has already ended ({ended}); there is nothing to cancel.",
        )
        return
    if not _may_cancel(deps, req, user_id):
        who = f"<@{req.user_id}> (who asked)" + kinds.get(req.kind).cancel_who
        nothing_done("refused", f"Only {who} can cancel request `{req.id}`.")
        return
    # Not decided_by: that names who approved or rejected (deploy cards and replies say so).
    # answers_github: the worker tells GitHub's waiting protection rules (deploy/gate.py),
    # due in the same statement so a crash right after it cannot lose the answer.
    answers = kinds.get(req.kind).answers_github
    due: dict[str, Any] = {"answer_due": 1} if answers else {}
    if not deps.store.update(
        req.id,
        only_if_status=OPEN_STATES,
        status=CANCELLED,
        finished_at=deps.clock(),
        **due,
    ):
        ended = status_words((deps.store.get(req.id) or req).status)
        nothing_done(
            "already_final", f"Request `{req.id}` just ended ({ended}); nothing was cancelled."
        )
        return
    details.merge(deps, req.id, ThreadDetails(cancelled_by=user_id))
    was = "approval request" if req.status == PENDING_APPROVAL else "request"
    deps.store.audit(
        actor=user_id, action=f"{req.kind}.cancelled", outcome="cancelled", request_id=req.id
    )
    count_command(deps, "mention cancel", "cancelled")
    notes = [f":black_square_for_stop: <@{user_id}> cancelled this {was}."]
    notes += stop_runs(deps, req)
    refresh_root(deps, req)
    _say(deps, req, "\n".join(notes))
    if answers:
        deps.jobs.submit(req.id)
