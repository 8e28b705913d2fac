"""`/evaluate <pr>`: label the pull request (or dispatch), and follow it in a thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypedDict, cast

from bot import messages, slacktext
from bot.config import Access
from bot.deps import Deps
from bot.github import (
    GitHubError,
    NotFound,
    NotInstalled,
    Retryable,
)
from bot.messages import status_label
from bot.model import ACCEPTED, DUPLICATE, NewRequest, Request
from bot.refs import UsageError, parse_pull_ref
from bot.slack import SlackFailure
from bot.slacktext import escape_mrkdwn
from bot.store import AuditLine
from handlers import details, schedules
from handlers.common import (
    accept,
    admitted,
    answer_usage,
    count_command,
    github_permission_refusal,
    resolve_repo,
)
from handlers.kinds import RequestKind
from handlers.lifecycle import (
    dispatch_once,
    ensure_root,
    fail,
    fail_or_wait,
    retry_or_give_up,
    trigger,
)
from handlers.schedules import USER_ID as SCHEDULE_USER
from handlers.status import LIMIT, status_list, thread_url

log = logging.getLogger(__name__)

Ack = Callable[..., Any]


class LabelPlan(TypedDict):
    """What the first labelling attempt saw (`had` the label) and how far it got."""

    had: bool
    removed: bool


class MetricsEntry(TypedDict, total=False):
    """A trusted metrics comment relayed into an evaluation's thread (handlers/comments.py),
    kept so a deploy card can show the newest one for its run's commit."""

    id: int | None
    comment_url: str
    author: str
    author_type: str
    author_association: str
    trusted_as: str
    created_at: str
    commit: str | None  # the commit the comment names, else the PR head evaluated
    body: str


class EvaluateDetails(TypedDict, total=False):
    pr_title: str
    pr_url: str
    head_ref: str
    label: LabelPlan  # see _apply_label
    duplicate_of: str  # the request that holds the same PR + head SHA
    duplicate_sha: str
    metrics_comments: list[MetricsEntry]


def details_of(req: Request) -> EvaluateDetails:
    return cast(EvaluateDetails, req.details)


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
    cmd = deps.config.commands.evaluate
    inv = admitted(deps, "evaluate", cmd, command, ack)
    if inv is None:
        return None
    try:
        ref = parse_pull_ref(inv.text, allowed_hosts=deps.web_hosts)
        repo = resolve_repo(deps, ref.repo, inv.channel_id)
    except UsageError as exc:
        answer_usage(deps, "evaluate", exc, usage(deps, inv.channel_id), ack)
        return None
    new = NewRequest(
        kind="evaluate",
        repo=repo,
        pr_number=ref.number,
        trigger=cmd.trigger,
        event_type=cmd.event_type if cmd.trigger == "dispatch" else None,
        channel_id=inv.channel_id,
        user_id=inv.user_id,
        response_url=inv.response_url,
        idempotency_key=inv.idempotency_key,
    )
    # The PR is read after the ack: say only what is known (the thread root, or "does not
    # exist", follows without contradicting it).
    return accept(
        deps,
        "evaluate",
        new,
        ack,
        lambda req: (
            f":hourglass_flowing_sand: Checking `{repo}#{ref.number}`… (request `{req.id}`)"
        ),
        audit_action="evaluate.requested",
        audit_detail=f"{repo}#{ref.number}",
    )


