"""Only the workspace the bot token belongs to may drive the bridge.

One Slack app (one signing secret) can be installed in several workspaces; a valid signature
says "from Slack, for this app", not "from our workspace". The bridge learns its workspace
from `auth.test` with its bot token (team, Enterprise Grid organization and, when Slack
returns it, the app id) and refuses every request that names another one. The answer is the
one Bolt's single-workspace authorization asks for at the first signed request (Bolt caches
it), so the guard costs no Slack call of its own and the bridge still starts while Slack is
unreachable; until an auth.test has succeeded, Slack requests are refused (fail closed).

Enterprise Grid decision: when both the request and `auth.test` carry an `enterprise_id` and
they are equal, any team of that organization is accepted. An org-wide install serves every
workspace of the organization with one token, and users of one organization move between its
workspaces in shared channels; a different organization (or none) is still refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from slack_bolt import BoltRequest, BoltResponse
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk import WebClient

log = logging.getLogger(__name__)

RELEARN_SECONDS = 5.0  # after a failed auth.test, at most one new try per this many seconds

REFUSAL = (
    ":no_entry: This bridge serves another Slack workspace, so it cannot act on requests from "
    "this one. Ask your Slack admins which chatops-bridge belongs to your workspace."
)
UNKNOWN = (
    ":warning: The bridge cannot confirm which Slack workspace it serves right now (Slack's "
    "auth.test did not answer); nothing was started. Please try again in a minute."
)


@dataclass(frozen=True)
class Identity:
    """Who the bot token is, from auth.test."""

    team_id: str
    enterprise_id: str | None = None
    app_id: str | None = None

    @classmethod
    def from_auth_test(cls, data: dict[str, Any]) -> Identity | None:
        team = data.get("team_id")
        if not data.get("ok") or not isinstance(team, str) or not team:
            return None
        enterprise = data.get("enterprise_id")
        app = data.get("app_id")
        return cls(
            team_id=team,
            enterprise_id=enterprise if isinstance(enterprise, str) and enterprise else None,
            app_id=app if isinstance(app, str) and app else None,
        )


def _id(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def request_origin(body: dict[str, Any]) -> tuple[set[str], str | None, str | None]:
    """(team ids, enterprise id, api_app_id) that a Slack payload names (pure).

    Slash commands: `team_id`, `enterprise_id` form fields; interactions: `team.id`,
    `enterprise.id`; events: `team_id`, `enterprise_id` and the installations in
    `authorizations` (the one the event is delivered for).
    """
    teams: set[str] = set()
    team = body.get("team")
    for value in (body.get("team_id"), team.get("id") if isinstance(team, dict) else None):
        if isinstance(value, str) and value:
            teams.add(value)
    for auth in body.get("authorizations") or []:
        if isinstance(auth, dict) and _id(auth.get("team_id")):
            teams.add(auth["team_id"])
    enterprise = body.get("enterprise")
    ent = _id(body.get("enterprise_id")) or (
        _id(enterprise.get("id")) if isinstance(enterprise, dict) else None
    )
    return teams, ent, _id(body.get("api_app_id"))


def foreign_reason(body: dict[str, Any], me: Identity) -> str | None:
    """Why this payload is not for our workspace (or app), or None when it is (pure)."""
    teams, enterprise, app = request_origin(body)
    if me.app_id is not None and app is not None and app != me.app_id:
        return "api_app_id"
    if me.team_id in teams:
        return None
    if enterprise is not None and enterprise == me.enterprise_id:
        return None  # same Enterprise Grid organization: see the module docstring
    return "team_id" if teams or enterprise else "no team"


class WorkspaceGuard:
    """Learns the bot's identity (auth.test) and refuses requests from other workspaces."""

    def __init__(
        self,
        client: WebClient,
        clock: Callable[[], float] = time.monotonic,
        bolt_auth_test: Callable[[], Any] = lambda: None,
    ) -> None:
        self.client = client
        self.bolt_auth_test = bolt_auth_test
        self.clock = clock
        self.identity: Identity | None = None
        self._lock = threading.Lock()
        self._last_try = float("-inf")

    def adopt(self, auth_test: Any) -> Identity | None:
        """Take the identity from an auth.test answer someone already has (Bolt's cached one)."""
        data = getattr(auth_test, "data", auth_test)
        if self.identity is None and isinstance(data, dict):
            self.identity = Identity.from_auth_test(data)
            if self.identity is not None:
                self._announce(self.identity)
        return self.identity

    def _announce(self, me: Identity) -> None:
        log.info(
            "serving one Slack workspace",
            extra={"team_id": me.team_id, "enterprise_id": me.enterprise_id, "app_id": me.app_id},
        )

    def learn(self) -> Identity | None:
        """auth.test once (again after a failure, at most every RELEARN_SECONDS)."""
        with self._lock:
            if self.identity is not None:
                return self.identity
            if self.clock() - self._last_try < RELEARN_SECONDS:
                return None
            self._last_try = self.clock()
            try:
                data = self.client.auth_test().data
            except Exception as exc:  # any failure: refuse for now, try again later
                log.warning("auth.test failed", extra={"error": type(exc).__name__})
                return None
            self.identity = Identity.from_auth_test(data if isinstance(data, dict) else {})
            if self.identity is not None:
                self._announce(self.identity)
            return self.identity

    def middleware(
        self, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse:
        """Bolt global middleware (Socket Mode): after the signature, before listeners."""
        refused = self.refusal(req.body)
        return next() if refused is None else refused

    async def async_middleware(
        self, req: Any, resp: BoltResponse, next: Callable[[], Awaitable[BoltResponse]]
    ) -> BoltResponse:
        """The same for AsyncApp (HTTP). Only a first auth.test of our own blocks: threaded."""
        if self.identity is None and self.bolt_auth_test() is None:
            refused = await anyio.to_thread.run_sync(self.refusal, req.body)
        else:
            refused = self.refusal(req.body)
        return await next() if refused is None else refused

    def as_async_middleware(self) -> AsyncMiddleware:
        """The guard as AsyncApp's class-based middleware: Bolt calls it with (req, resp, next)
        as they are, where a function middleware has every listener argument built for it on
        each request (say, respond, client, …: a twentieth of an `/evaluate help` ack)."""
        return _AsyncGuard(self)

    def refusal(self, payload: Any) -> BoltResponse | None:
        """The answer refusing a request from another workspace (or while ours is unknown);
        None lets it through."""
        body = payload if isinstance(payload, dict) else {}
        is_command = isinstance(body.get("command"), str)
        # Bolt's single-workspace authorization ran just before and keeps its auth.test
        # answer: adopting it costs no call. Requests Bolt lets through without auth.test
        # (app_uninstalled, tokens_revoked) make the guard ask itself.
        me = self.identity or self.adopt(self.bolt_auth_test()) or self.learn()
        if me is None:
            if is_command:
                answer = {"response_type": "ephemeral", "text": UNKNOWN}
                return BoltResponse(status=200, body=answer)
            return BoltResponse(status=503, body={"ok": False, "error": "workspace unknown"})
        reason = foreign_reason(body, me)
        if reason is None:
            return None
        teams, enterprise, app = request_origin(body)
        # Ids only: never the command text or message content.
        log.warning(
            "Slack request from another workspace refused",
            extra={
                "reason": reason,
                "team_ids": sorted(teams)[:5],
                "enterprise_id": enterprise,
                "api_app_id": app,
            },
        )
        if is_command:
            return BoltResponse(status=200, body={"response_type": "ephemeral", "text": REFUSAL})
        return BoltResponse(status=403, body={"ok": False, "error": "another workspace"})


class _AsyncGuard(AsyncMiddleware):
    def __init__(self, guard: WorkspaceGuard) -> None:
        self.guard = guard

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],  # Bolt passes it by this name
    ) -> BoltResponse:
        return await self.guard.async_middleware(req, resp, next)
