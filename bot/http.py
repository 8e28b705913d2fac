"""The ASGI app: Slack (Bolt), GitHub webhooks, health and metrics on one port."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.async_app import AsyncApp, AsyncBoltRequest
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot import logs
from bot.github_intake.payloads import MAX_JSON_DEPTH, json_too_deep, webhook_shape_problem
from bot.serving import HeaderGuard
from bot.signing import verify_github

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from bot.inline import Writer
    from bot.jobs import Jobs
    from bot.metrics import Metrics
    from bot.routing import Router
    from bot.settings import Secret, Settings
    from bot.store import Store

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # Slack and GitHub payloads are far smaller; larger bodies are refused.


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """Read the raw body, refusing more than `limit` bytes before buffering them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status)


def headers_for_bolt(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str | Sequence[str]]:
    """Request headers as Bolt takes them: name -> every value (pure, linear).

    Appending to one list per name: copying the list on each repeat (as before) was quadratic,
    and 100,000 repeats of one header held the event loop for seconds before the signature
    check (HeaderGuard now refuses that many anyway; this stays linear below the cap).
    """
    out: dict[str, list[str]] = {}
    for name, value in raw:
        out.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return dict(out)


def make_slack_endpoint(bolt: App | AsyncApp) -> Callable[[Request], Any]:
    async def slack_events(request: Request) -> Response:
        try:
            body = await read_body(request)
        except BodyTooLarge:
            return _error(413, "body too large")
        except ClientDisconnect:
            return _error(400, "client disconnected")
        form = request.headers.get("content-type", "").startswith("application/x-www-form")
        encoded_nul = form and (b"%00" in body or b"%5cu0000" in body.lower())
        if b"\x00" in body or b"\\u0000" in body or encoded_nul:
            # Slack never sends NUL characters; PostgreSQL text cannot hold them.
            return _error(400, "malformed body: NUL character")
        try:
            text = body.decode("utf-8")
            headers = headers_for_bolt(request.headers.raw)
            query: dict[str, Sequence[str]] = dict(parse_qs(request.url.query))
            request_type = AsyncBoltRequest if isinstance(bolt, AsyncApp) else BoltRequest
            bolt_req = request_type(body=text, query=query, headers=headers)
        except Exception:  # BoltRequest only parses: any failure means a bad body
            # Bolt's parser assumes shapes (a JSON object, dicts where it expects them) and
            # raises AttributeError/TypeError/... otherwise: the body is malformed.
            return _error(400, "malformed body")
        if json_too_deep(bolt_req.body, MAX_JSON_DEPTH):
            return _error(400, f"malformed payload: nested deeper than {MAX_JSON_DEPTH} levels")
        problem = slack_shape_problem(bolt_req.body)
        if problem:
            return _error(400, problem)
        # AsyncApp dispatches on the event loop (its listeners go to the thread pool, see
        # bot/bolt_async.py); a sync App runs on the thread pool so the loop stays free.
        # Exceptions inside dispatch become answers in bolt_error_response (registered in wiring).
        # A fresh logging scope: handlers bind the request id once they create it.
        try:
            if isinstance(bolt, AsyncApp):
                with logs.context():
                    resp = await bolt.async_dispatch(bolt_req)  # type: ignore[arg-type]
            else:
                resp = await run_in_threadpool(logs.scoped(bolt.dispatch), bolt_req)
        except Exception as exc:
            # Bolt's own error path can raise again on a body it cannot take apart (it builds
            # listener arguments from the payload): answer the same way as its error handler.
            resp = bolt_error_response(exc, bolt_req.body)
        return Response(
            content=resp.body,
            status_code=resp.status,
            headers={
                k: v[0] for k, v in resp.headers.items() if v and k.lower() != "content-length"
            },
        )

    return slack_events


# Top-level fields of Slack payloads that are objects (or lists of objects) whenever present
# (docs.slack.dev/reference/interaction-payloads, /events-api). Handlers may rely on this.
_OBJECT_FIELDS = ("user", "team", "channel", "container", "message", "view", "event", "enterprise")
_LIST_FIELDS = ("actions", "authorizations")


def slack_shape_problem(body: Any) -> str | None:
    """Why a parsed Slack body does not have Slack's shape, or None (pure).

    Slash commands are form fields (all strings); interaction and event payloads carry objects
    in the fields above. A signed body that breaks this is refused with 400 before any listener.
    """
    if not isinstance(body, dict):
        return "malformed payload: not an object"
    if "command" in body:  # a slash command: form fields, all text
        if not all(isinstance(v, str) for v in body.values()):
            return "malformed payload: slash command fields must be text"
        ids = [body.get("user_id"), body.get("channel_id"), body.get("team_id")]
        if len(str(body.get("trigger_id") or "")) > 200:
            return "malformed payload: trigger_id is too long"
    else:
        for key in _OBJECT_FIELDS:
            if body.get(key) is not None and not isinstance(body[key], dict):
                return f"malformed payload: {key} must be an object"
        for key in _LIST_FIELDS:
            value = body.get(key)
            if value is not None and not (
                isinstance(value, list) and all(isinstance(v, dict) for v in value)
            ):
                return f"malformed payload: {key} must be a list of objects"
        ids = [(body.get(k) or {}).get("id") for k in ("user", "channel", "team")]
        event = body.get("event") or {}
        # Some event types carry objects here; the ones given as text must be ids.
        ids += [v for v in (event.get("user"), event.get("channel")) if isinstance(v, str)]
    # Slack ids (U…, W…, C…, G…, D…, T…) are short upper-case words; the database keeps them
    # in 32 characters. Anything else is not from Slack.
    if not all(i is None or (isinstance(i, str) and _SLACK_ID.fullmatch(i)) for i in ids):
        return "malformed payload: not a Slack id"
    return None


