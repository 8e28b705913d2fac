"""Zero-ingress mode: poll GitHub for the workflow runs and metric comments of open requests.

With no webhook (`github.mode: poll`, or `auto` without GITHUB_WEBHOOK_SECRET) the scheduler's
leader runs `Poller.poll` every `github.poll_interval_seconds`. A cycle asks GitHub only about
repositories with open requests, and only with conditional requests (If-None-Match: a 304
answer costs no rate limit). What it finds is turned into the events a webhook would deliver
(`workflow_run` requested/in_progress/completed, `issue_comment` created) and sent through the
same Router.dispatch, so every handler registered for those events sees them, a thread reads
the same either way, and the handlers' idempotency keys keep anything from being said twice.

`pull_request` synchronize and `deployment_status` are polled too, and sent to the router as
those events (see below); only what they need is asked for.

Per repository and cycle:
- one `GET /repos/{repo}/actions/runs?event=pull_request&head_sha=…` per head SHA of a waiting
  label-triggered evaluation;
- one `GET /repos/{repo}/actions/runs?event=repository_dispatch&created=>=…` when a dispatched
  request waits (runs are matched by `chatops <request id>:` in their display_title);
- one `GET /repos/{repo}/issues/{pr}/comments?since=…` per pull request whose evaluation waits
  or finished less than COMMENT_GRACE ago (metric comments often come last);
- one `GET /repos/{repo}/pulls/{pr}` per pull request whose evaluation waits with a thread: a
  head that is no longer the evaluated SHA becomes a `pull_request` synchronize event;
- one `GET /repos/{repo}/deployments?environment=…` per environment with a deploy that waits or
  finished less than COMMENT_GRACE ago, and one `GET …/deployments/{id}/statuses` per deployment
  created since that deploy was dispatched: each status a `deployment_status` created event.
  A listed deployment lacks the `workflow_run` a webhook carries, so one is named only when the
  deployment's commit is that of a run already linked to a waiting deploy (the deploy workflow's
  job creates the deployment at its run's commit), or the deployment's own payload names the
  request; any other deployment to the environment is left alone.
An ETag is stored only after everything in its answer was relayed, so a failure (Slack down)
means the same answer is fetched and relayed again at the next cycle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bot import logs
from bot.deps import Deps
from bot.github import GitHubError, Retryable
from bot.github_data import (
    CLOCK_SKEW,
    Conditional,
    dispatch_runs_query,
    parse_time,
    run_from_payload,
)
from bot.metrics import Metrics
from bot.model import FAILED, SUCCEEDED, WAITING_FOR_RUNS, Request
from bot.slack import SlackFailure
from bot.slacktext import iso_utc

Dispatch = Callable[[str, dict[str, Any]], int]  # Router.dispatch: (event, payload) -> handlers run
# Called for a waiting request older than poll_max_age_hours: stop following it (and say so).
StopFollowing = Callable[[Request, int], object]

if TYPE_CHECKING:
    from bot.scheduler import Housekeeping

log = logging.getLogger(__name__)

JOB_ID = "poll-github"


class _RateLow(Exception):
    pass


class Poller:
    COMMENT_GRACE = 600.0  # read a PR's comments this long after its evaluation finished
    MAX_REQUESTS = 1000  # open requests looked at per cycle (oldest beyond this wait a cycle)

    def __init__(
        self,
        deps: Deps,
        *,
        dispatch: Dispatch,
        stop_following: StopFollowing,
        metrics: Metrics | None = None,
    ) -> None:
        self.deps = deps
        self.dispatch = dispatch
        self.stop_following = stop_following
        self.metrics = metrics
        # GET /healthz and tests read these; 304s are counted apart: they cost no rate limit.
        self.stats = {
            "cycles": 0,
            "skipped_rate_limit": 0,
            "interrupted": 0,
            "requests": 0,
            "not_modified": 0,
            "errors": 0,
        }
        # run id -> (status, conclusion, attempt) last relayed by this process: an unchanged
        # run in a changed list (another run of the same SHA moved) is not relayed again.
        self._relayed: dict[str, tuple[str, str | None, int]] = {}
        # (repo, environment) -> (ETag, deployments) of the last list: a new status does not
        # change the list, so its 304 must still let the deployments' statuses be read.
        self._deployments: dict[tuple[str, str], tuple[str | None, list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def install(self, hk: Housekeeping) -> None:
        """Leader-only interval job; it reads everything from the database, so a new leader
        or a restart simply carries on (first cycle at once)."""
        hk.add_interval(JOB_ID, self.poll, self.deps.config.github.poll_interval_seconds, now=True)

    # -- one cycle ------------------------------------------------------------------------
    def poll(self) -> str:
        """Run one cycle; returns its outcome: done, skipped_rate_limit or interrupted."""
        with self._lock:
            outcome = self._cycle()
            self.stats["cycles"] += 1
            if outcome != "done":
                self.stats[outcome] += 1
            if self.metrics is not None:
                self.metrics.poll_cycles.labels(outcome).inc()
            return outcome

    def _cycle(self) -> str:
        cfg = self.deps.config.github
        if self._rate_low():
            log.warning(
                "GitHub rate limit low; skipping this poll cycle",
                extra={
                    "remaining": self.deps.github.last_rate_remaining,
                    "minimum": cfg.poll_min_rate_remaining,
                },
            )
            return "skipped_rate_limit"
        now = self.deps.clock()
        waiting: list[Request] = []
        for req in self.deps.store.find(statuses=WAITING_FOR_RUNS, limit=self.MAX_REQUESTS):
            if now - (req.action_started_at or req.created_at) > cfg.poll_max_age_hours * 3600:
                self.stop_following(req, cfg.poll_max_age_hours)
            else:
                waiting.append(req)
        try:
            for repo in sorted({r.repo for r in waiting}):
                self._guard(repo, self._poll_runs, repo, waiting)
            for (repo, number), since in sorted(self._comment_targets(waiting, now).items()):
                self._guard(repo, self._poll_comments, repo, number, since)
            for (repo, number), shas in sorted(self._head_targets(waiting).items()):
                self._guard(repo, self._poll_head, repo, number, shas)
            for (repo, env), deploys in sorted(self._deploy_targets(waiting, now).items()):
                self._guard(repo, self._poll_deployments, repo, env, deploys)
        except _RateLow:
            log.warning(
                "GitHub rate limit low; poll cycle stopped",
                extra={"remaining": self.deps.github.last_rate_remaining},
            )
            return "interrupted"
        except Retryable as exc:
            log.warning("GitHub unavailable; poll cycle stopped", extra={"error": exc.message})
            return "interrupted"
        return "done"

    def _guard(self, repo: str, step: Callable[..., None], *args: Any) -> None:
        """One repository's trouble (App removed, Slack refusing) must not stop the others."""
        try:
            step(*args)
        except (_RateLow, Retryable):
            raise
        except (GitHubError, SlackFailure) as exc:
            self.stats["errors"] += 1
            log.warning("poll step failed", extra={"repo": repo, "error": str(exc)})

    def _rate_low(self) -> bool:
        gh = self.deps.github
        remaining = gh.last_rate_remaining
        if remaining is None or remaining >= self.deps.config.github.poll_min_rate_remaining:
            return False
        # Below the floor until the window refills (reset time from GitHub's headers).
        return gh.last_rate_reset is None or self.deps.clock() < gh.last_rate_reset

    def _get(
        self, resource: str, key: str, call: Callable[[str | None], Conditional]
    ) -> Conditional | None:
        """A conditional GET with the stored ETag; None when GitHub answers 304."""
        if self._rate_low():
            raise _RateLow
        found = call(self.deps.store.etag(key))
        self.stats["requests"] += 1
        if found.not_modified:
            self.stats["not_modified"] += 1
        if self.metrics is not None:
            outcome = "not_modified" if found.not_modified else "ok"
            self.metrics.github_polls.labels(resource, outcome).inc()
        return None if found.not_modified else found

    # -- workflow runs --------------------------------------------------------------------
    def _poll_runs(self, repo: str, waiting: list[Request]) -> None:
        mine = [r for r in waiting if r.repo == repo]
        for sha in sorted({r.head_sha for r in mine if r.trigger == "label" and r.head_sha}):
            params = {"event": "pull_request", "head_sha": sha, "per_page": 100}
            self._runs(repo, f"runs:{repo}:{sha}", params)
        dispatched = [r for r in mine if r.trigger == "dispatch"]
        if dispatched:
            since = min(r.action_started_at or r.created_at for r in dispatched)
            self._runs(repo, f"runs:{repo}:dispatch", dispatch_runs_query(since))

    def _runs(self, repo: str, key: str, params: dict[str, Any]) -> None:
        gh = self.deps.github
        found = self._get("runs", key, lambda etag: gh.list_runs(repo, params=params, etag=etag))
        if found is None:
            return
        raw_runs = (found.data or {}).get("workflow_runs") or []
        for raw in sorted(raw_runs, key=lambda r: int(r["id"])):
            run = run_from_payload(repo, raw)
            state = (run.status, run.conclusion, run.run_attempt)
            if self._relayed.get(str(run.id)) == state:
                continue
            logs.scoped(self.dispatch)("workflow_run", workflow_run_event(repo, raw))
            # Remembered only once a handler linked the run to a request: a run nobody
            # claimed yet is offered again while its list keeps changing.
            if self.deps.store.run_owner(str(run.id)) is None:
                continue
            if len(self._relayed) > 10_000:
                self._relayed.clear()
            self._relayed[str(run.id)] = state
        self.deps.store.set_etag(key, found.etag)

    def _just_finished(self, kind: str, now: float) -> list[Request]:
        """Requests of `kind` that finished less than COMMENT_GRACE ago: what comes last (a
        metrics comment, a deployment's final state) can follow the run's completion."""
        recent = self.deps.store.find(
            kind=kind,
            statuses=(SUCCEEDED, FAILED),
            since=now - self.deps.config.github.poll_max_age_hours * 3600,
            limit=200,
        )
        return [r for r in recent if r.finished_at and now - r.finished_at <= self.COMMENT_GRACE]

    # -- metric comments ------------------------------------------------------------------
    def _comment_targets(self, waiting: list[Request], now: float) -> dict[tuple[str, int], float]:
        """(repo, PR) → since: PRs of waiting evaluations, and of ones that just finished."""
        targets: dict[tuple[str, int], float] = {}
        for req in [*waiting, *self._just_finished("evaluate", now)]:
            if req.kind != "evaluate" or req.pr_number is None or not req.root_ts:
                continue
            key = (req.repo, req.pr_number)
            targets[key] = min(targets.get(key, req.created_at), req.created_at)
        return targets

    def _poll_comments(self, repo: str, number: int, since: float) -> None:
        gh = self.deps.github
        key = f"comments:{repo}#{number}"
        found = self._get(
            "comments",
            key,
            lambda etag: gh.list_comments(
                repo, number, since=iso_utc(since - CLOCK_SKEW), etag=etag
            ),
        )
        if found is None:
            return
        for comment in found.data or []:
            # Each event in its own log scope: the request a handler binds names its lines only.
            logs.scoped(self.dispatch)("issue_comment", issue_comment_event(repo, number, comment))
        self.deps.store.set_etag(key, found.etag)

    # -- pull request heads: pull_request synchronize --------------------------------------
    @staticmethod
    def _head_targets(waiting: list[Request]) -> dict[tuple[str, int], set[str]]:
        """(repo, PR) → the head SHAs its waiting evaluations (with a thread) evaluate."""
        targets: dict[tuple[str, int], set[str]] = {}
        for req in waiting:
            if req.kind == "evaluate" and req.pr_number and req.head_sha and req.root_ts:
                targets.setdefault((req.repo, req.pr_number), set()).add(req.head_sha)
        return targets

    def _poll_head(self, repo: str, number: int, shas: set[str]) -> None:
        gh = self.deps.github
        key = f"pull:{repo}#{number}"
        found = self._get("pulls", key, lambda etag: gh.pull(repo, number, etag=etag))
        if found is None:
            return
        pull = found.data or {}
        head = str((pull.get("head") or {}).get("sha") or "")
        # Only a head that moved is a synchronize (the ETag also changes with labels, titles…).
        if head and any(sha != head for sha in shas):
            logs.scoped(self.dispatch)("pull_request", pull_request_event(repo, pull))
        self.deps.store.set_etag(key, found.etag)

    # -- deployments: deployment_status ----------------------------------------------------
    def _deploy_targets(
        self, waiting: list[Request], now: float
    ) -> dict[tuple[str, str], list[Request]]:
        """(repo, environment) → its deploys that wait, or finished less than COMMENT_GRACE ago
        (a deployment's last status can come as its run completes)."""
        targets: dict[tuple[str, str], list[Request]] = {}
        for req in [*waiting, *self._just_finished("deploy", now)]:
            if req.kind == "deploy" and req.environment and req.root_ts:
                targets.setdefault((req.repo, req.environment), []).append(req)
        return targets

    def _poll_deployments(self, repo: str, environment: str, deploys: list[Request]) -> None:
        gh = self.deps.github
        cached_etag, deployments = self._deployments.get((repo, environment), (None, []))
        params = {"environment": environment, "per_page": 20}
        found = self._get(
            "deployments",
            f"deployments:{repo}:{environment}",
            lambda _: gh.list_deployments(repo, params=params, etag=cached_etag),
        )
        if found is not None:
            deployments = [d for d in found.data or [] if isinstance(d, dict)]
            self._deployments[(repo, environment)] = (found.etag, deployments)
        since = min(r.action_started_at or r.created_at for r in deploys) - CLOCK_SKEW
        for deployment in sorted(deployments, key=lambda d: int(d.get("id") or 0)):
            created = parse_time(deployment.get("created_at"))
            if created is None or created < since:
                continue
            run = self._run_of(deployment, deploys)
            if run is not None:
                self._poll_statuses(repo, deployment, run)

    def _run_of(self, deployment: dict[str, Any], deploys: list[Request]) -> dict[str, Any] | None:
        """The `workflow_run` to name in the event ({} when the deployment's payload names the
        request itself), or None: not (yet) known to be one of these deploys'."""
        extra = deployment.get("payload")
        if isinstance(extra, dict) and isinstance(extra.get("request_id"), str):
            return {}
        sha = str(deployment.get("sha") or "")
        for req in deploys:
            for run in self.deps.store.runs_of(req.id):
                if sha and run.head_sha == sha:
                    return {"id": int(run.run_id)}
        return None

    def _poll_statuses(self, repo: str, deployment: dict[str, Any], run: dict[str, Any]) -> None:
        gh = self.deps.github
        deployment_id = int(deployment["id"])
        key = f"deployment-statuses:{repo}:{deployment_id}"
        found = self._get(
            "deployment_statuses",
            key,
            lambda etag: gh.deployment_statuses(repo, deployment_id, etag=etag),
        )
        if found is None:
            return
        statuses = [s for s in found.data or [] if isinstance(s, dict)]
        for status in sorted(statuses, key=lambda s: int(s.get("id") or 0)):  # oldest first
            event = deployment_status_event(repo, deployment, status, run)
            logs.scoped(self.dispatch)("deployment_status", event)
        self.deps.store.set_etag(key, found.etag)


