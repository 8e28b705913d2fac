"""GitHub's custom deployment protection rule, answered from Slack with the /deploy policy.

When the App is enabled on an environment (Settings → Environments → custom protection rule),
every job that targets it makes GitHub send `deployment_protection_rule` (`requested`) and wait
for the App's answer. The answer comes from the same approval as a /deploy::

    deployment_protection_rule ──▶ gate_refusal? ── yes ─▶ answered `rejected` at once
         ├─ the run is a /deploy's (its run-name names the request; title_match rules)
         │        ─▶ the rule is recorded on that request (its card answers it)
         └─ else a deploy request of its own (trigger `gate`): a card in the repository's
            channel, the run linked to it (its progress follows in the thread)

A decided request answers each recorded rule once (`answer_rules`): approved with the Slack
approvers, or rejected with the reason / "expired" / "cancelled". `requests.answer_due`
makes that a step for the job pool whatever the status, so the claim lease decides who sends
it: one answer under concurrent clicks, restarts and replicas. The POST is built from the
repository and the run id; the payload's callback URL is only checked to be GitHub's own.
"""

from __future__ import annotations

import logging
from typing import Any

from bot import logs, messages
from bot.deps import Deps
from bot.github import GitHubError, Retryable
from bot.github_data import RunInfo, protection_rule_run_id
from bot.model import (
    APPROVED,
    CANCELLED,
    ERROR,
    EXPIRED,
    PENDING_APPROVAL,
    REJECTED,
    NewRequest,
    Request,
)
from bot.slacktext import escape_mrkdwn, section, slack_link
from handlers import details
from handlers.deploy.facts import DeployDetails, GateFacts, GateRule, details_of
from handlers.deploy.locks import lock_refusal_for_gate
from handlers.deploy.policy import approved_by, policy_of
from handlers.lifecycle import reply_once, request_id_in_title, retry_or_give_up
from handlers.workflow_run import title_match

log = logging.getLogger(__name__)

GATE = "gate"  # Request.trigger of a deploy request that GitHub's protection rule started
UNDECIDED = ("accepted", PENDING_APPROVAL)


# -- the event ------------------------------------------------------------------------------


def on_protection_rule(deps: Deps, payload: dict[str, Any]) -> None:
    """`deployment_protection_rule` `requested`: find or open the request that answers it."""
    repo = str((payload.get("repository") or {}).get("full_name") or "")
    environment = payload.get("environment")
    run_id = protection_rule_run_id(
        deps.github.base_url, repo, payload.get("deployment_callback_url")
    )
    if not repo or not isinstance(environment, str) or not environment or run_id is None:
        # Not GitHub's callback for this repository: nothing to answer, and never a POST to it.
        log.warning(
            "deployment_protection_rule ignored: no usable callback",
            extra={"repo": repo, "reason": "callback_url" if run_id is None else "environment"},
        )
        return
    deployment = payload.get("deployment")
    if not isinstance(deployment, dict):
        deployment = {}
    rule = GateRule(
        run_id=run_id, environment=environment, deployment_id=int(deployment.get("id") or 0)
    )
    try:
        run = deps.github.get_run(repo, run_id)
    except Retryable:
        raise  # the delivery is retried
    except GitHubError as exc:
        # No run to read (no actions: read, gone): the card's own read fails the request
        # loudly, and GitHub hears `rejected` with why.
        log.warning("cannot read the held run", extra={"repo": repo, "error": exc.message})
        run = _run_from_rule(deps, repo, run_id, payload, deployment)
    owner = _deploy_request_of(deps, repo, run, environment)
    # The requester: the Slack user of a /deploy (by github_users), else who triggered the run.
    login = (deps.config.github_users.get(owner.user_id) if owner else None) or (
        run.actor or str((payload.get("sender") or {}).get("login") or "")
    )
    refusal = gate_refusal(deps, repo, environment, login, owner.user_id if owner else None)
    if refusal is not None:
        refuse(deps, repo, rule, refusal)
        return
    if owner is not None:
        record_rule(deps, owner, rule)
        return
    _open_gate(deps, repo, run, rule, login, str(payload.get("event") or run.event))


