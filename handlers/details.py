"""Request.details, typed: one TypedDict per owner of keys, read and written through accessors.

The JSON column stays one object per request; every key has one owner that declares it:
ThreadDetails below (written by the lifecycle and `cancel`, read by every kind's rendering),
EvaluateDetails in handlers/evaluate.py, ScheduleDetails in handlers/schedules.py and
DeployDetails in handlers/deploy/facts.py. mypy checks each key read or written through them,
so a misspelt or undeclared key is a type error instead of a silent None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict, cast

from bot.deps import Deps
from bot.model import Request


class ThreadDetails(TypedDict, total=False):
    root_hash: str  # digest of the root message Slack shows now (lifecycle.refresh_root)
    runs_summary: str  # one line naming each run and its state (lifecycle.settle)
    cancelled_by: str  # who cancelled the request (mentions.cancel), a Slack user id


def thread(req: Request) -> ThreadDetails:
    return cast(ThreadDetails, req.details)


def merge(deps: Deps, request_id: str, part: Mapping[str, object]) -> None:
    """Merge one owner's typed keys (a TypedDict value) into the request's details."""
    deps.store.merge_details(request_id, dict(part))
