"""Status lines and the `@chatops-bridge status` reply: where requests stand, with links to
their threads and runs (each kind's `/<command> status` listing is built from these)."""

from __future__ import annotations

from typing import Any

from bot import messages, slacktext
from bot.model import Request, RunRecord
from bot.slacktext import escape_mrkdwn, slack_date
from handlers import details, kinds

LIMIT = 10


# -- pure rendering ---------------------------------------------------------------------------


def thread_url(channel_id: str, ts: str) -> str:
    """A link to a message that works in any workspace the reader belongs to."""
    return f"https://slack.com/archives/{channel_id}/p{ts.replace('.', '')}"


def asker(req: Request) -> str:
    """Who asked: a Slack user, or GitHub (a deploy its protection rule started)."""
    return f"<@{req.user_id}>" if req.user_id else "GitHub"


def what(req: Request, web_base: str = "https://github.com") -> str:
    """A request in a few words, e.g. "acme/ml#42" or "run `123` → *production*", as its kind
    says it (UnknownKind for a kind nobody registered)."""
    return kinds.get(req.kind).what(req, web_base)


def request_line(req: Request, web_base: str = "https://github.com") -> str:
    """One line per request: id (linking to its thread), what, state, who, when, runs."""
    rid = f"`{req.id}`"
    if req.root_ts:
        rid = f"<{thread_url(req.channel_id, req.root_ts)}|{req.id}>"
    line = (
        f"• {rid} {what(req, web_base)} — {messages.status_label(req.status)} · "
        f"{asker(req)} · {slack_date(req.created_at)}"
    )
    runs = details.thread(req).get("runs_summary")
    if runs:
        line += f" · {runs}"
    return line


def status_list(title: str, reqs: list[Request], *, empty: str, web_base: str) -> str:
    if not reqs:
        return f"*{title}*\n{empty}"
    lines: list[str] = []
    size = len(title)
    for req in reqs:
        line = request_line(req, web_base)
        if size + len(line) > 3500:  # one ephemeral message; the newest come first
            lines.append(f"… and {len(reqs) - len(lines)} more")
            break
        lines.append(line)
        size += len(line) + 1
    return f"*{title}*\n" + "\n".join(lines)


def status_reply(req: Request, runs: list[RunRecord], *, web_base: str) -> messages.Message:
    """The answer to `@chatops-bridge status` in a request's thread."""
    head = (
        f"*Request `{req.id}`*: {what(req, web_base)}, asked by {asker(req)} "
        f"{slack_date(req.created_at)}"
    )
    state = f"*Status:* {messages.status_label(req.status)}"
    if req.error and req.status == "error":
        state += f" — {escape_mrkdwn(req.error)[:500]}"
    cancelled_by = details.thread(req).get("cancelled_by")
    if cancelled_by:
        state += f" by <@{cancelled_by}>"
    elif req.decided_by:
        state += f" · decided by <@{req.decided_by}>"
    if req.finished_at:
        took = messages.duration(req.finished_at - req.created_at)
        state += f" · finished {slack_date(req.finished_at)} after {took}"
    blocks: list[dict[str, Any]] = [slacktext.section(head), slacktext.section(state)]
    if runs:
        lines = []
        for run in runs[-20:]:
            result = run.conclusion if run.status == "completed" else run.status
            again = f" (attempt {run.attempt})" if run.attempt > 1 else ""
            name = run.name or f"run {run.run_id}"
            lines.append(f"• {slacktext.slack_link(run.html_url, name)}: {result}{again}")
        blocks.append(slacktext.section("*Workflow runs*\n" + "\n".join(lines)))
    else:
        blocks.append(slacktext.context("No workflow run has been seen for it yet."))
    return {"text": f"Request {req.id}: {messages.status_words(req.status)}", "blocks": blocks}