def carry_out(deps: Deps, req: Request) -> None:
    """Idempotent steps of an accepted /evaluate; safe to run again after a crash at any point."""
    cmd = deps.config.commands.evaluate
    assert req.pr_number is not None
    try:
        # A scheduled evaluation was set up in chatops.yml by an operator: no person to check.
        scheduled = schedules.scheduled(req)
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
    if req.action_started_at is None:
        # One evaluation per repository + PR + head SHA in flight. The check sits here, after
        # the PR read and before the root and the label, because the head SHA is only known
        # now: reading it before the ack would put a GitHub call inside Slack's 3 seconds, and
        # refusing at intake by PR alone would also refuse evaluating a new push while the old
        # head is still running (which on_synchronize tells people to do). take_head is atomic,
        # so under any burst exactly one request per SHA goes on to post a root and label; the
        # others end here, having done nothing, and their requesters are sent to its thread.
        # (A previous attempt that started the label keeps its stored SHA: it holds it.)
        # The PR's facts are stored with the head SHA (one commit), unless an earlier attempt
        # stored them; the request comes back as committed.
        facts = (
            None
            if details_of(req).get("pr_title")
            else EvaluateDetails(pr_title=pull.title, pr_url=pull.html_url, head_ref=pull.head_ref)
        )
        holder, current = deps.store.take_head(req, pull.head_sha, facts)
        if holder is not None:
            _settle_as_duplicate(deps, req, holder, pull.head_sha)
            return
        req = current or req
    try:
        req = ensure_root(deps, req)
    except SlackFailure as exc:
        fail_or_wait(deps, req, exc)  # raises when Slack is down: the job layer waits
        _tell_duplicates(deps, req)
        return
    _tell_duplicates(deps, req)

    def start_runs() -> None:
        if cmd.trigger == "label":
            _apply_label(deps, req, cmd.label, present=cmd.label in pull.labels)
        else:
            dispatch_once(deps, req, cmd.event_type, dispatch_payload(req))

    trigger(
        deps,
        req,
        start_runs,
        from_statuses=(ACCEPTED,),
        action="evaluate.triggered",
        detail=cmd.trigger,
    )


def _settle_as_duplicate(deps: Deps, req: Request, holder: Request, head_sha: str) -> None:
    """End `req` without a root or a label: `holder` evaluates the same PR and SHA already."""
    marked = {**req.details, **EvaluateDetails(duplicate_of=holder.id, duplicate_sha=head_sha)}
    if not deps.store.update(
        req.id,
        only_if_status=(ACCEPTED,),
        status=DUPLICATE,
        details=marked,
        finished_at=deps.clock(),
        audit=AuditLine("bridge", "evaluate.duplicate", DUPLICATE, holder.id),
    ):
        return  # cancelled meanwhile: nothing to tell
    count_command(deps, "evaluate", "already_running")
    # Settled first, then the holder's root looked up; the holder posts its root first, then
    # looks for duplicates (_tell_duplicates). Whichever comes second sees the other's write,
    # so the requester is told once (the tell's key) — with the thread link when there is one.
    current = deps.store.get(holder.id) or holder
    if current.root_ts or not current.is_open:
        _tell_already_running(deps, deps.store.get(req.id) or req, current)


def _tell_duplicates(deps: Deps, holder: Request) -> None:
    """The holder's root exists now (or never will): tell the duplicates that waited for it."""
    assert holder.pr_number is not None
    for dup in deps.store.find(
        repo=holder.repo,
        pr_number=holder.pr_number,
        kind="evaluate",
        statuses=(DUPLICATE,),
        since=holder.created_at - 3600,
        limit=200,
    ):
        if details_of(dup).get("duplicate_of") == holder.id:
            _tell_already_running(deps, dup, holder)


