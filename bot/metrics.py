"""Prometheus metrics of one process (GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.commands = Counter(
            "chatops_commands_total",
            "Slash commands by name and outcome",
            ["command", "outcome"],
            registry=r,
        )
        self.webhooks = Counter(
            "chatops_webhook_deliveries_total",
            "GitHub deliveries by event and outcome",
            ["event", "outcome"],
            registry=r,
        )
        self.github_calls = Histogram(
            "chatops_github_call_seconds",
            "GitHub API call latency",
            ["operation", "outcome"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.slack_calls = Histogram(
            "chatops_slack_call_seconds",
            "Slack Web API call latency",
            ["method", "outcome"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.queue_depth = Gauge("chatops_queue_depth", "Units of work in flight", registry=r)
        self.pending_approvals = Gauge(
            "chatops_pending_approvals", "Deploy requests waiting for approval", registry=r
        )
        self.github_polls = Counter(
            "chatops_github_poll_requests_total",
            "Conditional GETs of the GitHub poller by resource and outcome "
            "(not_modified: a 304, which costs no rate limit)",
            ["resource", "outcome"],
            registry=r,
        )
        self.poll_cycles = Counter(
            "chatops_github_poll_cycles_total",
            "GitHub poll cycles by outcome (done, skipped_rate_limit, interrupted)",
            ["outcome"],
            registry=r,
        )
        self.scheduler_leader = Gauge(
            "chatops_scheduler_leader", "1 when this process runs the scheduled jobs", registry=r
        )

        self.untrusted_metrics = Counter(
            "chatops_untrusted_metrics_comments_total",
            "Comments carrying metrics from authors chatops.yml `metrics:` does not trust "
            "(not relayed, never on a card)",
            registry=r,
        )
        self.title_matches_rejected = Counter(
            "chatops_run_title_matches_rejected_total",
            "Workflow runs whose title named a request they cannot belong to, by reason "
            "(not_a_dispatch_run, created_before_dispatch, other_workflow, ...)",
            ["reason"],
            registry=r,
        )
        # Issue 15: outages are waited out, other failures retried a few times, then given up.
        self.units_waiting = Gauge(
            "chatops_units_waiting",
            "Requests and deliveries waiting for a peer (GitHub, Slack) to come back",
            ["peer"],
            registry=r,
        )
        self.unit_retries = Counter(
            "chatops_unit_retries_total",
            "Attempts of a request or delivery that will be retried, by cause "
            "(GitHub, Slack: an outage; failure: anything else)",
            ["unit", "cause"],
            registry=r,
        )
        self.units_given_up = Counter(
            "chatops_units_given_up_total",
            "Requests (marked error, requester told) and deliveries (marked failed) given up, "
            "by reason (failure: the attempts cap; payload: a delivery its handler cannot use; "
            "outage_horizon: a peer down too long)",
            ["unit", "reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
