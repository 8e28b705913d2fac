"""Webhook signatures (GitHub, MLflow): pure functions over the raw body."""

from __future__ import annotations

import base64
import hashlib
import hmac


def github_signature(secret: str, body: bytes) -> str:
    """The X-Hub-Signature-256 value GitHub sends for body."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_github(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time check of X-Hub-Signature-256 against the raw body."""
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(github_signature(secret, body), header.strip())


# -- MLflow registry webhooks ------------------------------------------------------------------
# MLflow (mlflow/webhooks/delivery.py, 3.x) follows Standard Webhooks: it sends
#   X-MLflow-Delivery-Id: <uuid4>    X-MLflow-Timestamp: <UNIX seconds>
#   X-MLflow-Signature: v1,<base64 of HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>")>
# where <body> is the exact JSON text it posts (UTF-8). Its own retries (urllib3, on 429/5xx)
# resend the same body and headers, so a retry keeps its delivery id and its timestamp.
MLFLOW_SIGNATURE_VERSION = "v1"
MLFLOW_TOLERANCE_SECONDS = 300  # Standard Webhooks' default window, as Slack's 5 minutes


def mlflow_signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The X-MLflow-Signature value MLflow sends for this delivery."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return f"{MLFLOW_SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify_mlflow(
    secret: str,
    body: bytes,
    *,
    delivery_id: str | None,
    timestamp: str | None,
    signature: str | None,
    now: float,
    tolerance: float = MLFLOW_TOLERANCE_SECONDS,
) -> str | None:
    """Why an MLflow delivery is not authentic, or None when it is (pure, constant-time).

    The timestamp is part of the signed text, so a captured delivery replayed later fails the
    window; within the window the delivery id (stored, unique) stops a replay. Several
    space-separated signatures are allowed (Standard Webhooks, for secret rotation)."""
    if not delivery_id or not timestamp or not signature:
        return "missing X-MLflow-Delivery-Id, X-MLflow-Timestamp or X-MLflow-Signature"
    if not timestamp.isdigit() or len(timestamp) > 12:
        return "X-MLflow-Timestamp is not UNIX seconds"
    if abs(now - int(timestamp)) > tolerance:
        return f"X-MLflow-Timestamp is more than {tolerance:.0f} seconds away from now"
    expected = mlflow_signature(secret, delivery_id, timestamp, body)
    ok = False
    for candidate in signature.split()[:8]:
        # Every candidate is compared (no early exit), each in constant time.
        ok |= hmac.compare_digest(expected.encode(), candidate.encode())
    return None if ok else "bad X-MLflow-Signature"