def _run_from_rule(
    deps: Deps, repo: str, run_id: int, payload: dict[str, Any], deployment: dict[str, Any]
) -> RunInfo:
    """What the payload itself says of the held run, when GitHub's API cannot be read."""
    return RunInfo(
        id=run_id,
        repo=repo,
        name="",
        display_title="",
        status="waiting",
        conclusion=None,
        head_sha=str(deployment.get("sha") or ""),
        head_branch=str(deployment.get("ref") or "") or None,
        event=str(payload.get("event") or ""),
        html_url=_run_url(deps, repo, run_id),
        run_attempt=1,
        created_at=None,
        run_started_at=None,
        updated_at=None,
        pull_numbers=(),
    )


def gate_refusal(
    deps: Deps, repo: str, environment: str, github_login: str, slack_user: str | None = None
) -> str | None:
    """Why a protection-rule request is answered `rejected` at once, without a card; None
    when a Slack approval decides it. `github_login`: the requester on GitHub (the Slack
    requester's login for a /deploy's run, else who triggered the run).

    An environment locked by someone else (`/deploy lock`) is refused with the lock's holder
    and reason; `slack_user`, the Slack requester of the /deploy the run belongs to, may hold it.
    """
    refusals = [
        config_refusal(deps, repo, environment),
        lock_refusal_for_gate(deps, repo, environment, github_login, slack_user),
    ]
    return next((r for r in refusals if r), None)


def config_refusal(deps: Deps, repo: str, environment: str) -> str | None:
    """chatops.yml cannot decide this rule: repository or environment not configured, no
    policy, no channel for the card."""
    cmd = deps.config.commands.deploy
    if not deps.config.repositories.permits(repo):
        return (
            f"{repo} is not a repository this Slack bridge is configured for "
            "(chatops.yml repositories), so nobody can approve this deployment there."
        )
    env = cmd.environment_named(environment)
    if env is None:
        return (
            f"The environment {environment} is not configured in the Slack bridge "
            "(chatops.yml commands.deploy.environments), so nobody can approve it there."
        )
    if cmd.approval_for(env) is None:
        return f"No approval policy in the Slack bridge: {cmd.missing_policy_text([env])}."
    if deps.config.gate_channel(repo) is None:
        return (
            f"The Slack bridge has no channel for approvals of {repo} "
            "(chatops.yml commands.deploy.channel or repositories.channels)."
        )
    return None


def refuse(deps: Deps, repo: str, rule: GateRule, refusal: str) -> None:
    """Answer `rejected` at once (no request, no card); audited. Retryable: the delivery is
    retried; a refusal by GitHub is logged and audited, never retried."""
    outcome = "rejected"
    try:
        deps.github.answer_gate(repo, rule["run_id"], rule["environment"], "rejected", refusal)
    except Retryable:
        raise
    except GitHubError as exc:
        log.warning("protection rule not answered", extra={"repo": repo, "error": exc.message})
        outcome = "failed"
    deps.store.audit(
        actor="bridge",
        action="deploy.gate_refused",
        outcome=outcome,
        detail=f"{repo} run {rule['run_id']} to {rule['environment']}: {refusal}"[:500],
    )


def _deploy_request_of(deps: Deps, repo: str, run: RunInfo, environment: str) -> Request | None:
    """The /deploy request whose dispatch started this run (linked before, or named by the
    run-name under the title_match rules), when it deploys to this environment."""
    linked = deps.store.run_owner(str(run.id))
    req = deps.store.get(linked) if linked else None
    if req is None:
        rid = request_id_in_title(run.display_title)
        req = title_match(deps, rid, run) if rid else None
    if req is None or req.kind != "deploy" or req.repo.lower() != repo.lower():
        return None
    if req.trigger == GATE or (req.environment or "").lower() != environment.lower():
        return None  # a gate card answers one deployment; another environment needs its own
    return req


def record_rule(deps: Deps, req: Request, rule: GateRule) -> None:
    """Keep the rule on the request (once per run, environment and deployment) and make its
    answer a step for the job pool: answered now if decided, else at the decision."""
    logs.bind(request_id=req.id)
    fresh = [False]

    def add(current: dict[str, Any]) -> dict[str, Any]:
        rules = list(current.get("gate_rules") or [])
        fresh[0] = not any(_same(r, rule) for r in rules)
        return {**current, "gate_rules": [*rules, rule]} if fresh[0] else current

    deps.store.change_details(req.id, add)
    if fresh[0] and req.root_ts:
        run_link = slack_link(_run_url(deps, req.repo, rule["run_id"]), f"run {rule['run_id']}")
        reply_once(
            deps,
            req,
            f"gate-rule:{req.id}:{rule['run_id']}:{rule['deployment_id']}",
            messages_text(
                f":shield: GitHub holds the deploy job of workflow {run_link} for *"
                f"{escape_mrkdwn(rule['environment'])}* until this request is decided "
                "(custom deployment protection rule)."
            ),
        )
    answer_soon(deps, req)


