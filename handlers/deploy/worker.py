"""The deploy job: the run's facts and the card (once), then repository_dispatch (once)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from bot.deps import Deps
from bot.github import GitHubError, NotFound, Retryable
from bot.model import APPROVED, PENDING_APPROVAL, Request
from bot.provenance import newest, same_commit, trusted_as
from bot.slack import SlackFailure
from handlers import details, evaluate
from handlers.common import github_permission_refusal
from handlers.deploy.facts import (
    BranchHead,
    DeployDetails,
    EarlierMetrics,
    PullHead,
    RunFacts,
    ShownMetrics,
    details_of,
)
from handlers.deploy.gate import GATE, answer_rules
from handlers.deploy.policy import approved_by
from handlers.lifecycle import (
    dispatch_once,
    ensure_root,
    fail,
    fail_or_wait,
    retry_or_give_up,
    settle,
    trigger,
)

GITHUB_RUN_ID = re.compile(r"^[1-9][0-9]{0,19}$")


def carry_out(deps: Deps, req: Request) -> None:
    """The job's steps, each safe to repeat: facts and card (once), then the dispatch (once),
    then the answers to GitHub's protection rules (handlers/deploy/gate.py).

    Claimed for `approved` requests, for `pending_approval` ones whose card is not posted
    yet (bot/store/base.py `_needs_work`), and for any whose `answer_due` is set; a pending
    request with a card otherwise waits for a click.
    """
    if req.status not in (PENDING_APPROVAL, APPROVED):
        answer_rules(deps, req)  # decided before: answering GitHub is what is left
        return
    if not req.root_ts:
        posted = _post_card(deps, req)
        if posted is None:
            answer_rules(deps, deps.store.get(req.id) or req)  # failed: GitHub hears so
            return
        # As stored after the post (ensure_root): a click that approved the request while the
        # card was being posted is in it.
        req = posted
    if req.status == PENDING_APPROVAL:
        req = answer_rules(deps, req)  # nothing is decided yet: clears answer_due
        if deps.config.commands.deploy.gated(req.environment or "") and req.trigger != GATE:
            _dispatch_at_once(deps, req)
    elif req.status == APPROVED:
        _dispatch(deps, req)


def _post_card(deps: Deps, req: Request) -> Request | None:
    cmd = deps.config.commands.deploy
    try:
        # A gate's requester is whoever started the run on GitHub: no Slack access rules.
        refusal = (
            None
            if req.trigger == GATE
            else github_permission_refusal(deps, cmd, req.repo, req.user_id)
        )
        if refusal:
            fail(deps, req, refusal)
            return None
        if not details_of(req).get("facts_checked"):
            req = _gather_facts(deps, req) or req
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


def _gather_facts(deps: Deps, req: Request) -> Request | None:
    """What the card shows about a GitHub run: its facts, its PR's head, relayed metrics.
    Returns the request as stored with them (None: it is gone)."""
    facts = DeployDetails(facts_checked=True)
    values: dict[str, Any] = {}
    if req.run_ref and GITHUB_RUN_ID.match(req.run_ref):
        run = deps.github.get_run(req.repo, int(req.run_ref))
        facts["run"] = RunFacts(
            name=run.name,
            url=run.html_url,
            branch=run.head_branch,
            sha=run.head_sha,
            status=run.status,
            conclusion=run.conclusion,
        )
        # A run's commit can fall behind its PR, or (a run of a branch) behind its branch.
        for number in run.pull_numbers[:1]:
            pull = deps.github.get_pull(req.repo, number)
            facts["pr_head"] = PullHead(number=number, sha=pull.head_sha, url=pull.html_url)
        if not run.pull_numbers and run.head_branch:
            head = deps.github.branch_head(req.repo, run.head_branch)
            if head:
                facts["branch_head"] = BranchHead(branch=run.head_branch, sha=head)
        metrics = _relayed_metrics(deps, req.repo, run.head_sha, run.pull_numbers[:1])
        if metrics:
            facts["metrics"] = metrics
        values["head_sha"] = run.head_sha or None
    _, stored = deps.store.update_and_merge(req.id, facts, **values)
    return stored


def _relayed_metrics(
    deps: Deps, repo: str, sha: str, pull_numbers: Sequence[int]
) -> ShownMetrics | None:
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
        entries: list[Any] = evaluate.details_of(other).get("metrics_comments") or []
        for entry in entries:
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
    return ShownMetrics(
        id=best.get("id"),
        comment_url=best.get("comment_url"),
        author=best.get("author"),
        trusted_as=best.get("trusted_as"),
        created_at=best.get("created_at"),
        body=best.get("body"),
        head_sha=sha,
        count=len(found),
        earlier=[
            EarlierMetrics(comment_url=e.get("comment_url"), author=e.get("author"))
            for e in earlier[:5]
        ],
    )


def _dispatch(deps: Deps, req: Request) -> None:
    """repository_dispatch once: approved → (action_started_at) → POST → triggered; then
    GitHub's protection rules recorded on the request are answered (gate.answer_rules).

    Only the lease holder gets here, and only from `approved`. A crash (or a lost answer)
    between the POST and the status change leaves `approved` with action_started_at set; the
    retry first looks for a run titled with this request id and, when there is none, sends
    the same payload again — the same request_id, which the deploy workflow recognises.
    A request GitHub's rule started, or a `gate: github` deploy dispatched at once, is not
    dispatched here.
    """
    event_type = req.event_type or deps.config.commands.deploy.event_type
    dispatching = req.trigger != GATE and not details_of(req).get("dispatched_at_once")
    trigger(
        deps,
        req,
        (lambda: dispatch_once(deps, req, event_type, dispatch_payload(deps, req)))
        if dispatching
        else None,
        from_statuses=(APPROVED,),
        action="deploy.dispatched",
        detail=f"{event_type} to {req.repo}, run {req.run_ref}, {req.environment}",
        # answer_due with the status change: a crash right after it still answers GitHub.
        also={"answer_due": 1},
        then=lambda: answer_rules(deps, deps.store.get(req.id) or req),
    )


def _dispatch_at_once(deps: Deps, req: Request) -> None:
    """A `gate: github` environment: dispatch before the approval (GitHub holds the deploy
    job until the protection rule is answered), once. An outage keeps the step due."""
    if details_of(req).get("dispatched_at_once"):
        return
    event_type = req.event_type or deps.config.commands.deploy.event_type
    try:
        dispatch_once(deps, req, event_type, dispatch_payload(deps, req))
    except Retryable as exc:
        deps.store.update(req.id, answer_due=1)  # claimable again for the retry
        retry_or_give_up(deps, req, exc)
        return
    except GitHubError as exc:
        fail(deps, req, exc.message)
        return
    details.merge(deps, req.id, DeployDetails(dispatched_at_once=True))
    deps.store.audit(
        actor="bridge",
        action="deploy.dispatched",
        outcome="ok",
        request_id=req.id,
        detail=f"{event_type} to {req.repo}, run {req.run_ref}, {req.environment}; "
        "before the approval: GitHub's protection rule holds the deploy job",
    )
    settle(deps, req)  # runs reported before this point (a fast webhook) are shown


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
