"""The core loop through the real ASGI app: /evaluate → label → workflow_run → thread."""

from __future__ import annotations

import copy
from typing import Any

from webhook_examples import fixture

from handlers.workflow_run import on_workflow_run
from tests.conftest import CHANNEL, HEAD_SHA, REPO, USER, Harness


def _run_payload(
    action: str,
    *,
    status: str,
    conclusion: str | None,
    run_id: int = 9001,
    pr: int = 42,
    sha: str = HEAD_SHA,
    title: str = "Evaluate model",
    event: str = "pull_request",
    attempt: int = 1,
) -> dict[str, Any]:
    payload = copy.deepcopy(fixture("workflow_run.completed"))
    payload["action"] = action
    run = payload["workflow_run"]
    run.update(
        {
            "id": run_id,
            "name": "Evaluate model",
            "display_title": title,
            "status": status,
            "conclusion": conclusion,
            "head_sha": sha,
            "event": event,
            "run_attempt": attempt,
            "html_url": f"https://github.com/{REPO}/actions/runs/{run_id}",
            "created_at": "2099-01-01T00:00:00Z",
            "run_started_at": "2099-01-01T00:00:00Z",
            "updated_at": "2099-01-01T00:04:10Z",
            "pull_requests": [
                {
                    "number": pr,
                    "id": 1,
                    "url": "x",
                    "head": {
                        "ref": "f",
                        "sha": sha,
                        "repo": {"id": 1, "url": "x", "name": "ml-models"},
                    },
                    "base": {
                        "ref": "main",
                        "sha": "b" * 40,
                        "repo": {"id": 1, "url": "x", "name": "ml-models"},
                    },
                }
            ]
            if pr
            else [],
        }
    )
    payload["repository"]["full_name"] = REPO
    return payload


def _start(h: Harness, github: Any, slack: Any, text: str = "42") -> Any:
    resp = h.slash("/evaluate", text)
    assert resp.status_code == 200
    slack.wait_for("chat.update", 1)  # root status edited after the label call
    h.settle()
    return h.store.find(repo=REPO, pr_number=42)[0]


def test_evaluate_labels_pr_posts_root_and_acks_ephemerally(
    harness: Harness, github, slack
) -> None:
    """A signed /evaluate 42 answers at once, labels PR 42 once, and posts one root message."""
    resp = harness.slash("/evaluate", "42")
    assert resp.status_code == 200
    body = resp.json()
    assert body["response_type"] == "ephemeral"
    assert "acme/ml-models#42" in body["text"]
    slack.wait_for("chat.update", 1)
    harness.settle()
    adds = github.requests_to("POST", r"/repos/acme/ml-models/issues/42/labels$")
    assert len(adds) == 1
    assert github.labels(REPO, 42) == ["evaluate"]
    roots = [c for c in slack.calls_to("chat.postMessage") if "thread_ts" not in c.params]
    assert len(roots) == 1
    assert roots[0].params["channel"] == CHANNEL
    text = str(roots[0].params["blocks"])
    assert "Evaluation of" in text and f"<@{USER}>" in text
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text  # PR title is escaped
    req = harness.store.find(repo=REPO, pr_number=42)[0]
    assert req.status == "triggered"
    assert req.head_sha == HEAD_SHA
    assert req.root_ts == slack.calls_to("chat.update")[-1].params["ts"]
    assert "queued" in str(slack.calls_to("chat.update")[-1].params["blocks"])


def test_label_already_present_is_removed_and_added_again(harness: Harness, github, slack) -> None:
    github.add_pull(REPO, 7, head_sha="c" * 40, labels=["evaluate", "ml"])
    harness.slash("/evaluate", "#7")
    slack.wait_for("chat.update", 1)
    harness.settle()
    assert len(github.requests_to("DELETE", r"/issues/7/labels/evaluate$")) == 1
    assert len(github.requests_to("POST", r"/issues/7/labels$")) == 1
    assert "evaluate" in github.labels(REPO, 7)


def test_workflow_run_events_reply_in_thread_and_edit_root(harness: Harness, github, slack) -> None:
    req = _start(harness, github, slack)
    r = harness.webhook(
        "workflow_run", _run_payload("in_progress", status="in_progress", conclusion=None)
    )
    assert r.status_code == 202
    slack.wait_for("chat.update", 2)
    harness.settle()
    r = harness.webhook(
        "workflow_run", _run_payload("completed", status="completed", conclusion="success")
    )
    assert r.status_code == 202
    slack.wait_for("chat.update", 3)
    harness.settle()
    replies = [
        c for c in slack.calls_to("chat.postMessage") if c.params.get("thread_ts") == req.root_ts
    ]
    assert len(replies) == 2
    assert "started" in replies[0].params["text"]
    assert "success" in str(replies[1].params["blocks"]) and "4m 10s" in str(
        replies[1].params["blocks"]
    )
    final = slack.calls_to("chat.update")[-1]
    assert final.params["ts"] == req.root_ts
    assert "succeeded" in str(final.params["blocks"])
    assert harness.store.get(req.id).status == "succeeded"


