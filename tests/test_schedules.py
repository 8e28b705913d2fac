"""Scheduled commands: due times from cron, fired once per due time (replicas, restarts),
a thread root in the schedule's channel, then followed like any other request."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from webhook_examples import fixture

from bot.config import ConfigError, parse_config
from bot.cron import cron_trigger
from handlers import schedules
from tests.conftest import DEFAULT_CONFIG, REPO

NIGHTLY = {
    "name": "nightly-retrain",
    "cron": "0 16 * * *",
    "command": "dispatch",
    "event_type": "retrain",
    "repository": REPO,
    "channel": "C0SCHEDULE",
    "client_payload": {"dataset": "full"},
}


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


DUE = _ts("2026-11-23T16:00:00")  # a Monday


def _config(*items: dict[str, Any]) -> dict[str, Any]:
    cfg = json.loads(json.dumps(DEFAULT_CONFIG))
    cfg["schedules"] = list(items) or [NIGHTLY]
    return cfg


def _schedule(cfg: dict[str, Any], i: int = 0) -> Any:
    return parse_config(cfg).schedules[i]


def test_due_time_is_the_latest_cron_time_within_the_catch_up_window() -> None:
    s = _schedule(_config())
    assert schedules.due_time(s, DUE) == DUE
    assert schedules.due_time(s, DUE - 1) is None  # yesterday's is more than an hour old
    assert schedules.due_time(s, DUE + 1800) == DUE
    assert schedules.due_time(s, DUE + schedules.CATCH_UP_SECONDS + 1) is None
    berlin = _schedule(_config({**NIGHTLY, "timezone": "Europe/Berlin"}))
    assert schedules.due_time(berlin, DUE - 3600) == DUE - 3600  # 16:00 CET is 15:00 UTC
    every5 = _schedule(_config({**NIGHTLY, "cron": "*/5 * * * *"}))
    assert schedules.due_time(every5, DUE + 299) == DUE
    assert schedules.due_time(every5, DUE + 300) == DUE + 300


def _fires(crontab: str, start: str, count: int = 4, tz: str = "UTC") -> list[str]:
    trigger = cron_trigger(crontab, tz)
    when = dt.datetime.fromisoformat(start).replace(tzinfo=dt.UTC)
    got: list[str] = []
    fire = trigger.get_next_fire_time(None, when)
    while fire is not None and len(got) < count:
        got.append(fire.astimezone(dt.UTC).strftime("%a %Y-%m-%d %H:%M"))
        fire = trigger.get_next_fire_time(fire, fire)
    return got


def test_cron_expressions_mean_what_they_mean_in_crontab() -> None:
    # Day of week as in crontab(5): 0 and 7 are Sunday, 1 is Monday (APScheduler's own
    # from_crontab counts from Monday = 0 and would fire `* * 1` on Tuesdays).
    assert _fires("0 16 * * 1", "2026-11-22", 2) == ["Mon 2026-11-23 16:00", "Mon 2026-11-30 16:00"]
    assert _fires("0 16 * * 0", "2026-11-23", 1) == ["Sun 2026-11-29 16:00"]
    assert _fires("0 16 * * 7", "2026-11-23", 1) == ["Sun 2026-11-29 16:00"]
    assert _fires("0 16 * * sun", "2026-11-23", 1) == ["Sun 2026-11-29 16:00"]
    assert _fires("30 8 * * 1-5", "2026-11-27T09:00", 2) == [
        "Mon 2026-11-30 08:30",
        "Tue 2026-12-01 08:30",
    ]
    assert _fires("0 0 * * 5-7", "2026-11-23", 3) == [
        "Fri 2026-11-27 00:00",
        "Sat 2026-11-28 00:00",
        "Sun 2026-11-29 00:00",
    ]
    assert _fires("0 0 * * */2", "2026-11-23", 2) == [
        "Tue 2026-11-24 00:00",
        "Thu 2026-11-26 00:00",
    ]
    # Both day fields restricted: either one matching fires (the 1st, and every Monday).
    assert _fires("0 9 1 * 1", "2026-11-24", 2) == ["Mon 2026-11-30 09:00", "Tue 2026-12-01 09:00"]
    # One of them `*`: both must match (here simply every Monday).
    assert _fires("0 9 * * 1", "2026-11-24", 1) == ["Mon 2026-11-30 09:00"]
    # In a configured timezone: 16:00 in Berlin is 15:00 UTC in winter, 14:00 UTC in summer.
    assert _fires("0 16 * * 1", "2026-11-22", 1, "Europe/Berlin") == ["Mon 2026-11-23 15:00"]
    assert _fires("0 16 * * 1", "2026-06-21", 1, "Europe/Berlin") == ["Mon 2026-06-22 14:00"]
    # A schedule's due time follows the same reading.
    monday = _schedule(_config({**NIGHTLY, "cron": "0 16 * * 1"}))
    tuesday = _schedule(_config({**NIGHTLY, "cron": "0 16 * * 2"}))
    assert schedules.due_time(monday, DUE) == DUE
    assert schedules.due_time(tuesday, DUE) is None
    for bad in ("0 16 * * 8", "0 16 * * 5-1", "0 16 * * funday", "0 16 * * */0", "0 16 * *"):
        with pytest.raises(ValueError):
            cron_trigger(bad)


def test_bad_schedules_are_refused_with_their_path() -> None:
    for bad, words in (
        ({**NIGHTLY, "cron": "61 * * * *"}, "schedules[0].cron"),
        ({**NIGHTLY, "cron": "0 16 * *"}, "schedules[0].cron"),
        ({**NIGHTLY, "cron": "0 16 * * mon#1"}, "schedules[0].cron"),  # not standard cron
        ({**NIGHTLY, "cron": "0 16 * * 8"}, "schedules[0].cron"),
        ({**NIGHTLY, "timezone": "Mars/Olympus"}, "schedules[0].timezone"),
        ({**NIGHTLY, "every": "day"}, "schedules[0].every: unknown key"),
        ({k: v for k, v in NIGHTLY.items() if k != "event_type"}, "needs event_type"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_config(_config(bad))
        assert any(words in p for p in err.value.problems), err.value.problems
    # Sunday is 0 or 7 in cron: both are accepted at start.
    for sunday in ("0 16 * * 0", "0 16 * * 7", "0 16 * * sun"):
        assert parse_config(_config({**NIGHTLY, "cron": sunday})).schedules[0].cron == sunday
    no_repo = _config({k: v for k, v in NIGHTLY.items() if k != "repository"})
    no_repo["repositories"] = {}
    with pytest.raises(ConfigError) as err:
        parse_config(no_repo)
    assert "schedules[0].repository" in err.value.problems[0]


def test_a_schedule_fires_once_at_its_time_and_is_followed(make_harness, github, slack) -> None:
    cfg = _config()
    h = make_harness(cfg)
    deps, s = h.bridge.deps, h.bridge.config.schedules[0]
    assert schedules.fire(deps, s, now=DUE - 5) is None  # not yet
    req = schedules.fire(deps, s, now=DUE + 0.2)
    assert req is not None and req.kind == "schedule"
    assert req.channel_id == "C0SCHEDULE" and req.repo == REPO
    github.wait_for("POST", r"/dispatches$")
    h.wait_until(lambda: h.store.get(req.id).status == "triggered", what="triggered")
    h.settle()
    # Same due time again — the same process, another replica, or after a restart: nothing.
    assert schedules.fire(deps, s, now=DUE + 30) is None
    replica = make_harness(cfg)
    assert schedules.fire(replica.bridge.deps, s, now=DUE + 60) is None
    h.settle()
    assert len(github.dispatches) == 1
    body = github.dispatches[0]
    assert body["event_type"] == "retrain"
    req = h.store.get(req.id)
    assert body["client_payload"] == {
        "dataset": "full",
        "request_id": req.id,
        "schedule": "nightly-retrain",
        "slack_channel": "C0SCHEDULE",
        "slack_thread_ts": req.root_ts,
    }
    roots = [c for c in slack.calls_to("chat.postMessage") if "thread_ts" not in c.params]
    assert len(roots) == 1 and roots[0].params["channel"] == "C0SCHEDULE"
    assert "Scheduled nightly-retrain (0 16 * * *) fired" in roots[0].params["text"]
    assert h.store.last_fire("nightly-retrain") == DUE

    # Followed like any other request: the run names the request in its run-name.
    payload = copy.deepcopy(fixture("workflow_run.completed"))
    payload["repository"]["full_name"] = REPO
    payload["workflow_run"].update(
        display_title=f"chatops {req.id}: retrain",
        event="repository_dispatch",
        # Created at the dispatch: a run older than it is not this request's.
        created_at=dt.datetime.fromtimestamp(req.action_started_at or 0, dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        status="completed",
        conclusion="success",
        pull_requests=[],
    )
    assert h.webhook("workflow_run", payload).status_code == 202
    h.wait_until(lambda: h.store.get(req.id).status == "succeeded", what="succeeded")
    h.settle()
    assert len(slack.thread_replies("C0SCHEDULE", req.root_ts)) == 1

    # The next day's due time fires again, once.
    nxt = schedules.fire(deps, s, now=DUE + 86400)
    assert nxt is not None and nxt.id != req.id
    h.settle()
    assert schedules.fire(deps, s, now=DUE + 86400 + 5) is None


def test_a_missed_fire_is_caught_up_within_the_window_only(make_harness, github, slack) -> None:
    h = make_harness(_config())
    deps, s = h.bridge.deps, h.bridge.config.schedules[0]
    h.store.set_last_fire(s.name, DUE - 86400, previous=None)  # fired yesterday, then down
    # The bridge comes back 20 minutes late: the missed 16:00 fires once.
    assert schedules.fire(deps, s, now=DUE + 1200) is not None
    assert schedules.fire(deps, s, now=DUE + 1300) is None
    # Back two hours late the next day: too late, skipped (no fire at 18:00 for a 16:00 job).
    assert schedules.fire(deps, s, now=DUE + 86400 + 7200) is None
    h.settle()
    assert len(github.dispatches) == 1


def test_a_new_schedule_starts_with_its_next_due_time(make_harness, github, slack) -> None:
    h = make_harness(_config())
    deps, s = h.bridge.deps, h.bridge.config.schedules[0]
    assert schedules.fire(deps, s, now=DUE + 1800) is None  # added at 16:30: not run at 16:30
    assert h.store.last_fire(s.name) == DUE
    assert schedules.fire(deps, s, now=DUE + 86400 + 1) is not None  # tomorrow 16:00
    h.settle()
    assert len(github.dispatches) == 1


def test_an_evaluate_schedule_behaves_like_slash_evaluate(make_harness, github, slack) -> None:
    longest = "n" * 64  # the longest name allowed fits every column it goes into
    h = make_harness(
        _config({**NIGHTLY, "name": longest, "command": "evaluate", "pr": 42, "event_type": None})
    )
    req = schedules.fire(h.bridge.deps, h.bridge.config.schedules[0], now=DUE)
    assert req is not None and req.kind == "evaluate" and req.trigger == "label"
    github.wait_for("POST", r"/issues/42/labels$")
    h.wait_until(lambda: h.store.get(req.id).status == "triggered", what="triggered")
    h.settle()
    roots = [c for c in slack.calls_to("chat.postMessage") if "thread_ts" not in c.params]
    assert len(roots) == 1
    assert f"Scheduled `{longest}`" in json.dumps(roots[0].params["blocks"])
    assert "Evaluation of" in json.dumps(roots[0].params["blocks"])


def test_installer_adds_one_cron_job_per_schedule(make_harness, github, slack) -> None:
    # Times far from now: the scheduler really runs here, and its catch-up must find nothing due.
    yearly = {**NIGHTLY, "cron": "0 0 1 1 *"}
    other = {**NIGHTLY, "name": "weekly", "cron": "30 6 1 1 *", "timezone": "Europe/Berlin"}
    h = make_harness(_config(yearly, other), start_scheduler=True)
    sched = h.bridge.housekeeping.scheduler
    nightly, weekly = sched.get_job("schedule:nightly-retrain"), sched.get_job("schedule:weekly")
    assert nightly is not None and weekly is not None
    assert nightly.misfire_grace_time == schedules.CATCH_UP_SECONDS
    assert sched.get_job(schedules.CATCH_UP_JOB) is not None
    assert str(weekly.trigger.timezone) == "Europe/Berlin"
    # APScheduler's next fire time is a due time of the same cron expression.
    when = nightly.next_run_time.timestamp()
    assert schedules.due_time(h.bridge.config.schedules[0], when) == when


def test_the_installed_job_fires_at_its_time_by_a_controllable_clock(
    make_harness, github, slack, clock
) -> None:
    clock.now = DUE - 3600
    h = make_harness(_config(), use_clock=True)
    hk = h.bridge.housekeeping
    schedules.install(hk, h.bridge.deps)  # what start() does on every process
    job = hk.scheduler.get_job("schedule:nightly-retrain")
    assert job is not None
    hk.is_leader = True
    # APScheduler, asked from the controllable clock's time, calls the job at 16:00 UTC.
    at = job.trigger.get_next_fire_time(None, dt.datetime.fromtimestamp(clock(), dt.UTC))
    assert at.timestamp() == DUE
    clock.now = DUE - 5
    job.func()  # even if called: before its time by the clock, nothing fires
    h.settle()
    assert github.dispatches == [] and h.store.find() == []
    clock.now = DUE + 0.3
    job.func()
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    [req] = h.store.find()
    assert req.details["due"] == DUE and req.kind == "schedule"
    assert len(github.dispatches) == 1
    # A standby replica's job does nothing; the leader's second call of the same time neither.
    hk.is_leader = False
    clock.now = DUE + 86400
    job.func()
    hk.is_leader = True
    clock.now = DUE + 1
    job.func()
    h.settle()
    assert len(github.dispatches) == 1 and len(h.store.find()) == 1


def test_serve_refuses_an_invalid_cron_at_start_with_its_path(tmp_path: Path) -> None:
    from tests.test_settings_config import GOOD, run_serve

    cfg = tmp_path / "chatops.yml"
    bad = {**NIGHTLY, "cron": "0 25 * * *"}
    cfg.write_text(json.dumps({"repositories": {"default": REPO}, "schedules": [bad]}))
    proc = run_serve({**GOOD, "CHATOPS_CONFIG": str(cfg)}, cwd=tmp_path)
    assert proc.returncode == 2
    assert "schedules[0].cron" in proc.stderr
    assert "Traceback" not in proc.stderr
