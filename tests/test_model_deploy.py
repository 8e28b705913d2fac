"""Model registry deploys (issue 13) through the real app in-process: POST /mlflow/webhooks
(signed as MLflow signs), the card in the Slack double, the dispatch in the GitHub double, and
`/deploy model:…` by hand. The real MLflow server is in tests/test_mlflow_peer.py."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import yaml

from bot.config import ConfigError, parse_config
from bot.signing import mlflow_signature
from tests.conftest import DEFAULT_CONFIG, REPO, Harness
from tests.mlflow_peer.answers import answering
from tests.test_deploy import APPROVER, click

MLFLOW_SECRET = "mlflow-webhook-secret-for-tests"
MODEL_CHANNEL = "C0MODELS01"
RUN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def model_config(**model: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads(json.dumps(DEFAULT_CONFIG))
    cfg["models"] = [
        {
            "name": "churn-model",
            "repository": REPO,
            "channel": MODEL_CHANNEL,
            "environment": "production",
            "on": {"alias": "candidate"},
            **model,
        }
    ]
    return cfg


def alias_event(name: str = "churn-model", alias: str = "candidate", version: str = "7") -> dict:
    return {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-12-01T05:34:58.956412+00:00",
        "data": {"name": name, "alias": alias, "version": version},
    }


def send(
    h: Harness,
    payload: dict[str, Any] | bytes,
    *,
    delivery: str | None = None,
    secret: str = MLFLOW_SECRET,
    timestamp: int | None = None,
) -> Any:
    """POST /mlflow/webhooks as MLflow's delivery.py posts: json.dumps body, signed headers."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    delivery = delivery or str(uuid.uuid4())
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "content-type": "application/json",
        "x-mlflow-delivery-id": delivery,
        "x-mlflow-timestamp": ts,
        "x-mlflow-signature": mlflow_signature(secret, delivery, ts, body),
    }
    return h.client.post("/mlflow/webhooks", content=body, headers=headers)


@pytest.fixture
def mlflow_answers() -> Any:
    with answering() as found:
        yield found


@pytest.fixture
def mh(make_harness: Any) -> Harness:
    return make_harness(model_config(), MLFLOW_WEBHOOK_SECRET=MLFLOW_SECRET)


def model_requests(h: Harness) -> list[Any]:
    return h.store.find(kind="model_deploy")


def deliveries(h: Harness) -> int:
    from sqlalchemy import func, select

    from bot import db

    with h.bridge.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(db.deliveries)).scalar() or 0)


def roots_in(slack: Any, channel: str) -> list[Any]:
    return [
        c
        for c in slack.calls_to("chat.postMessage")
        if c.params.get("channel") == channel and "thread_ts" not in c.params
    ]


def card_text(slack: Any, req: Any) -> str:
    return json.dumps(slack.messages[(req.channel_id, req.root_ts)]["blocks"])


# -- intake ---------------------------------------------------------------------------------------
def test_off_without_secret_says_so(make_harness: Any) -> None:
    h = make_harness(model_config())
    resp = send(h, alias_event())
    assert resp.status_code == 404
    assert "MLFLOW_WEBHOOK_SECRET is not set" in resp.json()["error"]
    assert deliveries(h) == 0


def test_alias_event_opens_one_card_and_a_redelivery_nothing(mh: Harness, slack: Any) -> None:
    delivery = str(uuid.uuid4())
    resp = send(mh, alias_event(), delivery=delivery)
    assert resp.status_code == 202 and resp.json()["accepted"]
    mh.wait_until(lambda: roots_in(slack, MODEL_CHANNEL), what="the card")
    mh.settle()
    (req,) = model_requests(mh)
    assert req.status == "pending_approval" and req.run_ref == "models:/churn-model/7"
    assert req.channel_id == MODEL_CHANNEL and req.repo == REPO and req.environment == "production"
    card = card_text(slack, req)
    assert "Asked by the MLflow registry: alias candidate" in card
    assert "model_version_alias.created" in card and "signed webhook" in card
    assert "MLFLOW_TRACKING_URI is not set" in card  # says what it could not read, and why
    assert "deploy_approve" in card
    # MLflow's own retry of the same delivery (same id): stored once, nothing new.
    again = send(mh, alias_event(), delivery=delivery)
    assert again.status_code == 200 and again.json()["duplicate"]
    mh.settle()
    assert len(roots_in(slack, MODEL_CHANNEL)) == 1 and len(model_requests(mh)) == 1
    assert deliveries(mh) == 1