_SLACK_ID = re.compile(r"[A-Z0-9]{0,32}")


_OUR_CODE = (
    str(Path(__file__).resolve().parent) + os.sep,  # bot/
    str(Path(__file__).resolve().parent.parent / "handlers") + os.sep,
)
DB_APOLOGY = (
    ":warning: Sorry, the bridge cannot reach its database right now; nothing was started. "
    "Please try again in a minute."
)
BUG_APOLOGY = (
    ":warning: Sorry, something went wrong in the bridge while handling this; nothing was "
    "started and the error was logged. Please try again; if it keeps happening, tell the "
    "bridge's admins."
)


# The frames that call into Bolt (this module, the logging scope, the async listener adapter)
# are not listener code.
_WRAPPERS = (
    str(Path(__file__).resolve()),
    str(Path(logs.__file__).resolve()),
    str(Path(__file__).resolve().parent / "bolt_async.py"),
)


def _raised_in(exc: BaseException, prefixes: tuple[str, ...]) -> bool:
    """Whether the exception passed through our listener code on its way up (not only Bolt)."""
    tb = exc.__traceback__
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename
        if path.startswith(prefixes) and path not in _WRAPPERS:
            return True
        tb = tb.tb_next
    return False


def bolt_error_response(error: Exception, body: Any) -> BoltResponse:
    """What Slack gets when dispatching raised (Bolt's `app.error` handler).

    - the database is down: commands get an ephemeral apology (nothing was stored, so nothing
      half-done); events get 503 so that Slack retries them later;
    - Bolt itself choked on a (signed) payload without reaching our code: 400, it is malformed;
    - a bug in a handler: logged with its traceback; commands get an apology, other payloads a
      500 (Slack retries events; buttons show that they failed).
    """
    payload = body if isinstance(body, dict) else {}
    is_command = isinstance(payload.get("command"), str)
    if isinstance(error, SQLAlchemyError):
        log.error("database unavailable while handling a Slack request", exc_info=error)
        if is_command:
            return BoltResponse(status=200, body={"response_type": "ephemeral", "text": DB_APOLOGY})
        return BoltResponse(status=503, body={"ok": False, "error": "database unavailable"})
    if not _raised_in(error, _OUR_CODE):
        log.warning(
            "malformed Slack payload", extra={"error": f"{type(error).__name__}: {error}"[:200]}
        )
        return BoltResponse(status=400, body={"ok": False, "error": "malformed payload"})
    log.error("handling a Slack request failed", exc_info=error)
    if is_command:
        return BoltResponse(status=200, body={"response_type": "ephemeral", "text": BUG_APOLOGY})
    return BoltResponse(status=500, body="")


