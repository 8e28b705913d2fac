"""GET /metrics after real flows, parsed with prometheus_client's own parser; and the log
lines of a unit of work carrying its request and delivery ids, never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.logs import ContextFilter, JsonFormatter, Redactor
from tests.conftest import BOT_TOKEN, SIGNING_SECRET, WEBHOOK_SECRET, Harness
from tests.test_ux import mention, run_event, start_deploy, start_evaluate


def scrape(h: Harness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    resp = h.client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_commands_deliveries_and_calls_after_a_flow(
    harness: Harness, github, slack
) -> None:
    """Commands by name and outcome, deliveries by event and outcome, GitHub and Slack calls
    by operation and outcome (with latency), queue depth and pending approvals."""
    harness.slash("/evaluate", "help")
    harness.slash("/evaluate", "not-a-pr")
    harness.slash("/deploy", "help")
    harness.slash("/deploy", "9001 nowhere")  # no such environment
    req = start_evaluate(harness)
    harness.slash("/evaluate", "999")  # no such PR: GitHub answers 404
    harness.settle()
    payload = run_event(status="completed", conclusion="success")
    assert harness.webhook("workflow_run", payload, delivery="d-metrics-1").status_code == 202
    harness.settle()
    assert harness.webhook("workflow_run", payload, delivery="d-metrics-1").status_code == 200
    harness.webhook("workflow_run", payload, secret="wrong")
    mention(harness, "status", thread_ts=req.root_ts)
    start_deploy(harness)  # waits for an approval
    slack.fail_next("chat.postMessage", "channel_not_found")
    harness.slash("/evaluate", "42", channel="C0GONE0001")
    harness.settle()

    m = scrape(harness)
    text = harness.client.get("/metrics").text
    print(
        "\n--- /metrics excerpt ---\n"
        + "\n".join(
            line
            for line in text.splitlines()
            if line.startswith(
                (
                    "chatops_commands_total",
                    "chatops_webhook_deliveries_total",
                    "chatops_queue_depth",
                    "chatops_pending_approvals",
                )
            )
            or (
                line.startswith(
                    ("chatops_github_call_seconds_count", "chatops_slack_call_seconds_count")
                )
            )
        )
    )
    counter = "chatops_commands_total"
    assert value(m, counter, command="evaluate", outcome="help") == 1
    assert value(m, counter, command="evaluate", outcome="usage_error") == 1
    assert value(m, counter, command="evaluate", outcome="accepted") == 3
    assert value(m, counter, command="mention status", outcome="ok") == 1
    assert value(m, counter, command="deploy", outcome="help") == 1
    assert value(m, counter, command="deploy", outcome="usage_error") == 1
    assert value(m, counter, command="deploy", outcome="accepted") == 1
    deliveries = "chatops_webhook_deliveries_total"
    assert value(m, deliveries, event="workflow_run", outcome="accepted") == 1
    assert value(m, deliveries, event="workflow_run", outcome="duplicate") == 1
    assert value(m, deliveries, event="unknown", outcome="bad_signature") == 1
    gh = "chatops_github_call_seconds_count"
    labels_op = "POST /repos/{owner}/{repo}/issues/{n}/labels"
    assert value(m, gh, operation=labels_op, outcome="ok") == 1
    assert value(m, gh, operation="GET /repos/{owner}/{repo}/pulls/{n}", outcome="NotFound") == 1
    assert value(m, "chatops_github_call_seconds_sum", operation=labels_op, outcome="ok") > 0
    sl = "chatops_slack_call_seconds_count"
    assert value(m, sl, method="chat.postMessage", outcome="ok") >= 3
    assert value(m, sl, method="chat.postMessage", outcome="channel_not_found") == 1
    assert value(m, sl, method="chat.update", outcome="ok") >= 2
    assert value(m, "chatops_queue_depth") == 0
    assert value(m, "chatops_pending_approvals") == 1


# -- log context ------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The production handler's filters and formatter, on the root logger, into a buffer."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(Redactor([BOT_TOKEN, SIGNING_SECRET, WEBHOOK_SECRET]))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_log_lines_of_a_delivery_name_the_delivery_and_its_request(
    harness: Harness, slack, json_log: io.StringIO
) -> None:
    """A delivery whose thread reply fails: the job's log lines carry delivery_id (set by the
    job) and request_id (bound once the run is matched to its request) without passing them."""
    req = start_evaluate(harness)
    slack.fail_next("chat.postMessage", "is_archived")
    payload = run_event(status="completed", conclusion="success")
    assert harness.webhook("workflow_run", payload, delivery="d-log-1").status_code == 202
    harness.settle()
    failed = [r for r in _lines(json_log) if r["event"].startswith("delivery handling failed")]
    assert failed, json_log.getvalue()
    assert failed[0]["delivery_id"] == "d-log-1"
    assert failed[0]["request_id"] == req.id
    assert failed[0]["github_event"] == "workflow_run"
    text = json_log.getvalue()
    for secret in (BOT_TOKEN, SIGNING_SECRET, WEBHOOK_SECRET):
        assert secret not in text


def test_request_job_log_lines_carry_the_request_id(
    harness: Harness, json_log: io.StringIO
) -> None:
    """Whatever a request's job logs names the request; nothing leaks to later log lines."""
    from bot.model import NewRequest

    def worker(req: Any) -> None:
        logging.getLogger("handlers.probe").warning("probing", extra={"step": 1})

    harness.bridge.jobs.register("probe", worker)
    req, _ = harness.store.create_request(
        NewRequest(
            kind="probe",
            repo="acme/ml-models",
            trigger="label",
            channel_id="C0X",
            user_id="U0X",
            idempotency_key="probe-1",
        )
    )
    harness.bridge.jobs.run_request(req.id)
    logging.getLogger("test").warning("outside any unit of work")
    probe, outside = _lines(json_log)[-2:]
    assert probe["event"] == "probing" and probe["request_id"] == req.id and probe["step"] == 1
    assert "request_id" not in outside


