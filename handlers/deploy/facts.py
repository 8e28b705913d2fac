"""The keys a deploy request keeps in Request.details (handlers/details.py): what the card shows."""

from __future__ import annotations

from typing import Any, TypedDict, cast

from bot.model import Request


class LaterMetrics(TypedDict, total=False):
    """A newer metrics comment for the card's commit, named on a card that keeps its table."""

    id: int | None
    comment_url: str
    author: str
    created_at: str


class DeployDetails(TypedDict, total=False):
    facts_checked: bool  # the worker looked the run up (or found it is not a GitHub run id)
    run: dict[str, Any]  # name, url, branch, sha, status, conclusion of the GitHub run
    pr_head: dict[str, Any]  # number, sha, url: the head of the run's PR when the card was made
    branch_head: dict[str, Any]  # branch, sha: the head of the run's branch (no PR)
    metrics: dict[str, Any]  # the newest trusted metrics comment for the run's commit
    metrics_later: list[LaterMetrics]  # written by handlers/comments.py
    # written by handlers/deployment_status.py: the newest deployment status
    deployment_status_id: int
    deployment_state: str
    deployment_environment: str
    deployment_url: str | None


def details_of(req: Request) -> DeployDetails:
    return cast(DeployDetails, req.details)