def _tell_already_running(deps: Deps, dup: Request, holder: Request) -> None:
    if not deps.store.first_time(f"{dup.id}:already-running"):
        return
    sha = str(details_of(dup).get("duplicate_sha") or holder.head_sha or "")[:7]
    what = f"`{dup.repo}#{dup.pr_number}` at `{sha}`"
    if holder.root_ts:
        link = f"<{thread_url(holder.channel_id, holder.root_ts)}|request {holder.id}>"
        text = (
            f":eyes: An evaluation of {what} is already running — see the thread: {link}. "
            "(If it is stuck, whoever started it can `@chatops-bridge cancel` it there.)"
        )
    elif holder.is_open:  # only when the root post failed and will be retried
        text = f":eyes: An evaluation of {what} is already running (request `{holder.id}`)."
    else:
        text = (
            f":eyes: An evaluation of {what} was already starting (request `{holder.id}`) and "
            f"ended: {status_label(holder.status)}. Run `/evaluate` again to retry."
        )
    text += f" Your request `{dup.id}` did not start another one."
    if dup.user_id == SCHEDULE_USER:
        log.info("scheduled evaluation already running", extra={"request_id": dup.id})
        return
    try:
        if dup.response_url:
            deps.slack.respond(dup.response_url, text)
        else:  # a rerun from a thread: no response_url
            deps.slack.ephemeral(dup.channel_id, dup.user_id, text, thread_ts=holder.root_ts)
    except SlackFailure as exc:
        log.warning("could not tell a duplicate", extra={"request_id": dup.id, "error": exc.error})


def _apply_label(deps: Deps, req: Request, label: str, *, present: bool) -> None:
    """Label the PR so its labelled workflow runs once, even when attempts repeat after a crash.

    GitHub fires no `labeled` event for a label already on the PR, so an old label is removed
    and added again. details["label"] records what the first attempt saw ("had") and how far it
    got ("removed"), so a repeat can tell its own label from an old one:
    label absent → add it; present and ours (not there before, or the old one was removed) →
    done, adding again would start a second run; present and still the old one → remove, add.

    `present` comes from the PR as this attempt read it (its `labels`), moments before (the
    root message is posted in between). A separate read of the labels here cost a GitHub call
    per evaluation; a label someone changes by hand between the read and the write was missed
    with it too, in a shorter window. Removing a label already gone counts as done
    (`GitHubApp.remove_label`); adding one already there fires no event, as before.
    """
    n = req.pr_number
    assert n is not None
    plan = details_of(req).get("label")
    if plan is None:
        plan = LabelPlan(had=present, removed=False)
        deps.store.update_and_merge(
            req.id, EvaluateDetails(label=plan), action_started_at=deps.clock()
        )
    elif present and (not plan.get("had") or plan.get("removed")):
        return
    if present:
        deps.github.remove_label(req.repo, n, label)
        details.merge(deps, req.id, EvaluateDetails(label=LabelPlan(had=True, removed=True)))
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


def access(deps: Deps) -> Access:
    return deps.config.commands.evaluate


def what(req: Request, web_base: str) -> str:
    """An evaluation in a few words: "evaluation of acme/ml#42" (linked)."""
    if req.pr_number is None:
        return f"{escape_mrkdwn(req.kind)} in `{req.repo}`"
    url = details_of(req).get("pr_url") or messages.pr_url(req, web_base)
    return "evaluation of " + slacktext.slack_link(str(url), f"{req.repo}#{req.pr_number}")


def root(deps: Deps, req: Request) -> messages.Message:
    """The thread root; a scheduled evaluation's says which schedule fired it."""
    if schedules.scheduled(req):
        url = details_of(req).get("pr_url") or messages.pr_url(req, deps.web_base)
        head = f" at `{req.head_sha[:7]}`" if req.head_sha else ""
        line = f"Evaluation of {slacktext.slack_link(url, f'{req.repo}#{req.pr_number}')}{head}"
        return schedules.root(deps, req, what=line)
    return messages.evaluate_root(req, web_base=deps.web_base)


def rerun_text(req: Request) -> str | None:
    """`/evaluate` text that asks for the same evaluation again."""
    return f"{req.repo}#{req.pr_number}" if req.pr_number is not None else None


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


KIND = RequestKind(
    name="evaluate",
    command="/evaluate",
    arguments="<pr>",
    access=access,
    handle_command=handle_command,
    usage=usage,
    status_list=evaluate_status,
    carry_out=carry_out,
    root=root,
    what=what,
    rerun_text=rerun_text,
    workflow=lambda deps: deps.config.commands.evaluate.workflow,
)
