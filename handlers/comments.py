"""Metric comments on a pull request (`issue_comment` created) become tables in the thread."""

from __future__ import annotations

import logging
from typing import Any

from bot.deps import Deps
from bot.markdown import has_metrics, render_comment
from bot.slack import SlackFailure

log = logging.getLogger(__name__)

LOOKBACK_SECONDS = 14 * 24 * 3600


def on_issue_comment(deps: Deps, payload: dict[str, Any]) -> None:
    issue = payload.get("issue") or {}
    comment = payload.get("comment") or {}
    repo = str((payload.get("repository") or {}).get("full_name") or "")
    if "pull_request" not in issue or not repo or not isinstance(comment, dict):
        return  # a plain issue, not a pull request
    relay_comment(deps, repo, int(issue["number"]), comment)


def relay_comment(deps: Deps, repo: str, number: int, comment: dict[str, Any]) -> bool:
    """Post a metrics comment into the thread of the newest request for that PR (once)."""
    body = str(comment.get("body") or "")
    user = comment.get("user") or {}
    if not has_metrics(body, author_is_bot=user.get("type") == "Bot"):
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
    deps.store.merge_details(
        req.id,
        {
            "metrics": {
                "head_sha": req.head_sha,
                "comment_url": url,
                "author": author,
                "body": body[:4000],
            }
        },
    )
    return True
