"""`/deploy <run-id> [environment]`: an approval card in Slack, then `repository_dispatch`.

Life of a deploy request (statuses from bot/store.py)::

    /deploy ──▶ pending_approval ──(enough approvals)──▶ approved ──(dispatch)──▶ triggered ─▶ …
        │             ├──(Reject + modal)──▶ rejected
        │             └──(deadline passed)──▶ expired
        └─ no policy for the environment ──▶ approved

Every decision is one conditional UPDATE from `pending_approval`, so concurrent clicks, the
expiry job and a click after a restart agree on exactly one outcome. The card's buttons carry
only the request id; everything else is read from the database at click time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bot import logs, messages
from bot.config import Access, ApprovalPolicy
from bot.deps import Deps
from bot.github import GitHubError, NotFound, Retryable
from bot.markdown import escape_mrkdwn, render_comment
from bot.provenance import newest, same_commit, trusted_as
from bot.refs import UsageError, parse_deploy_args
from bot.slack import SlackFailure
from bot.store import APPROVED, EXPIRED, PENDING_APPROVAL, REJECTED, TRIGGERED, NewRequest, Request
from handlers.common import (
    count_command,
    github_permission_refusal,
    refused,
    resolve_repo,
)
from handlers.help import answer_help_or_status
from handlers.thread import ensure_root, fail, fail_or_wait, refresh_root, retry_or_give_up
from handlers.workflow_run import dispatch_once, settle

log = logging.getLogger(__name__)

Ack = Callable[..., Any]
Message = messages.Message

ACTION_APPROVE = "deploy_approve"
ACTION_REJECT = "deploy_reject"
VIEW_REJECT = "deploy_reject_reason"
DECISION_BLOCK = "deploy_decision"
# Said on the card, the ack and the audit when an environment has `approval: none`.
NO_APPROVAL = "no approval required by config"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"
EXPIRY_JOB = "deploy-expiry"
EXPIRY_EVERY_SECONDS = 15
GITHUB_RUN_ID = re.compile(r"^[1-9][0-9]{0,19}$")

USAGE = (
    "*Usage:* `/deploy <run-id> [environment]` — for example `/deploy 9876543210`, "
    "`/deploy 9876543210 staging`, `/deploy acme/ml-models@9876543210` or "
    "`/deploy https://github.com/acme/ml-models/actions/runs/9876543210`.\n"
    "A GitHub workflow run id shows the run's facts on the approval card; any other run id "
    "(an MLflow or W&B run, say) is passed to the deploy workflow as it is.\n"
    "`/deploy status [environment]` lists recent deploys; `/deploy help` shows this."
)


# -- the command ----------------------------------------------------------------------------


def usage(deps: Deps, channel_id: str) -> str:
    cmd = deps.config.commands.deploy
    repo = deps.config.repository_for(channel_id)
    where = (
        f"In this channel, a bare run id means a run of `{repo}`."
        if repo
        else "No default repository is set for this channel: name it as `owner/repo@<run-id>`."
    )
    envs = ", ".join(f"`{e}`" for e in cmd.environments)
    return (
        f"{USAGE}\n{where}\nEnvironments: {envs} (default `{cmd.default_environment}`). "
        f"Once approved I send a `{cmd.event_type}` repository_dispatch event."
    )


def _environment(deps: Deps, given: str | None) -> str | None:
    """The configured environment a user meant (GitHub compares names case-insensitively)."""
    cmd = deps.config.commands.deploy
    if given is None:
        return cmd.default_environment
    by_lower = {name.lower(): name for name in cmd.environments}
    return by_lower.get(given.lower())


def handle_command(deps: Deps, command: dict[str, Any], ack: Ack) -> Request | None:
    """Parse, check, store, then ack — inside Slack's 3 seconds. GitHub and the card: jobs."""
    text = str(command.get("text") or "").strip()
    user_id = str(command.get("user_id") or "")
    channel_id = str(command.get("channel_id") or "")
    cmd = deps.config.commands.deploy
    if answer_help_or_status(deps, "deploy", text, user_id, channel_id, ack):
        return None
    if refused(deps, "deploy", cmd, user_id, channel_id, ack):
        return None
    try:
        args = parse_deploy_args(text, allowed_hosts=deps.web_hosts)
        repo = resolve_repo(deps, args.repo, channel_id)
    except UsageError as exc:
        count_command(deps, "deploy", "usage_error")
        ack(text=f":warning: {exc}\n{usage(deps, channel_id)}", response_type="ephemeral")
        return None
    environment = _environment(deps, args.environment)
    if environment is None:
        count_command(deps, "deploy", "usage_error", why="unknown_environment")
        known = ", ".join(f"`{e}`" for e in cmd.environments)
        ack(
            text=f":warning: `{args.environment}` is not an environment I deploy to. "
            f"Known environments: {known} (`commands.deploy.environments` in chatops.yml).",
            response_type="ephemeral",
        )
        return None
    if cmd.approval_for(environment) is None:
        # Only when chatops.yml has no commands.deploy at all (start-up refuses a deploy section
        # without a policy): never deploy without approval by omission.
        count_command(deps, "deploy", "refused")
        ack(
            text=f":no_entry: `/deploy` is not set up: {cmd.missing_policy_text([environment])}. "
            "Ask an admin of this bridge to add it to chatops.yml.",
            response_type="ephemeral",
        )
        return None
    policy = cmd.policy_for(environment)
    now = deps.clock()
    req, created = deps.store.create_request(
        NewRequest(
            kind="deploy",
            repo=repo,
            trigger="dispatch",
            run_ref=args.run_id,
            environment=environment,
            event_type=cmd.event_type,
            channel_id=channel_id,
            user_id=user_id,
            response_url=command.get("response_url"),
            status=PENDING_APPROVAL if policy else APPROVED,
            expires_at=now + policy.expires_after_minutes * 60 if policy else None,
            idempotency_key=f"slack:{command.get('trigger_id') or command.get('response_url')}",
        ),
        audit_action="deploy.requested",
        audit_detail=f"{repo} run {args.run_id} to {environment}"
        + ("" if policy else f"; {NO_APPROVAL}"),
    )
    logs.bind(request_id=req.id)
    count_command(deps, "deploy", "accepted" if created else "duplicate")
    what = f"deploy of run `{req.run_ref}` to *{req.environment}* in `{req.repo}`"
    if req.status == PENDING_APPROVAL and policy is not None:
        who = who_can_approve(policy, exclude=_self(policy, user_id))
        said = (
            f":raised_hand: Asked for approval: {what} (request `{req.id}`). The approval card "
            f"will appear in this channel; {who} can "
            f"approve it within {policy.expires_after_minutes} minutes."
        )
    else:
        said = (
            f":rocket: On it: {what} (request `{req.id}`); {NO_APPROVAL} "
            "(`approval: none`). I'll follow it in a thread in this channel."
        )
    ack(text=said, response_type="ephemeral")
    if created:
        deps.jobs.submit(req.id)
    return req


