"""A REAL MLflow tracking server (pinned mlflow from PyPI, SQLite backend, loopback) sends its
registry webhooks to the bridge running as `python -m bot serve` (the real ASGI app on a
loopback port). Between them a recording forwarder (tests/mlflow_peer/forwarder.py) notes
every delivery, and can lose one answer so that MLflow's own retry redelivers it; the bridge's
MLFLOW_TRACKING_URI goes through a second one, which can hold a REST call.

Skipped locally without the MLflow virtualenv; required with CI=true (tests/mlflow_peer).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.db import make_engine
from bot.store import Store
from tests.conftest import DEFAULT_CONFIG, REPO, make_env
from tests.mlflow_peer import peer
from tests.mlflow_peer.forwarder import Forwarder
from tests.test_crash_recovery import FAST, Server, wait_until
from tests.test_deploy import APPROVER, click_payload

pytestmark = pytest.mark.slow

# Above the slowest step of a card's job (docs/deployment-shapes.md: keep the lease above it):
# the job reads the real MLflow server, which a test holds for 3 s and a loaded host can slow
# past test_crash_recovery's 2 s; a lease that runs out under a live job lets the recovery
# sweep run it a second time, and post a second card. A killed holder is still taken over
# once its heartbeat is seen stopped (CHATOPS_HOLDER_DEAD_SECONDS, 10 s by default).
LEASE = 12.0

SECRET = "mlflow-webhook-secret-real-peer"
MODEL_CHANNEL = "C0MODELS01"
HOOK_PATH = "/mlflow/webhooks"


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[peer.MlflowServer]:
    server = peer.MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    print(f"\nmlflow {peer.MLFLOW_VERSION} server answered /health after {server.started_in:.1f}s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hooks(mlflow: peer.MlflowServer) -> Iterator[Forwarder]:
    """MLflow → (this forwarder) → the test's bridge. The webhooks are made once, before any
    registry event: MLflow caches each event's webhook list for 60 s (MLFLOW_WEBHOOK_CACHE_TTL)."""
    fwd = Forwarder().start()
    url = fwd.url + HOOK_PATH
    fwd.right_id = mlflow.create_webhook(  # type: ignore[attr-defined]
        "chatops-bridge", url, ["model_version_alias.created", "model_version.created"], SECRET
    )
    # Another webhook to the same bridge, whose secret is not the bridge's.
    fwd.wrong_id = mlflow.create_webhook(  # type: ignore[attr-defined]
        "wrong-secret", url, ["model_version_tag.set"], "not-the-bridges-secret"
    )
    try:
        yield fwd
    finally:
        fwd.stop()


@pytest.fixture(scope="module")
def rest(mlflow: peer.MlflowServer) -> Iterator[Forwarder]:
    """The bridge's MLFLOW_TRACKING_URI: (this forwarder) → MLflow's REST API."""
    fwd = Forwarder(mlflow.url).start()
    try:
        yield fwd
    finally:
        fwd.stop()


def config() -> dict[str, Any]:
    cfg: dict[str, Any] = copy.deepcopy(DEFAULT_CONFIG)
    cfg["models"] = [
        {
            "name": name,
            "repository": REPO,
            "channel": MODEL_CHANNEL,
            "environment": "production",
            "on": {"alias": "candidate"},
            "after_deploy_alias": "production",
        }
        for name in ("churn-model", "fraud-model")
    ]
    return cfg


@pytest.fixture
def bridge(
    slack: Any, github: Any, database_url: str, tmp_path: Path, hooks: Forwarder, rest: Forwarder
) -> Iterator[Server]:
    cfg = tmp_path / "chatops.yml"
    cfg.write_text(yaml.safe_dump(config()))
    env = make_env(
        slack,
        github,
        database_url,
        cfg,
        **{**FAST, "CHATOPS_LEASE_SECONDS": str(LEASE)},
        MLFLOW_WEBHOOK_SECRET=SECRET,
        MLFLOW_TRACKING_URI=rest.url,
    )
    server = Server(env, tmp_path / "bridge.log").start()
    hooks.upstream = server.url
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = make_engine(database_url)
    yield Store(engine)
    engine.dispose()


def cards(slack: Any, channel: str = MODEL_CHANNEL) -> list[Any]:
    return [
        c
        for c in slack.calls_to("chat.postMessage")
        if c.params.get("channel") == channel and "thread_ts" not in c.params
    ]


def deliveries(store: Store) -> list[str]:
    from sqlalchemy import select

    from bot import db

    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(db.deliveries.c.id)).all()]


def event_of(p: Any) -> str:
    body = json.loads(p.body or b"{}")
    return f"{body.get('entity')}.{body.get('action')}"