def test_repeat_delivery_changes_nothing(harness: Harness, github, slack) -> None:
    req = _start(harness, github, slack)
    payload = _run_payload("completed", status="completed", conclusion="failure")
    assert harness.webhook("workflow_run", payload, delivery="d-1").status_code == 202
    slack.wait_for("chat.update", 2)
    harness.settle()
    before = len(slack.calls)
    again = harness.webhook("workflow_run", payload, delivery="d-1")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    harness.settle()
    assert len(slack.calls) == before
    assert harness.store.get(req.id).status == "failed"


def test_run_reported_before_the_request_is_marked_triggered_is_not_lost(
    harness: Harness, github, slack, monkeypatch
) -> None:
    """GitHub's workflow_run webhook can beat the bridge's own accepted→triggered write."""
    store = harness.bridge.deps.store
    real_update = store.update
    early: list[str] = []

    def update(request_id: str, *, only_if_status: Any = None, **values: Any) -> bool:
        if values.get("status") == "triggered" and not early:
            early.append(store.get(request_id).status)
            done = _run_payload("completed", status="completed", conclusion="success")
            on_workflow_run(harness.bridge.deps, done)
        return real_update(request_id, only_if_status=only_if_status, **values)

    monkeypatch.setattr(store, "update", update)
    harness.slash("/evaluate", "42")
    slack.wait_for("chat.update", 1)
    harness.settle()
    req = harness.store.find(repo=REPO, pr_number=42)[0]
    assert early == ["accepted"]
    assert req.status == "succeeded"
    replies = [
        c for c in slack.calls_to("chat.postMessage") if c.params.get("thread_ts") == req.root_ts
    ]
    assert len(replies) == 1 and "success" in str(replies[0].params["blocks"])
    assert "succeeded" in str(slack.calls_to("chat.update")[-1].params["blocks"])


def test_events_arriving_late_never_take_a_run_back(harness: Harness, github, slack) -> None:
    """An in_progress event delivered after the completed one (new delivery id), or an event
    of an earlier attempt after a re-run's, changes nothing: no reply, no status going back."""
    req = _start(harness, github, slack)
    done = _run_payload("completed", status="completed", conclusion="success")
    assert harness.webhook("workflow_run", done, delivery="late-1").status_code == 202
    slack.wait_for("chat.update", 2)
    harness.settle()
    calls = len(slack.calls)
    late = _run_payload("in_progress", status="in_progress", conclusion=None)
    assert harness.webhook("workflow_run", late, delivery="late-2").status_code == 202
    harness.settle()
    assert len(slack.calls) == calls
    assert harness.store.get(req.id).status == "succeeded"
    (run,) = harness.store.runs_of(req.id)
    assert (run.status, run.conclusion) == ("completed", "success")

    rerun = _run_payload("completed", status="completed", conclusion="failure", attempt=2)
    assert harness.webhook("workflow_run", rerun, delivery="late-3").status_code == 202
    slack.wait_for("chat.update", 3)
    harness.settle()
    assert harness.store.get(req.id).status == "failed"
    calls = len(slack.calls)
    first = _run_payload("completed", status="completed", conclusion="success", attempt=1)
    assert harness.webhook("workflow_run", first, delivery="late-4").status_code == 202
    harness.settle()
    assert len(slack.calls) == calls
    assert harness.store.get(req.id).status == "failed"
    assert harness.store.runs_of(req.id)[0].attempt == 2


def test_fork_run_without_pull_requests_matches_by_head_sha(
    harness: Harness, github, slack
) -> None:
    req = _start(harness, github, slack)
    harness.webhook(
        "workflow_run", _run_payload("completed", status="completed", conclusion="success", pr=0)
    )
    slack.wait_for("chat.update", 2)
    harness.settle()
    assert harness.store.get(req.id).status == "succeeded"


def test_run_for_other_sha_is_not_relayed(harness: Harness, github, slack) -> None:
    _start(harness, github, slack)
    n = len(slack.calls)
    harness.webhook(
        "workflow_run",
        _run_payload("completed", status="completed", conclusion="success", sha="f" * 40),
    )
    harness.settle()
    assert len(slack.calls) == n


def test_metrics_comment_becomes_table_in_thread(harness: Harness, github, slack) -> None:
    req = _start(harness, github, slack)
    payload = copy.deepcopy(fixture("issue_comment.created"))
    payload["repository"]["full_name"] = REPO
    payload["issue"]["number"] = 42
    payload["issue"]["pull_request"] = {
        "url": "https://api.github.com/repos/acme/ml-models/pulls/42"
    }
    payload["comment"]["body"] = (
        "<!-- chatops:metrics -->\n### Evaluation\n| Source | Loss | Accuracy |\n|---|---:|---:|\n"
        "| Head | 0.231 | 91.2% |\n| Base | 0.245 | 90.4% |\n| Diff | -0.014 | +0.8 pp |\n"
    )
    payload["comment"]["user"].update({"login": "github-actions[bot]", "type": "Bot"})
    assert harness.webhook("issue_comment", payload).status_code == 202
    call = slack.wait_for("chat.postMessage", 2)[-1]
    harness.settle()
    assert call.params["thread_ts"] == req.root_ts
    tables = [b for b in call.params["blocks"] if b["type"] == "table"]
    assert len(tables) == 1
    assert len(tables[0]["rows"]) == 4
    assert "Head" in call.params["text"]