# -- the worker -----------------------------------------------------------------------------


def carry_out(deps: Deps, req: Request) -> None:
    """The job's steps, each safe to repeat: facts and card (once), then the dispatch (once).

    Claimed for `approved` requests and for `pending_approval` ones whose card is not posted
    yet (bot/store.py `_needs_work`); a pending request with a card waits for a click.
    """
    if req.status == PENDING_APPROVAL and req.root_ts:
        return
    if not req.root_ts:
        posted = _post_card(deps, req)
        if posted is None:
            return
        # A click may have approved the request while the card was being posted.
        req = deps.store.get(req.id) or posted
    if req.status == APPROVED:
        _dispatch(deps, req)


def _post_card(deps: Deps, req: Request) -> Request | None:
    cmd = deps.config.commands.deploy
    try:
        refusal = github_permission_refusal(deps, cmd, req.repo, req.user_id)
        if refusal:
            fail(deps, req, refusal)
            return None
        if not req.details.get("facts_checked"):
            _gather_facts(deps, req)
            req = deps.store.get(req.id) or req
    except Retryable as exc:
        retry_or_give_up(deps, req, exc)
        return None
    except NotFound:
        fail(
            deps,
            req,
            f"Workflow run {req.run_ref} was not found in {req.repo}.",
            hint="Check the run id, or name the repository: `/deploy owner/repo@<run-id>`.",
        )
        return None
    except GitHubError as exc:
        fail(deps, req, exc.message)
        return None
    try:
        return ensure_root(deps, req)
    except SlackFailure as exc:
        fail_or_wait(deps, req, exc)
        return None


