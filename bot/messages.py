"""Block Kit for roots and thread replies: pure functions from state to message dicts."""

from __future__ import annotations

from typing import Any

from bot.model import Request
from bot.slacktext import context, escape_mrkdwn, section, slack_link

Message = dict[str, Any]  # {"text": fallback, "blocks": [...]}

STATUS_LABEL = {
    "accepted": ":hourglass_flowing_sand: accepted",
    "pending_approval": ":raised_hand: waiting for approval",
    "approved": ":+1: approved, dispatching",
    "triggered": ":clock3: queued",
    "queued": ":clock3: queued",
    "running": ":arrows_counterclockwise: running",
    "succeeded": ":white_check_mark: succeeded",
    "failed": ":x: failed",
    "error": ":warning: could not start",
    "rejected": ":no_entry_sign: rejected",
    "expired": ":hourglass: expired",
    "cancelled": ":black_square_for_stop: cancelled",
    "duplicate": ":link: not started (already running)",
}


def status_label(status: str) -> str:
    """The status as the blocks show it (icon and words)."""
    return STATUS_LABEL.get(status, status)


def status_words(status: str) -> str:
    """The same label without its icon: what a root's or card's fallback text says, so the
    notification and the block never disagree (never a raw state like `pending_approval`)."""
    label = status_label(status)
    icon, _, words = label.partition(" ")
    return words if icon.startswith(":") and icon.endswith(":") and words else label


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def pr_url(req: Request, web_base: str = "https://github.com") -> str:
    return f"{web_base}/{req.repo}/pull/{req.pr_number}"


def evaluate_root(req: Request, *, web_base: str = "https://github.com") -> Message:
    """The thread root of an /evaluate request; edited in place as the status changes."""
    d = req.details
    title = str(d.get("pr_title") or "")
    ref = slack_link(d.get("pr_url") or pr_url(req, web_base), f"{req.repo}#{req.pr_number}")
    head = f" at `{req.head_sha[:7]}`" if req.head_sha else ""
    headline = f"*Evaluation of {ref}*{head} requested by <@{req.user_id}>"
    if title:
        headline += f"\n{escape_mrkdwn(title)[:300]}"
    status = f"*Status:* {status_label(req.status)}"
    if req.error and req.status == "error":
        status += f" — {escape_mrkdwn(req.error)[:500]}"
    runs = d.get("runs_summary")
    blocks = [section(headline), section(status)]
    if runs:
        blocks.append(context(str(runs)))
    blocks.append(context(f"request `{req.id}` · trigger: {req.trigger}"))
    text = f"Evaluation of {req.repo}#{req.pr_number}: {status_words(req.status)}"
    return {"text": text, "blocks": blocks}


def run_started(run_name: str, run_url: str, attempt: int) -> Message:
    again = f" (attempt {attempt})" if attempt > 1 else ""
    text = f":arrow_forward: Workflow {slack_link(run_url, run_name or 'run')} started{again}."
    # The fallback text is what notifications show: it is mrkdwn too, so it is escaped as well.
    return {"text": f"Workflow {escape_mrkdwn(run_name)} started", "blocks": [section(text)]}


CONCLUSION_ICON = {
    "success": ":white_check_mark:",
    "failure": ":x:",
    "cancelled": ":black_square_for_stop:",
    "timed_out": ":alarm_clock:",
    "action_required": ":raised_hand:",
    "skipped": ":fast_forward:",
    "neutral": ":white_circle:",
    "startup_failure": ":x:",
    "stale": ":hourglass:",
}


def run_finished(
    run_name: str, run_url: str, conclusion: str | None, took: float | None, attempt: int
) -> Message:
    icon = CONCLUSION_ICON.get(conclusion or "", ":grey_question:")
    again = f", attempt {attempt}" if attempt > 1 else ""
    text = (
        f"{icon} Workflow {slack_link(run_url, run_name or 'run')} finished: "
        f"*{escape_mrkdwn(conclusion or 'unknown')}* in {duration(took)}{again}."
    )
    if conclusion not in ("success", "skipped", "neutral"):
        text += "\nOpen the run for logs; `@chatops-bridge rerun` in this thread runs it again."
    fallback = f"Workflow {escape_mrkdwn(run_name)} {escape_mrkdwn(conclusion or 'unknown')}"
    return {"text": fallback, "blocks": [section(text)]}


def failure_reply(message: str, *, hint: str | None = None) -> Message:
    text = f":warning: {escape_mrkdwn(message)}"
    if hint:
        text += f"\n{hint}"
    return {"text": escape_mrkdwn(message), "blocks": [section(text)]}


def is_failure(conclusion: str | None) -> bool:
    return conclusion not in ("success", "skipped", "neutral", None)