def test_dispatch_trigger_carries_request_id_and_display_title_correlates(
    make_harness, github, slack, config_data
) -> None:
    config_data["commands"]["evaluate"] = {"trigger": "dispatch", "event_type": "evaluate"}
    h = make_harness(config_data)
    h.slash("/evaluate", "acme/ml-models#42")
    github.wait_for("POST", r"/dispatches$")
    slack.wait_for("chat.update", 1)
    h.settle()
    req = h.store.find(repo=REPO, pr_number=42)[0]
    body = github.dispatches[0]
    assert body["event_type"] == "evaluate"
    payload = body["client_payload"]
    assert payload["request_id"] == req.id
    assert payload["pr_number"] == 42 and payload["head_sha"] == HEAD_SHA
    assert payload["slack_channel"] == CHANNEL and payload["slack_thread_ts"] == req.root_ts
    run = _run_payload(
        "completed",
        status="completed",
        conclusion="success",
        pr=0,
        sha="0" * 40,
        event="repository_dispatch",
        title=f"chatops {req.id}: evaluate #42",
    )
    h.webhook("workflow_run", run)
    slack.wait_for("chat.update", 2)
    h.settle()
    assert h.store.get(req.id).status == "succeeded"


def test_bad_input_gets_ephemeral_usage_and_no_github_call(harness: Harness, github, slack) -> None:
    for text in ("abc", "", "help", "https://example.com/a/b/pull/1", "acme/ml-models#0"):
        resp = harness.slash("/evaluate", text)
        assert resp.status_code == 200
        body = resp.json()
        assert body["response_type"] == "ephemeral"
        assert "/evaluate 42" in body["text"], text
    harness.settle()
    assert github.requests == []
    assert harness.store.find() == []


def test_repository_without_installation_is_explained(
    make_harness, config_data, github, slack
) -> None:
    config_data["repositories"]["allowed"] = ["other/unknown"]  # configured, not installed
    harness = make_harness(config_data)
    resp = harness.slash("/evaluate", "other/unknown#5", response_url=slack.response_url("r1"))
    assert resp.status_code == 200
    said = slack.wait_for("response_url", 1)[0]
    harness.settle()
    assert "not installed" in said.params["text"]
    assert github.requests_to("POST", r"/labels$") == []
    req = harness.store.find(repo="other/unknown")[0]
    assert req.status == "error"
    assert [c for c in slack.calls_to("chat.postMessage")] == []


def test_closed_and_missing_pull_requests_are_refused(harness: Harness, github, slack) -> None:
    github.add_pull(REPO, 8, head_sha="d" * 40, state="closed", merged=True)
    harness.slash("/evaluate", "8", response_url=slack.response_url("a"))
    harness.slash("/evaluate", "999", response_url=slack.response_url("b"))
    said = slack.wait_for("response_url", 2)
    harness.settle()
    texts = " ".join(c.params["text"] for c in said)
    assert "merged" in texts and "does not exist" in texts
    assert github.requests_to("POST", r"/labels$") == []


def test_same_trigger_id_twice_creates_one_request(harness: Harness, github, slack) -> None:
    harness.slash("/evaluate", "42", trigger_id="111.222")
    harness.slash("/evaluate", "42", trigger_id="111.222")
    slack.wait_for("chat.update", 1)
    harness.settle()
    assert len(harness.store.find()) == 1
    assert len(github.requests_to("POST", r"/labels$")) == 1


def test_bad_signatures_are_refused(harness: Harness, github, slack) -> None:
    r = harness.client.post(
        "/slack/events",
        content=b"command=/evaluate&text=42",
        headers={"x-slack-signature": "v0=bad", "x-slack-request-timestamp": "1"},
    )
    assert r.status_code == 401
    r = harness.webhook("workflow_run", {"action": "completed"}, secret="wrong")
    assert r.status_code == 401
    assert harness.store.find() == []


def test_unknown_events_are_acknowledged_and_ignored(harness: Harness, github, slack) -> None:
    r = harness.webhook("star", {"action": "created"})
    assert r.status_code == 202 and r.json()["ignored"] is True
    r = harness.webhook("ping", fixture("ping"))
    assert r.status_code == 200
    r = harness.webhook("workflow_run", b"{not json")
    assert r.status_code == 400


def test_healthz_reports_database(harness: Harness) -> None:
    r = harness.client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["database"] == "ok"
