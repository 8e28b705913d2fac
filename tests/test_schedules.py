"""Scheduled commands: due times from cron, fired once per due time (replicas, restarts),
a thread root in the schedule's channel, then followed like any other request."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest
from webhook_examples import fixture

from bot.config import ConfigError, parse_config
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


DUE = _ts("2026-11-23T16:00:00")


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


def test_bad_schedules_are_refused_with_their_path() -> None:
    for bad, words in (
        ({**NIGHTLY, "cron": "61 * * * *"}, "schedules[0].cron"),
        ({**NIGHTLY, "cron": "0 16 * *"}, "schedules[0].cron"),
        ({**NIGHTLY, "timezone": "Mars/Olympus"}, "schedules[0].timezone"),
        ({**NIGHTLY, "every": "day"}, "schedules[0].every: unknown key"),
        ({k: v for k, v in NIGHTLY.items() if k != "event_type"}, "needs event_type"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_config(_config(bad))
        assert any(words in p for p in err.value.problems), err.value.problems
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
