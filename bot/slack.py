"""Outgoing Slack calls: one WebClient with bounded timeouts and 429-aware retries."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from bot import inline
from bot.keepalive import KeepAliveWebClient, default_tls
from bot.metrics import Metrics

log = logging.getLogger(__name__)


class SlackFailure(Exception):
    """A Slack call failed; `error` is Slack's error code (e.g. not_in_channel)."""

    def __init__(
        self,
        error: str,
        method: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"Slack {method} failed: {error}")
        self.error = error
        self.method = method
        self.status = status  # HTTP status of Slack's answer, when there was one
        # When Slack said to come back (Retry-After), as UNIX seconds: an outage's next try.
        self.retry_at = time.time() + retry_after if retry_after is not None else None

    @property
    def is_outage(self) -> bool:
        """Slack down, overloaded or rate limiting (wait and try again), not a refusal."""
        return (
            self.error.startswith("connection")
            or self.error in OUTAGE_ERRORS
            or (self.status is not None and (self.status == 429 or self.status >= 500))
        )

    @property
    def user_hint(self) -> str:
        if self.error in ("not_in_channel", "channel_not_found"):
            return (
                "I cannot post in this channel. Invite me with `/invite @chatops-bridge` "
                "(private channels need an invitation), then try again."
            )
        if self.error == "is_archived":
            return "This channel is archived; run the command in an active channel."
        return f"Slack refused the message ({self.error})."


# Slack error codes that mean "not now" rather than "no" (docs.slack.dev: Web API errors).
OUTAGE_ERRORS = frozenset(
    {"ratelimited", "service_unavailable", "internal_error", "fatal_error", "request_timeout"}
)

MAX_RETRY_AFTER = 30.0  # seconds a call may wait for Slack's Retry-After before giving up


def retry_after_seconds(headers: dict[str, Any]) -> float:
    """Slack's Retry-After (seconds) from response headers; 1 when absent or unreadable."""
    for key, value in headers.items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) and value else value
            try:
                seconds = float(str(raw).strip())
            except ValueError:
                return 1.0
            return seconds if seconds >= 0 else 1.0
    return 1.0


