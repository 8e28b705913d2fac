"""Shared fixtures: databases (SQLite or PostgreSQL), loopback doubles, a bridge, signed clients.

The database under test is chosen by CHATOPS_TEST_DB: `sqlite` (default) or a PostgreSQL
URL such as `postgresql://postgres@127.0.0.1:5432/postgres`; each test session makes its own
PostgreSQL database and drops it at the end, so parallel runs never meet.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import create_engine, text

from bot.config import Config, parse_config
from bot.settings import Settings, load_settings
from bot.signing import github_signature
from tests.doubles.github_api import GitHubDouble
from tests.doubles.slack_api import SlackDouble

SIGNING_SECRET = "test-signing-secret-0123456789abcdef"
WEBHOOK_SECRET = "test-webhook-secret-fedcba9876543210"
BOT_TOKEN = "xoxb-test-0000000000-1111111111-abcdefghijklmnopqrstuvwx"
REPO = "acme/ml-models"
CHANNEL = "C0TESTCHAN"
USER = "U0REQUESTER"
HEAD_SHA = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"

for _proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
    os.environ.pop(_proxy, None)


def _pg_admin_url() -> str | None:
    value = os.environ.get("CHATOPS_TEST_DB", "sqlite")
    if value == "sqlite":
        return None
    if value in ("postgres", "postgresql"):
        value = "postgresql://postgres@127.0.0.1:5432/postgres"
    return value.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    admin = _pg_admin_url()
    if admin is None:
        yield None
        return
    name = f"chatops_test_{os.getpid()}_{secrets.token_hex(3)}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()


@pytest.fixture
def database_url(pg_database: str | None, tmp_path: Path) -> str:
    if pg_database is None:
        return f"sqlite:///{tmp_path / 'chatops.db'}"
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        tables = (
            conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            .scalars()
            .all()
        )
        if tables:
            conn.execute(text("DROP TABLE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
    engine.dispose()
    return pg_database


@pytest.fixture
def slack() -> Iterator[SlackDouble]:
    double = SlackDouble().start()
    try:
        yield double
    finally:
        double.stop()
    assert not double.violations, f"Slack would have refused: {double.violations}"


@pytest.fixture
def github() -> Iterator[GitHubDouble]:
    double = GitHubDouble().start()
    double.add_repo(REPO, installation_id=101)
    double.add_pull(REPO, 42, head_sha=HEAD_SHA, title="Try a wider layer <!channel>")
    try:
        yield double
    finally:
        double.stop()
    assert not double.unknown_routes, (
        f"the bot called routes GitHub does not have: {double.unknown_routes}"
    )


def make_env(
    slack: SlackDouble, github: GitHubDouble, database_url: str, config_path: Path, **extra: str
) -> dict[str, str]:
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.url,
        "GITHUB_APP_ID": str(github.app_id),
        "GITHUB_APP_PRIVATE_KEY": github.private_key_pem,
        "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GITHUB_API_URL": github.url,
        "DATABASE_URL": database_url,
        "CHATOPS_CONFIG": str(config_path),
        "PORT": "3000",
    }
    env.update(extra)
    return env


DEFAULT_CONFIG: dict[str, Any] = {
    "repositories": {"default": REPO},
    # Every root edit at once, so flows can count chat.update calls; test_ux covers coalescing.
    "rate_limits": {"root_edit_seconds": 0},
    "commands": {
        "evaluate": {"trigger": "label", "label": "evaluate"},
        "deploy": {
            "trigger": "dispatch",
            "event_type": "deploy",
            "approval": {
                "approvers": ["U0APPROVER1", "U0APPROVER2", "U0REQUESTER"],
                "required": 1,
                "allow_self_approval": False,
                "expires_after_minutes": 30,
            },
            "environments": {"production": {}, "staging": {}},
        },
    },
}


class Clock:
    """A controllable clock: starts at real time, moves only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """A bridge wired to the doubles, with helpers that sign and send like Slack and GitHub."""

    def __init__(self, bridge: Any, client: Any, settings: Settings) -> None:
        self.bridge = bridge
        self.client = client
        self.settings = settings
        self.store = bridge.store

    def slash(
        self,
        command: str,
        text: str,
        *,
        user: str = USER,
        channel: str = CHANNEL,
        trigger_id: str | None = None,
        response_url: str = "",
    ) -> Any:
        form = {
            "token": "unused",
            "team_id": "T0001",
            "team_domain": "acme",
            "channel_id": channel,
            "channel_name": "ml",
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text,
            "api_app_id": "A0001",
            "response_url": response_url,
            "trigger_id": trigger_id or f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:16]}",
        }
        return self.slack_post(urlencode(form), "application/x-www-form-urlencoded")

    def interact(self, payload: dict[str, Any]) -> Any:
        body = urlencode({"payload": json.dumps(payload)})
        return self.slack_post(body, "application/x-www-form-urlencoded")

    def event(self, event: dict[str, Any], **headers: str) -> Any:
        body = json.dumps(
            {
                "token": "unused",
                "team_id": "T0001",
                "api_app_id": "A0001",
                "type": "event_callback",
                "event_id": f"Ev{uuid.uuid4().hex[:10]}",
                "event_time": int(time.time()),
                "event": event,
            }
        )
        return self.slack_post(body, "application/json", **headers)

    def slack_post(self, body: str, content_type: str, **headers: str) -> Any:
        ts = str(int(time.time()))
        signer = SignatureVerifier(SIGNING_SECRET)
        sig = signer.generate_signature(timestamp=ts, body=body)
        hdrs = {
            "content-type": content_type,
            "x-slack-request-timestamp": ts,
            "x-slack-signature": sig,
            **headers,
        }
        return self.client.post("/slack/events", content=body.encode(), headers=hdrs)

    def webhook(
        self,
        event: str,
        payload: dict[str, Any] | bytes,
        *,
        delivery: str | None = None,
        secret: str = WEBHOOK_SECRET,
    ) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {
            "content-type": "application/json",
            "x-github-event": event,
            "x-github-delivery": delivery or str(uuid.uuid4()),
            "x-hub-signature-256": github_signature(secret, body),
        }
        return self.client.post("/github/webhooks", content=body, headers=headers)

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what or predicate}")

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until the job pool has nothing in flight."""
        self.wait_until(lambda: self.bridge.jobs.depth == 0, timeout, "jobs to finish")


@pytest.fixture
def config_data() -> dict[str, Any]:
    return json.loads(json.dumps(DEFAULT_CONFIG))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_harness(
    slack: SlackDouble, github: GitHubDouble, database_url: str, tmp_path: Path, clock: Clock
) -> Iterator[Callable[..., Harness]]:
    from starlette.testclient import TestClient

    from bot.github import GitHubApp
    from bot.wiring import Bridge

    opened: list[tuple[Any, Any]] = []

    def build(
        config: dict[str, Any] | None = None,
        *,
        start_scheduler: bool = False,
        use_clock: bool = False,
        **env_extra: str,
    ) -> Harness:
        cfg_path = tmp_path / f"chatops-{len(opened)}.yml"
        cfg_path.write_text(
            yaml.safe_dump(config if config is not None else DEFAULT_CONFIG, sort_keys=False)
        )
        settings = load_settings(make_env(slack, github, database_url, cfg_path, **env_extra))
        cfg: Config = parse_config(yaml.safe_load(cfg_path.read_text()))
        gh = GitHubApp(
            app_id=settings.github_app_id,
            private_key=settings.github_private_key.get(),
            base_url=settings.github_api_url,
            seconds_between_requests=0,
            seconds_between_writes=0,
        )
        kwargs: dict[str, Any] = {"github": gh, "start_scheduler": start_scheduler}
        if use_clock:
            kwargs["clock"] = clock
        bridge = Bridge(settings, cfg, **kwargs)
        client = TestClient(bridge.asgi())
        client.__enter__()
        opened.append((bridge, client))
        return Harness(bridge, client, settings)

    yield build
    for _bridge, client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()
