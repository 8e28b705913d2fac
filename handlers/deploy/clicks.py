"""Approve and Reject clicks, the reject modal's submit, and what waits for a person's decision."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot import logs
from bot.deps import Deps
from bot.messages import status_words
from bot.model import APPROVED, CANCELLED, EXPIRED, PENDING_APPROVAL, REJECTED, Request
from bot.slack import SlackFailure
from bot.store import AuditLine
from handlers import details
from handlers.deploy.card import (
    REASON_BLOCK,
    REASON_INPUT,
    approval_blocks,
    approval_buttons,
    reject_modal,
)
from handlers.deploy.expiry import expire
from handlers.deploy.facts import DEPLOY_KINDS
from handlers.deploy.locks import deploy_refusal
from handlers.deploy.policy import approval_refusal, policy_of, rejection_refusal
from handlers.lifecycle import refresh_root

log = logging.getLogger(__name__)

Ack = Callable[..., Any]
Block = dict[str, Any]
MAX_AWAITING = 10


@dataclass(frozen=True)
class Click:
    user_id: str
    request_id: str
    channel_id: str | None
    thread_ts: str | None  # set only when the card already has an active thread
    trigger_id: str | None


def parse_click(body: dict[str, Any]) -> Click:
    actions = body.get("actions") or [{}]
    message = body.get("message") or {}
    container = body.get("container") or {}
    return Click(
        user_id=str((body.get("user") or {}).get("id") or ""),
        request_id=str(actions[0].get("value") or ""),
        channel_id=(body.get("channel") or {}).get("id") or container.get("channel_id"),
        # Slack shows an ephemeral in a thread only when that thread already has replies.
        thread_ts=message.get("thread_ts") or container.get("thread_ts"),
        trigger_id=body.get("trigger_id"),
    )


def answer_click(deps: Deps, req: Request | None, click: Click, text: str) -> None:
    channel = req.channel_id if req is not None else click.channel_id
    if not channel or not click.user_id:
        return
    try:
        deps.slack.ephemeral(channel, click.user_id, text, thread_ts=click.thread_ts)
    except SlackFailure as exc:
        log.warning("could not answer a click", extra={"error": exc.error})


def state_words(req: Request) -> str:
    """How to say where a decided request stands, e.g. "already approved (now running)"."""
    if req.status == REJECTED:
        return "already rejected" + (f" by <@{req.decided_by}>" if req.decided_by else "")
    if req.status == EXPIRED:
        return "already expired"
    if req.decided_by:
        now = f" (now: {status_words(req.status)})" if req.status != APPROVED else ""
        return f"already approved by <@{req.decided_by}>{now}"
    if req.status == CANCELLED:
        by = details.thread(req).get("cancelled_by")
        return "already cancelled" + (f" by <@{by}>" if by else "")
    return f"no longer waiting for approval (now: {status_words(req.status)})"


def _pending(deps: Deps, click: Click) -> Request | None:
    """The clicked request if a decision can still be made; else tell the clicker why not."""
    req = deps.store.get(click.request_id) if click.request_id else None
    if req is None or req.kind not in DEPLOY_KINDS:
        answer_click(deps, None, click, "I have no record of this deploy request.")
        return None
    logs.bind(request_id=req.id)  # the click's log lines name the request from here on
    expires_at = req.expires_at
    if req.status == PENDING_APPROVAL and expires_at is not None and expires_at <= deps.clock():
        expire(deps, req)
        req = deps.store.get(req.id) or req
    if req.status != PENDING_APPROVAL:
        answer_click(deps, req, click, f"This deploy request is {state_words(req)}.")
        return None
    return req


def on_approve(deps: Deps, body: dict[str, Any]) -> None:
    """Approve button (after ack): one approval row per person, one winning status change."""
    click = parse_click(body)
    req = _pending(deps, click)
    if req is None:
        return
    policy = policy_of(deps, req)
    refusal = approval_refusal(deps, req, policy, click.user_id)
    if refusal is None:
        # An environment locked since the card was posted: no approval until it is unlocked
        # (unless the requester holds the lock).
        refusal = deploy_refusal(deps, req.repo, req.environment or "", req.user_id, req.channel_id)
    if refusal or policy is None:
        # Who tried to approve a production deploy and was refused is part of the trail.
        deps.store.audit(
            actor=click.user_id,
            action="deploy.approval",
            outcome="refused",
            request_id=req.id,
            detail=str(refusal or "no approval policy")[:500],
        )
        answer_click(deps, req, click, f":no_entry: {refusal}")
        return
    if not deps.store.add_approval(req.id, click.user_id):
        # A double click: the first click of the pair may already have completed the approval.
        current = deps.store.get(req.id) or req
        left = policy.required - len(deps.store.approvers_of(req.id))
        if current.status != PENDING_APPROVAL:
            said = f"You approved this deploy already; it is {state_words(current)}."
        elif left <= 0:
            said = "You approved this deploy already."
        else:
            said = f"You approved this deploy already; waiting for {left} more."
        answer_click(deps, current, click, said)
        return
    count = len(deps.store.approvers_of(req.id))
    if count < policy.required:
        current = deps.store.get(req.id) or req
        if current.status != PENDING_APPROVAL:
            # Rejected or expired between the check above and this approval: not counted.
            deps.store.remove_approval(req.id, click.user_id)
            answer_click(deps, current, click, f"This deploy request is {state_words(current)}.")
            return
        deps.store.audit(
            actor=click.user_id,
            action="deploy.approval",
            outcome=f"{count} of {policy.required}",
            request_id=req.id,
        )
        refresh_root(deps, req)
        answer_click(
            deps,
            req,
            click,
            f":+1: Your approval is recorded: {count} of {policy.required}; "
            f"{policy.required - count} more needed.",
        )
        return
    # The approval and its audit row commit together (SQLite: one transaction; PostgreSQL:
    # one statement): who approved a production deploy is part of the trail.
    won = deps.store.update(
        req.id,
        only_if_status=(PENDING_APPROVAL,),
        status=APPROVED,
        decided_by=click.user_id,
        decided_at=deps.clock(),
        audit=AuditLine(
            click.user_id, "deploy.approved", "approved", f"{count} of {policy.required}"
        ),
    )
    if not won:
        current = deps.store.get(req.id) or req
        answer_click(deps, current, click, f"This deploy request is {state_words(current)}.")
        return
    refresh_root(deps, req)
    deps.jobs.submit(req.id)


def on_reject_click(deps: Deps, body: dict[str, Any]) -> None:
    """Reject button (after ack): open the reason modal at once (trigger_id lives 3 s)."""
    click = parse_click(body)
    req = _pending(deps, click)
    if req is None:
        return
    refusal = rejection_refusal(deps, req, policy_of(deps, req), click.user_id)
    if refusal:
        answer_click(deps, req, click, f":no_entry: {refusal}")
        return
    if not click.trigger_id:
        answer_click(
            deps, req, click, "Slack sent no trigger id for this click; click Reject again."
        )
        return
    try:
        deps.slack.open_view(click.trigger_id, reject_modal(req))
    except SlackFailure as exc:
        answer_click(
            deps, req, click, f"Slack did not open the form ({exc.error}); click Reject again."
        )


def on_reject_submit(deps: Deps, body: dict[str, Any], view: dict[str, Any], ack: Ack) -> None:
    """The modal's submit: a conditional pending → rejected, or an error shown in the modal."""
    user_id = str((body.get("user") or {}).get("id") or "")
    reason = _reason(view)
    req = deps.store.get(str(view.get("private_metadata") or ""))
    if req is None or req.kind not in DEPLOY_KINDS:
        ack(response_action="errors", errors={REASON_BLOCK: "This deploy request is unknown."})
        return
    logs.bind(request_id=req.id)  # the submission's log lines name the request from here on
    if req.status == PENDING_APPROVAL and (req.expires_at or float("inf")) <= deps.clock():
        expire(deps, req)
        req = deps.store.get(req.id) or req
    refusal = rejection_refusal(deps, req, policy_of(deps, req), user_id)
    if refusal:
        ack(response_action="errors", errors={REASON_BLOCK: plain_text(refusal)})
        return
    now = deps.clock()
    won = req.status == PENDING_APPROVAL and deps.store.update(
        req.id,
        only_if_status=(PENDING_APPROVAL,),
        status=REJECTED,
        decided_by=user_id,
        decided_at=now,
        finished_at=now,
        reason=reason or None,
        answer_due=1,  # GitHub's protection rules of the request hear `rejected` (gate.py)
        audit=AuditLine(user_id, "deploy.rejected", "rejected", reason),
    )
    if not won:
        current = deps.store.get(req.id) or req
        words = plain_text(f"This deploy request is {state_words(current)}.")
        ack(response_action="errors", errors={REASON_BLOCK: words})
        return
    ack()
    refresh_root(deps, req)
    deps.jobs.submit(req.id)