def test_same_version_asked_again_while_its_card_is_open(mh: Harness, slack: Any) -> None:
    """A second event for the same version (an alias set twice): one card answers both."""
    send(mh, alias_event())
    mh.wait_until(lambda: roots_in(slack, MODEL_CHANNEL), what="the card")
    assert send(mh, alias_event()).status_code == 202
    mh.settle()
    time.sleep(0.2)
    assert len(model_requests(mh)) == 1 and len(roots_in(slack, MODEL_CHANNEL)) == 1


def test_wrong_secret_is_401_and_nothing_is_stored(mh: Harness, slack: Any) -> None:
    resp = send(mh, alias_event(), secret="not-the-secret")
    assert resp.status_code == 401 and "X-MLflow-Signature" in resp.json()["error"]
    stale = send(mh, alias_event(), timestamp=int(time.time()) - 301)
    assert stale.status_code == 401 and "seconds away" in stale.json()["error"]
    unsigned = mh.client.post(
        "/mlflow/webhooks",
        content=json.dumps(alias_event()).encode(),
        headers={"content-type": "application/json"},
    )
    assert unsigned.status_code == 401
    mh.settle()
    assert deliveries(mh) == 0 and not model_requests(mh) and not roots_in(slack, MODEL_CHANNEL)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"entity": "model_version_alias", "action": "created"}).encode(), "data"),
        (json.dumps({**alias_event(), "entity": "Model Version"}).encode(), "entity"),
        (
            json.dumps({**alias_event(), "data": {"name": "churn-model", "alias": "c"}}).encode(),
            "data.version",
        ),
        (
            json.dumps(
                {**alias_event(), "data": {"name": "m", "alias": "c", "version": "x"}}
            ).encode(),
            "version number",
        ),
    ],
)
def test_malformed_is_400_and_nothing_is_stored(mh: Harness, payload: bytes, why: str) -> None:
    resp = send(mh, payload)
    assert resp.status_code == 400 and why in resp.json()["error"]
    assert deliveries(mh) == 0


@pytest.mark.parametrize(
    "payload",
    [
        alias_event(alias="champion"),  # another alias
        alias_event(name="other-model"),  # a model nobody configured
        {
            **alias_event(),
            "entity": "model_version_alias",
            "action": "deleted",
            "data": {"name": "churn-model", "alias": "candidate"},
        },
        {
            "entity": "registered_model",
            "action": "created",
            "timestamp": "",
            "data": {"name": "churn-model", "tags": {}, "description": None},
        },
        {"entity": "prompt", "action": "created", "timestamp": "", "data": {"name": "p"}},
    ],
)
def test_events_no_model_asks_for_are_2xx_and_ignored(mh: Harness, payload: dict) -> None:
    resp = send(mh, payload)
    assert resp.status_code == 200 and resp.json()["ignored"]
    assert deliveries(mh) == 0 and not model_requests(mh)


def test_tag_and_created_triggers(make_harness: Any, slack: Any) -> None:
    cfg = model_config(on={"tag": {"deploy": "true"}, "created": True})
    h = make_harness(cfg, MLFLOW_WEBHOOK_SECRET=MLFLOW_SECRET)
    tag = {
        "entity": "model_version_tag",
        "action": "set",
        "timestamp": "",
        "data": {"name": "churn-model", "version": "3", "key": "deploy", "value": "true"},
    }
    other_tag = {**tag, "data": {**tag["data"], "value": "false"}}
    created = {
        "entity": "model_version",
        "action": "created",
        "timestamp": "",
        "data": {
            "name": "churn-model",
            "version": "4",
            "source": "runs:/x/model",
            "run_id": RUN,
            "tags": {},
            "description": None,
        },
    }
    assert send(h, other_tag).json().get("ignored")
    assert send(h, tag).status_code == 202
    assert send(h, created).status_code == 202
    h.wait_until(lambda: len(roots_in(slack, MODEL_CHANNEL)) == 2, what="two cards")
    h.settle()
    by_ref = {r.run_ref: r for r in model_requests(h)}
    assert set(by_ref) == {"models:/churn-model/3", "models:/churn-model/4"}
    assert "tag deploy=true" in card_text(slack, by_ref["models:/churn-model/3"])
    card4 = card_text(slack, by_ref["models:/churn-model/4"])
    assert "new version" in card4 and RUN in card4  # the webhook's run id, said as such


