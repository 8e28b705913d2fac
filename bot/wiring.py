"""The one place that builds and connects every part of the bridge."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast
from urllib.parse import urlparse

import anyio.to_thread
from slack_bolt import App, BoltResponse
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.authorization import SingleTeamAuthorization
from slack_bolt.middleware.authorization.async_single_team_authorization import (
    AsyncSingleTeamAuthorization,
)
from slack_bolt.middleware.request_verification import RequestVerification
from slack_bolt.middleware.request_verification.async_request_verification import (
    AsyncRequestVerification,
)
from slack_sdk import WebClient
from slack_sdk.web.async_client import AsyncWebClient
from starlette.applications import Starlette

import handlers
from bot.bolt_async import SyncListeners
from bot.config import Config
from bot.db import make_engine, migrate, writer_run
from bot.deps import Deps
from bot.github import GitHubApp
from bot.github_intake.poller import Poller
from bot.http import bolt_error_response
from bot.inline import Writer
from bot.jobs import Jobs, RetryPolicy
from bot.liveness import Liveness
from bot.metrics import Metrics
from bot.mlflow import MlflowRegistry
from bot.model import PENDING_APPROVAL
from bot.routing import Router
from bot.scheduler import Housekeeping, HousekeepingTiming, github_mode
from bot.settings import Settings
from bot.slack import SlackOut, make_client
from bot.slacktext import hhmm, iso_utc
from bot.store import Store
from bot.workspace import WorkspaceGuard

log = logging.getLogger(__name__)
APP_NAME = "chatops-bridge"


def web_base_for(api_url: str) -> tuple[str, tuple[str, ...]]:
    """github.com for api.github.com; https://HOST for GHES (https://HOST/api/v3)."""
    parsed = urlparse(api_url)
    host = (parsed.hostname or "").lower()
    if host == "api.github.com":
        return "https://github.com", ("github.com", "www.github.com")
    netloc = parsed.netloc
    return f"{parsed.scheme}://{netloc}", (host,)


class QuietRequestVerification(RequestVerification):
    """Bolt's check, logging a rejection as one short WARNING: Bolt's own logs the whole body
    at INFO (the user's text, the response_url), so 50 unsigned 1 MiB bodies wrote 52 MB."""

    def _debug_log_error(self, signature: Any, timestamp: Any, body: Any) -> None:
        log.warning(
            "Slack request rejected: bad or stale signature",
            extra={"body_bytes": len(body or ""), "timestamp": str(timestamp)[:20]},
        )


class AsyncQuietRequestVerification(AsyncRequestVerification):
    """The same quiet rejection for AsyncApp."""

    _debug_log_error = QuietRequestVerification._debug_log_error


def quiet_request_verification(app: App | AsyncApp) -> None:
    """Swap Bolt's request verification for the quiet one (same check, same 401 answer).

    Bolt builds its middleware list in App(); there is no public way to replace one of its
    built-ins, and adding our own with app.use() would run after authorization.
    """
    if isinstance(app, AsyncApp):
        achain = app._async_middleware_list
        for i, amw in enumerate(achain):
            if type(amw) is AsyncRequestVerification:
                achain[i] = AsyncQuietRequestVerification(amw._signing_secret)
        return
    chain = app._middleware_list
    for i, mw in enumerate(chain):
        if type(mw) is RequestVerification:
            chain[i] = QuietRequestVerification(mw._signing_secret)


