"""Bursts through the real app (issue 10, item 5): the per-user rate limit holds under parallel
commands, across replicas sharing the database, and one evaluation per PR + head SHA runs at a
time — the others are sent to its thread instead of posting a root and churning the label.

Runs on SQLite and, with CHATOPS_TEST_DB=postgres, on PostgreSQL."""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from webhook_examples import fixture

from tests.conftest import CHANNEL, HEAD_SHA, REPO, USER, Harness

BURST = 30
LIMIT = 10  # rate_limits.commands_per_minute (the default, set explicitly)
ON_IT = "Checking"
RATE_TEXT = "which is this bridge's limit"
ALREADY = "is already running — see the thread"
NEW_SHA = "c0ffee" + "0" * 34


def _config(config_data: dict[str, Any]) -> dict[str, Any]:
    config_data["rate_limits"]["commands_per_minute"] = LIMIT
    return config_data


def _burst(harnesses: list[Harness], slack: Any, github: Any, text: str = "42") -> list[str]:
    """BURST signed `/evaluate` commands from one user, released together by a barrier and
    spread over the given replicas; returns each ack's text."""
    # The PR reads are held a moment, so the accepted jobs reach the one-per-SHA step together
    # (the race it must win) rather than one after the other. Not an assertion on time.
    github.fail("GET", r"/pulls/42$", 0, times=BURST, delay=0.3)
    gate = threading.Barrier(BURST)

    def send(i: int) -> str:
        h = harnesses[i % len(harnesses)]
        gate.wait()
        resp = h.slash("/evaluate", text, response_url=slack.response_url(f"burst-{i}"))
        assert resp.status_code == 200
        return str(resp.json()["text"])

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(send, range(BURST)))


def _settle(harnesses: list[Harness]) -> None:
    for _ in range(2):  # a job of one replica may finish after another replica looked
        for h in harnesses:
            h.settle(timeout=30)


def _roots(slack: Any) -> list[Any]:
    return [c for c in slack.calls_to("chat.postMessage") if not c.params.get("thread_ts")]


def _check_burst(h: Harness, answers: list[str], slack: Any, github: Any) -> None:
    accepted = [a for a in answers if a.startswith(":hourglass_flowing_sand: Checking")]
    limited = [a for a in answers if RATE_TEXT in a]
    requests = h.store.find(repo=REPO, pr_number=42, limit=100)
    statuses = sorted(r.status for r in requests)
    roots = _roots(slack)
    posts = github.requests_to("POST", r"/issues/42/labels$")
    deletes = github.requests_to("DELETE", r"/issues/42/labels/evaluate$")
    told = [c.params.get("text", "") for c in slack.calls_to("response_url")]
    print(
        f"\n{BURST} parallel /evaluate 42: accepted {len(accepted)}, rate-limited "
        f"{len(limited)}, stored {len(requests)} {statuses}, roots {len(roots)}, "
        f"label POST {len(posts)}, label DELETE {len(deletes)}, "
        f"already-running answers {sum(ALREADY in t for t in told)}"
    )
    assert len(accepted) + len(limited) == BURST
    assert len(accepted) == LIMIT and len(requests) == LIMIT
    assert len(roots) == 1 and len(posts) == 1 and not deletes
    holder = next(r for r in requests if r.status == "triggered")
    assert statuses == ["duplicate"] * (LIMIT - 1) + ["triggered"]
    # Every accepted one but the holder was told, once, with a link to the holder's thread.
    link = f"https://slack.com/archives/{CHANNEL}/p{holder.root_ts.replace('.', '')}"
    for dup in (r for r in requests if r.status == "duplicate"):
        mine = [t for t in told if f"`{dup.id}`" in t]
        assert len(mine) == 1, (dup.id, told)
        assert ALREADY in mine[0] and link in mine[0] and holder.id in mine[0]
        assert dup.root_ts is None and dup.head_sha is None
    assert len(told) == LIMIT - 1


def test_a_burst_of_30_parallel_evaluates_is_limited_and_evaluated_once(
    make_harness, config_data, clock, github, slack
) -> None:
    """30 at once from one user: exactly `commands_per_minute` stored (the count and the insert
    are one step), exactly one root and one label POST (one evaluation per PR + head SHA); the
    rest answered with the rate-limit text at once or the already-running text with a link."""
    h = make_harness(_config(config_data), use_clock=True)
    answers = _burst([h], slack, github)
    _settle([h])
    _check_burst(h, answers, slack, github)


def test_the_limits_hold_across_replicas_sharing_the_database(
    make_harness, config_data, clock, github, slack
) -> None:
    """Two bridges on one database (two replicas): a Python lock in either could not see the
    other's commands; the database decides (PostgreSQL: advisory locks; SQLite: the write
    lock of the one statement)."""
    cfg = _config(config_data)
    replicas = [make_harness(cfg, use_clock=True), make_harness(cfg, use_clock=True)]
    answers = _burst(replicas, slack, github)
    _settle(replicas)
    _check_burst(replicas[0], answers, slack, github)