def test_registry_down_is_waited_out_without_a_card(make_harness: Any, slack: Any) -> None:
    """MLflow not answering (MLFLOW_TRACKING_URI set): an outage, waited out; no card yet."""
    from tests.mlflow_peer.peer import free_port

    h = make_harness(
        model_config(),
        MLFLOW_WEBHOOK_SECRET=MLFLOW_SECRET,
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
    )
    assert send(h, alias_event()).status_code == 202
    req = h.wait_until(
        lambda: next((r for r in model_requests(h) if r.waiting_on == "MLflow"), None),
        what="the request to wait for MLflow",
    )
    assert req.status == "pending_approval" and req.root_ts is None
    assert not roots_in(slack, MODEL_CHANNEL)
    assert h.bridge.peers()["MLflow"]["status"] == "unavailable"


def test_version_not_found_posts_the_card_with_the_error(
    make_harness: Any, slack: Any, mlflow_answers: Any
) -> None:
    """A registry event nobody can be told about ephemerally: the card shows why it failed."""
    url, answers = mlflow_answers
    answers.next = (
        404,
        {},
        json.dumps(
            {
                "error_code": "RESOURCE_DOES_NOT_EXIST",
                "message": "Model Version (name=churn-model, version=7) not found",
            }
        ).encode(),
    )
    h = make_harness(model_config(), MLFLOW_WEBHOOK_SECRET=MLFLOW_SECRET, MLFLOW_TRACKING_URI=url)
    send(h, alias_event())
    req = h.wait_until(
        lambda: next((r for r in model_requests(h) if r.root_ts), None), what="the card"
    )
    h.settle()
    req = h.store.get(req.id)
    assert req.status == "error"
    card = card_text(slack, req)
    assert "version=7) not found" in card and "deploy_approve" not in card


# -- approval and dispatch -----------------------------------------------------------------------
def test_approve_dispatches_once_with_the_model_fields(
    mh: Harness, github: Any, slack: Any
) -> None:
    send(mh, alias_event())
    req = mh.wait_until(
        lambda: next((r for r in model_requests(mh) if r.root_ts), None), what="the card"
    )
    mh.settle()
    click(mh, "deploy_approve", req, APPROVER)
    mh.wait_until(lambda: github.dispatches, what="the dispatch")
    mh.settle()
    click(mh, "deploy_approve", req, APPROVER)  # a late second click: nothing more
    mh.settle()
    (sent,) = github.dispatches
    assert sent["event_type"] == "deploy"
    payload = sent["client_payload"]
    assert payload == {
        "request_id": req.id,
        "model_name": "churn-model",
        "model_version": "7",
        "run_id": "",  # an alias event carries no run id, and MLFLOW_TRACKING_URI is unset
        "environment": "production",
        "requested_by": "mlflow:model_version_alias.created",
        "approved_by": APPROVER,
        "slack_channel": MODEL_CHANNEL,
        "slack_thread_ts": req.root_ts,
    }
    assert len(payload) <= 10
    final = mh.store.get(req.id)
    assert final.status == "triggered"
    actions = [row["action"] for row in mh.store.audit_rows(request_id=req.id)]
    assert actions[0] == "deploy.requested" and "deploy.approved" in actions
    assert "deploy.dispatched" in actions


def test_reject_and_app_home_list_model_deploys(mh: Harness, slack: Any) -> None:
    send(mh, alias_event())
    req = mh.wait_until(
        lambda: next((r for r in model_requests(mh) if r.root_ts), None), what="the card"
    )
    mh.settle()
    from handlers.deploy import clicks
    from handlers.deploy.model_card import subject

    waiting = clicks.awaiting(mh.bridge.deps, APPROVER)
    assert any(req.id in json.dumps(blocks) for blocks in waiting)
    assert subject(req) == "model `churn-model` version 7"
    click(mh, "deploy_reject", req, APPROVER)
    (opened,) = slack.calls_to("views.open")
    assert "model `churn-model` version 7" in json.dumps(opened.params["view"])
    assert "the MLflow registry" in json.dumps(opened.params["view"])


def test_an_unanswered_model_card_expires(make_harness: Any, slack: Any, clock: Any) -> None:
    h = make_harness(model_config(), use_clock=True, MLFLOW_WEBHOOK_SECRET=MLFLOW_SECRET)
    send(h, alias_event(), timestamp=int(clock()))
    req = h.wait_until(
        lambda: next((r for r in model_requests(h) if r.root_ts), None), what="the card"
    )
    h.settle()
    clock.advance(30 * 60 + 1)
    click(h, "deploy_approve", req, APPROVER)
    h.settle()
    assert h.store.get(req.id).status == "expired"
    assert "Expired at" in card_text(slack, req) and "deploy_approve" not in card_text(slack, req)


