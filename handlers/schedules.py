"""Scheduled commands (`schedules:` in chatops.yml): at each cron time, a thread and an action.

A `dispatch` schedule posts a thread root "Scheduled <name> (<cron>) fired" in its channel and
sends a repository_dispatch (client_payload: request_id, schedule, slack_channel,
slack_thread_ts and the schedule's own client_payload). An `evaluate` schedule behaves like
`/evaluate <pr>` typed by nobody: same label or dispatch, same thread. Either way the request
is then followed like any other (display_title / PR correlation, webhook or poll).

Once per due time, across replicas and restarts: the scheduler leader runs one cron job per
schedule; the job works out the latest due time from the cron expression and the clock, and
creates the request with the idempotency key `schedule:<name>:<due time>`, so a second replica,
a leader change or a restart can never fire the same due time twice. `schedule_state` keeps
the last due time fired. A due time missed while no process was leader (downtime, restart) is
caught up when a process becomes leader (and by a check every minute), if it is at most
CATCH_UP_SECONDS old; older ones are skipped (a nightly job should not run at noon because the
bridge was down at night). A schedule that never fired starts with its next due time.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from typing import TYPE_CHECKING, Any, TypedDict, cast

from bot import messages, slacktext
from bot.config import Schedule
from bot.cron import cron_trigger
from bot.deps import Deps
from bot.model import ACCEPTED, NewRequest, Request
from bot.slack import SlackFailure
from bot.slacktext import escape_mrkdwn, iso_utc
from handlers import details
from handlers.kinds import RequestKind
from handlers.lifecycle import (
    dispatch_once,
    ensure_root,
    fail_or_wait,
    trigger,
)

if TYPE_CHECKING:
    from bot.scheduler import Housekeeping

log = logging.getLogger(__name__)

CATCH_UP_SECONDS = 3600  # a due time missed by up to an hour still fires (once)
ON_TIME_SECONDS = 60  # a schedule's very first due time fires only if found this soon
CATCH_UP_JOB = "schedules-catch-up"
USER_ID = "schedule"  # the requests.user_id of scheduled requests: no person asked


class ScheduleDetails(TypedDict, total=False):
    """Keys of a request a schedule fired (kind "schedule", or a scheduled evaluation)."""

    schedule: str  # the schedule's name
    cron: str
    timezone: str
    due: float  # the due time it fired for (UNIX seconds)
    client_payload: dict[str, Any]  # the schedule's own client_payload, sent with the dispatch


def details_of(req: Request) -> ScheduleDetails:
    return cast(ScheduleDetails, req.details)


def scheduled(req: Request) -> bool:
    """Whether a schedule fired this request (no person asked for it)."""
    return bool(details_of(req).get("schedule"))


# -- when ---------------------------------------------------------------------------------
def due_time(schedule: Schedule, now: float) -> float | None:
    """The latest cron time of `schedule` at or before `now`, if at most CATCH_UP_SECONDS old."""
    trigger = cron_trigger(schedule.cron, schedule.timezone)
    end = dt.datetime.fromtimestamp(now, dt.UTC)
    fire = trigger.get_next_fire_time(None, end - dt.timedelta(seconds=CATCH_UP_SECONDS))
    latest = None
    while fire is not None and fire <= end:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire)
    return latest.timestamp() if latest is not None else None


def fire(deps: Deps, schedule: Schedule, now: float | None = None) -> Request | None:
    """Create and submit the request of the schedule's latest due time, unless done already.

    Called by the schedule's cron job at its time, and by catch_up when a process becomes
    leader. Returns the new request, or None when nothing was due or it was fired before.
    """
    now = deps.clock() if now is None else now
    due = due_time(schedule, now)
    if due is None:
        return None
    last = deps.store.last_fire(schedule.name)
    if last is not None and last >= due:
        return None
    if last is None and now - due > ON_TIME_SECONDS:
        # A schedule never fired before (just added to chatops.yml) starts with its next due
        # time: adding a 16:00 job at 16:30 should not run it at 16:30.
        deps.store.set_last_fire(schedule.name, due, previous=None)
        return None
    req, created = deps.store.create_request(_new_request(deps, schedule, due))
    # Bookkeeping after the request exists: a crash in between re-finds it by its key.
    deps.store.set_last_fire(schedule.name, due, previous=last)
    if not created:
        return None
    deps.store.audit(
        actor=USER_ID,
        action=f"{req.kind}.requested",
        outcome="accepted",
        request_id=req.id,
        detail=f"{schedule.name}: {schedule.cron} ({schedule.timezone}) due {iso_utc(due)}",
    )
    log.info("schedule fired", extra={"schedule": schedule.name, "request_id": req.id})
    deps.jobs.submit(req.id)
    return req


def catch_up(deps: Deps) -> None:
    """Fire what came due while no process was leader (start-up, takeover)."""
    for schedule in deps.config.schedules:
        try:
            fire(deps, schedule)
        except Exception:
            log.exception("schedule catch-up failed", extra={"schedule": schedule.name})


def install(hk: Housekeeping, deps: Deps) -> None:
    """One leader-only cron job per schedule (fixed id `schedule:<name>`), plus catch-up.

    misfire_grace_time = CATCH_UP_SECONDS: a fire delayed by a busy or paused leader still
    happens; coalesce (the scheduler default) folds several missed fires into one.
    """
    for schedule in deps.config.schedules:
        hk.add_cron(
            f"schedule:{schedule.name}",
            functools.partial(fire, deps, schedule),
            schedule.cron,
            timezone=schedule.timezone,
            misfire_grace_time=CATCH_UP_SECONDS,
        )
    if deps.config.schedules:
        hk.on_leadership(functools.partial(catch_up, deps))
        # Safety net: a fire that failed (database briefly away) is retried within a minute.
        hk.add_interval(CATCH_UP_JOB, functools.partial(catch_up, deps), 60)


def _new_request(deps: Deps, schedule: Schedule, due: float) -> NewRequest:
    repo = schedule.repository or deps.config.repository_for(schedule.channel)
    assert repo, "config validation requires a repository for every schedule"
    details = ScheduleDetails(
        schedule=schedule.name,
        cron=schedule.cron,
        timezone=schedule.timezone,
        due=due,
        client_payload=dict(schedule.client_payload),
    )
    common: dict[str, Any] = {
        "repo": repo,
        "channel_id": schedule.channel,
        "user_id": USER_ID,
        "idempotency_key": f"schedule:{schedule.name}:{iso_utc(due)}",
        "details": dict(details),
    }
    if schedule.command == "evaluate":
        cmd = deps.config.commands.evaluate
        return NewRequest(
            kind="evaluate",
            pr_number=schedule.pr,
            trigger=cmd.trigger,
            event_type=cmd.event_type if cmd.trigger == "dispatch" else None,
            **common,
        )
    return NewRequest(kind="schedule", trigger="dispatch", event_type=schedule.event_type, **common)


# -- what -----------------------------------------------------------------------------------
def carry_out(deps: Deps, req: Request) -> None:
    """Worker of kind "schedule": thread root, then the dispatch (idempotent steps)."""
    try:
        req = ensure_root(deps, req)
    except SlackFailure as exc:
        fail_or_wait(deps, req, exc)
        return
    event_type = req.event_type
    assert event_type
    payload = {
        **(details_of(req).get("client_payload") or {}),
        "request_id": req.id,
        "schedule": details_of(req).get("schedule"),
        "slack_channel": req.channel_id,
        "slack_thread_ts": req.root_ts,
    }
    trigger(
        deps,
        req,
        lambda: dispatch_once(deps, req, event_type, payload),
        from_statuses=(ACCEPTED,),
        action="schedule.triggered",
        detail=event_type,
    )


def root(deps: Deps, req: Request, what: str | None = None) -> messages.Message:
    """Thread root of a scheduled request: kind "schedule", or another kind's request that a
    schedule fired, whose kind says what it is (`what`, e.g. a scheduled evaluation)."""
    d = details_of(req)
    name, cron, tz = d.get("schedule"), d.get("cron"), d.get("timezone") or "UTC"
    headline = f":alarm_clock: *Scheduled `{name}`* (`{cron}` {tz}) fired"
    if what is None:
        what = f"`{req.event_type}` repository_dispatch to `{req.repo}`"
    status = f"*Status:* {messages.status_label(req.status)}"
    if req.error and req.status == "error":
        status += f" — {escape_mrkdwn(req.error)[:500]}"
    blocks = [slacktext.section(f"{headline}\n{what}"), slacktext.section(status)]
    runs_summary = details.thread(req).get("runs_summary")
    if runs_summary:
        blocks.append(slacktext.context(runs_summary))
    blocks.append(slacktext.context(f"request `{req.id}` · trigger: {req.trigger}"))
    return {
        "text": f"Scheduled {name} ({cron}) fired: {messages.status_words(req.status)}",
        "blocks": blocks,
    }


def what(req: Request, web_base: str) -> str:
    """A scheduled dispatch in a few words: "schedule in `acme/ml`"."""
    return f"{escape_mrkdwn(req.kind)} in `{req.repo}`"


# Created by the cron jobs, not by a command: no usage, no rerun from its thread.
KIND = RequestKind(name="schedule", carry_out=carry_out, root=root, what=what)
