"""GitHub's real webhook payloads (@octokit/webhooks-examples, all 329) through the real
/github/webhooks endpoint, and the payloads the bot relies on against @octokit/webhooks-schemas.

Expected answers: 200 for `ping` (pong) and for a redelivery; 202 for everything else
(accepted for an event a handler is registered for, ignored otherwise). No 4xx is expected:
every payload is signed correctly and is valid JSON (refusals of bad signatures and bodies are
covered in tests/test_evaluate_flow.py).
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from collections import Counter
from typing import Any

import contract_report
import jsonschema
import pytest
import webhook_examples
from sqlalchemy import select

from bot import db
from bot.model import NewRequest
from tests.conftest import CHANNEL, HEAD_SHA, REPO, Harness
from tests.doubles.github_api import GitHubDouble
from tests.doubles.slack_api import SlackDouble

pytestmark = pytest.mark.contract

# The events the bridge handles, and the payload fields its handlers read (handlers/*.py).
# Each must be declared by GitHub's schema for that event. A trailing "?" marks a field the
# bot reads with a fallback (old payloads may lack it); the others it cannot do without.
BOT_READS: dict[str, list[str]] = {
    "workflow_run": [
        "repository.full_name",
        "workflow_run.id",
        "workflow_run.name?",
        # GitHub sends it since 2022 (one older example lacks it); without it a dispatch run
        # is matched by its earlier link only, a labelled run by PR + head SHA as usual.
        "workflow_run.display_title?",
        "workflow_run.status",
        "workflow_run.conclusion",
        "workflow_run.head_sha",
        "workflow_run.head_branch?",
        "workflow_run.event",
        "workflow_run.html_url",
        "workflow_run.run_attempt",
        "workflow_run.created_at",
        "workflow_run.run_started_at?",
        "workflow_run.updated_at?",
        "workflow_run.path?",
        "workflow_run.pull_requests.number",
    ],
    "issue_comment": [
        "repository.full_name",
        "issue.number",
        "issue.pull_request",
        "comment.id",
        "comment.body",
        "comment.html_url?",
        "comment.user.login",
        "comment.user.type",
    ],
    "pull_request": [
        "repository.full_name",
        "pull_request.number",
        "pull_request.head.sha",
        "after?",
    ],
    "deployment_status": [
        "repository.full_name",
        "deployment.id",
        "deployment.environment",
        "deployment.created_at?",
        "deployment.payload?",
        "deployment_status.id",
        "deployment_status.state",
        "deployment_status.environment?",
        "deployment_status.environment_url?",
        "deployment_status.log_url?",
        "deployment_status.target_url?",
        "deployment_status.description?",
        "workflow_run.id?",
        "workflow_run.display_title?",
    ],
    "installation": ["action", "repositories.full_name?"],
    "installation_repositories": [
        "action",
        "repositories_removed.full_name?",
        "repositories_added.full_name?",
    ],
    "ping": ["hook_id?", "zen?"],
}


def definition_for(event: str, payload: dict[str, Any]) -> str:
    action = payload.get("action")
    return f"{event}${action}" if isinstance(action, str) else f"{event}$event"


def answer_kind(resp: Any) -> str:
    try:
        body = resp.json()
    except ValueError:
        return "non-json"
    for key in ("pong", "accepted", "ignored", "duplicate"):
        if body.get(key):
            return key
    return json.dumps(body)[:60]


def set_up_request(h: Harness, slack: SlackDouble) -> Any:
    """/evaluate 42 through the bridge: a request waiting for runs, with its thread."""
    assert h.slash("/evaluate", "42").status_code == 200
    h.settle()
    (req,) = h.store.find(repo=REPO, pr_number=42)
    assert req.status == "triggered" and req.root_ts
    return req


def undelivered(h: Harness) -> list[tuple[str, str, int]]:
    with h.bridge.engine.connect() as conn:
        rows = conn.execute(
            select(db.deliveries.c.id, db.deliveries.c.event, db.deliveries.c.attempts).where(
                db.deliveries.c.processed_at.is_(None)
            )
        ).all()
    return [tuple(r) for r in rows]


def retarget(payload: dict[str, Any]) -> dict[str, Any]:
    """The same payload, about the bridge's own repository."""
    payload = copy.deepcopy(payload)
    if isinstance(payload.get("repository"), dict):
        payload["repository"]["full_name"] = REPO
        payload["repository"]["name"] = REPO.split("/")[1]
    return payload


