"""The thread of a request: its root message, replies, and telling the requester."""

from __future__ import annotations

import hashlib
import json
import logging
import threading

from bot import logs, messages
from bot.deps import Deps
from bot.github import Retryable
from bot.model import ACCEPTED, APPROVED, ERROR, FINAL_STATES, PENDING_APPROVAL, Request
from bot.slack import SlackFailure

log = logging.getLogger(__name__)

ROOT_HASH = "root_hash"  # details key: digest of the root message Slack shows now


def tell(deps: Deps, req: Request, text: str, *, hint: str | None = None) -> None:
    """Tell the requester: in the thread when there is one, else ephemerally."""
    msg = messages.failure_reply(text, hint=hint)
    try:
        if req.root_ts:
            deps.slack.post(
                req.channel_id, msg["text"], blocks=msg["blocks"], thread_ts=req.root_ts
            )
        elif req.response_url:
            deps.slack.respond(
                req.response_url, f":warning: {text}" + (f"\n{hint}" if hint else "")
            )
        else:
            deps.slack.ephemeral(req.channel_id, req.user_id, f":warning: {text}")
    except SlackFailure as exc:
        log.warning("could not tell the user", extra={"request_id": req.id, "error": exc.error})


def message_digest(msg: messages.Message) -> str:
    return hashlib.sha256(json.dumps(msg, sort_keys=True).encode()).hexdigest()[:16]


def refresh_root(deps: Deps, req: Request, *, trailing: bool = False) -> None:
    """Edit the thread root so its status line matches the database.

    Coalesced, because a busy workflow can send many events a second and chat.update is rate
    limited: an edit identical to what Slack shows is skipped; otherwise a root is edited at
    most once per `rate_limits.root_edit_seconds` slot (claimed in the database, so threads
    and replicas agree), an edit that finds its slot taken is sent once at the end of the slot
    from the then newest state, and the edit to a final state is always sent at once.
    """
    current = deps.store.get(req.id) or req
    if not current.root_ts:
        return
    msg = root_message(deps, current)
    digest = message_digest(msg)
    if current.details.get(ROOT_HASH) == digest:
        return
    interval = deps.config.rate_limits.root_edit_seconds
    if interval > 0 and not trailing and current.status not in FINAL_STATES:
        now = deps.clock()
        slot = int(now // interval)
        if not deps.store.first_time(f"root-edit:{req.id}:{slot}"):
            if deps.store.first_time(f"root-edit-later:{req.id}:{slot}"):
                _edit_later(deps, req, interval - now % interval)
            return
    try:
        deps.slack.update(current.channel_id, current.root_ts, msg["text"], blocks=msg["blocks"])
    except SlackFailure as exc:
        log.warning("root update failed", extra={"request_id": req.id, "error": exc.error})
        return
    deps.store.merge_details(req.id, {ROOT_HASH: digest})


def _edit_later(deps: Deps, req: Request, delay: float) -> None:
    """The trailing edit of a burst. In memory: if the process dies first, the next event or
    the final edit brings the root up to date."""

    def run() -> None:
        with logs.context(request_id=req.id):
            try:
                refresh_root(deps, req, trailing=True)
            except Exception:
                # A timer thread has nobody to raise to: log it; the next event edits again.
                log.exception("deferred root edit failed")

    timer = threading.Timer(max(0.05, delay), run)
    timer.daemon = True
    timer.start()


def root_message(deps: Deps, req: Request) -> messages.Message:
    if req.kind == "deploy":
        from handlers import deploy

        return deploy.card(deps, req)
    if req.kind == "schedule" or req.details.get("schedule"):
        from handlers import schedules

        return schedules.root(deps, req)
    return messages.evaluate_root(req, web_base=deps.web_base)


def fail(deps: Deps, req: Request, error: str, *, hint: str | None = None) -> None:
    if deps.store.update(
        req.id,
        only_if_status=(ACCEPTED, PENDING_APPROVAL, APPROVED),
        status=ERROR,
        error=error,
        finished_at=deps.clock(),
    ):
        deps.store.audit(
            actor="bridge",
            action=f"{req.kind}.failed",
            outcome="error",
            request_id=req.id,
            detail=error,
        )
        tell(deps, deps.store.get(req.id) or req, error, hint=hint)
        refresh_root(deps, req)


def ensure_root(deps: Deps, req: Request) -> Request:
    """Post the thread root once; its (channel, ts) is the request's thread from then on.

    The ts is saved as soon as Slack answers. chat.postMessage has no idempotency key, so a
    crash between Slack's answer and that save (milliseconds), or an answer lost on the way,
    is the one case where a repeat posts a second root; the `root:` key makes such a repeat
    visible in the log, and both roots name the same request id.
    """
    if req.root_ts:
        return req
    key = f"root:{req.id}"
    if not deps.store.first_time(key):
        log.warning(
            "posting the thread root again; an interrupted attempt may have posted one",
            extra={"request_id": req.id},
        )
    msg = root_message(deps, req)
    try:
        ts = deps.slack.post(req.channel_id, msg["text"], blocks=msg["blocks"])
    except SlackFailure as exc:
        if not exc.error.startswith("connection"):
            deps.store.forget(key)  # Slack refused it: nothing was posted
        raise
    deps.store.update(req.id, root_ts=ts)
    deps.store.merge_details(req.id, {ROOT_HASH: message_digest(msg)})
    return deps.store.get(req.id) or req


def tell_once(deps: Deps, req: Request, key: str, text: str) -> None:
    if deps.store.first_time(f"{req.id}:{key}"):
        tell(deps, req, text)


def reply_once(
    deps: Deps, req: Request, key: str, msg: messages.Message, *, broadcast: bool = False
) -> bool:
    """Post a thread reply at most once per key; a failed post gives the key back for a retry."""
    if not req.root_ts or not deps.store.first_time(key):
        return False
    try:
        deps.slack.post(
            req.channel_id,
            msg["text"],
            blocks=msg.get("blocks"),
            thread_ts=req.root_ts,
            broadcast=broadcast,
        )
    except SlackFailure:
        deps.store.forget(key)
        raise
    return True


def retry_or_give_up(deps: Deps, req: Request, exc: Retryable) -> None:
    """Tell the requester once that GitHub is in the way, then hand the outage to the job
    layer, which waits it out with backoff (honouring a rate limit's reset) and gives up only
    after CHATOPS_OUTAGE_HORIZON_HOURS (bot/jobs.py RetryPolicy, then give_up below)."""
    tell_once(deps, req, "retry-note", exc.message)
    raise exc


def fail_or_wait(deps: Deps, req: Request, exc: SlackFailure) -> None:
    """Slack refused (not in the channel, archived…): fail with the hint. Slack down or rate
    limiting: raise, and the job layer waits the outage out."""
    if exc.is_outage:
        raise exc
    fail(deps, req, exc.user_hint)


def give_up(deps: Deps, req: Request, what: str, attempts: int) -> None:
    """The job layer gave the request up (a bug, a refusal that will not change, or a peer
    down past the outage horizon): mark it `error`, audit it, and tell the requester once —
    in the thread, or ephemerally when there is none yet."""
    fail(
        deps,
        req,
        f"I could not carry out request `{req.id}` and gave up after {attempts} "
        f"attempt{'s' if attempts != 1 else ''}: {what}",
        hint="Nothing more will happen for this request. Run the command again; if it fails "
        f"the same way, tell the bridge's admins (request id `{req.id}` is in their logs).",
    )
