"""`/evaluate <pr>`: label the pull request (or dispatch), and follow it in a thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bot import logs
from bot.deps import Deps
from bot.github import (
    GitHubError,
    NotFound,
    NotInstalled,
    PermissionDenied,
    Retryable,
    ValidationFailed,
)
from bot.refs import UsageError, parse_pull_ref
from bot.slack import SlackFailure
from bot.store import ACCEPTED, TRIGGERED, NewRequest, Request
from handlers.common import (
    count_command,
    github_permission_refusal,
    refused,
    resolve_repo,
)
from handlers.help import answer_help_or_status
from handlers.thread import ensure_root, fail, fail_or_wait, retry_or_give_up
from handlers.workflow_run import dispatch_once, settle

log = logging.getLogger(__name__)

Ack = Callable[..., Any]

USAGE = (
    "*Usage:* `/evaluate <pr>` — for example `/evaluate 42`, `/evaluate #42`, "
    "`/evaluate acme/ml-models#42` or `/evaluate https://github.com/acme/ml-models/pull/42`.\n"
    "`/evaluate status [pr]` lists recent evaluations; `/evaluate help` shows this."
)


def usage(deps: Deps, channel_id: str) -> str:
    repo = deps.config.repository_for(channel_id)
    where = (
        f"In this channel, a bare number means a pull request of `{repo}`."
        if repo
        else "No default repository is set for this channel: name it as `owner/repo#42`."
    )
    cmd = deps.config.commands.evaluate
    how = (
        f"I add the label `{cmd.label}` to the pull request; "
        "its labelled workflow runs the evaluation."
        if cmd.trigger == "label"
        else f"I send a `{cmd.event_type}` repository_dispatch event carrying the pull request."
    )
    return f"{USAGE}\n{where}\n{how}"


def handle_command(deps: Deps, command: dict[str, Any], ack: Ack) -> Request | None:
    """Parse, check, store, then ack — all inside Slack's 3 seconds. The rest runs in jobs."""
    text = str(command.get("text") or "").strip()
    user_id = str(command.get("user_id") or "")
    channel_id = str(command.get("channel_id") or "")
    cmd = deps.config.commands.evaluate
    if answer_help_or_status(deps, "evaluate", text, user_id, channel_id, ack):
        return None
    if refused(deps, "evaluate", cmd, user_id, channel_id, ack):
        return None
    try:
        ref = parse_pull_ref(text, allowed_hosts=deps.web_hosts)
        repo = resolve_repo(deps, ref.repo, channel_id)
    except UsageError as exc:
        count_command(deps, "evaluate", "usage_error")
        ack(text=f":warning: {exc}\n{usage(deps, channel_id)}", response_type="ephemeral")
        return None
    req, created = deps.store.create_request(
        NewRequest(
            kind="evaluate",
            repo=repo,
            pr_number=ref.number,
            trigger=cmd.trigger,
            event_type=cmd.event_type if cmd.trigger == "dispatch" else None,
            channel_id=channel_id,
            user_id=user_id,
            response_url=command.get("response_url"),
            # Slack's trigger_id is unique per invocation: a retried delivery maps to one request.
            idempotency_key=f"slack:{command.get('trigger_id') or command.get('response_url')}",
        ),
        audit_action="evaluate.requested",
        audit_detail=f"{repo}#{ref.number}",
    )
    logs.bind(request_id=req.id)
    count_command(deps, "evaluate", "accepted" if created else "duplicate")
    ack(
        text=f":hourglass_flowing_sand: On it: evaluation of `{repo}#{ref.number}` "
        f"(request `{req.id}`). I'll follow it in a thread in this channel.",
        response_type="ephemeral",
    )
    if created:
        deps.jobs.submit(req.id)
    return req