def _reason(view: dict[str, Any]) -> str:
    values = ((view.get("state") or {}).get("values") or {}).get(REASON_BLOCK) or {}
    value = (values.get(REASON_INPUT) or {}).get("value")
    return str(value or "").strip()[:500]


def plain_text(text: str) -> str:
    """Modal errors are plain text: turn <@U123> into @U123 and drop formatting marks."""
    text = re.sub(r"<@([A-Z0-9]+)>", r"@\1", text)
    text = re.sub(r"<!subteam\^([A-Z0-9]+)>", r"@\1", text)
    return text.replace("*", "").replace("`", "")


def awaiting(deps: Deps, user_id: str) -> list[list[Block]]:
    """Pending deploys this person may approve now and has not approved yet, as App Home
    blocks with the channel card's own buttons (same action ids: the same listeners answer)."""
    out: list[list[Block]] = []
    now = deps.clock()
    pending = [
        req
        for kind in DEPLOY_KINDS
        for req in deps.store.find(kind=kind, statuses=(PENDING_APPROVAL,), limit=50)
    ]
    for req in sorted(pending, key=lambda r: r.created_at, reverse=True):
        if req.expires_at is not None and req.expires_at <= now:
            continue
        policy = policy_of(deps, req)
        if user_id in deps.store.approvers_of(req.id):
            continue
        if approval_refusal(deps, req, policy, user_id) is not None:
            continue
        out.append(approval_blocks(req, approval_buttons(req)))
        if len(out) >= MAX_AWAITING:
            break
    return out