class BoundedRateLimitRetryHandler(RetryHandler):
    """Retries a 429 after Slack's Retry-After, but only when that wait is at most `max_wait`.

    slack_sdk's own RateLimitErrorRetryHandler sleeps for whatever Retry-After says (and fails
    on a non-integer value), so one answer could hold a worker — or a request thread inside
    Slack's 3 s ack window — for an hour. Beyond `max_wait` the call fails with `ratelimited`
    (SlackFailure) and the job layer retries the work later instead.
    """

    def __init__(
        self,
        max_retry_count: int = 3,
        *,
        max_wait: float = MAX_RETRY_AFTER,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait
        self._sleep = sleep

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return (
            response is not None
            and response.status_code == 429
            and retry_after_seconds(response.headers) <= self.max_wait
        )

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        if response is None:
            raise error  # type: ignore[misc]
        state.next_attempt_requested = True
        self._sleep(min(self.max_wait, retry_after_seconds(response.headers) + random.random()))
        state.increment_current_attempt()


def make_client(token: str, base_url: str, *, timeout: int = 10) -> WebClient:
    # Reused connections: a new one per call is a TLS handshake with slack.com (bot/keepalive).
    client = KeepAliveWebClient(token=token, base_url=base_url, timeout=timeout)
    # slack_sdk retries only connection errors by default; honour Retry-After on 429 too,
    # within a bound (no thread waits longer than MAX_RETRY_AFTER for one answer).
    client.retry_handlers = [
        ConnectionErrorRetryHandler(max_retry_count=2),
        BoundedRateLimitRetryHandler(max_retry_count=3),
    ]
    # It retries only a 429: no success needs showing to it (KeepAliveWebClient.lean_call).
    client.success_is_final = client.success_is_final | {BoundedRateLimitRetryHandler}
    return client


LOOKUP_TIMEOUT = 2  # seconds; see SlackOut.usergroup_members


def _sdk_call(
    client: WebClient, method: str, params: dict[str, Any]
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(status, headers, body) of a call through slack_sdk's own api_call: a plain WebClient,
    or a proxy (KeepAliveWebClient.lean_call carries the rest)."""
    try:
        resp = client.api_call(method, json=params)
    except SlackApiError as exc:
        resp = exc.response
    data = resp.data if isinstance(resp.data, dict) else {}
    return int(resp.status_code), dict(resp.headers or {}), data


def _posted(
    method: str,
    channel: str | None,
    *,
    thread_ts: str | None = None,
    ts: str | None = None,
    user: str | None = None,
) -> None:
    """The story's "reply posted" line: where it went, never what it said."""
    fields = {"channel": channel, "thread_ts": thread_ts, "message_ts": ts, "user": user}
    log.info(
        "Slack reply posted",
        extra={"method": method, **{k: v for k, v in fields.items() if v is not None}},
    )


class SlackOut:
    """What the bridge says in Slack. Every method raises SlackFailure on a refusal."""

    def __init__(
        self,
        client: WebClient,
        *,
        group_cache_seconds: float = 300.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        # Group lookups run before a command's ack (Slack's 3-second budget): a short timeout
        # and no waiting out a 429; a failed lookup falls back to the last answer, if any.
        self._lookup = KeepAliveWebClient(
            token=client.token, base_url=client.base_url, timeout=LOOKUP_TIMEOUT
        )
        self._lookup.retry_handlers = []
        self.metrics = metrics
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._groups_lock = threading.Lock()
        self.group_cache_seconds = group_cache_seconds

    def _observe(self, method: str, outcome: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.slack_calls.labels(method, outcome).observe(time.monotonic() - started)

    def _call(self, method: str, *, via: WebClient | None = None, **kwargs: Any) -> dict[str, Any]:
        inline.guard("Slack")
        started = time.monotonic()
        client = via or self.client
        try:
            if isinstance(client, KeepAliveWebClient) and client.lean:
                status, headers, data = client.lean_call(method, kwargs)
            else:
                status, headers, data = _sdk_call(client, method, kwargs)
        except (SlackRequestError, OSError) as exc:
            self._observe(method, "connection", started)
            raise SlackFailure(f"connection: {type(exc).__name__}", method) from None
        if status != 200 or not data.get("ok"):  # what SlackResponse.validate() refuses
            error = str(data.get("error") or f"http_{status}")
            self._observe(method, error, started)
            wait = retry_after_seconds(headers) if status == 429 or error == "ratelimited" else None
            raise SlackFailure(error, method, status=status, retry_after=wait)
        self._observe(method, "ok", started)
        return data

    def post(
        self,
        channel: str,
        text: str,
        *,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
        broadcast: bool = False,
    ) -> str:
        kwargs: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False}
        if blocks is not None:
            kwargs["blocks"] = blocks
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
            if broadcast:
                kwargs["reply_broadcast"] = True
        ts = str(self._call("chat.postMessage", **kwargs)["ts"])
        _posted("chat.postMessage", channel, thread_ts=thread_ts, ts=ts)
        return ts

    def update(
        self, channel: str, ts: str, text: str, *, blocks: list[dict[str, Any]] | None = None
    ) -> None:
        kwargs: dict[str, Any] = {"channel": channel, "ts": ts, "text": text}
        if blocks is not None:
            kwargs["blocks"] = blocks
        self._call("chat.update", **kwargs)
        _posted("chat.update", channel, ts=ts)

    def ephemeral(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"channel": channel, "user": user, "text": text}
        if blocks is not None:
            kwargs["blocks"] = blocks
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        self._call("chat.postEphemeral", **kwargs)
        _posted("chat.postEphemeral", channel, thread_ts=thread_ts, user=user)

    def respond(
        self, response_url: str, text: str, *, blocks: list[dict[str, Any]] | None = None
    ) -> None:
        """Ephemeral answer via a command's response_url (works where the bot is not a member)."""
        if not response_url.startswith(("https://", "http://")):
            # It comes from a signed payload, but the bridge POSTs only to web URLs regardless.
            raise SlackFailure("invalid_response_url", "response_url")
        # One TLS context for the process: without one, urllib builds (and loads the CA bundle
        # into) a new context for every call.
        tls = default_tls() if response_url.startswith("https://") else None
        hook = WebhookClient(response_url, timeout=10, ssl=tls)
        hook.retry_handlers = [
            ConnectionErrorRetryHandler(max_retry_count=2),
            BoundedRateLimitRetryHandler(max_retry_count=2),
        ]
        body: dict[str, Any] = {"text": text, "response_type": "ephemeral"}
        if blocks is not None:
            body["blocks"] = blocks
        started = time.monotonic()
        try:
            resp = hook.send_dict(body)
        except (SlackRequestError, OSError) as exc:
            self._observe("response_url", "connection", started)
            raise SlackFailure(f"connection: {type(exc).__name__}", "response_url") from None
        if resp.status_code >= 300:
            self._observe("response_url", f"http_{resp.status_code}", started)
            raise SlackFailure(f"http_{resp.status_code}", "response_url", status=resp.status_code)
        self._observe("response_url", "ok", started)
        _posted("response_url", None)  # never the URL: it is a capability

    def publish_home(self, user_id: str, view: dict[str, Any]) -> None:
        self._call("views.publish", user_id=user_id, view=view)

    def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        self._call("views.open", trigger_id=trigger_id, view=view)

    def usergroup_members(self, group_id: str) -> frozenset[str]:
        now = time.monotonic()
        with self._groups_lock:
            cached = self._groups.get(group_id)
        if cached and now - cached[0] < self.group_cache_seconds:
            return cached[1]
        try:
            data = self._call("usergroups.users.list", via=self._lookup, usergroup=group_id)
        except SlackFailure as exc:
            if cached is None:
                raise
            log.warning(
                "usergroup lookup failed; using the last answer",
                extra={"group": group_id, "error": exc.error},
            )
            return cached[1]
        members = frozenset(str(u) for u in data.get("users") or [])
        with self._groups_lock:
            self._groups[group_id] = (now, members)
        return members

    def auth_test(self) -> dict[str, Any]:
        return self._call("auth.test")
