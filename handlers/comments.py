"""Metric comments on a pull request (`issue_comment` created) become tables in the thread.

Only comments by authors the operator trusts count as metrics (bot/provenance.py, `metrics:` in
chatops.yml). Anyone else's metrics comment is not relayed at all — not even as an ordinary
comment labelled untrusted: the thread is where approvers read evidence, a labelled copy would
still put an outsider's table next to the real one, and the bridge relays no other comments
either. It is counted (chatops_untrusted_metrics_comments_total) and logged by id.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from bot import logs
from bot.deps import Deps
from bot.markdown import has_metrics, render_comment
from bot.model import PENDING_APPROVAL
from bot.provenance import author_of, commit_of, same_commit, trusted_as
from bot.slack import SlackFailure
from handlers.deploy.facts import DeployDetails, LaterMetrics
from handlers.deploy.facts import details_of as deploy_details
from handlers.evaluate import EvaluateDetails, MetricsEntry
from handlers.lifecycle import refresh_root

log = logging.getLogger(__name__)

LOOKBACK_SECONDS = 14 * 24 * 3600
# Metrics comments remembered per request (the card names the newest and counts the others).
MAX_METRICS_KEPT = 20
MAX_METRICS_BODY = 4000


def on_issue_comment(deps: Deps, payload: dict[str, Any]) -> None:
    issue = payload.get("issue") or {}
    comment = payload.get("comment") or {}
    repo = str((payload.get("repository") or {}).get("full_name") or "")
    if "pull_request" not in issue or not repo or not isinstance(comment, dict):
        return  # a plain issue, not a pull request
    relay_comment(deps, repo, int(issue["number"]), comment)


def relay_comment(deps: Deps, repo: str, number: int, comment: dict[str, Any]) -> bool:
    """Post a trusted metrics comment into the thread of the newest request for that PR (once)."""
    body = str(comment.get("body") or "")
    user = author_of(comment)
    if not has_metrics(body, author_is_bot=user.get("type") == "Bot"):
        return False
    trust = trusted_as(deps.config.metrics, comment)
    if trust is None:
        _refuse_untrusted(deps, repo, number, comment)
        return False
    since = deps.clock() - LOOKBACK_SECONDS
    reqs = [
        r
        for r in deps.store.find(
            repo=repo, pr_number=number, kind="evaluate", since=since, limit=10
        )
        if r.root_ts
    ]
    if not reqs:
        return False
    req = reqs[0]
    logs.bind(request_id=req.id)  # the delivery's log lines name the request from here on
    if deps.config.channel_settings(req.channel_id).notify == "failures":
        return False
    key = f"comment:{repo}:{comment.get('id')}"
    if not deps.store.first_time(key):
        return False
    author = str(user.get("login") or "someone")
    url = str(comment.get("html_url") or "")
    try:
        for msg in render_comment(body, link=url, author=author):
            deps.slack.post(
                req.channel_id, msg["text"], blocks=msg["blocks"], thread_ts=req.root_ts
            )
    except SlackFailure:
        deps.store.forget(key)
        raise
    entry = MetricsEntry(
        id=comment.get("id"),
        comment_url=url,
        author=author,
        author_type=str(user.get("type") or ""),
        author_association=str(comment.get("author_association") or ""),
        trusted_as=trust,
        created_at=str(comment.get("created_at") or ""),
        # The commit the comment names (chatops:data head_sha), else the PR head the request
        # was made for: what ties these metrics to one run's commit on a deploy card.
        commit=commit_of(body) or req.head_sha,
        body=body[:MAX_METRICS_BODY],
    )
    deps.store.change_details(req.id, lambda d: _with_entry(d, entry))
    _flag_on_pending_cards(deps, repo, entry)
    return True


def _with_entry(details: dict[str, Any], entry: MetricsEntry) -> dict[str, Any]:
    known = cast(EvaluateDetails, details).get("metrics_comments") or []
    kept = [e for e in known if isinstance(e, dict) and e.get("id") != entry.get("id")]
    return {**details, **EvaluateDetails(metrics_comments=[*kept, entry][-MAX_METRICS_KEPT:])}


def _refuse_untrusted(deps: Deps, repo: str, number: int, comment: dict[str, Any]) -> None:
    # Once per comment: the poller sees the same comment on every cycle.
    if not deps.store.first_time(f"untrusted-metrics:{repo}:{comment.get('id')}"):
        return
    if deps.metrics is not None:
        deps.metrics.untrusted_metrics.inc()
    user = author_of(comment)
    # Ids only: neither the comment's text nor anything else its author wrote is logged.
    log.info(
        "metrics comment from an untrusted author not relayed",
        extra={
            "repo": repo,
            "pr": number,
            "comment_id": comment.get("id"),
            "github_user_id": user.get("id"),
            "author_association": str(comment.get("author_association") or "")[:40],
        },
    )


def _flag_on_pending_cards(deps: Deps, repo: str, entry: MetricsEntry) -> None:
    """A deploy card keeps the metrics it was posted with (an approver may have read them);
    a newer metrics comment for the same commit is named on the card instead of replacing
    them."""
    for req in deps.store.find(repo=repo, kind="deploy", statuses=(PENDING_APPROVAL,), limit=20):
        shown = deploy_details(req).get("metrics")
        if not isinstance(shown, dict) or shown.get("id") == entry.get("id"):
            continue
        if not same_commit(str(shown.get("head_sha") or ""), str(entry.get("commit") or "")):
            continue
        later = LaterMetrics(
            id=entry.get("id"),
            comment_url=entry.get("comment_url", ""),
            author=entry.get("author", ""),
            created_at=entry.get("created_at", ""),
        )

        def add_later(d: dict[str, Any], later: LaterMetrics = later) -> dict[str, Any]:
            known = cast(DeployDetails, d).get("metrics_later") or []
            kept = [e for e in known if e.get("id") != later.get("id")]
            return {**d, **DeployDetails(metrics_later=[*kept, later][-MAX_METRICS_KEPT:])}

        deps.store.change_details(req.id, add_later)
        refresh_root(deps, deps.store.get(req.id) or req)