def make_github_endpoint(
    *,
    secret: Secret | None,
    metrics: Metrics,
    router: Router,
    store: Store,
    jobs: Jobs,
    writer: Writer,
) -> Callable[[Request], Any]:
    """POST /github/webhooks: verify, parse, check, store (dedupe), 202, then the job pool.

    Everything but the insert runs on the event loop; the insert runs on the process's writer
    thread (bot/inline.py), which commits runs of waiting inserts under one hold of SQLite's
    writer lock, and the 202 follows its commit."""

    async def github_webhooks(request: Request) -> Response:
        # Every log line of this delivery names it (the job that handles it later does too).
        delivery_id = request.headers.get("x-github-delivery", "")[:100]
        event = request.headers.get("x-github-event", "")[:64]
        with logs.context(delivery_id=delivery_id, github_event=event):
            return await handle(request)

    async def handle(request: Request) -> Response:
        if secret is None:
            return _error(404, "webhooks are off: GITHUB_WEBHOOK_SECRET is not set (poll mode)")
        try:
            body = await read_body(request)
        except BodyTooLarge:
            metrics.webhooks.labels("unknown", "too_large").inc()
            return _error(413, "body too large")
        except ClientDisconnect:
            return _error(400, "client disconnected")
        if not verify_github(secret.get(), body, request.headers.get("x-hub-signature-256")):
            metrics.webhooks.labels("unknown", "bad_signature").inc()
            return _error(401, "bad or missing X-Hub-Signature-256")
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        if not event or not delivery or len(delivery) > 100 or len(event) > 64:
            return _error(400, "missing X-GitHub-Event or X-GitHub-Delivery")
        try:
            payload = parse_webhook_body(body, request.headers.get("content-type", ""))
        except ValueError as exc:
            metrics.webhooks.labels(event, "malformed").inc()
            return _error(400, str(exc))
        problem = webhook_shape_problem(event, payload)
        if problem is not None:
            metrics.webhooks.labels(event, "malformed").inc()
            return _error(400, problem)
        action = payload.get("action") if isinstance(payload.get("action"), str) else None
        if action is not None and len(action) > 64:
            return _error(400, "action is not one of GitHub's")  # they are short words
        if event == "ping":
            metrics.webhooks.labels(event, "pong").inc()
            return JSONResponse({"ok": True, "pong": True})
        if not router.handlers_for(event, payload):
            metrics.webhooks.labels(event, "ignored").inc()
            return JSONResponse({"ok": True, "ignored": True}, status_code=202)
        # Stored as received when it is plain JSON (re-encoding 20 KB cost more than the insert);
        # form-encoded or NUL-cleaned payloads are stored re-encoded.
        form = request.headers.get("content-type", "").startswith("application/x-www-form")
        clean = not form and b"\\u0000" not in body
        raw = body.decode("utf-8") if clean else json.dumps(payload, separators=(",", ":"))
        try:
            new = await writer.write(
                functools.partial(store.record_delivery, delivery, event, action, raw)
            )
        except SQLAlchemyError:
            log.exception(
                "database unavailable; GitHub must redeliver", extra={"delivery_id": delivery}
            )
            return _error(503, "database unavailable; redeliver later")
        if not new:
            metrics.webhooks.labels(event, "duplicate").inc()
            return JSONResponse({"ok": True, "duplicate": True})
        metrics.webhooks.labels(event, "accepted").inc()
        # Answer now (GitHub waits 10 s at most); the work continues on the job pool.
        jobs.submit_delivery(delivery, event)
        return JSONResponse({"ok": True, "accepted": True}, status_code=202)

    return github_webhooks


def parse_webhook_body(body: bytes, content_type: str) -> dict[str, Any]:
    """JSON, or the form encoding GitHub offers (payload=<json>). Pure; ValueError if bad."""
    try:
        if content_type.startswith("application/x-www-form-urlencoded"):
            fields = parse_qs(body.decode("utf-8"))
            text = fields.get("payload", [""])[0]
        else:
            text = body.decode("utf-8")
        payload = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("body is not valid JSON") from None
    except RecursionError:  # the C decoder gives up near the interpreter's recursion limit
        raise ValueError(f"body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(payload, dict):
        raise ValueError("body must be a JSON object")
    if json_too_deep(payload, MAX_JSON_DEPTH):
        raise ValueError(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    if "\\u0000" in text:
        payload = _without_nul(payload)  # PostgreSQL text cannot hold NUL characters
    for key in _GITHUB_OBJECTS:
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            raise ValueError(f"{key} must be an object")
    for key in _GITHUB_LISTS:
        value = payload.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, dict) for v in value)
        ):
            raise ValueError(f"{key} must be a list of objects")
    return payload


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


# Top-level fields of webhook payloads that are objects / lists of objects whenever present
# (@octokit/webhooks-schemas; the whole @octokit/webhooks-examples corpus passes, see
# tests/contract/test_contract_webhooks.py); handlers may rely on this. Not `workflow`: a path
# string in workflow_dispatch.
_GITHUB_OBJECTS = (
    "repository",
    "sender",
    "installation",
    "organization",
    "enterprise",
    "workflow_run",
    "workflow_job",
    "issue",
    "comment",
    "pull_request",
    "deployment",
    "deployment_status",
    "check_run",
    "check_suite",
    "label",
    "changes",
)
_GITHUB_LISTS = ("repositories", "repositories_added", "repositories_removed")


def make_asgi(
    *,
    settings: Settings,
    github_webhooks: Callable[[Request], Any],
    bolt: App | AsyncApp | None,
    mlflow_webhooks: Callable[[Request], Any] | None = None,
    health: Callable[[], dict[str, Any]],
    metrics: Metrics,
    refresh_gauges: Callable[[], None],
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]],
) -> Starlette:
    """The endpoints on one port; /slack/events only when bolt is given (HTTP mode),
    /mlflow/webhooks when its endpoint is given (it answers 404 itself while switched off).

    settings gives the header limits; health and refresh_gauges run on the thread pool."""

    async def healthz(request: Request) -> Response:
        report = await run_in_threadpool(health)
        return JSONResponse(report, status_code=200 if report["ok"] else 503)

    async def metrics_endpoint(request: Request) -> Response:
        await run_in_threadpool(refresh_gauges)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    routes = [
        Route("/github/webhooks", github_webhooks, methods=["POST"]),
        *(
            [Route("/mlflow/webhooks", mlflow_webhooks, methods=["POST"])]
            if mlflow_webhooks
            else []
        ),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    if bolt is not None:
        routes.insert(0, Route("/slack/events", make_slack_endpoint(bolt), methods=["POST"]))
    # Header limits first: before routing, body reading or signature checks.
    guard = Middleware(
        HeaderGuard, max_count=settings.max_headers, max_bytes=settings.max_header_bytes
    )
    return Starlette(routes=routes, lifespan=lifespan, middleware=[guard])