def _gather_facts(deps: Deps, req: Request) -> None:
    """What the card shows about a GitHub run: its facts, its PR's head, relayed metrics."""
    facts: dict[str, Any] = {"facts_checked": True}
    if req.run_ref and GITHUB_RUN_ID.match(req.run_ref):
        run = deps.github.get_run(req.repo, int(req.run_ref))
        facts["run"] = {
            "name": run.name,
            "url": run.html_url,
            "branch": run.head_branch,
            "sha": run.head_sha,
            "status": run.status,
            "conclusion": run.conclusion,
        }
        # A run's commit can fall behind its PR, or (a run of a branch) behind its branch.
        for number in run.pull_numbers[:1]:
            pull = deps.github.get_pull(req.repo, number)
            facts["pr_head"] = {"number": number, "sha": pull.head_sha, "url": pull.html_url}
        if not run.pull_numbers and run.head_branch:
            head = deps.github.branch_head(req.repo, run.head_branch)
            if head:
                facts["branch_head"] = {"branch": run.head_branch, "sha": head}
        metrics = _relayed_metrics(deps, req.repo, run.head_sha, run.pull_numbers[:1])
        if metrics:
            facts["metrics"] = metrics
        deps.store.update(req.id, head_sha=run.head_sha or None)
    deps.store.merge_details(req.id, facts)


def _relayed_metrics(
    deps: Deps, repo: str, sha: str, pull_numbers: Sequence[int]
) -> dict[str, Any] | None:
    """The newest metrics comment for exactly this commit from an author trusted now, with how
    many there were; None when there is none. Entries recorded before provenance was kept
    (no "trusted_as") are not shown: nobody checked who wrote them."""
    if not sha:
        return None
    evaluations = deps.store.find(repo=repo, head_sha=sha, kind="evaluate", limit=20)
    for number in pull_numbers:  # a comment may name this commit after the PR moved on
        evaluations += deps.store.find(repo=repo, pr_number=number, kind="evaluate", limit=20)
    found: dict[Any, dict[str, Any]] = {}
    for other in evaluations:
        for entry in other.details.get("metrics_comments") or []:
            if not isinstance(entry, dict) or not entry.get("body") or not entry.get("trusted_as"):
                continue
            if not same_commit(str(entry.get("commit") or ""), sha):
                continue
            author = {"login": entry.get("author"), "type": entry.get("author_type")}
            comment = {"user": author, "author_association": entry.get("author_association")}
            if trusted_as(deps.config.metrics, comment) is None:
                continue  # the operator no longer trusts this author
            found[entry.get("id") or entry.get("comment_url")] = entry
    best = newest(list(found.values()))
    if best is None:
        return None
    earlier = sorted(
        (e for e in found.values() if e is not best),
        key=lambda e: (str(e.get("created_at") or ""), int(e.get("id") or 0)),
        reverse=True,
    )
    return {
        **{k: best.get(k) for k in ("id", "comment_url", "author", "trusted_as", "created_at")},
        "body": best.get("body"),
        "head_sha": sha,
        "count": len(found),
        "earlier": [
            {"comment_url": e.get("comment_url"), "author": e.get("author")} for e in earlier[:5]
        ],
    }


def _dispatch(deps: Deps, req: Request) -> None:
    """repository_dispatch once: approved → (action_started_at) → POST → triggered.

    Only the lease holder gets here, and only from `approved`. A crash (or a lost answer)
    between the POST and the status change leaves `approved` with action_started_at set; the
    retry first looks for a run titled with this request id and, when there is none, sends
    the same payload again — the same request_id, which the deploy workflow recognises.
    """
    event_type = req.event_type or deps.config.commands.deploy.event_type
    try:
        dispatch_once(deps, req, event_type, dispatch_payload(deps, req))
    except Retryable as exc:
        retry_or_give_up(deps, req, exc)
        return
    except GitHubError as exc:
        fail(deps, req, exc.message)
        return
    if deps.store.update(req.id, only_if_status=(APPROVED,), status=TRIGGERED):
        deps.store.audit(
            actor="bridge",
            action="deploy.dispatched",
            outcome="ok",
            request_id=req.id,
            detail=f"{event_type} to {req.repo}, run {req.run_ref}, {req.environment}",
        )
    settle(deps, req)


