"""Zero-ingress GitHub: the poller finds runs and metric comments of open requests and relays
them exactly like webhooks, with conditional requests whose 304s cost no rate limit."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

from webhook_examples import fixture

from tests.conftest import CHANNEL, DEFAULT_CONFIG, HEAD_SHA, REPO, Harness

STARTED = "2099-01-01T00:00:00Z"
UPDATED = "2099-01-01T00:04:10Z"
METRICS = (
    "<!-- chatops:metrics -->\n### Evaluation\n| Source | Loss | Accuracy |\n|---|---:|---:|\n"
    "| Head | 0.231 | 91.2% |\n| Base | 0.245 | 90.4% |\n| Diff | -0.014 | +0.8 pp |\n"
)


def _config(**evaluate: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(DEFAULT_CONFIG))
    cfg["github"] = {"mode": "poll"}
    cfg["commands"]["evaluate"].update(evaluate)
    return cfg


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _run(
    status: str,
    *,
    pr: int = 42,
    sha: str = HEAD_SHA,
    event: str = "pull_request",
    title: str = "Evaluate model",
    url: str = f"https://github.com/{REPO}/actions/runs/777",
) -> dict[str, Any]:
    """A run as GitHub lists it; created now, so it is newer than the request."""
    return {
        "name": "Evaluate model",
        "display_title": title,
        "event": event,
        "head_sha": sha,
        "status": status,
        "conclusion": None,
        "html_url": url,
        "created_at": _iso(time.time()),
        "run_started_at": STARTED,
        "updated_at": STARTED,
        "pull_requests": [{"number": pr, "id": 1, "url": "x"}] if pr else [],
    }


def _start(h: Harness, github: Any, text: str = "42") -> Any:
    n = len(h.store.find())
    assert h.slash("/evaluate", text).status_code == 200
    req = h.wait_until(lambda: len(h.store.find()) > n and h.store.find()[0], what="request")
    h.wait_until(lambda: h.store.get(req.id).status == "triggered", what="triggered")
    h.settle()
    return h.store.get(req.id)


def _replies(slack: Any, req: Any) -> list[dict[str, Any]]:
    return slack.thread_replies(CHANNEL, req.root_ts)


def test_poll_relays_runs_like_webhooks_and_304s_cost_no_rate_limit(
    make_harness, github, slack
) -> None:
    # Reference: the webhook path for PR 42.
    hook = make_harness()
    req_hook = _start(hook, github)
    url = f"https://github.com/{REPO}/actions/runs/9001"
    for action, status, conclusion in (
        ("in_progress", "in_progress", None),
        ("completed", "completed", "success"),
    ):
        payload = copy.deepcopy(fixture("workflow_run.completed"))
        payload["action"] = action
        payload["repository"]["full_name"] = REPO
        payload["workflow_run"].update(
            _run(status, url=url), id=9001, conclusion=conclusion, run_attempt=1, updated_at=UPDATED
        )
        before = len(_replies(slack, req_hook))  # counted before sending: the reply can be quick
        assert hook.webhook("workflow_run", payload).status_code == 202
        hook.wait_until(lambda n=before: len(_replies(slack, req_hook)) > n)
        hook.settle()
    assert hook.store.get(req_hook.id).status == "succeeded"

    # The same run, polled, for PR 7 in poll mode.
    sha7 = "7" * 40
    github.add_pull(REPO, 7, head_sha=sha7)
    h = make_harness(_config())
    assert h.bridge.housekeeping.github_mode == "poll"
    poller = h.bridge.poller
    req = _start(h, github, "7")
    assert poller.poll() == "done"  # nothing yet: an empty list, remembered by its ETag
    assert _replies(slack, req) == []
    run = github.add_run(REPO, _run("in_progress", pr=7, sha=sha7, url=url))
    assert poller.poll() == "done"
    assert len(_replies(slack, req)) == 1

    # Nothing new: GitHub answers 304 to every conditional GET, which costs no rate limit.
    calls, remaining, not_modified = len(slack.calls), github.rate_remaining, github.not_modified
    stats = dict(poller.stats)
    assert poller.poll() == "done"
    # runs of the head SHA, comments of #7, comments of #42 (its evaluation just finished),
    # and #7 itself (has its head moved past the evaluated SHA?)
    assert github.not_modified == not_modified + 4
    assert github.rate_remaining == remaining
    assert len(slack.calls) == calls
    # The poller counts them apart too: 4 requests, all 4 answered 304 (free).
    assert poller.stats["requests"] == stats["requests"] + 4
    assert poller.stats["not_modified"] == stats["not_modified"] + 4

    run.update(status="completed", conclusion="success", updated_at=UPDATED)
    paid = github.rate_remaining
    assert poller.poll() == "done"
    assert github.rate_remaining < paid  # a changed list is a 200, which does cost
    assert h.store.get(req.id).status == "succeeded"
    runs_listed = len(github.requests_to("GET", r"/actions/runs$"))
    assert poller.poll() == "done"  # finished: no longer polled for runs; no repeats
    assert len(github.requests_to("GET", r"/actions/runs$")) == runs_listed
    got = [(m["text"], m["blocks"]) for m in _replies(slack, req)]
    want = [(m["text"], m["blocks"]) for m in _replies(slack, req_hook)]
    assert got == want and len(got) == 2
    root = slack.messages[(CHANNEL, req.root_ts)]
    assert "succeeded" in json.dumps(slack.calls_to("chat.update")[-1].params["blocks"])
    assert root["ts"] == req.root_ts

    # Only the repository with open requests, by head SHA for a label-triggered evaluation.
    listed = github.requests_to("GET", r"/actions/runs$")
    assert {r.query.get("head_sha") for r in listed} == {sha7}
    assert all(r.query.get("event") == "pull_request" for r in listed)
    metrics = h.client.get("/metrics").text
    assert 'chatops_github_poll_requests_total{outcome="not_modified",resource="runs"}' in metrics
    assert h.client.get("/healthz").json()["poll"]["not_modified"] >= 2


def test_poll_relays_metric_comments_once(make_harness, github, slack) -> None:
    h = make_harness(_config())
    req = _start(h, github)
    github.add_comment(REPO, 42, "Looks good to me", user="octocat", user_type="User")
    github.add_comment(REPO, 42, METRICS)
    assert h.bridge.poller.poll() == "done"
    replies = _replies(slack, req)
    assert len(replies) == 1
    assert [b["type"] for b in replies[0]["blocks"]].count("table") == 1
    assert h.bridge.poller.poll() == "done"
    assert len(_replies(slack, req)) == 1
    comment_lists = github.requests_to("GET", r"/issues/42/comments$")
    assert comment_lists[-1].status == 304
    assert comment_lists[-1].query.get("since")


def test_poll_matches_dispatched_runs_by_display_title(make_harness, github, slack) -> None:
    h = make_harness(_config(trigger="dispatch", event_type="evaluate"))
    req = _start(h, github)
    assert github.dispatches[0]["client_payload"]["request_id"] == req.id
    github.add_run(REPO, _run("queued", pr=0, sha="0" * 40, event="repository_dispatch"))  # other
    run = _run(
        "completed", pr=0, sha="0" * 40, event="repository_dispatch", title=f"chatops {req.id}: x"
    )
    run["conclusion"] = "failure"
    github.add_run(REPO, run)
    assert h.bridge.poller.poll() == "done"
    assert h.store.get(req.id).status == "failed"
    replies = _replies(slack, req)
    assert len(replies) == 1 and "failure" in json.dumps(replies[0]["blocks"])
    query = github.requests_to("GET", r"/actions/runs$")[-1].query
    assert query["event"] == "repository_dispatch" and query["created"].startswith(">=")


def test_poll_backs_off_when_the_rate_limit_runs_low(make_harness, github, slack) -> None:
    h = make_harness(_config())
    _start(h, github)
    poller = h.bridge.poller
    github.rate_remaining = 150  # below github.poll_min_rate_remaining (200)
    assert poller.poll() == "interrupted"  # the first answer says the limit is low: stop
    n = len(github.requests)
    assert poller.poll() == "skipped_rate_limit"
    assert len(github.requests) == n  # a skipped cycle calls nothing
    assert poller.stats["skipped_rate_limit"] == 1
    # Once GitHub's window has refilled (its reset time passed), polling resumes.
    github.rate_remaining = 5000
    h.bridge.github.last_rate_reset = time.time() - 1
    assert poller.poll() == "done"
    assert 'outcome="skipped_rate_limit"' in h.client.get("/metrics").text


def test_requests_older_than_the_max_age_stop_being_polled(make_harness, github, slack, clock):
    cfg = _config()
    cfg["github"]["poll_max_age_hours"] = 2  # configured, not the default 24
    h = make_harness(cfg, use_clock=True)
    req = _start(h, github)
    clock.advance(3600 + 1800)  # younger than the max age: still polled
    n = len(github.requests_to("GET", r"/actions/runs$"))
    assert h.bridge.poller.poll() == "done"
    assert len(github.requests_to("GET", r"/actions/runs$")) == n + 1
    assert h.store.get(req.id).status == "triggered"
    clock.advance(3600)  # now 2.5 hours after the label was sent
    n = len(github.requests_to("GET", r"/actions/runs$"))
    assert h.bridge.poller.poll() == "done"
    after = h.store.get(req.id)
    assert after.status == "error"
    assert "No workflow run was seen within 2 hours" in after.error
    note = _replies(slack, req)[-1]
    assert "No workflow run was seen within 2 hours" in note["text"]
    assert len(github.requests_to("GET", r"/actions/runs$")) == n
    h.bridge.poller.poll()
    assert len(_replies(slack, req)) == 1


def test_only_repositories_with_open_requests_are_polled(make_harness, github, slack, clock):
    cfg = _config()
    cfg["repositories"]["allowed"] = ["acme/other-repo"]
    h = make_harness(cfg, use_clock=True)
    poller = h.bridge.poller
    assert poller.poll() == "done"
    assert github.requests == []  # nothing open: a cycle asks GitHub nothing at all
    other = "acme/other-repo"
    github.add_repo(other, installation_id=101)
    github.add_pull(other, 5, head_sha="5" * 40)
    req = _start(h, github, f"{other}#5")
    assert req.repo == other
    n = len(github.requests)
    assert poller.poll() == "done"
    asked = github.requests[n:]
    assert asked and all(f"/repos/{other}/" in r.path for r in asked)
    # Once it finished and its PR's metric comments had their grace period, nothing is polled.
    h.store.update(req.id, status="succeeded", finished_at=clock())
    clock.advance(poller.COMMENT_GRACE + 1)
    n = len(github.requests)
    assert poller.poll() == "done"
    assert github.requests[n:] == []


def test_poll_job_is_installed_only_in_poll_mode(make_harness, github, slack) -> None:
    h = make_harness(_config(), start_scheduler=True)
    job = h.bridge.housekeeping.scheduler.get_job("poll-github")
    assert job is not None and job.trigger.interval.total_seconds() == 30
    # Set on purpose (bot/scheduler.py): never two cycles at once, missed ones folded into one.
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 300)
    webhook = make_harness(start_scheduler=True)
    assert webhook.bridge.housekeeping.github_mode == "webhook"
    assert webhook.bridge.housekeeping.scheduler.get_job("poll-github") is None
    # mode auto without a webhook secret polls too
    auto = make_harness(GITHUB_WEBHOOK_SECRET="")
    assert auto.bridge.housekeeping.github_mode == "poll"


def test_zero_ingress_socket_mode_and_polling(make_harness, github, slack) -> None:
    """No inbound connection at all: Slack over Socket Mode, GitHub polled (no webhook secret)."""
    from tests.test_socket_mode import SocketModeDouble, _command

    socket = SocketModeDouble()
    slack.socket_mode_url = socket.url
    try:
        h = make_harness(
            SLACK_APP_TOKEN="xapp-1-A0001-0000-abcdef",
            SLACK_SIGNING_SECRET="",
            GITHUB_WEBHOOK_SECRET="",
        )
        health = h.client.get("/healthz").json()
        assert (health["slack_mode"], health["github_mode"]) == ("socket", "poll")
        assert socket.connected.wait(5)
        socket.send({"envelope_id": "e1", "type": "slash_commands", "payload": _command("42")})
        assert "Checking" in socket.ack_for("e1")["payload"]["text"]
        req = h.wait_until(
            lambda: (r := h.store.find()) and r[0].status == "triggered" and r[0], what="label"
        )
        h.settle()
        run = github.add_run(REPO, _run("completed"))
        run.update(conclusion="success", updated_at=UPDATED)
        assert h.bridge.poller.poll() == "done"
        assert h.store.get(req.id).status == "succeeded"
        assert "success" in json.dumps(_replies(slack, req)[0]["blocks"])
        assert h.client.post("/github/webhooks", content=b"{}").status_code == 404
    finally:
        socket.close()


def test_an_etag_is_stored_only_after_its_answer_was_relayed(
    make_harness, github, slack, monkeypatch
) -> None:
    """If relaying fails (Slack refusing), the answer must be fetched again, not answered 304
    forever: storing the ETag before relaying would lose the run for good."""
    from bot.slack import SlackFailure

    h = make_harness(_config())
    poller = h.bridge.poller
    req = _start(h, github)
    key = f"runs:{REPO}:{HEAD_SHA}"
    assert poller.poll() == "done"  # an empty list: its ETag stored
    empty_etag = h.store.etag(key)
    github.add_run(REPO, _run("in_progress"))
    real_dispatch = poller.dispatch
    failures = []

    def relay_failing_once(event: str, payload: dict[str, Any]) -> int:
        if not failures:
            failures.append(1)
            raise SlackFailure("service_unavailable", "chat.postMessage")
        return real_dispatch(event, payload)

    monkeypatch.setattr(poller, "dispatch", relay_failing_once)
    assert poller.poll() == "done"
    assert failures == [1] and _replies(slack, req) == []
    assert h.store.etag(key) == empty_etag  # the answer not relayed: its ETag not kept
    listed = len(github.requests_to("GET", r"/actions/runs$"))
    assert poller.poll() == "done"
    assert github.requests_to("GET", r"/actions/runs$")[listed].status == 200
    assert len(_replies(slack, req)) == 1  # relayed at the next cycle
    assert h.store.etag(key) != empty_etag


def test_a_handler_registered_only_on_the_router_receives_polled_events(
    make_harness, github, slack
) -> None:
    """The poller feeds Router.dispatch: a new handler sees polled runs and comments in the
    shape webhooks deliver, with no change to the poller."""
    h = make_harness(_config())
    seen: list[tuple[str, dict[str, Any]]] = []
    h.bridge.router.add("workflow_run", lambda p: seen.append(("workflow_run", p)))
    h.bridge.router.add(
        "issue_comment", lambda p: seen.append(("issue_comment", p)), action="created"
    )
    req = _start(h, github)
    run = github.add_run(REPO, _run("in_progress"))
    github.add_comment(REPO, 42, METRICS)
    assert h.bridge.poller.poll() == "done"
    runs = [p for event, p in seen if event == "workflow_run"]
    assert [(p["action"], p["workflow_run"]["id"]) for p in runs] == [("in_progress", run["id"])]
    assert runs[0]["repository"]["full_name"] == REPO
    comments = [p for event, p in seen if event == "issue_comment"]
    assert len(comments) == 1 and comments[0]["action"] == "created"
    assert comments[0]["issue"]["number"] == 42 and "pull_request" in comments[0]["issue"]
    assert comments[0]["comment"]["body"] == METRICS
    # The built-in handlers got the same events: the run and the metrics are in the thread.
    assert len(_replies(slack, req)) == 2
