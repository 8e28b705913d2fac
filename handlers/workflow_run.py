"""`workflow_run` events (webhook or poll) become thread replies and root status edits."""

from __future__ import annotations

import logging
from typing import Any

from bot import logs, messages
from bot.deps import Deps
from bot.github_data import CLOCK_SKEW, RunInfo, run_from_payload
from bot.model import ACCEPTED, CANCELLED, ERROR, WAITING_FOR_RUNS, Request
from bot.store import AuditLine
from handlers import kinds
from handlers.lifecycle import (
    refresh_root,
    reply_once,
    request_id_in_title,
    settle,
    stop_run,
    tell,
)

log = logging.getLogger(__name__)

# The only events whose run-name the bridge itself set (client_payload / inputs carry the id);
# a pull_request or push run's title is a PR title or commit message anyone can write.
DISPATCH_EVENTS = ("repository_dispatch", "workflow_dispatch")
# A labelled run can be reported before the request is marked triggered (see settle()).
MATCHABLE = (ACCEPTED, *WAITING_FOR_RUNS)


def _workflow_matches(deps: Deps, run: RunInfo, kind: str = "evaluate") -> bool:
    """Whether the run is of `commands.<kind>.workflow` (name or file name), when one is set."""
    wanted = kinds.get(kind).workflow(deps)
    if not wanted:
        return True
    return wanted in (run.name, (run.path or "").rsplit("/", 1)[-1])


def title_refusal(req: Request | None, run: RunInfo, workflow_ok: bool) -> str | None:
    """Why a run whose title names a request does not belong to it (None: it does).

    Pure. A title is only evidence for runs the bridge started itself: a dispatch event of
    the request's repository, created after the request's dispatch was sent.
    """
    if req is None:
        return "unknown_request"
    if req.repo != run.repo:
        return "other_repository"
    if run.event not in DISPATCH_EVENTS:
        return "not_a_dispatch_run"
    if req.trigger != "dispatch" or req.action_started_at is None:
        return "not_dispatched"
    created = run.created_at if run.created_at is not None else run.run_started_at
    if created is None or created < req.action_started_at - CLOCK_SKEW:
        return "created_before_dispatch"
    if not workflow_ok:
        return "other_workflow"
    return None


def title_match(deps: Deps, rid: str, run: RunInfo) -> Request | None:
    """The request `rid` when `run` may speak for it (title_refusal); else None, logged."""
    req = deps.store.get(rid)
    workflow_ok = req is not None and _workflow_matches(deps, run, req.kind)
    why = title_refusal(req, run, workflow_ok)
    if why is None:
        return req
    # Ids only: the title itself is text anyone with a PR can write.
    log.info(
        "run title names a request it does not belong to",
        extra={"run_id": run.id, "request_id": rid, "reason": why},
    )
    if deps.metrics is not None:
        deps.metrics.title_matches_rejected.labels(why).inc()
    return None


def request_for_run(deps: Deps, run: RunInfo) -> Request | None:
    """The one request a run belongs to: earlier link, request id in the title of a run the
    bridge dispatched, or (label-triggered /evaluate only) PR + head SHA."""
    linked, req = deps.store.linked_request(str(run.id))
    if linked:
        # Linked when first matched, by the rules below.
        return req if req is not None and req.repo == run.repo else None
    rid = request_id_in_title(run.display_title)
    if rid:
        req = title_match(deps, rid, run)
        if req is not None:
            return req
    if run.event != "pull_request" or not _workflow_matches(deps, run):
        return None
    candidates: list[Request] = []
    # Fork PRs come with an empty pull_requests list: fall back to the head SHA.
    if run.pull_numbers:
        for number in run.pull_numbers:
            candidates += deps.store.find(
                repo=run.repo, pr_number=number, kind="evaluate", statuses=MATCHABLE, limit=5
            )
    else:
        candidates = deps.store.find(
            repo=run.repo,
            head_sha=run.head_sha,
            kind="evaluate",
            statuses=MATCHABLE,
            limit=5,
        )
    for req in sorted(candidates, key=lambda r: r.created_at, reverse=True):
        if req.trigger != "label" or req.head_sha != run.head_sha:
            continue
        if req.status == ACCEPTED and req.action_started_at is None:
            continue  # the label is not on yet: this run is someone else's
        started = req.action_started_at or req.created_at
        if run.created_at is None or run.created_at >= started - CLOCK_SKEW:
            return req
    return None