class Bridge:
    """All collaborators of one process. Built from settings and config; nothing global."""

    def __init__(
        self,
        settings: Settings,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        github: GitHubApp | None = None,
        slack_client: WebClient | None = None,
        workers: int | None = None,
        start_scheduler: bool = True,
    ) -> None:
        self.settings = settings
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.engine = make_engine(settings.database_url)
        migrate(self.engine)
        self.store = Store(self.engine, clock=clock)
        self.store.holder_dead_seconds = settings.holder_dead_seconds
        # This process's row and heartbeat: every unit it stores or claims names it as holder.
        self.liveness = Liveness(self.store, every=settings.heartbeat_seconds)
        self.liveness.register()
        self.github = github or GitHubApp(
            app_id=settings.github_app_id,
            private_key=settings.github_private_key.get(),
            base_url=settings.github_api_url,
            metrics=self.metrics,
        )
        if self.github.metrics is None:  # a client built by the caller (tests) is measured too
            self.github.metrics = self.metrics
        client = slack_client or make_client(settings.slack_bot_token.get(), settings.slack_api_url)
        self.slack = SlackOut(client, metrics=self.metrics)
        self.jobs = Jobs(
            self.store,
            workers=workers or settings.job_workers,
            lease_seconds=settings.lease_seconds,
            policy=RetryPolicy(
                horizon=settings.outage_horizon_hours * 3600, max_failures=settings.max_attempts
            ),
            metrics=self.metrics,
        )
        web_base, web_hosts = web_base_for(settings.github_api_url)
        self.deps = Deps(
            config=config,
            store=self.store,
            github=self.github,
            slack=self.slack,
            jobs=self.jobs,
            clock=clock,
            web_base=web_base,
            web_hosts=web_hosts,
            # health: App Home shows the same report as GET /healthz.
            metrics=self.metrics,
            health=self.health,
            mlflow=MlflowRegistry(settings.mlflow_tracking_uri, settings.mlflow_tracking_token)
            if settings.mlflow_tracking_uri
            else None,
        )
        self.router = Router()
        handlers.register_github(self.router, self.deps)
        handlers.register_jobs(self.deps)
        self.jobs.on_delivery(self.router.dispatch)
        self.workspace = WorkspaceGuard(client)
        # HTTP: Bolt's AsyncApp on the event loop, the listeners on the thread pool
        # (bot/bolt_async.py). Socket Mode: the sync App its client drives from threads.
        self.bolt: App | AsyncApp
        # The one thread that writes what an answer on the event loop waits for: a slash
        # command's request, a webhook delivery (bot/inline.py).
        self.writer = Writer(
            run_scope=lambda writes: writer_run(self.engine), group_scope=self.store.write_group
        )
        if settings.socket_mode:
            self.bolt = self._make_bolt(client)
            handlers.register_slack(self.bolt, self.deps)
        else:
            self.bolt = self._make_async_bolt(client)
            # SyncListeners takes the same decorators as App (command, action, view, event…).
            # Slash commands are tried on the event loop first, their one write handed to
            # this writer thread (bot/inline.py).
            listeners = SyncListeners(self.bolt, client, self.writer)
            handlers.register_slack(cast(App, listeners), self.deps)
        self.housekeeping = Housekeeping(
            engine=self.engine,
            store=self.store,
            jobs=self.jobs,
            liveness=self.liveness,
            timing=HousekeepingTiming.from_settings(settings),
            github_mode=github_mode(config.github.mode, settings.github_webhook_secret),
            enabled=start_scheduler,
        )
        self.housekeeping.add_jobs(lambda hk: handlers.register_housekeeping(hk, self.deps))
        self.housekeeping.add_jobs(lambda hk: handlers.register_schedules(hk, self.deps))
        # Zero-ingress: without webhooks the leader polls GitHub for the runs of open requests.
        # Polled runs and comments go through the same router as webhooks; stop_following is
        # the one behaviour the poller asks for that is not an event.
        self.poller = Poller(
            self.deps,
            dispatch=self.router.dispatch,
            stop_following=lambda req, hours: handlers.stop_following(self.deps, req, hours),
            metrics=self.metrics,
        )
        if self.housekeeping.github_mode == "poll":
            self.housekeeping.add_jobs(self.poller.install)
        self.socket_handler: Any = None

    def _make_bolt(self, client: WebClient) -> App:
        signing = self.settings.slack_signing_secret
        app = App(
            # Named here: without a name Bolt reads the caller's file name from inspect.stack(),
            # which reads every frame's source file (8.7 % of the start in one py-spy profile).
            name=APP_NAME,
            client=client,
            signing_secret=signing.get() if signing else "",
            # Ack inside the listener and return at once; slow work goes to self.jobs. Bolt's
            # default would poll for ack() every 10 ms on a 5-thread pool (PLATFORM.md).
            process_before_response=True,
            request_verification_enabled=not self.settings.socket_mode,
            token_verification_enabled=False,
            ignoring_self_events_enabled=True,
            url_verification_enabled=True,
            raise_error_for_unhandled_request=False,
        )
        # Listener failures (database down, a bug) become explained answers, not bare 500s.
        app.error(bolt_error_response)
        # Requests from another workspace of the same app are refused before any listener;
        # the guard reads the auth.test answer Bolt's authorization keeps (no second call).
        bolt_auth = next(
            (m for m in app._middleware_list if isinstance(m, SingleTeamAuthorization)), None
        )
        self.workspace.bolt_auth_test = lambda: getattr(bolt_auth, "auth_test_result", None)
        app.use(self.workspace.middleware)

        quiet_request_verification(app)
        return app

    def _make_async_bolt(self, client: WebClient) -> AsyncApp:
        """The HTTP endpoint's Bolt: the same settings and middleware as `_make_bolt`."""
        signing = self.settings.slack_signing_secret
        app = AsyncApp(
            name=APP_NAME,
            # Only Bolt's own auth.test (once, cached) goes through this client; listeners
            # get the sync `client` (bot/bolt_async.py).
            client=AsyncWebClient(
                token=client.token, base_url=client.base_url, timeout=client.timeout
            ),
            signing_secret=signing.get() if signing else "",
            process_before_response=True,
            request_verification_enabled=True,
            ignoring_self_events_enabled=True,
            url_verification_enabled=True,
            raise_error_for_unhandled_request=False,
        )

        async def on_error(error: Exception, body: Any) -> BoltResponse:
            return bolt_error_response(error, body)

        app.error(on_error)
        bolt_auth = next(
            (m for m in app._async_middleware_list if isinstance(m, AsyncSingleTeamAuthorization)),
            None,
        )
        self.workspace.bolt_auth_test = lambda: getattr(bolt_auth, "auth_test_result", None)
        app.use(self.workspace.as_async_middleware())
        quiet_request_verification(app)
        return app

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        # Starlette runs sync endpoints' work on anyio's pool (40 by default); Slack bursts of
        # 64+ concurrent commands should queue there, not at the socket.
        with contextlib.suppress(RuntimeError):
            anyio.to_thread.current_default_thread_limiter().total_tokens = 64
        self.liveness.start()
        self.housekeeping.start()
        if self.settings.socket_mode:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            app_token = self.settings.slack_app_token
            assert app_token is not None
            assert isinstance(self.bolt, App)
            self.socket_handler = SocketModeHandler(self.bolt, app_token.get())
            self.socket_handler.connect()
            log.info("connected to Slack by Socket Mode")

    def stop(self) -> None:
        if self.socket_handler is not None:
            with contextlib.suppress(Exception):
                self.socket_handler.close()
        self.housekeeping.stop()
        self.jobs.shutdown(wait=True)
        self.liveness.stop()
        self.engine.dispose()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(self.stop)

    def asgi(self) -> Starlette:
        from bot.http import make_asgi, make_github_endpoint
        from bot.mlflow_intake import make_mlflow_endpoint

        return make_asgi(
            settings=self.settings,
            github_webhooks=make_github_endpoint(
                secret=self.settings.github_webhook_secret,
                metrics=self.metrics,
                router=self.router,
                store=self.store,
                jobs=self.jobs,
                writer=self.writer,
            ),
            mlflow_webhooks=make_mlflow_endpoint(
                secret=self.settings.mlflow_webhook_secret,
                wanted=lambda entity, action, data: bool(
                    self.config.models_asked(entity, action, data)
                ),
                store=self.store,
                jobs=self.jobs,
                metrics=self.metrics,
                clock=self.clock,
                writer=self.writer,
            ),
            bolt=None if self.settings.socket_mode else self.bolt,
            health=self.health,
            metrics=self.metrics,
            refresh_gauges=self.refresh_gauges,
            lifespan=self.lifespan,
        )

    # -- observability --------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {"ok": True}
        try:
            self.store.ping()
            report["database"] = "ok"
        except Exception as exc:
            report["ok"] = False
            report["database"] = f"unavailable ({type(exc).__name__})"
        report["scheduler"] = self.housekeeping.state()
        report["github_mode"] = self.housekeeping.github_mode
        report["slack_mode"] = "socket" if self.settings.socket_mode else "http"
        if report["database"] == "ok":
            last = self.store.last_delivery_at()
            report["last_webhook_age_seconds"] = round(self.clock() - last, 1) if last else None
        report["queue_depth"] = self.jobs.depth
        report["leader_jobs_run"] = self.housekeeping.leader_runs
        if report["database"] == "ok":
            report["peers"] = self.peers()
        if self.housekeeping.github_mode == "poll":
            report["poll"] = dict(self.poller.stats)
        return report

    def peers(self) -> dict[str, dict[str, Any]]:
        """GitHub and Slack as the bridge's work sees them: `unavailable` while units wait
        for them to come back (since when, how many), else `ok`. From the database, so every
        replica says the same."""
        waiting = self.store.waiting()
        out: dict[str, dict[str, Any]] = {}
        peers = ("GitHub", "Slack", "MLflow") if self.deps.mlflow else ("GitHub", "Slack")
        for peer in peers:
            if peer in waiting:
                n, since = waiting[peer]
                out[peer] = {
                    "status": "unavailable",
                    "since": iso_utc(since),
                    "waiting": n,
                    "summary": f"{peer}: unavailable since "
                    f"{hhmm(since)}, "
                    f"{n} unit{'s' if n != 1 else ''} waiting",
                }
            else:
                out[peer] = {"status": "ok", "waiting": 0}
        return out

    def refresh_gauges(self) -> None:
        self.metrics.queue_depth.set(self.jobs.depth)
        with contextlib.suppress(Exception):
            waiting = self.store.waiting()
            for peer in ("GitHub", "Slack"):
                self.metrics.units_waiting.labels(peer).set(waiting.get(peer, (0, 0.0))[0])
        self.metrics.scheduler_leader.set(1 if self.housekeeping.is_leader else 0)
        with contextlib.suppress(Exception):
            counts = self.store.count_by_status((PENDING_APPROVAL,))
            self.metrics.pending_approvals.set(counts.get(PENDING_APPROVAL, 0))
