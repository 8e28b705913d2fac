"""The approval card (a deploy's thread root) and the reject modal: Block Kit, pure."""

from __future__ import annotations

import copy
from typing import Any

from bot import messages, slacktext
from bot.config import ApprovalPolicy
from bot.deps import Deps
from bot.markdown import render_comment
from bot.model import ACCEPTED, EXPIRED, PENDING_APPROVAL, REJECTED, Request
from bot.slacktext import escape_mrkdwn, slack_date
from handlers import details
from handlers.deploy import model_card
from handlers.deploy.facts import (
    REGISTRY_USER,
    DeployDetails,
    LaterMetrics,
    RunFacts,
    ShownMetrics,
    details_of,
)
from handlers.deploy.model_card import subject
from handlers.deploy.policy import (
    NO_APPROVAL,
    approved_by,
    excluded_self,
    policy_of,
    who_can_approve,
)
from handlers.status import thread_url

Message = messages.Message
Block = dict[str, Any]

ACTION_APPROVE = "deploy_approve"
ACTION_REJECT = "deploy_reject"
VIEW_REJECT = "deploy_reject_reason"
DECISION_BLOCK = "deploy_decision"
UNDECIDED = (ACCEPTED, PENDING_APPROVAL)
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"


def reject_modal(req: Request) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": VIEW_REJECT,
        "private_metadata": req.id,
        "title": {"type": "plain_text", "text": "Reject deploy"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            slacktext.section(
                f"Reject the deploy of {subject(req)} to *{req.environment}* in "
                f"`{req.repo}`, requested by {requester(req)}?"
            ),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "optional": True,
                "label": {"type": "plain_text", "text": "Reason (shown on the card)"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "max_length": 500,
                },
            },
        ],
    }


def requester(req: Request) -> str:
    """Who asked: a Slack user, the MLflow registry (its signed webhook), else (a deploy
    GitHub's protection rule started) the GitHub login that triggered the run."""
    if req.user_id == REGISTRY_USER:
        return model_card.requester(req)
    if req.user_id:
        return f"<@{req.user_id}>"
    actor = str((details_of(req).get("gate") or {}).get("actor") or "")
    return f"`{escape_mrkdwn(actor)[:39]}` on GitHub" if actor else "GitHub"


def _gate_header(req: Request, repo_link: str) -> str:
    """The first lines of a card that GitHub's protection rule started (facts from GitHub)."""
    gate = details_of(req).get("gate") or {}
    event = escape_mrkdwn(str(gate.get("event") or "?"))[:40]
    who = requester(req)
    if req.user_id and gate.get("actor"):
        who += f" (GitHub `{escape_mrkdwn(str(gate['actor']))[:39]}`)"
    return (
        f":shield: *GitHub asks to deploy to {escape_mrkdwn(req.environment or '?')}* in "
        f"{repo_link}\nA job of workflow run `{short(req.run_ref, 30)}` waits for this approval "
        f"(custom deployment protection rule). Triggered by {who} ({event} event, as GitHub "
        f"reports the run) {slack_date(req.created_at, '{date_short_pretty} at {time}')}"
    )


def short(text: str | None, n: int = 60) -> str:
    text = text or "?"
    return text if len(text) <= n else text[: n - 1] + "…"