def _same(a: Any, b: GateRule) -> bool:
    return isinstance(a, dict) and (
        a.get("run_id"),
        str(a.get("environment") or "").lower(),
        a.get("deployment_id"),
    ) == (b["run_id"], b["environment"].lower(), b["deployment_id"])


def answer_soon(deps: Deps, req: Request) -> None:
    """Make answering GitHub a step for the job pool (whatever the status), and start it."""
    deps.store.update(req.id, answer_due=1)
    deps.jobs.submit(req.id)


def _open_gate(deps: Deps, repo: str, run: RunInfo, rule: GateRule, login: str, event: str) -> None:
    """A deploy request of its own for a run nobody asked for in Slack: card, then answer."""
    cmd = deps.config.commands.deploy
    env = cmd.environment_named(rule["environment"]) or rule["environment"]
    policy = cmd.policy_for(env)
    now = deps.clock()
    slack_user = next((u for u, gh in deps.config.github_users.items() if gh == login), "")
    facts = DeployDetails(
        gate_rules=[rule], gate=GateFacts(actor=login, event=event, slack_user=slack_user)
    )
    req, created = deps.store.create_request(
        NewRequest(
            kind="deploy",
            repo=repo,
            trigger=GATE,
            run_ref=str(run.id),
            environment=env,
            channel_id=deps.config.gate_channel(repo) or "",
            # The GitHub login's Slack id (github_users), so self-approval rules apply to it.
            user_id=slack_user,
            status=PENDING_APPROVAL if policy else APPROVED,
            expires_at=now + policy.expires_after_minutes * 60 if policy else None,
            idempotency_key=(
                f"gate:{repo.lower()}:{run.id}:{rule['environment'].lower()}:"
                f"{rule['deployment_id']}"
            ),
            details=dict(facts),
        )
    )
    if not created:
        return  # the same request delivered again
    logs.bind(request_id=req.id)
    deps.store.audit(
        actor=f"github:{login}" if login else "github",
        action="deploy.gate_requested",
        outcome=req.status,
        request_id=req.id,
        detail=f"{repo} run {run.id} to {rule['environment']} ({event})",
    )
    # The run is this request's from now on: its workflow_run and deployment_status events
    # follow in the card's thread (handlers/workflow_run.py request_for_run: linked_request).
    deps.store.upsert_run(
        run_id=str(run.id),
        request_id=req.id,
        trigger=req.trigger,
        repo=repo,
        name=run.name,
        status=run.status or "waiting",
        conclusion=run.conclusion,
        attempt=run.run_attempt,
        html_url=run.html_url,
        head_sha=run.head_sha,
        started_at=run.run_started_at or run.created_at,
    )
    deps.jobs.submit(req.id)


def _run_url(deps: Deps, repo: str, run_id: int) -> str:
    return f"{deps.web_base}/{repo}/actions/runs/{int(run_id)}"


def messages_text(text: str) -> messages.Message:
    return {"text": text, "blocks": [section(text)]}


# -- the answer -----------------------------------------------------------------------------


def _who(deps: Deps, user_id: str) -> str:
    """A Slack user in a GitHub comment: the id, and the GitHub login when one is configured."""
    login = deps.config.github_users.get(user_id)
    return f"{user_id} (GitHub {login})" if login else user_id


def decision(deps: Deps, req: Request) -> tuple[str, str] | None:
    """(state, comment) GitHub is answered with, or None while undecided (pure but config)."""
    where = f"chatops request {req.id}"
    if req.status in UNDECIDED:
        return None
    if req.status == REJECTED:
        why = f": {req.reason}" if req.reason else " (no reason given)"
        return (
            "rejected",
            f"Rejected in Slack by {_who(deps, req.decided_by or '?')}{why} ({where})",
        )
    if req.status == EXPIRED:
        return "rejected", f"expired: no decision in Slack before the deadline ({where})"
    if req.status == CANCELLED:
        by = details.thread(req).get("cancelled_by")
        who = f" by {_who(deps, str(by))}" if by else ""
        return "rejected", f"cancelled in Slack{who} ({where})"
    if req.status == ERROR:
        return "rejected", f"the Slack bridge could not carry out the request ({where})"
    policy = policy_of(deps, req)
    if policy is None:
        return "approved", f"No approval required by the Slack bridge's config ({where})"
    names = approved_by(req, policy.required, deps.store.approvers_of(req.id))
    if not names:
        return "rejected", f"no recorded approval ({where})"
    people = " and ".join(_who(deps, u) for u in names)
    return "approved", f"Approved in Slack by {people} ({where})"