def seen(hooks: Forwarder, event: str, *, since: float) -> list[Any]:
    """Deliveries of this event that have been answered (the forwarder records on arrival)."""
    return [p for p in hooks.to(HOOK_PATH) if p.at >= since and event_of(p) == event and p.answered]


def done_run(req: Any) -> dict[str, Any]:
    """GitHub's workflow_run.completed for the run the dispatch started (titled with the id)."""
    from webhook_examples import fixture

    payload: dict[str, Any] = copy.deepcopy(fixture("workflow_run.completed"))
    payload["repository"]["full_name"] = REPO
    payload["workflow_run"].update(
        id=7151,
        name="deploy",
        display_title=f"chatops {req.id}: deploy churn-model 1 to production",
        status="completed",
        conclusion="success",
        event="repository_dispatch",
        run_attempt=1,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        pull_requests=[],
    )
    return payload


def test_registry_webhooks_to_card_dispatch_and_alias(
    mlflow: peer.MlflowServer,
    hooks: Forwarder,
    rest: Forwarder,
    bridge: Server,
    store: Store,
    slack: Any,
    github: Any,
) -> None:
    t0 = time.time()
    run_id = mlflow.training_run({"auc": 0.91, "f1": 0.84})
    version = mlflow.register("churn-model", run_id)
    # model_version.created: signed and well-formed, but no models[] entry asks for it.
    (created,) = wait_until(lambda: seen(hooks, "model_version.created", since=t0), 30, "created")
    assert created.answered == 200 and deliveries(store) == []

    # A webhook with another secret: 401, nothing stored (MLflow does not retry a 401).
    mlflow.call(
        "POST",
        "model-versions/set-tag",
        {"name": "churn-model", "version": version, "key": "deploy", "value": "true"},
    )
    (wrong,) = wait_until(lambda: seen(hooks, "model_version_tag.set", since=t0), 30, "tag.set")
    assert wrong.answered == 401 and deliveries(store) == []
    tested = mlflow.test_webhook(hooks.wrong_id)  # type: ignore[attr-defined]
    assert tested["response_status"] == 401 and not tested.get("success")
    # MLflow's own test delivery (its example payload, model `example_model`): signed, ignored.
    tested = mlflow.test_webhook(hooks.right_id)  # type: ignore[attr-defined]
    assert tested["response_status"] == 200 and tested.get("success"), tested
    assert json.loads(tested["response_body"]) == {"ok": True, "ignored": True}
    assert deliveries(store) == []

    # The alias asks for the deploy. The first answer is lost on the way back to MLflow, whose
    # own retry redelivers the same delivery: stored once, one card.
    hooks.lose_next_answer()
    mlflow.set_alias("churn-model", "candidate", version)
    attempts = wait_until(
        lambda: (a := seen(hooks, "model_version_alias.created", since=t0)) and len(a) >= 2 and a,
        60,
        "MLflow's retry of the alias delivery",
    )
    ids = {a.headers["X-MLflow-Delivery-Id"] for a in attempts}
    assert len(ids) == 1, "MLflow's retry keeps the delivery id"
    assert [a.status for a in attempts] == [202, 200] and attempts[0].answered == 503
    req = wait_until(
        lambda: next((r for r in store.find(kind="model_deploy") if r.root_ts), None),
        LEASE + 20,
        "the card",
    )
    time.sleep(0.5)
    assert len(cards(slack)) == 1 and len(store.find(kind="model_deploy")) == 1
    assert deliveries(store) == [f"mlflow:{ids.pop()}"]
    assert req.status == "pending_approval" and req.run_ref == f"models:/churn-model/{version}"
    card = json.dumps(slack.messages[(MODEL_CHANNEL, req.root_ts)]["blocks"])
    assert "Asked by the MLflow registry: alias candidate" in card
    assert "`auc`  0.91" in card and "`f1`  0.84" in card
    assert f"From MLflow run `{run_id}`" in card and "runs/get" in card
    assert f"/runs/get?run_id={run_id}" in " ".join(p.path for p in rest.passed)

    # Approve: one repository_dispatch carrying the model.
    resp = bridge.interact(click_payload("deploy_approve", req, APPROVER))
    assert resp.status_code == 200
    (sent,) = wait_until(lambda: github.dispatches, 20, "the dispatch")
    payload = sent["client_payload"]
    assert {k: payload[k] for k in ("model_name", "model_version", "run_id", "environment")} == {
        "model_name": "churn-model",
        "model_version": version,
        "run_id": run_id,
        "environment": "production",
    }
    assert payload["request_id"] == req.id and payload["approved_by"] == APPROVER
    assert payload["requested_by"] == "mlflow:model_version_alias.created"
    assert payload["slack_thread_ts"] == req.root_ts and len(payload) <= 10

    # The deploy run succeeds: the bridge sets `production` on the version in MLflow.
    wait_until(lambda: store.get(req.id).status == "triggered", 20, "triggered")
    assert bridge.webhook("workflow_run", done_run(req)).status_code == 202
    wait_until(lambda: "production" in mlflow.aliases("churn-model", version), 30, "the alias")
    replies = wait_until(
        lambda: [
            m for m in slack.thread_replies(MODEL_CHANNEL, req.root_ts) if ":label:" in m["text"]
        ],
        20,
        "the alias note in the thread",
    )
    assert "set the alias `production`" in replies[0]["text"]
    production = wait_until(
        lambda: [
            p
            for p in seen(hooks, "model_version_alias.created", since=t0)
            if json.loads(p.body)["data"]["alias"] == "production"
        ],
        30,
        "MLflow's event for the alias the bridge set",
    )
    assert len(github.dispatches) == 1 and len(cards(slack)) == 1

    # By hand, by alias (resolved through MLflow's REST API), to another environment.
    resp = bridge.slash("model:churn-model@candidate staging", command="/deploy")
    assert "Asked for approval" in resp.json()["text"], resp.text
    by_hand = wait_until(
        lambda: next(
            (r for r in store.find(kind="model_deploy", environment="staging") if r.root_ts), None
        ),
        20,
        "the by-hand card",
    )
    assert by_hand.run_ref == f"models:/churn-model/{version}"
    assert "/registered-models/alias?name=churn-model&alias=candidate" in " ".join(
        p.path for p in rest.passed
    )

    time.sleep(1.0)
    assert len(production) == 1  # set once, though two settles of the request may meet
    assert (
        len(
            [
                p
                for p in seen(hooks, "model_version_alias.created", since=t0)
                if json.loads(p.body)["data"]["alias"] == "production"
            ]
        )
        == 1
    )

    # What MLflow sent, for the record (printed with -s).
    first = attempts[0]
    shown = {
        k: v for k, v in first.headers.items() if k.lower().startswith(("x-mlflow", "content"))
    }
    print(f"\nMLflow {peer.MLFLOW_VERSION}: events seen at /mlflow/webhooks:")
    for p in hooks.to(HOOK_PATH):
        data = json.loads(p.body or b"{}").get("data") or {}
        print(
            f"  {event_of(p)} {json.dumps(data)[:90]} id {p.headers.get('X-MLflow-Delivery-Id')}"
            f": bridge {p.status} → MLflow got {p.answered}"
        )
    print(f"  headers: {json.dumps(shown)}")
    print(f"  body: {first.body.decode()}")