def warnings_for(details: DeployDetails) -> list[str]:
    """The card's warnings about the run (pure; from the facts gathered by the worker)."""
    run = details.get("run")
    if not isinstance(run, dict):
        return []
    out = []
    if details.get("gate"):
        pass  # the run GitHub holds for this approval is not finished: that is the point
    elif run.get("status") != "completed":
        out.append(f"The run is not finished (status: {escape_mrkdwn(str(run.get('status')))}).")
    elif run.get("conclusion") != "success":
        conclusion = escape_mrkdwn(str(run.get("conclusion") or "none"))
        out.append(f"The run did not succeed (conclusion: *{conclusion}*).")
    sha = str(run.get("sha") or "")
    shown = details.get("metrics")
    what = (
        "The metrics are" if isinstance(shown, dict) and shown.get("trusted_as") else "This run is"
    )
    head = details.get("pr_head")
    if isinstance(head, dict) and head.get("sha") and head.get("sha") != sha:
        out.append(
            f"{what} for `{sha[:7]}`; the head of PR #{head.get('number')} is now "
            f"`{str(head.get('sha'))[:7]}`."
        )
    tip = details.get("branch_head")
    if isinstance(tip, dict) and tip.get("sha") and tip.get("sha") != sha:
        branch = escape_mrkdwn(str(tip.get("branch")))[:100]
        out.append(
            f"{what} for `{sha[:7]}`; the head of branch `{branch}` is now "
            f"`{str(tip.get('sha'))[:7]}`."
        )
    return out


def _run_line(run: RunFacts) -> str:
    parts = [
        f"*Run:* {slacktext.slack_link(run.get('url'), str(run.get('name') or 'workflow run'))}"
    ]
    if run.get("branch"):
        parts.append(f"branch `{escape_mrkdwn(str(run['branch']))[:100]}`")
    if run.get("sha"):
        parts.append(f"commit `{str(run['sha'])[:7]}`")
    if run.get("status") == "completed":
        conclusion = str(run.get("conclusion") or "none")
        icon = messages.CONCLUSION_ICON.get(conclusion, ":grey_question:")
        parts.append(f"{icon} {escape_mrkdwn(conclusion)}")
    else:
        parts.append(f":arrows_counterclockwise: {escape_mrkdwn(str(run.get('status')))}")
    return " · ".join(parts)


def _metrics_blocks(metrics: ShownMetrics, later: list[LaterMetrics]) -> list[dict[str, Any]]:
    """The metrics table with where it came from: author (and why trusted), the comment, the
    commit; how many metrics comments there were; newer ones posted after the card."""
    if not metrics.get("trusted_as"):
        return []  # recorded before authors were checked: not evidence
    url = str(metrics.get("comment_url") or "")
    author = str(metrics.get("author") or "someone")
    sha = escape_mrkdwn(str(metrics.get("head_sha") or ""))[:7]
    text = (
        f"Metrics for commit `{sha}` from {slacktext.slack_link(url, f'a comment by {author}')} "
        f"({escape_mrkdwn(str(metrics['trusted_as']))})"
    )
    count = int(metrics.get("count") or 1)
    if count > 1:
        earlier = ", ".join(
            slacktext.slack_link(str(e.get("comment_url") or ""), str(e.get("author") or "someone"))
            for e in metrics.get("earlier") or []
            if isinstance(e, dict)
        )
        text += f"\nThe newest of {count} metrics comments for this commit; earlier: {earlier}"
    later = [e for e in later if isinstance(e, dict)]
    if later:
        links = ", ".join(
            slacktext.slack_link(str(e.get("comment_url") or ""), str(e.get("author") or "someone"))
            for e in later
        )
        text += (
            f"\n:warning: Newer metrics for this commit were posted after this card: {links}. "
            "The table here is the one the card was posted with."
        )
    line = slacktext.context(text)
    for msg in render_comment(str(metrics.get("body") or ""), link=url, author=author):
        for block in msg["blocks"]:
            if block.get("type") == "table":
                return [block, line]
    return [line]


DEPLOYMENT_ICON = {
    "success": ":white_check_mark:",
    "failure": ":x:",
    "error": ":x:",
    "in_progress": ":arrows_counterclockwise:",
    "queued": ":clock3:",
    "pending": ":clock3:",
    "waiting": ":hourglass:",
    "inactive": ":white_circle:",
}


def deployment_line(state: str, environment: str, url: str | None) -> str:
    icon = DEPLOYMENT_ICON.get(state, ":grey_question:")
    where = slacktext.slack_link(url, environment) if url else f"*{escape_mrkdwn(environment)}*"
    return f"{icon} Deployment to {where}: *{escape_mrkdwn(state)}*"


