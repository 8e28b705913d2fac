"""What every kind of request shares: its thread root, replies, telling, failing, giving up,
dispatching once, settling from its runs, and stopping them. Imports no kind and no event
module: a kind's root message comes from the registry (handlers.kinds)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from bot import logs, messages, slacktext
from bot.deps import Deps
from bot.github import GitHubError, PermissionDenied, Retryable
from bot.github_data import dispatch_runs_query
from bot.model import (
    ACCEPTED,
    APPROVED,
    ERROR,
    FAILED,
    FINAL_STATES,
    PENDING_APPROVAL,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TRIGGERED,
    WAITING_FOR_RUNS,
    Request,
    RunRecord,
)
from bot.slack import SlackFailure
from bot.store import AuditLine
from handlers import details, kinds
from handlers.details import ThreadDetails

log = logging.getLogger(__name__)


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


def refresh_root(
    deps: Deps, req: Request, *, trailing: bool = False, current: Request | None = None
) -> None:
    """Edit the thread root so its status line matches the database.

    Coalesced, because a busy workflow can send many events a second and chat.update is rate
    limited: an edit identical to what Slack shows is skipped; otherwise a root is edited at
    most once per `rate_limits.root_edit_seconds` slot (claimed in the database, so threads
    and replicas agree), an edit that finds its slot taken is sent once at the end of the slot
    from the then newest state, and the edit to a final state is always sent at once.
    `current`: the request as just committed by the caller (saves reading it again).
    """
    current = current or deps.store.get(req.id) or req
    if not current.root_ts:
        return
    msg = root_message(deps, current)
    digest = message_digest(msg)
    if details.thread(current).get("root_hash") == digest:
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
    details.merge(deps, req.id, ThreadDetails(root_hash=digest))


def _edit_later(deps: Deps, req: Request, delay: float) -> None:
    """The trailing edit of a burst. In memory: if the process dies first, the next event or
    the final edit brings the root up to date."""

    def run() -> None:
        with logs.context(request_id=req.id):
            try:
                refresh_root(deps, req, trailing=True)
            except Exception:
                # Nobody waits for this edit to raise to: log it; the next event edits again.
                log.exception("deferred root edit failed")

    deps.jobs.later(max(0.05, delay), run)


def root_message(deps: Deps, req: Request) -> messages.Message:
    """The thread root (or card) of a request, as its kind draws it (KeyError: unknown kind)."""
    return kinds.get(req.kind).root(deps, req)


def fail(deps: Deps, req: Request, error: str, *, hint: str | None = None) -> None:
    if deps.store.update(
        req.id,
        only_if_status=(ACCEPTED, PENDING_APPROVAL, APPROVED),
        status=ERROR,
        error=error,
        finished_at=deps.clock(),
        audit=AuditLine("bridge", f"{req.kind}.failed", "error", error),
    ):
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
    # The ts and the digest in one transaction; the row comes back as stored after the post,
    # so a click that decided the request meanwhile is in it.
    _, stored = deps.store.update_and_merge(
        req.id, ThreadDetails(root_hash=message_digest(msg)), root_ts=ts
    )
    return stored or req


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
    error = (
        f"I could not carry out request `{req.id}` and gave up after {attempts} "
        f"attempt{'s' if attempts != 1 else ''}: {what}"
    )
    hint = (
        "Nothing more will happen for this request. Run the command again; if it fails "
        f"the same way, tell the bridge's admins (request id `{req.id}` is in their logs)."
    )
    current = deps.store.get(req.id) or req
    if current.status in (ACCEPTED, PENDING_APPROVAL, APPROVED):
        fail(deps, current, error, hint=hint)
        return
    # Decided already (e.g. rejected) and what failed is telling GitHub (a protection rule's
    # answer): the status stays; the thread hears that the bridge stopped trying.
    deps.store.audit(
        actor="bridge", action=f"{req.kind}.given_up", outcome="error", request_id=req.id
    )
    tell(deps, current, error, hint="GitHub keeps waiting for an answer: give it on GitHub.")


# -- GitHub side: dispatch once, settle from the runs, stop them --------------------------------

# Workflows started by repository_dispatch put the request id first in `run-name`, which
# GitHub reports as display_title: "chatops 1a2b3c4d5e6f: deploy ..."
TITLE_RE = re.compile(r"^chatops ([0-9a-f]{12})\b")


def request_id_in_title(title: str) -> str | None:
    m = TITLE_RE.match(title or "")
    return m[1] if m else None


def dispatch_seen(deps: Deps, req: Request) -> bool:
    """Whether GitHub already has a run whose run-name names this request.

    Used before repeating a dispatch whose answer was lost (crash, 502 after the fact): a run
    is the only trace a repository_dispatch leaves. GitHub creates it a few seconds after the
    dispatch, so a quick repeat can still dispatch twice; both carry the same request id.
    """
    since = req.action_started_at or req.created_at
    try:
        found = deps.github.list_runs(req.repo, params=dispatch_runs_query(since))
    except Retryable:
        raise
    except GitHubError as exc:  # cannot look (e.g. no actions:read): repeat, same request id
        log.warning("cannot list runs", extra={"request_id": req.id, "error": exc.message})
        return False
    runs = (found.data or {}).get("workflow_runs") or []
    return any(request_id_in_title(str(r.get("display_title") or "")) == req.id for r in runs)


def dispatch_once(deps: Deps, req: Request, event_type: str, payload: dict[str, Any]) -> None:
    """Send the request's repository_dispatch; a repeat after a lost answer checks GitHub first.

    action_started_at marks "a dispatch may have been sent": set before the first POST, kept
    on repeats (it bounds the runs looked at by dispatch_seen).
    """
    if req.action_started_at is None:
        deps.store.update(req.id, action_started_at=deps.clock())
    elif dispatch_seen(deps, req):
        return  # an earlier attempt got through: its run is there
    else:
        log.warning("repeating a dispatch that may have happened", extra={"request_id": req.id})
    deps.github.dispatch(req.repo, event_type, payload)


def trigger(
    deps: Deps,
    req: Request,
    act: Callable[[], None] | None,
    *,
    from_statuses: Sequence[str],
    action: str,
    detail: str,
    also: dict[str, Any] | None = None,
    then: Callable[[], object] | None = None,
) -> None:
    """The tail every kind's worker shares: `act` (the GitHub call that starts the runs: a
    label, a repository_dispatch), then `from_statuses` → triggered with its audit line
    (`action`, once: the update is conditional), then settle (runs may have come first).
    `act` None: the runs were started otherwise (no call, no audit line); `also`: columns set
    in the same update; `then`: a step due after the status change, or after a refusal.

    GitHub down: tell once and wait it out (retry_or_give_up raises); GitHub refused: fail.
    """
    try:
        if act is not None:
            act()
    except Retryable as exc:
        retry_or_give_up(deps, req, exc)
        return
    except GitHubError as exc:
        fail(deps, req, exc.message)
        if then is not None:
            then()
        return
    deps.store.update(
        req.id,
        only_if_status=tuple(from_statuses),
        status=TRIGGERED,
        audit=None if act is None else AuditLine("bridge", action, "ok", detail),
        **(also or {}),
    )
    if then is not None:
        then()
    settle(deps, req)


def _aggregate(runs: list[RunRecord]) -> tuple[str, str]:
    lines = []
    for r in runs:
        state = r.conclusion if r.status == "completed" else r.status
        lines.append(f"{slacktext.slack_link(r.html_url, r.name or 'run')}: {state}")
    summary = " · ".join(lines)
    if any(r.status != "completed" for r in runs):
        busy = any(r.status == "in_progress" for r in runs)
        return (RUNNING if busy else QUEUED), summary
    if runs and all(not messages.is_failure(r.conclusion) for r in runs):
        return SUCCEEDED, summary
    return FAILED, summary


def settle(deps: Deps, req: Request) -> None:
    """Derive the request's status from its recorded runs and show it on the root message.

    Also called right after a request becomes `triggered`: a run that GitHub reported before
    that transition (the webhook can beat the bridge's own database write) is recorded by
    relay_run but could not move the status yet.
    """
    runs = deps.store.runs_of(req.id)
    if not runs:
        refresh_root(deps, req)
        return
    status, summary = _aggregate(runs)
    finished_at = deps.clock() if status in (SUCCEEDED, FAILED) else None
    # The status and the summary in one transaction, which also gives the root its state.
    finished = status != req.status and status in (SUCCEEDED, FAILED)
    _, current = deps.store.update_and_merge(
        req.id,
        ThreadDetails(runs_summary=summary),
        only_if_status=(*WAITING_FOR_RUNS, SUCCEEDED, FAILED),
        status=status,
        finished_at=finished_at,
        audit=AuditLine(
            "github",
            f"{req.kind}.finished",
            status,
            " ".join(r.html_url for r in runs if r.html_url),
        )
        if finished
        else None,
    )
    refresh_root(deps, req, current=current)
    hook = kinds.get(req.kind).on_succeeded
    if status == SUCCEEDED and hook is not None:
        hook(deps, req)


def stop_run(deps: Deps, req: Request, run_id: int, name: str) -> str | None:
    """Ask GitHub to cancel one run; what to say in the thread (None: it had finished)."""
    try:
        deps.github.cancel_run(req.repo, run_id)
    except PermissionDenied:
        return (
            f":warning: I could not cancel the workflow run {name}: the GitHub App needs "
            "the `actions: write` permission. Cancel it on GitHub, or ask an owner to "
            "grant the permission."
        )
    except GitHubError as exc:
        if exc.status == 409:  # GitHub: the run finished meanwhile
            return None
        return f":warning: I could not cancel the workflow run {name}: {exc.message}"
    return f"Asked GitHub to cancel the workflow run {name}."


def stop_runs(deps: Deps, req: Request) -> list[str]:
    """Stop the request's workflow runs that are still going (needs `actions: write`)."""
    notes = [
        stop_run(deps, req, int(run.run_id), run.name or f"run {run.run_id}")
        for run in deps.store.runs_of(req.id)
        if run.status != "completed"
    ]
    return [n for n in notes if n]