def test_after_deploy_alias_failure_is_said_in_the_thread(
    make_harness: Any, github: Any, slack: Any
) -> None:
    """The deploy run succeeded; the alias cannot be set (no MLFLOW_TRACKING_URI): said why."""
    from webhook_examples import fixture

    h = make_harness(
        model_config(after_deploy_alias="production"), MLFLOW_WEBHOOK_SECRET=MLFLOW_SECRET
    )
    send(h, alias_event())
    req = h.wait_until(
        lambda: next((r for r in model_requests(h) if r.root_ts), None), what="the card"
    )
    h.settle()
    click(h, "deploy_approve", req, APPROVER)
    h.wait_until(lambda: h.store.get(req.id).status == "triggered", what="triggered")
    run: dict[str, Any] = json.loads(json.dumps(fixture("workflow_run.completed")))
    run["repository"]["full_name"] = REPO
    run["workflow_run"].update(
        id=8151,
        name="deploy",
        display_title=f"chatops {req.id}: deploy model churn-model version 7 to production",
        status="completed",
        conclusion="success",
        event="repository_dispatch",
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        pull_requests=[],
    )
    assert h.webhook("workflow_run", run).status_code == 202
    h.wait_until(lambda: h.store.get(req.id).status == "succeeded", what="succeeded")
    h.settle()
    replies = [m["text"] for m in slack.thread_replies(MODEL_CHANNEL, req.root_ts)]
    said = [t for t in replies if "could not set the alias `production`" in t]
    assert len(said) == 1 and "MLFLOW_TRACKING_URI is not set" in said[0], replies
    assert "Could not set alias `production` in MLflow" in card_text(slack, req)
    # The same run reported again: said once.
    assert h.webhook("workflow_run", run).status_code == 202
    h.settle()
    replies = [m["text"] for m in slack.thread_replies(MODEL_CHANNEL, req.root_ts)]
    assert len([t for t in replies if "could not set the alias" in t]) == 1
    actions = [row["action"] for row in h.store.audit_rows(request_id=req.id)]
    assert actions.count("deploy.alias_set") == 1


def test_deploy_status_lists_model_deploys(mh: Harness, slack: Any) -> None:
    send(mh, alias_event())
    mh.wait_until(lambda: roots_in(slack, MODEL_CHANNEL), what="the card")
    mh.settle()
    said = mh.slash("/deploy", "status", channel=MODEL_CHANNEL).json()["text"]
    assert "model `churn-model` v7" in said, said


# -- by hand --------------------------------------------------------------------------------
def test_by_hand_refused_without_tracking_uri(mh: Harness) -> None:
    for text in ("model:churn-model@7", "model:churn-model@candidate staging"):
        resp = mh.slash("/deploy", text)
        body = resp.json()
        assert "MLFLOW_TRACKING_URI is not set" in body["text"], body
    assert not model_requests(mh)


def test_by_hand_usage_and_unknown_model(mh: Harness) -> None:
    said = mh.slash("/deploy", "model:churn-model").json()["text"]
    assert "Which version?" in said and "model:churn-model@7" in said
    said = mh.slash("/deploy", "model:no-such-model@3").json()["text"]
    assert "is not a model I deploy" in said and "`churn-model`" in said
    said = mh.slash("/deploy", "model:churn-model@7 mars").json()["text"]
    assert "MLFLOW_TRACKING_URI" in said  # checked before the environment: nothing to read
    assert not model_requests(mh)