def _decision_blocks(
    req: Request, policy: ApprovalPolicy | None, approvals: list[str]
) -> list[dict[str, Any]]:
    if req.status == PENDING_APPROVAL:
        return [approval_buttons(req)]
    if req.status == REJECTED:
        who = f"<@{req.decided_by}>" if req.decided_by else "someone"
        why = f": {escape_mrkdwn(req.reason)[:500]}" if req.reason else " (no reason given)"
        at = f" at {slack_date(req.decided_at, '{time}')}" if req.decided_at else ""
        return [slacktext.section(f":no_entry_sign: Rejected by {who}{at}{why}")]
    if req.status == EXPIRED:
        at = slack_date(req.expires_at, "{time}") if req.expires_at else "its deadline"
        return [slacktext.context(f":hourglass: Expired at {at} without enough approvals.")]
    if req.decided_by:
        names = approved_by(req, policy.required if policy else 1, approvals)
        who = " and ".join(_approver(req, policy, u) for u in names)
        at = f" at {slack_date(req.decided_at, '{time}')}" if req.decided_at else ""
        return [slacktext.context(f":white_check_mark: Approved by {who}{at}")]
    if policy is None and req.status != "error":
        return [slacktext.context(f"*{req.environment}*: {NO_APPROVAL} (`approval: none`).")]
    return []


def _approver(req: Request, policy: ApprovalPolicy | None, user_id: str) -> str:
    """An approver on the card; the requester approving their own deploy says so."""
    if user_id == req.user_id and policy is not None and policy.allow_self_approval:
        return (
            f"<@{user_id}> (the requester; self-approval is allowed for "
            f"{escape_mrkdwn(req.environment or '?')})"
        )
    return f"<@{user_id}>"


def approval_buttons(req: Request) -> dict[str, Any]:
    confirm_text = (
        f"Deploy {subject(req)} to *{req.environment}* in `{req.repo}`, "
        f"requested by {requester(req)}?"
    )
    return {
        "type": "actions",
        "block_id": DECISION_BLOCK,
        "elements": [
            {
                "type": "button",
                "action_id": ACTION_APPROVE,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": req.id,
                "confirm": {
                    "title": {"type": "plain_text", "text": f"Deploy to {req.environment}?"[:100]},
                    "text": {"type": "mrkdwn", "text": confirm_text[:300], "verbatim": True},
                    "confirm": {"type": "plain_text", "text": "Approve"},
                    "deny": {"type": "plain_text", "text": "Cancel"},
                },
            },
            {
                "type": "button",
                "action_id": ACTION_REJECT,
                "text": {"type": "plain_text", "text": "Reject"},
                "style": "danger",
                "value": req.id,
            },
        ],
    }


