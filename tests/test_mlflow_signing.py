"""MLflow webhook signatures: verified exactly as MLflow signs (bot/signing.verify_mlflow),
against MLflow's own example payloads signed by MLflow's own code (tests/mlflow_peer)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from bot.mlflow_intake import registry_event
from bot.signing import MLFLOW_TOLERANCE_SECONDS, mlflow_signature, verify_mlflow
from tests.mlflow_peer import peer

SECRET = "mlflow-webhook-secret-0123456789"


@pytest.fixture(scope="module")
def mlflow_examples() -> dict[str, Any]:
    return peer.examples(SECRET)


def check(secret: str, ex: dict[str, Any], *, now: float | None = None, **change: Any) -> Any:
    values = {**ex, **change}
    return verify_mlflow(
        secret,
        values["body"].encode() if isinstance(values["body"], str) else values["body"],
        delivery_id=values["delivery_id"],
        timestamp=values["timestamp"],
        signature=values["signature"],
        now=float(ex["timestamp"]) if now is None else now,
    )


def test_every_mlflow_example_verifies_and_parses(mlflow_examples: dict[str, Any]) -> None:
    """Each registry event MLflow knows, signed by MLflow: accepted, and its body parses."""
    found = mlflow_examples["examples"]
    assert mlflow_examples["version"] == peer.MLFLOW_VERSION
    events = {ex["event"] for ex in found}
    assert {"model_version.created", "model_version_alias.created", "model_version_tag.set"} <= (
        events
    )
    for ex in found:
        assert check(SECRET, ex) is None, ex["event"]
        entity, action, data = registry_event(json.loads(ex["body"]))
        assert f"{entity}.{action}" == ex["event"]
        assert isinstance(data, dict)


def test_anything_changed_is_refused(mlflow_examples: dict[str, Any]) -> None:
    ex = next(e for e in mlflow_examples["examples"] if e["event"] == "model_version_alias.created")
    assert check("another-secret", ex) == "bad X-MLflow-Signature"
    tampered = ex["body"].replace("example_alias", "production")
    assert check(SECRET, ex, body=tampered) == "bad X-MLflow-Signature"
    # The delivery id and the timestamp are signed too: neither can be swapped.
    assert check(SECRET, ex, delivery_id="0" * 36) == "bad X-MLflow-Signature"
    later = str(int(ex["timestamp"]) + 1)
    assert check(SECRET, ex, timestamp=later, now=float(later)) == "bad X-MLflow-Signature"
    # Only the body as sent: re-encoded JSON (other spacing) is not what MLflow signed.
    compact = json.dumps(json.loads(ex["body"]), separators=(",", ":"))
    assert check(SECRET, ex, body=compact) == "bad X-MLflow-Signature"


def test_replay_outside_the_window_is_refused(mlflow_examples: dict[str, Any]) -> None:
    ex = mlflow_examples["examples"][0]
    sent = float(ex["timestamp"])
    assert check(SECRET, ex, now=sent + MLFLOW_TOLERANCE_SECONDS) is None
    assert "seconds away" in check(SECRET, ex, now=sent + MLFLOW_TOLERANCE_SECONDS + 1)
    assert "seconds away" in check(SECRET, ex, now=sent - MLFLOW_TOLERANCE_SECONDS - 1)


def test_signed_string_and_encoding_as_mlflow_documents() -> None:
    """v1,<base64 HMAC-SHA256 of "<delivery id>.<timestamp>.<body>"> (Standard Webhooks)."""
    body = '{"entity": "model_version_alias", "action": "created"}'
    digest = hmac.new(b"k", f"id-1.1700000000.{body}".encode(), hashlib.sha256).digest()
    assert mlflow_signature("k", "id-1", "1700000000", body.encode()) == (
        "v1," + base64.b64encode(digest).decode()
    )


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"delivery_id": None}, "missing"),
        ({"timestamp": None}, "missing"),
        ({"signature": None}, "missing"),
        ({"signature": ""}, "missing"),
        ({"timestamp": "17e8"}, "not UNIX seconds"),
        ({"timestamp": "-1"}, "not UNIX seconds"),
        ({"signature": "v0,AAAA"}, "bad X-MLflow-Signature"),
    ],
)
def test_missing_or_malformed_headers(headers: dict[str, Any], why: str) -> None:
    body = b"{}"
    values: dict[str, Any] = {
        "delivery_id": "d1",
        "timestamp": "1700000000",
        "signature": mlflow_signature(SECRET, "d1", "1700000000", body),
    }
    values.update(headers)
    problem = verify_mlflow(SECRET, body, now=1700000000.0, **values)
    assert problem is not None and why in problem


def test_one_of_several_signatures_may_match() -> None:
    """Standard Webhooks lets a sender list signatures (secret rotation), space-separated."""
    body = b"{}"
    good = mlflow_signature(SECRET, "d1", "1700000000", body)
    old = mlflow_signature("old-secret", "d1", "1700000000", body)
    ok = verify_mlflow(
        SECRET,
        body,
        delivery_id="d1",
        timestamp="1700000000",
        signature=f"{old} {good}",
        now=1700000000.0,
    )
    assert ok is None