# -- health -----------------------------------------------------------------------------------


def test_healthz_reports_database_scheduler_and_last_webhook(make_harness, clock) -> None:
    """GET /healthz: the database answers, this process leads the scheduler, and how long ago
    the last GitHub delivery arrived (null before the first one)."""
    h = make_harness(start_scheduler=True, use_clock=True)
    health = h.wait_until(
        lambda: (r := h.client.get("/healthz").json())["scheduler"] == "leader" and r,
        what="the scheduler to lead",
    )
    assert health["ok"] is True and health["database"] == "ok"
    assert health["github_mode"] == "webhook" and health["slack_mode"] == "http"
    assert health["last_webhook_age_seconds"] is None
    assert health["queue_depth"] == 0

    payload = run_event(status="completed", conclusion="success", run_id=777)
    assert h.webhook("workflow_run", payload, delivery="d-health-1").status_code == 202
    h.settle()
    clock.advance(90)
    resp = h.client.get("/healthz")
    print("\n--- GET /healthz ---\n" + resp.text)
    assert resp.status_code == 200
    assert resp.json()["last_webhook_age_seconds"] == 90.0
    assert resp.json()["scheduler"] == "leader"


def test_a_json_line_says_when_to_the_millisecond_in_utc() -> None:
    """The whole second's text is shared by the lines of that second; each keeps its own
    milliseconds."""
    fmt = JsonFormatter()
    stamps = []
    for created in (1764720000.0421, 1764720000.9999, 1764720061.5):
        record = logging.LogRecord("bot", logging.INFO, "", 0, "line", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        stamps.append(json.loads(fmt.format(record))["ts"])
    assert stamps == [
        "2025-12-03T00:00:00.042Z",
        "2025-12-03T00:00:00.999Z",
        "2025-12-03T00:01:01.500Z",
    ]