def render_card(
    req: Request,
    *,
    policy: ApprovalPolicy | None,
    approvals: list[str],
    web_base: str = "https://github.com",
) -> Message:
    """The approval card (the thread root of a deploy), from the request's state alone."""
    d = details_of(req)
    repo = slacktext.slack_link(f"{web_base}/{req.repo}", req.repo)
    blocks: list[dict[str, Any]] = []
    if model_card.model_of(req) is not None:  # a registered model version (MLflow)
        blocks += model_card.header(req, repo) + model_card.facts(d)
        warnings = model_card.warnings(d)
    else:
        blocks += _run_blocks(req, d, repo)
        warnings = warnings_for(d)
    if warnings:
        blocks.append(slacktext.section("\n".join(f":warning: {w}" for w in warnings)))
    status = f"*Status:* {messages.status_label(req.status)}"
    if req.status == PENDING_APPROVAL and policy is not None:
        if approvals:
            given = ", ".join(f"<@{u}>" for u in approvals)
            status += f" ({len(approvals)} of {policy.required}: {given})"
        elif policy.required > 1:
            status += f" ({policy.required} approvals needed)"
        if req.expires_at:
            status += f" · expires at {slack_date(req.expires_at, '{time}')}"
    if req.error and req.status == "error":
        status += f" — {escape_mrkdwn(req.error)[:500]}"
    if d.get("deployment_state"):
        env = str(d.get("deployment_environment") or req.environment)
        status += "\n" + deployment_line(str(d["deployment_state"]), env, d.get("deployment_url"))
    blocks.append(slacktext.section(status))
    blocks += _decision_blocks(req, policy, approvals)
    runs_summary = details.thread(req).get("runs_summary")
    if runs_summary:
        blocks.append(slacktext.context(runs_summary))
    alias_after = model_card.alias_after_line(d)
    if alias_after:
        blocks.append(slacktext.context(alias_after))
    footer = f"request `{req.id}`"
    if policy is None:
        footer += f" · {NO_APPROVAL}"
    elif req.status in UNDECIDED:  # once decided, who could approve is no longer the news
        footer += (
            f" · needs {policy.required} approval{'s' if policy.required > 1 else ''} from "
            f"{who_can_approve(policy, exclude=excluded_self(policy, req.user_id))}"
        )
    blocks.append(slacktext.context(footer))
    text = (
        f"Deploy of {subject(req, 100).replace('`', '')} to {req.environment} in {req.repo}: "
        f"{messages.status_words(req.status)}"
    )
    return {"text": text, "blocks": blocks}


def _run_blocks(req: Request, d: DeployDetails, repo: str) -> list[Block]:
    """The head of a /deploy <run-id> card (or of one GitHub's protection rule started): the
    run's facts and relayed metrics."""
    header = (
        _gate_header(req, repo)
        if d.get("gate")
        else (
            f":rocket: *Deploy of run `{short(req.run_ref, 100)}` to {req.environment}* "
            f"in {repo}\nRequested by {requester(req)} "
            f"{slack_date(req.created_at, '{date_short_pretty} at {time}')}"
        )
    )
    blocks: list[Block] = [slacktext.section(header)]
    run = d.get("run")
    if isinstance(run, dict):
        blocks.append(slacktext.section(_run_line(run)))
    elif d.get("facts_checked"):
        blocks.append(
            slacktext.context("Not a GitHub workflow run id: passed to the workflow as it is.")
        )
    metrics = d.get("metrics")
    if isinstance(metrics, dict):
        blocks += _metrics_blocks(metrics, d.get("metrics_later") or [])
    if d.get("dispatched_at_once") and req.status in UNDECIDED:
        blocks.append(
            slacktext.context(
                f":shield: *{escape_mrkdwn(req.environment or '?')}* is protected by this "
                "bridge on GitHub: the deploy workflow was started at once, and GitHub holds "
                "its deploy job until this request is approved."
            )
        )
    return blocks


def card(deps: Deps, req: Request) -> Message:
    """The root of a deploy's thread (RequestKind.root)."""
    policy = policy_of(deps, req)
    approvals = deps.store.approvers_of(req.id) if policy is not None else []
    return render_card(req, policy=policy, approvals=approvals, web_base=deps.web_base)


def approval_blocks(req: Request, buttons: Block) -> list[Block]:
    """A pending deploy and the channel card's own Approve/Reject buttons (same action ids, so
    the same handlers answer). block_id made unique: a view may hold several of them."""
    what = (
        subject(req)
        if model_card.model_of(req) is not None
        else f"run `{escape_mrkdwn(str(req.run_ref))[:60]}`"
    )
    summary = (
        f":raised_hand: *Deploy of {what} to "
        f"{req.environment}* in `{req.repo}`, asked by {requester(req)} "
        f"{slack_date(req.created_at)}"
    )
    if req.expires_at:
        summary += f" · expires {slack_date(req.expires_at)}"
    if req.root_ts:
        summary += f" · <{thread_url(req.channel_id, req.root_ts)}|open the card>"
    actions = copy.deepcopy(buttons)
    actions["block_id"] = f"{buttons.get('block_id') or 'decision'}:{req.id}"
    return [slacktext.section(summary), actions]