@pytest.mark.parametrize("retargeted", [False, True], ids=["as-is", "retargeted"])
def test_whole_corpus_through_the_endpoint(
    retargeted: bool,
    corpus: list[dict[str, Any]],
    harness: Harness,
    github: GitHubDouble,
    slack: SlackDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """All 329 payloads: answered 2xx, handled without errors, and no Slack message at all
    (none of them matches the request set up here). Retargeted: every payload names the
    bridge's repository, so handlers look further into GitHub's real shapes."""
    caplog.set_level(logging.WARNING)
    req = set_up_request(harness, slack)
    baseline = len(slack.calls)
    counts: Counter[str] = Counter()
    refused = []
    for entry in corpus:
        for i, example in enumerate(entry["examples"]):
            payload = retarget(example) if retargeted else example
            delivery = f"corpus-{int(retargeted)}-{entry['name']}-{i}"
            resp = harness.webhook(entry["name"], payload, delivery=delivery)
            counts[f"{resp.status_code} {answer_kind(resp)}"] += 1
            if not 200 <= resp.status_code < 300:
                refused.append((entry["name"], i, resp.status_code, resp.text))
    harness.settle(timeout=60)
    contract_report.corpus[f"webhook corpus ({'retargeted' if retargeted else 'as-is'})"] = counts
    assert sum(counts.values()) == 329
    assert refused == []
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors
    assert undelivered(harness) == [], "deliveries left unprocessed (a handler raised)"
    assert slack.calls[baseline:] == [], [c.method for c in slack.calls[baseline:]]
    assert harness.store.get(req.id).status == "triggered"  # type: ignore[union-attr]
    # And a redelivery of the same payload is recognised, not handled twice.
    first = corpus[0]
    again = harness.webhook(
        first["name"], first["examples"][0], delivery=f"corpus-{int(retargeted)}-{first['name']}-0"
    )
    assert again.status_code in (200, 202)


# ------------------------------------------------------------------ handled events, replies
def test_every_workflow_run_example_reaches_the_thread(
    corpus: list[dict[str, Any]], harness: Harness, slack: SlackDouble
) -> None:
    req = set_up_request(harness, slack)
    examples = webhook_examples.payloads("workflow_run")
    assert len(examples) == 5
    for i, example in enumerate(examples):
        payload = retarget(example)
        run = payload["workflow_run"]
        run.update(
            {
                "id": 880000 + i,  # a run of its own each, so each gets its replies
                "head_sha": HEAD_SHA,
                "event": "pull_request",
                "created_at": "2099-01-01T00:00:00Z",
            }
        )
        run["pull_requests"] = [{"number": 42, "id": 1, "url": "x", "head": {}, "base": {}}]
        before = len(slack.thread_replies(CHANNEL, req.root_ts))
        assert harness.webhook("workflow_run", payload).status_code == 202
        harness.settle()
        replies = slack.thread_replies(CHANNEL, req.root_ts)[before:]
        assert len(replies) == 1, (i, payload["action"], replies)
        text = replies[0]["text"] + json.dumps(replies[0].get("blocks"))
        if run["status"] == "completed":
            assert str(run["conclusion"]) in text
        else:
            assert "started" in text
        assert run["html_url"] in text


def test_issue_comment_examples(
    corpus: list[dict[str, Any]], harness: Harness, slack: SlackDouble
) -> None:
    """created + metrics body → a table in the thread; edited/deleted → nothing."""
    req = set_up_request(harness, slack)
    for i, example in enumerate(webhook_examples.payloads("issue_comment")):
        payload = retarget(example)
        payload["issue"]["number"] = 42
        payload["issue"]["pull_request"] = {"url": f"https://api.github.com/repos/{REPO}/pulls/42"}
        payload["comment"]["id"] = 990000 + i
        payload["comment"]["body"] = (
            "<!-- chatops:metrics -->\n| Metric | Head | Base |\n|---|---:|---:|\n"
            f"| accuracy | 0.9{i} | 0.90 |\n"
        )
        payload["comment"]["user"]["type"] = "Bot"  # only trusted authors' metrics are relayed
        before = len(slack.thread_replies(CHANNEL, req.root_ts))
        resp = harness.webhook("issue_comment", payload)
        harness.settle()
        replies = slack.thread_replies(CHANNEL, req.root_ts)[before:]
        if payload["action"] == "created":
            assert resp.status_code == 202 and resp.json()["accepted"]
            assert len(replies) == 1 and any(b["type"] == "table" for b in replies[0]["blocks"])
            assert f"0.9{i}" in json.dumps(replies[0]["blocks"])
        else:
            assert resp.json().get("ignored") and replies == []


def test_pull_request_synchronize_example(
    corpus: list[dict[str, Any]], harness: Harness, slack: SlackDouble
) -> None:
    req = set_up_request(harness, slack)
    (example,) = webhook_examples.payloads("pull_request", "synchronize")
    same = retarget(example)
    same["pull_request"]["number"] = 42
    same["pull_request"]["head"]["sha"] = HEAD_SHA
    same.pop("after", None)
    assert harness.webhook("pull_request", same).status_code == 202
    harness.settle()
    assert slack.thread_replies(CHANNEL, req.root_ts) == []  # same head: nothing to say
    pushed = retarget(example)
    pushed["pull_request"]["number"] = 42
    assert pushed["pull_request"]["head"]["sha"] != HEAD_SHA
    assert harness.webhook("pull_request", pushed).status_code == 202
    harness.settle()
    (reply,) = slack.thread_replies(CHANNEL, req.root_ts)
    text = json.dumps(reply["blocks"])
    assert "New commits were pushed" in text
    assert pushed["pull_request"]["head"]["sha"][:7] in text or str(pushed.get("after"))[:7] in text
    # Other actions of the same event are not routed.
    for other in webhook_examples.payloads("pull_request", "labeled"):
        assert harness.webhook("pull_request", retarget(other)).json()["ignored"]


def test_deployment_status_examples_reach_a_deploy_thread(
    corpus: list[dict[str, Any]], harness: Harness, slack: SlackDouble
) -> None:
    """A deploy request (set up directly in the store) follows GitHub's real deployment_status
    payloads, matched by the request id the deploy workflow puts in the deployment payload."""
    root_ts = harness.bridge.slack.post(CHANNEL, "Deploy card")
    req, _ = harness.store.create_request(
        NewRequest(
            kind="deploy",
            repo=REPO,
            trigger="dispatch",
            channel_id=CHANNEL,
            user_id="U0REQUESTER",
            idempotency_key=f"test:{uuid.uuid4()}",
            status="triggered",
            run_ref="4242",
            environment="production",
            event_type="deploy",
        )
    )
    harness.store.update(req.id, root_ts=root_ts)
    examples = webhook_examples.payloads("deployment_status")
    assert examples
    for i, example in enumerate(examples):
        payload = retarget(example)
        payload["deployment"]["id"] = 770000 + i
        payload["deployment"]["payload"] = {"request_id": req.id}
        payload["deployment_status"]["id"] = 660000 + i
        assert harness.webhook("deployment_status", payload).status_code == 202
        harness.settle()
        replies = slack.thread_replies(CHANNEL, root_ts)
        assert len(replies) == i + 1
        text = replies[-1]["text"]
        assert payload["deployment_status"]["state"] in text
        assert (payload["deployment_status"].get("environment") or "production") in text


def test_ping_examples_answer_pong(corpus: list[dict[str, Any]], harness: Harness) -> None:
    examples = webhook_examples.payloads("ping")
    assert len(examples) == 4
    for example in examples:
        resp = harness.webhook("ping", example)
        assert resp.status_code == 200 and resp.json()["pong"] is True
    assert undelivered(harness) == []


def test_installation_examples_drop_cached_installations(
    corpus: list[dict[str, Any]], harness: Harness, github: GitHubDouble, slack: SlackDouble
) -> None:
    set_up_request(harness, slack)
    lookups = lambda: len(github.requests_to("GET", rf"^/repos/{REPO}/installation$"))  # noqa: E731
    assert lookups() == 1
    harness.bridge.github.labels(REPO, 42)
    assert lookups() == 1  # cached
    for event in ("installation", "installation_repositories"):
        for example in webhook_examples.payloads(event):
            payload = copy.deepcopy(example)
            for key in ("repositories", "repositories_added", "repositories_removed"):
                for repo in payload.get(key) or []:
                    repo["full_name"] = REPO
            assert harness.webhook(event, payload).status_code == 202
            harness.settle()
            before = lookups()
            harness.bridge.github.labels(REPO, 42)
            names = [
                r.get("full_name")
                for k in ("repositories", "repositories_removed")
                for r in payload.get(k) or []
            ]
            assert lookups() == before + (1 if REPO in names else 0), (event, payload["action"])


# ------------------------------------------------------------------ shapes, by GitHub's schema
def _declared(schema: dict[str, Any], defs: dict[str, Any], path: list[str]) -> bool:
    """Whether `path` (property names; arrays are looked through) is declared by `schema`."""
    if not path:
        return True
    node = schema
    seen = 0
    while "$ref" in node and seen < 50:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
        seen += 1
    for key in ("allOf", "anyOf", "oneOf"):
        if any(_declared(branch, defs, path) for branch in node.get(key) or []):
            return True
    if node.get("type") == "array" or "items" in node:
        items = node.get("items")
        return isinstance(items, dict) and _declared(items, defs, path)
    props = node.get("properties") or {}
    if path[0] in props:
        return _declared(props[path[0]], defs, path[1:])
    return False


@pytest.mark.parametrize("event", sorted(BOT_READS))
def test_fields_the_bot_reads_are_in_githubs_schema(
    event: str, corpus: list[dict[str, Any]]
) -> None:
    full = webhook_examples.schema()
    defs = full["definitions"]
    names = [n for n in defs if n.startswith(f"{event}$")]
    assert names, f"no definitions for {event}"
    for field in BOT_READS[event]:
        path = field.rstrip("?").split(".")
        holders = [n for n in names if _declared(defs[n], defs, path)]
        assert holders, f"{event}: no action's schema declares `{field}`, which the bot reads"


# Examples that contradict themselves, with what the bot does about it (the corpus tests send
# them through the bridge all the same).
EXAMPLE_DEFECTS: dict[tuple[str, int], dict[str, str]] = {
    ("workflow_run", 0): {
        "workflow_run.conclusion": "action `completed` but status `queued` and conclusion null; "
        "the bot goes by workflow_run.status, so it is relayed as not finished",
    },
}


def _missing_only(err: jsonschema.ValidationError) -> list[str] | None:
    """The dotted paths of the missing properties that fully explain `err`, or None when it is
    something else (a wrong type, a bad value). For oneOf/anyOf: the best explained branch."""
    if _empty_string_erratum(err):
        return []
    where = [str(p) for p in err.absolute_path if not isinstance(p, int)]
    if err.validator == "required":
        return [".".join([*where, err.message.split("'")[1]])]
    if err.validator in ("oneOf", "anyOf") and err.context:
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in err.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        explained = []
        for subs in branches.values():
            found = [_missing_only(sub) for sub in subs]
            if all(f is not None for f in found):
                explained.append([m for f in found for m in f or []])
        if explained:
            return min(explained, key=len)
    return None


@pytest.mark.parametrize("event", sorted(BOT_READS))
def test_examples_of_handled_events_match_the_schema(
    event: str, corpus: list[dict[str, Any]]
) -> None:
    """Every example of a handled event validates, except old examples that lack properties
    added to the schema later — and then never one the bot cannot do without."""
    needed = {f for f in BOT_READS[event] if not f.endswith("?")}
    stale: set[str] = set()
    for i, payload in enumerate(webhook_examples.payloads(event)):
        name = definition_for(event, payload)
        validator = jsonschema.Draft7Validator(webhook_examples.event_schema(name))
        for err in validator.iter_errors(payload):
            at = ".".join(str(p) for p in err.absolute_path)
            if at in EXAMPLE_DEFECTS.get((event, i), {}):
                continue
            missing = _missing_only(err)
            assert missing is not None, (
                f"{event}[{i}] ({name}): {err.message[:300]} at {list(err.absolute_path)}"
            )
            assert not needed & set(missing), f"{event}[{i}] lacks {needed & set(missing)}"
            stale.update(f"{event}.{m}" for m in missing)
    counted = contract_report.facts.setdefault("schema fields missing from old corpus examples", 0)
    contract_report.facts["schema fields missing from old corpus examples"] = counted + len(stale)


def _empty_string_erratum(err: jsonschema.ValidationError) -> bool:
    """The schema's `oneOf: [{enum: [""]}, {format: uri}]` (e.g. deployment_status
    .environment_url): "" matches both branches when formats are not asserted, so `oneOf`
    fails on a value that the schema means to allow. The schema's problem, not the payload's."""
    return (
        err.validator == "oneOf"
        and err.instance == ""
        and any(b.get("enum") == [""] for b in err.validator_value if isinstance(b, dict))
    )


# The committed fixtures (tests/fixtures/README.md): entry index in the corpus, or derived.
FIXTURES = {
    "workflow_run.requested": ("workflow_run", 3),
    "workflow_run.completed": ("workflow_run", 2),
    "workflow_run.in_progress": ("workflow_run", None),
    "issue_comment.created": ("issue_comment", 3),
    "pull_request.labeled": ("pull_request", 8),
    "deployment_status.created": ("deployment_status", 3),
    "ping": ("ping", 2),
    "installation.created": ("installation", 1),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_committed_fixtures_keep_githubs_shape(name: str, corpus: list[dict[str, Any]]) -> None:
    event, index = FIXTURES[name]
    payload = webhook_examples.fixture(name)
    if index is None:  # derived from `requested`: action and status only
        source = webhook_examples.payloads(event)[3]
        source["action"] = source["workflow_run"]["status"] = "in_progress"
        assert payload == source
    else:
        assert payload == webhook_examples.payloads(event)[index]
    validator = jsonschema.Draft7Validator(
        webhook_examples.event_schema(definition_for(event, payload))
    )
    assert [e.message for e in validator.iter_errors(payload)] == []
    top = jsonschema.Draft7Validator(webhook_examples.schema())
    assert top.is_valid(payload)


# deployment_protection_rule (issue 12): @octokit/webhooks-examples 7.6.1 has no example of it,
# so tests/fixtures/deployment_protection_rule.requested.json is assembled from the real
# deployment_status example's objects (tests/fixtures/README.md) and checked here, with the
# payloads the tests send, against the schema's `deployment_protection_rule$requested`.
PROTECTION_RULE_READS = [
    "repository.full_name",
    "environment",
    "deployment_callback_url",
    "deployment.id",
    "event?",
    "sender.login?",
]


def test_protection_rule_payloads_match_githubs_schema(github: GitHubDouble) -> None:
    from tests.test_protection_rule import rule_payload

    fixture = webhook_examples.fixture("deployment_protection_rule.requested")
    source = webhook_examples.fixture("deployment_status.created")
    for key in ("deployment", "repository", "sender", "installation"):
        assert fixture[key] == source[key], key  # GitHub's own objects, unchanged
    schema = webhook_examples.event_schema("deployment_protection_rule$requested")
    checker = jsonschema.FormatChecker()
    sent = [rule_payload(github), rule_payload(github, 7002, environment="qa", deployment=2)]
    for payload in (fixture, *sent):
        validator = jsonschema.Draft7Validator(schema, format_checker=checker)
        assert [e.message for e in validator.iter_errors(payload)] == []
        assert jsonschema.Draft7Validator(webhook_examples.schema()).is_valid(payload)
    defs = webhook_examples.schema()["definitions"]
    for field in PROTECTION_RULE_READS:
        path = field.rstrip("?").split(".")
        assert _declared(defs["deployment_protection_rule$requested"], defs, path), field