def approved_by(req: Request, required: int, approvals: list[str]) -> list[str]:
    """Who decided, in approval order: the click that completed the approval plus the earliest
    other approvals (a concurrent click that came too late is recorded, but not counted)."""
    if not req.decided_by:
        return []
    others = [u for u in approvals if u != req.decided_by][: max(required - 1, 0)]
    chosen = [u for u in approvals if u in others or u == req.decided_by]
    return chosen if req.decided_by in chosen else [*chosen, req.decided_by]


def approvers_for_payload(deps: Deps, req: Request) -> list[str]:
    policy = deps.config.commands.deploy.policy_for(req.environment or "")
    required = policy.required if policy else 1
    return approved_by(req, required, deps.store.approvers_of(req.id))


def dispatch_payload(deps: Deps, req: Request) -> dict[str, Any]:
    """Exactly these 7 keys (GitHub allows 10). approved_by: comma-separated Slack user ids,
    empty when the environment needs no approval."""
    return {
        "request_id": req.id,
        "run_id": req.run_ref,
        "environment": req.environment,
        "requested_by": req.user_id,
        "approved_by": ",".join(approvers_for_payload(deps, req)),
        "slack_channel": req.channel_id,
        "slack_thread_ts": req.root_ts,
    }


# -- approval policy ------------------------------------------------------------------------


def who_can_approve(policy: ApprovalPolicy, *, exclude: str | None = None) -> str:
    people = [f"<@{u}>" for u in policy.approvers if u != exclude]
    groups = [f"members of <!subteam^{g}>" for g in policy.approver_usergroups]
    names = people + groups
    if not names:
        return "nobody else"
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _self(policy: ApprovalPolicy, requester: str) -> str | None:
    """The requester, when the policy does not let them approve their own deploy."""
    return None if policy.allow_self_approval else requester


def _is_listed(deps: Deps, policy: ApprovalPolicy, user_id: str) -> bool:
    if user_id in policy.approvers:
        return True
    for group in policy.approver_usergroups:
        try:
            if user_id in deps.slack.usergroup_members(group):
                return True
        except SlackFailure as exc:
            log.warning("usergroup lookup failed", extra={"group": group, "error": exc.error})
    return False


def approval_refusal(
    deps: Deps, req: Request, policy: ApprovalPolicy | None, user_id: str
) -> str | None:
    """Why this person may not approve this request, or None when they may."""
    env = req.environment or "?"
    if policy is None:
        return f"*{env}*: {NO_APPROVAL}, so there is nothing to approve."
    if not _is_listed(deps, policy, user_id):
        return (
            f"You cannot approve deploys to *{env}* (rule `approvers` / `approver_usergroups`). "
            f"{_capital(who_can_approve(policy, exclude=_self(policy, req.user_id)))} can."
        )
    if user_id == req.user_id and not policy.allow_self_approval:
        return (
            "You asked for this deploy, so someone else must approve it (rule "
            f"`allow_self_approval: false`): {who_can_approve(policy, exclude=user_id)}."
        )
    if policy.require_github_permission:
        rule = Access(require_github_permission=policy.require_github_permission)
        try:
            refusal = github_permission_refusal(deps, rule, req.repo, user_id)
        except GitHubError as exc:
            return f"I could not check your GitHub permission ({exc.message}). Try again."
        if refusal:
            return f"To approve: {refusal}"
    return None


def rejection_refusal(
    deps: Deps, req: Request, policy: ApprovalPolicy | None, user_id: str
) -> str | None:
    """The requester may withdraw; approvers may reject. Everyone else is told who can."""
    if user_id == req.user_id or (policy is not None and _is_listed(deps, policy, user_id)):
        return None
    who = who_can_approve(policy) if policy else "nobody"
    return (
        f"Only <@{req.user_id}> (who asked) or an approver ({who}) can reject this deploy "
        "(rule `approvers` / `approver_usergroups`)."
    )


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _policy(deps: Deps, req: Request) -> ApprovalPolicy | None:
    return deps.config.commands.deploy.policy_for(req.environment or "")


# -- clicks and the modal -------------------------------------------------------------------


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


def _whisper(deps: Deps, req: Request | None, click: Click, text: str) -> None:
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
        now = f" (now {req.status})" if req.status != APPROVED else ""
        return f"already approved by <@{req.decided_by}>{now}"
    return f"already {req.status}"