def carry_out(deps: Deps, req: Request) -> None:
    """Idempotent steps of an accepted /evaluate; safe to run again after a crash at any point."""
    cmd = deps.config.commands.evaluate
    assert req.pr_number is not None
    try:
        # A scheduled evaluation was set up in chatops.yml by an operator: no person to check.
        scheduled = bool(req.details.get("schedule"))
        refusal = None if scheduled else github_permission_refusal(deps, cmd, req.repo, req.user_id)
        if refusal:
            fail(deps, req, refusal)
            return
        pull = deps.github.get_pull(req.repo, req.pr_number)
    except Retryable as exc:
        retry_or_give_up(deps, req, exc)
        return
    except NotInstalled as exc:
        fail(deps, req, exc.message)
        return
    except NotFound:
        fail(
            deps,
            req,
            f"{req.repo}#{req.pr_number} does not exist (or the App cannot see it).",
            hint="Check the number and the repository, e.g. `/evaluate owner/repo#42`.",
        )
        return
    except GitHubError as exc:
        fail(deps, req, exc.message)
        return
    if pull.state != "open":
        state = "merged" if pull.merged else "closed"
        fail(
            deps,
            req,
            f"{req.repo}#{req.pr_number} is {state}; only open pull requests are evaluated.",
        )
        return
    if req.action_started_at is not None:
        pass  # a previous attempt acted on the stored head SHA: keep it (new pushes are warned)
    elif req.head_sha != pull.head_sha or not req.details.get("pr_title"):
        deps.store.update(req.id, head_sha=pull.head_sha)
        deps.store.merge_details(
            req.id, {"pr_title": pull.title, "pr_url": pull.html_url, "head_ref": pull.head_ref}
        )
        req = deps.store.get(req.id) or req
    try:
        req = ensure_root(deps, req)
    except SlackFailure as exc:
        fail_or_wait(deps, req, exc)
        return
    try:
        if cmd.trigger == "label":
            _apply_label(deps, req, cmd.label)
        else:
            dispatch_once(deps, req, cmd.event_type, dispatch_payload(req))
    except Retryable as exc:
        retry_or_give_up(deps, req, exc)
        return
    except (PermissionDenied, ValidationFailed, NotFound, GitHubError) as exc:
        fail(deps, req, exc.message)
        return
    if deps.store.update(req.id, only_if_status=(ACCEPTED,), status=TRIGGERED):
        deps.store.audit(
            actor="bridge",
            action="evaluate.triggered",
            outcome="ok",
            request_id=req.id,
            detail=cmd.trigger,
        )
    settle(deps, req)


def _apply_label(deps: Deps, req: Request, label: str) -> None:
    """Label the PR so its labelled workflow runs once, even when attempts repeat after a crash.

    GitHub fires no `labeled` event for a label already on the PR, so an old label is removed
    and added again. details["label"] records what the first attempt saw ("had") and how far it
    got ("removed"), so a repeat can tell its own label from an old one:
    label absent → add it; present and ours (not there before, or the old one was removed) →
    done, adding again would start a second run; present and still the old one → remove, add.
    """
    n = req.pr_number
    assert n is not None
    present = label in deps.github.labels(req.repo, n)
    plan = req.details.get("label")
    if plan is None:
        plan = {"had": present, "removed": False}
        deps.store.merge_details(req.id, {"label": plan})
        deps.store.update(req.id, action_started_at=deps.clock())
    elif present and (not plan.get("had") or plan.get("removed")):
        return
    if present:
        deps.github.remove_label(req.repo, n, label)
        deps.store.merge_details(req.id, {"label": {"had": True, "removed": True}})
    deps.github.add_label(req.repo, n, label)


def dispatch_payload(req: Request) -> dict[str, Any]:
    """≤ 10 keys; request_id lets the workflow name its run and tell repeats apart."""
    return {
        "request_id": req.id,
        "pr_number": req.pr_number,
        "head_sha": req.head_sha,
        "requested_by": req.user_id,
        "slack_channel": req.channel_id,
        "slack_thread_ts": req.root_ts,
    }