def on_workflow_run(deps: Deps, payload: dict[str, Any]) -> None:
    repo = str((payload.get("repository") or {}).get("full_name") or "")
    raw = payload.get("workflow_run")
    if not repo or not isinstance(raw, dict):
        return
    try:
        run = run_from_payload(repo, raw)
    except ValueError as exc:
        log.warning("workflow_run event ignored", extra={"reason": str(exc)})
        return
    req = request_for_run(deps, run)
    if req is not None:
        relay_run(deps, req, run)


def relay_run(deps: Deps, req: Request, run: RunInfo) -> None:
    """Record the run's newest state; reply in the thread once per start and once per finish."""
    logs.bind(request_id=req.id)  # the delivery's log lines name the request from here on
    run_id = str(run.id)
    _, stored = deps.store.upsert_run(
        run_id=run_id,
        request_id=req.id,
        trigger=req.trigger,
        repo=run.repo,
        name=run.name,
        status=run.status,
        conclusion=run.conclusion,
        attempt=run.run_attempt,
        html_url=run.html_url,
        head_sha=run.head_sha,
        started_at=run.run_started_at or run.created_at,
    )
    if not stored:
        return  # an older event arrived late (redelivery, poll after webhook): nothing new
    if req.status == CANCELLED:
        # The run started although the request was cancelled (the dispatch or label was
        # already on its way): stop it too, once, instead of following it.
        if run.status != "completed" and deps.store.first_time(f"cancel-late-run:{run_id}"):
            note = stop_run(deps, req, run.id, run.name or f"run {run_id}")
            if note and req.root_ts:
                said = f"A workflow run started after this request was cancelled. {note}"
                deps.slack.post(req.channel_id, said, thread_ts=req.root_ts)
        return
    prefs = deps.config.channel_settings(req.channel_id)
    if req.root_ts:
        if run.status != "completed":
            if prefs.notify == "all":
                msg = messages.run_started(run.name, run.html_url, run.run_attempt)
                reply_once(deps, req, f"run:{run_id}:{run.run_attempt}:started", msg)
        else:
            failed = messages.is_failure(run.conclusion)
            if prefs.notify != "failures" or failed:
                start = run.run_started_at or run.created_at
                took = (run.updated_at - start) if run.updated_at and start else None
                msg = messages.run_finished(
                    run.name, run.html_url, run.conclusion, took, run.run_attempt
                )
                reply_once(
                    deps,
                    req,
                    f"run:{run_id}:{run.run_attempt}:done",
                    msg,
                    broadcast=failed and prefs.broadcast_failures,
                )
    settle(deps, req)


def stop_following(deps: Deps, req: Request, hours: int) -> bool:
    """Poll mode gives up on a request whose run did not come (or finish) in time."""
    seen = bool(deps.store.runs_of(req.id))
    if seen:
        error = f"The workflow run did not finish within {hours} hours; I stopped following it."
        hint = "Open the run on GitHub for its state."
    else:
        error = f"No workflow run was seen within {hours} hours; I stopped following this request."
        hint = (
            f"Check that a workflow runs on the `{req.event_type}` repository_dispatch event and "
            f"puts `chatops {req.id}:` first in its `run-name`."
            if req.trigger == "dispatch"
            else "Check that a workflow runs on `pull_request: [labeled]` for this label."
        )
    if not deps.store.update(
        req.id,
        only_if_status=WAITING_FOR_RUNS,
        status=ERROR,
        error=error,
        finished_at=deps.clock(),
        audit=AuditLine("bridge", f"{req.kind}.stopped_following", "error"),
    ):
        return False
    tell(deps, deps.store.get(req.id) or req, error, hint=hint)
    refresh_root(deps, req)
    return True
