"""The domain model: request statuses, their allowed transitions, and the request records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Request states. "open" ones still wait for something to happen.
ACCEPTED = "accepted"  # stored and acknowledged; the GitHub action is not done yet
PENDING_APPROVAL = "pending_approval"
APPROVED = "approved"  # approved; the dispatch is not done yet
TRIGGERED = "triggered"  # GitHub action done; waiting for a workflow run
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
ERROR = "error"  # the bridge could not carry it out
REJECTED = "rejected"
EXPIRED = "expired"
CANCELLED = "cancelled"
# An evaluation asked for while another one of the same PR + head SHA was in flight: it did
# nothing itself, and its requester was sent to the thread of the one in flight.
DUPLICATE = "duplicate"

OPEN_STATES = (ACCEPTED, PENDING_APPROVAL, APPROVED, TRIGGERED, QUEUED, RUNNING)
# Work for the job pool: these states, plus a pending approval whose card is not posted yet
# (root_ts NULL) — see _needs_work(). A pending request with its card waits for a click.
TO_CARRY_OUT = (ACCEPTED, APPROVED)
WAITING_FOR_RUNS = (TRIGGERED, QUEUED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, ERROR, REJECTED, EXPIRED, CANCELLED, DUPLICATE)

# Status changes a conditional update may make: new status -> the statuses it may come from.
# Store.update checks every `only_if_status=..., status=...` against this table, so a new
# change of status is written down here first. A status may always be written again (settle
# re-derives it from the runs); SUCCEEDED/FAILED go back to QUEUED/RUNNING when a run is re-run.
TRANSITIONS: dict[str, frozenset[str]] = {
    TRIGGERED: frozenset({ACCEPTED, APPROVED}),
    DUPLICATE: frozenset({ACCEPTED}),
    APPROVED: frozenset({PENDING_APPROVAL}),
    REJECTED: frozenset({PENDING_APPROVAL}),
    EXPIRED: frozenset({PENDING_APPROVAL}),
    QUEUED: frozenset({*WAITING_FOR_RUNS, SUCCEEDED, FAILED}),
    RUNNING: frozenset({*WAITING_FOR_RUNS, SUCCEEDED, FAILED}),
    SUCCEEDED: frozenset({*WAITING_FOR_RUNS, FAILED}),
    FAILED: frozenset({*WAITING_FOR_RUNS, SUCCEEDED}),
    ERROR: frozenset(OPEN_STATES),
    CANCELLED: frozenset(OPEN_STATES),
}


def disallowed_transitions(sources: Iterable[str], target: str) -> list[str]:
    """The statuses in `sources` from which TRANSITIONS does not allow a change to `target`."""
    allowed = TRANSITIONS.get(target, frozenset())
    return [s for s in sources if s != target and s not in allowed]


@dataclass(frozen=True)
class Request:
    id: str
    kind: str
    repo: str
    pr_number: int | None
    head_sha: str | None
    run_ref: str | None
    environment: str | None
    trigger: str
    event_type: str | None
    channel_id: str
    user_id: str
    root_ts: str | None
    response_url: str | None
    status: str
    error: str | None
    details: dict[str, Any]
    created_at: float
    updated_at: float
    attempts: int
    action_started_at: float | None
    finished_at: float | None
    expires_at: float | None
    decided_by: str | None
    decided_at: float | None
    reason: str | None
    failures: int = 0  # failures that are not outages, since the last success (the cap)
    waiting_since: float | None = None  # when its current outage wait began
    waiting_on: str | None = None  # the peer it waits for: GitHub | Slack
    answer_due: bool = False  # GitHub waits for an answer to a protection rule (v7)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATES

    @property
    def ref(self) -> str:
        if self.pr_number is not None:
            return f"{self.repo}#{self.pr_number}"
        return self.repo


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    request_id: str
    status: str
    conclusion: str | None
    attempt: int
    name: str | None
    html_url: str | None
    started_at: float | None
    head_sha: str | None = None


@dataclass
class NewRequest:
    kind: str
    repo: str
    trigger: str
    channel_id: str
    user_id: str
    idempotency_key: str
    status: str = ACCEPTED
    pr_number: int | None = None
    head_sha: str | None = None
    run_ref: str | None = None
    environment: str | None = None
    event_type: str | None = None
    response_url: str | None = None
    expires_at: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