def test_sigkill_between_intake_and_card_gives_one_card(
    mlflow: peer.MlflowServer,
    hooks: Forwarder,
    rest: Forwarder,
    bridge: Server,
    store: Store,
    slack: Any,
) -> None:
    run_id = mlflow.training_run({"auc": 0.77})
    version = mlflow.register("fraud-model", run_id)
    # The delivery is stored and answered; its job is inside MLflow's REST API (the version's
    # facts, before the card) when the bridge is killed.
    rest.hold(r"/model-versions/get\?name=fraud-model", 3.0)
    mlflow.set_alias("fraud-model", "candidate", version)
    assert rest.holding.wait(30), "the job never read the version"
    (req,) = store.find(kind="model_deploy")
    assert req.root_ts is None and cards(slack) == []
    bridge.kill()
    bridge.start()
    req = wait_until(
        lambda: (r := store.get(req.id)) and r.root_ts and r, LEASE + 20, "the card after restart"
    )
    time.sleep(1.0)
    assert len(cards(slack)) == 1
    assert len(store.find(kind="model_deploy")) == 1 and req.status == "pending_approval"
    card = json.dumps(slack.messages[(MODEL_CHANNEL, req.root_ts)]["blocks"])
    assert "`auc`  0.77" in card


def test_check_says_the_real_registry_answers(
    mlflow: peer.MlflowServer, slack: Any, github: Any, database_url: str, tmp_path: Path, capsys
) -> None:
    from bot.__main__ import main

    path = tmp_path / "chatops.yml"
    path.write_text(yaml.safe_dump(config()))
    env = make_env(
        slack,
        github,
        database_url,
        path,
        MLFLOW_WEBHOOK_SECRET=SECRET,
        MLFLOW_TRACKING_URI=mlflow.url,
    )
    assert main(["check"], env=env) == 0
    out = capsys.readouterr().out
    assert "ok   MLflow: the registry answers" in out, out
