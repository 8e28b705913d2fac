"""`/evaluate status [pr]`, `/deploy status [env]` and `@chatops-bridge status`: where requests
stand, with links to their threads and runs."""

from __future__ import annotations

from typing import Any

from bot import messages, slacktext
from bot.deps import Deps
from bot.model import Request, RunRecord
from bot.refs import UsageError, parse_pull_ref
from bot.slacktext import escape_mrkdwn, slack_date
from handlers.common import resolve_repo

LIMIT = 10


# -- pure rendering ---------------------------------------------------------------------------


def thread_url(channel_id: str, ts: str) -> str:
    """A link to a message that works in any workspace the reader belongs to."""
    return f"https://slack.com/archives/{channel_id}/p{ts.replace('.', '')}"


def what(req: Request, web_base: str = "https://github.com") -> str:
    """A request in a few words, e.g. "acme/ml#42" or "run `123` → *production*"."""
    if req.kind == "deploy":
        run = escape_mrkdwn(str(req.run_ref or "?"))[:60]
        return f"deploy of run `{run}` → *{escape_mrkdwn(req.environment or '?')}*"
    if req.pr_number is not None:
        url = req.details.get("pr_url") or messages.pr_url(req, web_base)
        return "evaluation of " + slacktext.slack_link(str(url), f"{req.repo}#{req.pr_number}")
    return f"{escape_mrkdwn(req.kind)} in `{req.repo}`"


def request_line(req: Request, web_base: str = "https://github.com") -> str:
    """One line per request: id (linking to its thread), what, state, who, when, runs."""
    rid = f"`{req.id}`"
    if req.root_ts:
        rid = f"<{thread_url(req.channel_id, req.root_ts)}|{req.id}>"
    line = (
        f"• {rid} {what(req, web_base)} — {messages.status_label(req.status)} · "
        f"<@{req.user_id}> · {slack_date(req.created_at)}"
    )
    runs = req.details.get("runs_summary")
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
        f"*Request `{req.id}`*: {what(req, web_base)}, asked by <@{req.user_id}> "
        f"{slack_date(req.created_at)}"
    )
    state = f"*Status:* {messages.status_label(req.status)}"
    if req.error and req.status == "error":
        state += f" — {escape_mrkdwn(req.error)[:500]}"
    if req.details.get("cancelled_by"):
        state += f" by <@{req.details['cancelled_by']}>"
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
    return {"text": f"Request {req.id}: {req.status}", "blocks": blocks}


# -- the commands -----------------------------------------------------------------------------


def evaluate_status(deps: Deps, text: str, channel_id: str) -> str:
    """No argument: the newest evaluations started in this channel. A PR: its evaluations."""
    text = text.strip()
    if not text:
        reqs = deps.store.find(kind="evaluate", channel_id=channel_id, limit=LIMIT)
        return status_list(
            "Latest evaluations in this channel",
            reqs,
            empty="None yet: start one with `/evaluate <pr>`.",
            web_base=deps.web_base,
        )
    try:
        ref = parse_pull_ref(text, allowed_hosts=deps.web_hosts)
        repo = resolve_repo(deps, ref.repo, channel_id)
    except UsageError as exc:
        return f":warning: {exc}\n*Usage:* `/evaluate status` or `/evaluate status <pr>`."
    # Only this channel's requests: a listing must not show what was asked in a private channel.
    reqs = deps.store.find(
        kind="evaluate", repo=repo, pr_number=ref.number, channel_id=channel_id, limit=LIMIT
    )
    return status_list(
        f"Latest evaluations of {repo}#{ref.number} in this channel",
        reqs,
        empty=f"None yet: start one with `/evaluate {repo}#{ref.number}`.",
        web_base=deps.web_base,
    )


def deploy_status(deps: Deps, text: str, channel_id: str) -> str:
    """The newest deploys started in this channel, all or to one environment (only this
    channel's: a listing must not show what was asked in a private channel)."""
    text = text.strip()
    if not text:
        reqs = deps.store.find(kind="deploy", channel_id=channel_id, limit=LIMIT)
        return status_list(
            "Latest deploys in this channel",
            reqs,
            empty="None yet: start one with `/deploy <run-id> [environment]`.",
            web_base=deps.web_base,
        )
    envs = deps.config.commands.deploy.environments
    env = {e.lower(): e for e in envs}.get(text.split()[0].lower())
    if env is None:
        known = ", ".join(f"`{e}`" for e in envs)
        return (
            f":warning: `{escape_mrkdwn(text[:60])}` is not an environment I deploy to. "
            f"Known environments: {known}.\n*Usage:* `/deploy status [environment]`."
        )
    reqs = deps.store.find(kind="deploy", environment=env, channel_id=channel_id, limit=LIMIT)
    return status_list(
        f"Latest deploys to {env} from this channel",
        reqs,
        empty=f"None yet: start one with `/deploy <run-id> {env}`.",
        web_base=deps.web_base,
    )