def answer_rules(deps: Deps, req: Request) -> Request:
    """Answer every recorded rule of a decided request, once each (under the job's lease).

    answer_due stays set while the answers are sent: a process killed mid-answer leaves the
    step due, and the takeover answers again (`_answer` warns that an interrupted attempt may
    have answered). It is cleared once nothing is left to answer now; the read after the clear
    sees a rule recorded meanwhile (the rule is written before its flag, `answer_soon`) and
    sets it again. On an outage it is set too, so the job layer's retry can claim the request.
    """
    for _ in range(5):
        pending = _unanswered(req)
        verdict = decision(deps, req) if pending else None
        if verdict is not None:
            state, comment = verdict
            try:
                for rule in pending:
                    _answer(deps, req, rule, state, comment)
            except BaseException:
                deps.store.update(req.id, answer_due=1)
                raise
        if req.answer_due or verdict is not None:
            deps.store.update(req.id, answer_due=0)
        req = deps.store.get(req.id) or req
        if not _unanswered(req) or decision(deps, req) is None:
            return req
        deps.store.update(req.id, answer_due=1)  # recorded meanwhile: answer it as well
        req = deps.store.get(req.id) or req
    return req  # still due (answer_due set): the job layer or the sweep comes back to it


def _unanswered(req: Request) -> list[GateRule]:
    return [r for r in details_of(req).get("gate_rules") or [] if not r.get("answered")]


def _answer(deps: Deps, req: Request, rule: GateRule, state: str, comment: str) -> None:
    key = f"gate-answer:{req.id}:{rule['run_id']}:{rule['environment']}:{rule['deployment_id']}"
    if not deps.store.first_time(key):
        log.warning(
            "answering a protection rule again; an interrupted attempt may have answered",
            extra={"request_id": req.id},
        )
    run_link = slack_link(_run_url(deps, req.repo, rule["run_id"]), f"run {rule['run_id']}")
    try:
        deps.github.answer_gate(req.repo, rule["run_id"], rule["environment"], state, comment)
    except Retryable as exc:
        retry_or_give_up(deps, req, exc)  # tells the thread once, then waits the outage out
        return
    except GitHubError as exc:
        _mark(deps, req, rule, "failed")
        deps.store.audit(
            actor="bridge",
            action="deploy.gate_answer",
            outcome="failed",
            request_id=req.id,
            detail=exc.message[:500],
        )
        reply_once(
            deps,
            req,
            f"{key}:failed",
            messages_text(
                f":warning: GitHub refused my answer (*{state}*) for workflow {run_link}: "
                f"{escape_mrkdwn(exc.message)[:400]}\nI gave up on it: the deploy job waits "
                "for its protection rule until someone answers it on GitHub."
            ),
        )
        return
    _mark(deps, req, rule, state)
    deps.store.audit(
        actor="bridge",
        action="deploy.gate_answer",
        outcome=state,
        request_id=req.id,
        detail=f"run {rule['run_id']} {rule['environment']}: {comment}"[:500],
    )
    icon = ":white_check_mark:" if state == "approved" else ":no_entry_sign:"
    reply_once(
        deps,
        req,
        f"{key}:sent",
        messages_text(
            f"{icon} Answered GitHub's protection rule for workflow {run_link} "
            f"(*{escape_mrkdwn(rule['environment'])}*): *{state}*"
        ),
    )


def _mark(deps: Deps, req: Request, rule: GateRule, answered: str) -> None:
    def change(current: dict[str, Any]) -> dict[str, Any]:
        rules = [
            {**r, "answered": answered} if _same(r, rule) else r
            for r in current.get("gate_rules") or []
        ]
        return {**current, "gate_rules": rules}

    deps.store.change_details(req.id, change)
