"""POST /mlflow/webhooks: MLflow model-registry webhooks, with the guarantees of GitHub's.

Verify (bot/signing.verify_mlflow) → parse and check the shape → ignore what no `models[]`
entry asks for → store the delivery (deduplicated by X-MLflow-Delivery-Id, in the same table
as GitHub's) → 202 → the job pool hands it to the router as event `mlflow`. A crash after the
202 loses nothing: the recovery sweep picks the stored delivery up (MLflow does not redeliver
on its own once it got a 2xx).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from bot import logs
from bot.http import BodyTooLarge, parse_webhook_body, read_body
from bot.signing import verify_mlflow

if TYPE_CHECKING:
    from bot.inline import Writer
    from bot.jobs import Jobs
    from bot.metrics import Metrics
    from bot.settings import Secret
    from bot.store import Store

log = logging.getLogger(__name__)

EVENT = "mlflow"  # the router's event name for every MLflow delivery (handlers/__init__.py)
DELIVERY_PREFIX = "mlflow:"  # stored ids: never mistaken for a GitHub delivery id
MAX_BODY = 256 * 1024  # registry payloads are a few hundred bytes
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_WORD = re.compile(r"^[a-z_]{1,40}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")
# The `data` fields each registry event carries (mlflow/webhooks/types.py), all strings.
_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("model_version", "created"): ("name", "version"),
    ("model_version_tag", "set"): ("name", "version", "key", "value"),
    ("model_version_alias", "created"): ("name", "alias", "version"),
}

Wanted = Callable[[str, str, dict[str, Any]], bool]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status)


def registry_event(payload: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(entity, action, data) of a parsed MLflow webhook body; ValueError if malformed. Pure.

    Events the bridge reads are checked field by field; other well-formed events pass (and
    are ignored by the caller)."""
    entity, action, data = payload.get("entity"), payload.get("action"), payload.get("data")
    if not isinstance(entity, str) or not _WORD.match(entity):
        raise ValueError("entity must be an MLflow entity name such as model_version_alias")
    if not isinstance(action, str) or not _WORD.match(action):
        raise ValueError("action must be an MLflow action name such as created")
    if not isinstance(data, dict):
        raise ValueError("data must be an object")
    for key in _FIELDS.get((entity, action), ()):
        value = data.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= 256:
            raise ValueError(f"data.{key} must be a non-empty string")
    if (entity, action) in _FIELDS and not _VERSION.match(str(data.get("version"))):
        raise ValueError("data.version must be a model version number")
    return entity, action, data


def make_mlflow_endpoint(
    *,
    secret: Secret | None,
    wanted: Wanted,
    store: Store,
    jobs: Jobs,
    metrics: Metrics,
    clock: Callable[[], float],
    writer: Writer,
) -> Callable[[Request], Any]:
    """POST /mlflow/webhooks: verify, parse, keep what a model asks for, store (on the writer
    thread, bot/inline.py), 202, jobs."""

    async def mlflow_webhooks(request: Request) -> Response:
        delivery = request.headers.get("x-mlflow-delivery-id", "")[:64]
        with logs.context(delivery_id=delivery):
            return await handle(request)

    async def handle(request: Request) -> Response:
        if secret is None:
            return _error(404, "MLflow webhooks are off: MLFLOW_WEBHOOK_SECRET is not set")
        try:
            body = await read_body(request, MAX_BODY)
        except BodyTooLarge:
            metrics.webhooks.labels(EVENT, "too_large").inc()
            return _error(413, "body too large")
        except ClientDisconnect:
            return _error(400, "client disconnected")
        headers = request.headers
        delivery = headers.get("x-mlflow-delivery-id")
        problem = verify_mlflow(
            secret.get(),
            body,
            delivery_id=delivery,
            timestamp=headers.get("x-mlflow-timestamp"),
            signature=headers.get("x-mlflow-signature"),
            now=clock(),
        )
        if problem is not None:
            metrics.webhooks.labels(EVENT, "bad_signature").inc()
            log.warning("MLflow delivery refused", extra={"why": problem})
            return _error(401, problem)
        assert delivery is not None  # verify_mlflow refuses a missing one
        if not _DELIVERY_ID.match(delivery):
            return _error(400, "X-MLflow-Delivery-Id is not a delivery id")
        try:
            payload = parse_webhook_body(body, "application/json")
            entity, action, data = registry_event(payload)
        except ValueError as exc:
            metrics.webhooks.labels(EVENT, "malformed").inc()
            return _error(400, f"malformed MLflow webhook: {exc}")
        name = f"{entity}.{action}"
        logs.bind(mlflow_event=name)
        if not wanted(entity, action, data):
            metrics.webhooks.labels(EVENT, "ignored").inc()
            return JSONResponse({"ok": True, "ignored": True})
        # Our own envelope: the router matches on `action`; the handler needs the delivery id
        # (its idempotency key) besides MLflow's body.
        envelope = {
            "delivery_id": delivery,
            "entity": entity,
            "action": action,
            "timestamp": str(payload.get("timestamp") or "")[:64],
            "data": data,
        }
        raw = json.dumps(envelope, separators=(",", ":"))
        stored_id = DELIVERY_PREFIX + delivery
        try:
            new = await writer.write(
                functools.partial(store.record_delivery, stored_id, EVENT, name[:64], raw)
            )
        except SQLAlchemyError:
            log.exception("database unavailable; MLflow retries 5xx a few times")
            return _error(503, "database unavailable; redeliver later")
        if not new:
            metrics.webhooks.labels(EVENT, "duplicate").inc()
            return JSONResponse({"ok": True, "duplicate": True})
        metrics.webhooks.labels(EVENT, "accepted").inc()
        jobs.submit_delivery(stored_id, EVENT)
        return JSONResponse({"ok": True, "accepted": True}, status_code=202)

    return mlflow_webhooks