def expire(deps: Deps, req: Request) -> bool:
    """pending_approval → expired, once; edits the card. False when something else came first."""
    if not deps.store.update(
        req.id, only_if_status=(PENDING_APPROVAL,), status=EXPIRED, finished_at=deps.clock()
    ):
        return False
    deps.store.audit(
        actor="bridge",
        action="deploy.expired",
        outcome="expired",
        request_id=req.id,
        detail=f"no decision by {messages.hhmm(req.expires_at or deps.clock())}",
    )
    refresh_root(deps, req)
    return True


def expire_due(deps: Deps) -> int:
    """The scheduled job: expire every pending approval past its deadline (catches up)."""
    n = 0
    for req in deps.store.expired_approvals(deps.clock()):
        if expire(deps, req):
            n += 1
    return n


def _pending(deps: Deps, click: Click) -> Request | None:
    """The clicked request if a decision can still be made; else tell the clicker why not."""
    req = deps.store.get(click.request_id) if click.request_id else None
    if req is None or req.kind != "deploy":
        _whisper(deps, None, click, "I have no record of this deploy request.")
        return None
    logs.bind(request_id=req.id)  # the click's log lines name the request from here on
    expires_at = req.expires_at
    if req.status == PENDING_APPROVAL and expires_at is not None and expires_at <= deps.clock():
        expire(deps, req)
        req = deps.store.get(req.id) or req
    if req.status != PENDING_APPROVAL:
        _whisper(deps, req, click, f"This deploy request is {state_words(req)}.")
        return None
    return req


def on_approve(deps: Deps, body: dict[str, Any]) -> None:
    """Approve button (after ack): one approval row per person, one winning status change."""
    click = parse_click(body)
    req = _pending(deps, click)
    if req is None:
        return
    policy = _policy(deps, req)
    refusal = approval_refusal(deps, req, policy, click.user_id)
    if refusal or policy is None:
        # Who tried to approve a production deploy and was refused is part of the trail.
        deps.store.audit(
            actor=click.user_id,
            action="deploy.approval",
            outcome="refused",
            request_id=req.id,
            detail=str(refusal or "no approval policy")[:500],
        )
        _whisper(deps, req, click, f":no_entry: {refusal}")
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
        _whisper(deps, current, click, said)
        return
    count = len(deps.store.approvers_of(req.id))
    if count < policy.required:
        current = deps.store.get(req.id) or req
        if current.status != PENDING_APPROVAL:
            # Rejected or expired between the check above and this approval: not counted.
            deps.store.remove_approval(req.id, click.user_id)
            _whisper(deps, current, click, f"This deploy request is {state_words(current)}.")
            return
        deps.store.audit(
            actor=click.user_id,
            action="deploy.approval",
            outcome=f"{count} of {policy.required}",
            request_id=req.id,
        )
        refresh_root(deps, req)
        _whisper(
            deps,
            req,
            click,
            f":+1: Your approval is recorded: {count} of {policy.required}; "
            f"{policy.required - count} more needed.",
        )
        return
    won = deps.store.update(
        req.id,
        only_if_status=(PENDING_APPROVAL,),
        status=APPROVED,
        decided_by=click.user_id,
        decided_at=deps.clock(),
    )
    if not won:
        current = deps.store.get(req.id) or req
        _whisper(deps, current, click, f"This deploy request is {state_words(current)}.")
        return
    deps.store.audit(
        actor=click.user_id,
        action="deploy.approved",
        outcome="approved",
        request_id=req.id,
        detail=f"{count} of {policy.required}",
    )
    refresh_root(deps, req)
    deps.jobs.submit(req.id)


def on_reject_click(deps: Deps, body: dict[str, Any]) -> None:
    """Reject button (after ack): open the reason modal at once (trigger_id lives 3 s)."""
    click = parse_click(body)
    req = _pending(deps, click)
    if req is None:
        return
    refusal = rejection_refusal(deps, req, _policy(deps, req), click.user_id)
    if refusal:
        _whisper(deps, req, click, f":no_entry: {refusal}")
        return
    if not click.trigger_id:
        _whisper(deps, req, click, "Slack sent no trigger id for this click; click Reject again.")
        return
    try:
        deps.slack.open_view(click.trigger_id, reject_modal(req))
    except SlackFailure as exc:
        _whisper(
            deps, req, click, f"Slack did not open the form ({exc.error}); click Reject again."
        )