def test_by_hand_refused_while_the_environment_is_locked(make_harness: Any) -> None:
    """`/deploy model:…` asks the same lock as `/deploy <run-id>`; the holder may still deploy."""
    from tests.mlflow_peer.peer import free_port

    h = make_harness(model_config(), MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    assert h.slash("/deploy", f"lock {REPO} production model freeze", user=APPROVER).status_code
    h.settle()
    said = h.slash("/deploy", "model:churn-model@7 production").json()["text"]
    assert ":lock:" in said and f"<@{APPROVER}>" in said and "model freeze" in said, said
    assert not model_requests(h)
    said = h.slash("/deploy", "model:churn-model@7 production", user=APPROVER).json()["text"]
    assert ":lock:" not in said and len(model_requests(h)) == 1, said


def test_registry_deploy_without_approval_refused_while_the_environment_is_locked(
    make_harness: Any, github: Any, slack: Any
) -> None:
    """`approval: none`: no click checks the lock, so the job does, before the dispatch."""
    cfg = model_config()
    deploy = cfg["commands"]["deploy"]
    deploy["environments"] = {"production": {"approval": "none"}}
    deploy.pop("approval", None)
    h = make_harness(cfg, MLFLOW_WEBHOOK_SECRET=MLFLOW_SECRET)
    said = h.slash("/deploy", f"lock {REPO} production model freeze", user=APPROVER).json()
    assert ":lock:" in said["text"], said
    h.settle()
    assert send(h, alias_event()).status_code == 202
    req = h.wait_until(
        lambda: next((r for r in model_requests(h) if r.status == "error"), None),
        what="the refusal",
    )
    h.settle()
    assert github.dispatches == []
    assert "locked by" in (req.error or "") and "model freeze" in (req.error or "")
    thread = [c.params.get("text", "") for c in slack.calls_to("chat.postMessage")]
    assert any("model freeze" in t for t in thread), thread
    # Unlocked, the next version the registry asks for is dispatched at once.
    h.slash("/deploy", f"unlock {REPO} production", user=APPROVER)
    h.settle()
    assert send(h, alias_event(version="8")).status_code == 202
    h.wait_until(lambda: github.dispatches, what="the dispatch")
    h.settle()
    assert github.dispatches[0]["client_payload"]["model_version"] == "8"


# -- config ---------------------------------------------------------------------------------------
def test_models_config_as_in_the_issue_with_yaml_on() -> None:
    """`on:` is read by YAML 1.1 as the boolean True; the models entry takes it as written."""
    text = """
repositories: {default: acme/ml-models}
commands:
  deploy:
    approval: {approvers: [U0APPROVER1]}
    environments: {production: {}}
models:
  - name: churn-model                # registered model name in MLflow
    repository: acme/ml-models       # where the deploy workflow runs
    channel: C0123ABCD               # where the card goes
    environment: production          # default environment for its deploys
    on:                              # which registry events open a card (any of these)
      alias: candidate               # a version gets this alias
      # tag: {deploy: "true"}        # a version gets this tag
      # created: true                # every new version
    after_deploy_alias: production
"""
    data = yaml.safe_load(text)
    assert True in data["models"][0]  # what PyYAML makes of `on:`
    cfg = parse_config(data)
    (model,) = cfg.models
    assert model.on.alias == "candidate" and model.after_deploy_alias == "production"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"on": {}}, "at least one of alias, tag or created"),
        ({"on": {"tag": {"a": "1", "b": "2"}}}, "exactly one key"),
        ({"on": {"alias": "bad alias"}}, "models[0].on.alias"),
        ({"repository": "acme/elsewhere"}, "not a configured repository"),
        ({"environment": "mars"}, "not one of commands.deploy.environments"),
        ({"name": "has space"}, "models[0].name"),
        ({"name": "m" * 121}, "models[0].name"),  # models:/<name>@<alias> must fit run_ref
        ({"on": {"alias": "a" * 65}}, "models[0].on.alias"),
        ({"channel": "not-a-channel"}, "models[0].channel"),
        ({"surprise": 1}, "unknown key"),
        ({"after_deploy_alias": "candidate"}, "must differ from on.alias"),
    ],
)
def test_models_config_is_validated(change: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(model_config(**change))
    assert any(why in p for p in err.value.problems), err.value.problems


def test_models_need_an_approval_policy() -> None:
    cfg = model_config()
    del cfg["commands"]["deploy"]
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert any("no approval policy for production" in p for p in err.value.problems)


def test_the_example_config_models_block_is_valid() -> None:
    """chatops.example.yml's commented `models:` block, uncommented, passes validation."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "chatops.example.yml").read_text()
    lines, inside = [], False
    for line in text.splitlines():
        inside = inside or line.startswith("# models:")
        lines.append(line[2:] if inside and line.startswith("# ") else line)
    (model,) = parse_config(yaml.safe_load("\n".join(lines))).models
    assert (model.name, model.on.alias) == ("churn-model", "candidate")


@pytest.mark.parametrize(
    ("name", "version", "run_id", "rc"),
    [
        ("churn-model", "7", RUN, 0),
        ("churn-model", "7", "", 0),  # MLflow records no run for the version
        ("churn-model", "$(touch pwned)", RUN, 1),
        ("$(touch pwned)", "7", RUN, 1),
        ("churn-model", "7", "x;touch pwned", 1),
    ],
)
def test_example_workflow_checks_a_model_payload(
    tmp_path: Any, name: str, version: str, run_id: str, rc: int
) -> None:
    """The `check` step of examples/workflows/deploy.yml with a model's client_payload."""
    import subprocess
    from pathlib import Path

    doc = yaml.safe_load(
        (Path(__file__).parent.parent / "examples/workflows/deploy.yml").read_text()
    )
    step = next(s for s in doc["jobs"]["check"]["steps"] if s.get("id") == "request")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text("#!/bin/sh\necho 0\n")
    (bin_dir / "gh").chmod(0o755)
    out = tmp_path / "output"
    out.write_text("")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "GITHUB_OUTPUT": str(out),
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_RUN_ID": "123",
        "GITHUB_WORKFLOW_REF": f"{REPO}/.github/workflows/deploy.yml@refs/heads/main",
        "REQUEST_ID": "0a1b2c3d4e5f",
        "RUN_ID": run_id,
        "ENVIRONMENT": "production",
        "MODEL_NAME": name,
        "MODEL_VERSION": version,
    }
    done = subprocess.run(
        ["bash", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == rc, done.stdout + done.stderr
    assert not (tmp_path / "pwned").exists()
    if rc == 0:
        assert "model=true" in out.read_text() and "github_run=false" in out.read_text()


def test_model_text_by_hand_is_parsed_or_refused_with_the_reason() -> None:
    from bot.refs import UsageError, parse_model_args

    args = parse_model_args("model:churn-model@7 staging")
    assert (args.name, args.version, args.alias, args.environment) == (
        "churn-model",
        "7",
        None,
        "staging",
    )
    assert parse_model_args("MODEL:churn-model@candidate").alias == "candidate"
    for text, name in [
        ("model:churn-model", "missing_model_version"),
        ("model:@7", "bad_model_name"),
        ("model:" + "m" * 121 + "@7", "bad_model_name"),
        ("model:churn-model@<!channel>", "bad_model_version"),
        ("model:churn-model@" + "a" * 65, "bad_model_version"),
        ("model:churn-model@7 prod extra", "too_many_words"),
        ("model:churn-model@7 prod;rm", "bad_environment_name"),
    ]:
        with pytest.raises(UsageError) as err:
            parse_model_args(text)
        assert err.value.name == name, (text, str(err.value))
        assert "<!channel>" not in str(err.value)


# -- one card per version and environment, even at the same instant ------------------------------
def test_the_store_keeps_one_open_request_per_ref(mh: Harness) -> None:
    from bot.model import NewRequest

    def new(key: str, environment: str = "production") -> NewRequest:
        return NewRequest(
            kind="model_deploy",
            repo=REPO,
            trigger="dispatch",
            run_ref="models:/churn-model/7",
            environment=environment,
            event_type="deploy",
            channel_id=MODEL_CHANNEL,
            user_id="mlflow-registry",
            status="pending_approval",
            idempotency_key=key,
        )

    first, created = mh.store.create_request(new("mlflow:a:churn-model"), one_open_per_ref=True)
    assert created
    again, created = mh.store.create_request(new("mlflow:b:churn-model"), one_open_per_ref=True)
    assert not created and again.id == first.id  # the open one, not a second
    other_env, created = mh.store.create_request(new("mlflow:c", "staging"), one_open_per_ref=True)
    assert created and other_env.id != first.id
    mh.store.update(first.id, status="rejected", finished_at=time.time())
    later, created = mh.store.create_request(new("mlflow:d:churn-model"), one_open_per_ref=True)
    assert created and later.id != first.id  # closed: the version may be asked for again


def test_deliveries_for_one_version_at_the_same_instant_make_one_card(
    mh: Harness, slack: Any
) -> None:
    """Several deliveries (different ids: an alias and a tag, two aliases) handled at once by
    the job pool: one request, one card."""
    import threading

    from handlers.deploy import models

    envelopes = [
        {**alias_event(), "delivery_id": f"same-instant-{i}", "timestamp": "2026-12-01T05:34:58"}
        for i in range(8)
    ]
    start = threading.Barrier(len(envelopes))
    failures: list[BaseException] = []

    def handle(envelope: dict[str, Any]) -> None:
        start.wait()
        try:
            models.on_registry_event(mh.bridge.deps, envelope)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=handle, args=(e,)) for e in envelopes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    mh.wait_until(lambda: roots_in(slack, MODEL_CHANNEL), what="the card")
    mh.settle()
    assert len(model_requests(mh)) == 1
    assert len(roots_in(slack, MODEL_CHANNEL)) == 1