# -- polled objects as the webhook events GitHub would have sent ----------------------------
# Only the fields handlers read (bot/github_intake/payloads.py lists them per event).


def workflow_run_action(status: str) -> str:
    """The `workflow_run` webhook action for a run's status (GitHub sends requested,
    in_progress and completed; queued/waiting/pending runs are reported as requested)."""
    if status in ("in_progress", "completed"):
        return status
    return "requested"


def workflow_run_event(repo: str, run: dict[str, Any]) -> dict[str, Any]:
    return {
        "action": workflow_run_action(str(run.get("status") or "")),
        "workflow_run": run,
        "repository": {"full_name": repo},
    }


def issue_comment_event(repo: str, number: int, comment: dict[str, Any]) -> dict[str, Any]:
    """An `issue_comment` created event for a comment listed on pull request `number` (the
    poller lists comments of pull requests only, hence the `pull_request` marker)."""
    return {
        "action": "created",
        "issue": {"number": number, "pull_request": {}},
        "comment": comment,
        "repository": {"full_name": repo},
    }


def pull_request_event(repo: str, pull: dict[str, Any]) -> dict[str, Any]:
    """A `pull_request` synchronize event for a pull request whose head moved."""
    return {
        "action": "synchronize",
        "number": pull.get("number"),
        "after": (pull.get("head") or {}).get("sha"),
        "pull_request": pull,
        "repository": {"full_name": repo},
    }


def deployment_status_event(
    repo: str, deployment: dict[str, Any], status: dict[str, Any], run: dict[str, Any]
) -> dict[str, Any]:
    """A `deployment_status` created event; `run` ({} for none) is its `workflow_run`."""
    event = {
        "action": "created",
        "deployment": deployment,
        "deployment_status": status,
        "repository": {"full_name": repo},
    }
    return {**event, "workflow_run": run} if run else event