def test_a_retried_delivery_over_the_limit_is_still_its_request(
    make_harness, config_data, clock, github, slack
) -> None:
    """Slack retries a command whose answer it did not see: the retry names the stored
    request, even when the user's minute is full by then."""
    h = make_harness(_config(config_data), use_clock=True)
    first = h.slash("/evaluate", "42", trigger_id="777.first").json()["text"]
    for _ in range(LIMIT - 1):
        assert ON_IT in h.slash("/evaluate", "42").json()["text"]
    assert RATE_TEXT in h.slash("/evaluate", "42").json()["text"]
    assert h.slash("/evaluate", "42", trigger_id="777.first").json()["text"] == first
    h.settle()
    assert len(h.store.find(limit=100)) == LIMIT


def _completed(req_id: str) -> dict[str, Any]:
    payload = copy.deepcopy(fixture("workflow_run.completed"))
    payload["repository"]["full_name"] = REPO
    payload["workflow_run"].update(
        {
            "id": 9100,
            "name": "Evaluate model",
            "head_sha": HEAD_SHA,
            "event": "pull_request",
            "display_title": f"chatops {req_id}: evaluate",
            "status": "completed",
            "conclusion": "success",
            "run_attempt": 1,
            # Matched by head SHA (a pull_request run's title never names a request), and
            # created after the label went on.
            "pull_requests": [],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5)),
        }
    )
    return payload


def _start(h: Harness, slack: Any, user: str = USER) -> Any:
    rid = h.slash("/evaluate", "42", user=user).json()["text"].split("request `")[1][:12]
    h.wait_until(lambda: (r := h.store.get(rid)) and r.status == "triggered", what="triggered")
    h.settle()
    return h.store.get(rid)


def test_one_in_flight_then_a_rerun_after_it_finished_runs_again(
    harness: Harness, github, slack
) -> None:
    """While an evaluation of PR 42 at its head is in flight, another person's /evaluate 42 is
    sent to its thread; once it finished, /evaluate 42 evaluates again (remove + add label)."""
    first = _start(harness, slack)
    second = harness.slash("/evaluate", "42", user="U0SECOND01", response_url=slack.response_url())
    assert ON_IT in second.json()["text"]
    harness.settle()
    told = slack.wait_for("response_url")[-1].params["text"]
    assert ALREADY in told and first.id in told
    assert len(_roots(slack)) == 1 and len(github.requests_to("POST", r"/labels$")) == 1

    assert harness.webhook("workflow_run", _completed(first.id)).status_code == 202
    harness.wait_until(lambda: harness.store.get(first.id).status == "succeeded", what="done")
    again = _start(harness, slack)
    assert again.id != first.id and again.root_ts not in (None, first.root_ts)
    assert len(_roots(slack)) == 2
    assert len(github.requests_to("DELETE", r"/labels/evaluate$")) == 1
    assert len(github.requests_to("POST", r"/labels$")) == 2


def test_a_new_head_is_evaluated_while_the_old_one_runs(harness: Harness, github, slack) -> None:
    """The rule is per head SHA: after a push, /evaluate 42 evaluates the new head at once."""
    first = _start(harness, slack)
    github.add_pull(REPO, 42, head_sha=NEW_SHA, labels=["evaluate"])
    second = _start(harness, slack)
    assert (first.head_sha, second.head_sha) == (HEAD_SHA, NEW_SHA)
    assert first.status == second.status == "triggered"
    assert len(_roots(slack)) == 2 and len(github.requests_to("POST", r"/labels$")) == 2


def test_a_rerun_while_the_same_head_is_in_flight_points_to_its_thread(
    harness: Harness, github, slack
) -> None:
    """`@chatops-bridge rerun` goes through /evaluate's own path, so the rule holds there too:
    the asker is told in the thread, ephemerally, and nothing is posted or labelled again."""
    from tests.test_ux import mention

    first = _start(harness, slack)
    mention(harness, "rerun", user="U0SECOND01", thread_ts=first.root_ts)
    harness.settle()
    told = slack.wait_for("chat.postEphemeral")[-1].params
    assert told["user"] == "U0SECOND01" and told["thread_ts"] == first.root_ts
    assert ALREADY in told["text"] and first.id in told["text"]
    assert len(_roots(slack)) == 1 and len(github.requests_to("POST", r"/labels$")) == 1
    assert not github.requests_to("DELETE", r"/labels/evaluate$")


def test_a_burst_of_30_parallel_deploys_is_limited_atomically(
    make_harness, config_data, clock, github, slack
) -> None:
    """/deploy counts and inserts in one step too (create_request(per_minute=...)), so 30 at
    once from one user store exactly `commands_per_minute`; the rest get the rate-limit text."""
    h = make_harness(_config(config_data), use_clock=True)
    gate = threading.Barrier(BURST)

    def send(i: int) -> str:
        gate.wait()
        resp = h.slash("/deploy", f"mlflow-run-{i} production")
        assert resp.status_code == 200
        return str(resp.json()["text"])

    with ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(send, range(BURST)))
    _settle([h])
    asked = [a for a in answers if a.startswith(":raised_hand: Asked for approval")]
    limited = [a for a in answers if RATE_TEXT in a]
    stored = h.store.find(kind="deploy", limit=100)
    print(f"\n{BURST} parallel /deploy: accepted {len(asked)}, rate-limited {len(limited)}")
    assert len(asked) + len(limited) == BURST, answers
    assert len(asked) == LIMIT and len(stored) == LIMIT
    assert {r.status for r in stored} == {"pending_approval"}
