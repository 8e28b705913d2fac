"""The keys a deploy request keeps in Request.details (handlers/details.py): what the card shows."""

from __future__ import annotations

from typing import TypedDict, cast

from bot.model import Request


class LaterMetrics(TypedDict, total=False):
    """A newer metrics comment for the card's commit, named on a card that keeps its table."""

    id: int | None
    comment_url: str
    author: str
    created_at: str


class RunFacts(TypedDict, total=False):
    """The GitHub run a deploy names, as the worker read it when the card was made."""

    name: str | None
    url: str | None
    branch: str | None
    sha: str
    status: str
    conclusion: str | None


class PullHead(TypedDict):
    """The head of the run's PR when the card was made."""

    number: int
    sha: str
    url: str


class BranchHead(TypedDict):
    """The head of the run's branch when the card was made (a run of no PR)."""

    branch: str
    sha: str


class EarlierMetrics(TypedDict, total=False):
    comment_url: str | None
    author: str | None


class ShownMetrics(TypedDict, total=False):
    """The newest trusted metrics comment for the run's commit: the table the card shows."""

    id: int | None
    comment_url: str | None
    author: str | None
    trusted_as: str | None
    created_at: str | None
    body: str | None
    head_sha: str  # the run's commit the comment is for
    count: int  # how many trusted metrics comments there were for it
    earlier: list[EarlierMetrics]  # up to 5 of the others, newest first


class DeployDetails(TypedDict, total=False):
    facts_checked: bool  # the worker looked the run up (or found it is not a GitHub run id)
    run: RunFacts
    pr_head: PullHead
    branch_head: BranchHead
    metrics: ShownMetrics
    metrics_later: list[LaterMetrics]  # written by handlers/comments.py
    # written by handlers/deployment_status.py: the newest deployment status
    deployment_status_id: int
    deployment_state: str
    deployment_environment: str
    deployment_url: str | None


def details_of(req: Request) -> DeployDetails:
    return cast(DeployDetails, req.details)