def on_reject_submit(deps: Deps, body: dict[str, Any], view: dict[str, Any], ack: Ack) -> None:
    """The modal's submit: a conditional pending → rejected, or an error shown in the modal."""
    user_id = str((body.get("user") or {}).get("id") or "")
    reason = _reason(view)
    req = deps.store.get(str(view.get("private_metadata") or ""))
    if req is None or req.kind != "deploy":
        ack(response_action="errors", errors={REASON_BLOCK: "This deploy request is unknown."})
        return
    logs.bind(request_id=req.id)  # the submission's log lines name the request from here on
    if req.status == PENDING_APPROVAL and (req.expires_at or float("inf")) <= deps.clock():
        expire(deps, req)
        req = deps.store.get(req.id) or req
    refusal = rejection_refusal(deps, req, _policy(deps, req), user_id)
    if refusal:
        ack(response_action="errors", errors={REASON_BLOCK: _plain(refusal)})
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
    )
    if not won:
        current = deps.store.get(req.id) or req
        words = _plain(f"This deploy request is {state_words(current)}.")
        ack(response_action="errors", errors={REASON_BLOCK: words})
        return
    ack()
    deps.store.audit(
        actor=user_id,
        action="deploy.rejected",
        outcome="rejected",
        request_id=req.id,
        detail=reason,
    )
    refresh_root(deps, req)


def _reason(view: dict[str, Any]) -> str:
    values = ((view.get("state") or {}).get("values") or {}).get(REASON_BLOCK) or {}
    value = (values.get(REASON_INPUT) or {}).get("value")
    return str(value or "").strip()[:500]


def _plain(text: str) -> str:
    """Modal errors are plain text: turn <@U123> into @U123 and drop formatting marks."""
    text = re.sub(r"<@([A-Z0-9]+)>", r"@\1", text)
    text = re.sub(r"<!subteam\^([A-Z0-9]+)>", r"@\1", text)
    return text.replace("*", "").replace("`", "")


# -- rendering (pure) -----------------------------------------------------------------------


def when(ts: float, fmt: str = "{time}") -> str:
    """A time Slack shows in each reader's timezone, with a UTC fallback."""
    return f"<!date^{int(ts)}^{fmt}|{messages.hhmm(ts)}>"


def reject_modal(req: Request) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": VIEW_REJECT,
        "private_metadata": req.id,
        "title": {"type": "plain_text", "text": "Reject deploy"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            messages.section(
                f"Reject the deploy of run `{_short(req.run_ref)}` to *{req.environment}* in "
                f"`{req.repo}`, requested by <@{req.user_id}>?"
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


def _short(text: str | None, n: int = 60) -> str:
    text = text or "?"
    return text if len(text) <= n else text[: n - 1] + "…"


def warnings_for(details: dict[str, Any]) -> list[str]:
    """The card's warnings about the run (pure; from the facts gathered by the worker)."""
    run = details.get("run")
    if not isinstance(run, dict):
        return []
    out = []
    if run.get("status") != "completed":
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


def _run_line(run: dict[str, Any]) -> str:
    parts = [f"*Run:* {messages.link(run.get('url'), str(run.get('name') or 'workflow run'))}"]
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


def _metrics_blocks(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics table with where it came from: author (and why trusted), the comment, the
    commit; how many metrics comments there were; newer ones posted after the card."""
    if not metrics.get("trusted_as"):
        return []  # recorded before authors were checked: not evidence
    url = str(metrics.get("comment_url") or "")
    author = str(metrics.get("author") or "someone")
    sha = escape_mrkdwn(str(metrics.get("head_sha") or ""))[:7]
    text = (
        f"Metrics for commit `{sha}` from {messages.link(url, f'a comment by {author}')} "
        f"({escape_mrkdwn(str(metrics['trusted_as']))})"
    )
    count = int(metrics.get("count") or 1)
    if count > 1:
        earlier = ", ".join(
            messages.link(str(e.get("comment_url") or ""), str(e.get("author") or "someone"))
            for e in metrics.get("earlier") or []
            if isinstance(e, dict)
        )
        text += f"\nThe newest of {count} metrics comments for this commit; earlier: {earlier}"
    later = [e for e in metrics.get("later") or [] if isinstance(e, dict)]
    if later:
        links = ", ".join(
            messages.link(str(e.get("comment_url") or ""), str(e.get("author") or "someone"))
            for e in later
        )
        text += (
            f"\n:warning: Newer metrics for this commit were posted after this card: {links}. "
            "The table here is the one the card was posted with."
        )
    line = messages.context(text)
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
    where = messages.link(url, environment) if url else f"*{escape_mrkdwn(environment)}*"
    return f"{icon} Deployment to {where}: *{escape_mrkdwn(state)}*"


def _decision_blocks(
    req: Request, policy: ApprovalPolicy | None, approvals: list[str]
) -> list[dict[str, Any]]:
    if req.status == PENDING_APPROVAL:
        return [approval_buttons(req)]
    if req.status == REJECTED:
        who = f"<@{req.decided_by}>" if req.decided_by else "someone"
        why = f": {escape_mrkdwn(req.reason)[:500]}" if req.reason else " (no reason given)"
        at = f" at {when(req.decided_at)}" if req.decided_at else ""
        return [messages.section(f":no_entry_sign: Rejected by {who}{at}{why}")]
    if req.status == EXPIRED:
        at = when(req.expires_at) if req.expires_at else "its deadline"
        return [messages.context(f":hourglass: Expired at {at} without enough approvals.")]
    if req.decided_by:
        names = approved_by(req, policy.required if policy else 1, approvals)
        who = " and ".join(f"<@{u}>" for u in names)
        at = f" at {when(req.decided_at)}" if req.decided_at else ""
        return [messages.context(f":white_check_mark: Approved by {who}{at}")]
    if policy is None and req.status != "error":
        return [messages.context(f"*{req.environment}*: {NO_APPROVAL} (`approval: none`).")]
    return []


def approval_buttons(req: Request) -> dict[str, Any]:
    confirm_text = (
        f"Deploy run `{_short(req.run_ref)}` to *{req.environment}* in `{req.repo}`, "
        f"requested by <@{req.user_id}>?"
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
    d = req.details
    repo = messages.link(f"{web_base}/{req.repo}", req.repo)
    blocks: list[dict[str, Any]] = [
        messages.section(
            f":rocket: *Deploy of run `{_short(req.run_ref, 100)}` to {req.environment}* "
            f"in {repo}\nRequested by <@{req.user_id}> "
            f"{when(req.created_at, '{date_short_pretty} at {time}')}"
        )
    ]
    run = d.get("run")
    if isinstance(run, dict):
        blocks.append(messages.section(_run_line(run)))
    elif d.get("facts_checked"):
        blocks.append(
            messages.context("Not a GitHub workflow run id: passed to the workflow as it is.")
        )
    metrics = d.get("metrics")
    if isinstance(metrics, dict):
        blocks += _metrics_blocks({**metrics, "later": d.get("metrics_later") or []})
    warnings = warnings_for(d)
    if warnings:
        blocks.append(messages.section("\n".join(f":warning: {w}" for w in warnings)))
    status = f"*Status:* {messages.status_label(req.status)}"
    if req.status == PENDING_APPROVAL and policy is not None:
        if approvals:
            given = ", ".join(f"<@{u}>" for u in approvals)
            status += f" ({len(approvals)} of {policy.required}: {given})"
        elif policy.required > 1:
            status += f" ({policy.required} approvals needed)"
        if req.expires_at:
            status += f" · expires at {when(req.expires_at)}"
    if req.error and req.status == "error":
        status += f" — {escape_mrkdwn(req.error)[:500]}"
    if d.get("deployment_state"):
        env = str(d.get("deployment_environment") or req.environment)
        status += "\n" + deployment_line(str(d["deployment_state"]), env, d.get("deployment_url"))
    blocks.append(messages.section(status))
    blocks += _decision_blocks(req, policy, approvals)
    if d.get("runs_summary"):
        blocks.append(messages.context(str(d["runs_summary"])))
    rule = (
        f"needs {policy.required} approval{'s' if policy.required > 1 else ''} from "
        f"{who_can_approve(policy, exclude=_self(policy, req.user_id))}"
        if policy
        else NO_APPROVAL
    )
    blocks.append(messages.context(f"request `{req.id}` · {rule}"))
    text = f"Deploy of run {req.run_ref} to {req.environment} in {req.repo}: {req.status}"
    return {"text": text, "blocks": blocks}


def card(deps: Deps, req: Request) -> Message:
    """thread.root_message calls this for kind "deploy"."""
    policy = _policy(deps, req)
    approvals = deps.store.approvers_of(req.id) if policy is not None else []
    return render_card(req, policy=policy, approvals=approvals, web_base=deps.web_base)
