"""Process settings read once from an environment mapping (never from os.environ directly)."""

from __future__ import annotations

import difflib
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.pem import rsa_key_problem

log = logging.getLogger(__name__)


class Secret:
    """A string that never shows itself in repr/str, so it cannot leak into logs or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SettingsError(Exception):
    """Raised with every problem found, so the operator fixes them in one go."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems

    def render(self) -> str:
        lines = ["chatops-bridge cannot start:"]
        lines += [f"  - {p}" for p in self.problems]
        lines.append("See .env.example and the README's configuration reference.")
        return "\n".join(lines)


@dataclass(frozen=True)
class Settings:
    slack_bot_token: Secret
    slack_signing_secret: Secret | None
    slack_app_token: Secret | None
    slack_api_url: str
    github_app_id: int
    github_private_key: Secret
    github_webhook_secret: Secret | None
    github_api_url: str
    database_url: str
    config_path: Path
    port: int
    host: str = "0.0.0.0"  # noqa: S104 - a server must listen beyond loopback in production
    log_format: str = "json"
    log_level: str = "INFO"  # LOG_LEVEL
    # Variables that look like ours but are not read (typos): (name, closest known or "").
    unknown_variables: tuple[tuple[str, str], ...] = field(default=())
    # Recovery and leadership timing (seconds); the defaults suit production, tests shorten them.
    sweep_seconds: float = 15.0  # CHATOPS_SWEEP_SECONDS: how often the recovery sweep runs
    stale_after_seconds: float = 30.0  # CHATOPS_STALE_AFTER_SECONDS: untouched work this old
    lease_seconds: float = 120.0  # CHATOPS_LEASE_SECONDS: a worker's hold on a unit of work
    leader_check_seconds: float = 5.0  # CHATOPS_LEADER_CHECK_SECONDS: leader lock (re)tries
    # CHATOPS_JOB_WORKERS: threads carrying out requests and webhook deliveries. Their work
    # waits on Slack and GitHub, so more of them follow more events a second; but they share
    # the interpreter with the threads that answer Slack, whose 3 seconds matter more
    # (docs/benchmarks.md measures 8, 16 and 32 on 2 CPUs).
    job_workers: int = 16
    # Server limits (bot/serving.py): one client must not stall or starve the process.
    max_headers: int = 100  # CHATOPS_MAX_HEADERS: header lines per request; more gets 431
    max_header_bytes: int = 32768  # CHATOPS_MAX_HEADER_BYTES: names + values; more gets 431
    header_timeout_seconds: float = 10.0  # CHATOPS_HEADER_TIMEOUT_SECONDS: connect to last header
    keepalive_seconds: float = 30.0  # CHATOPS_KEEPALIVE_SECONDS: idle time between requests
    # CHATOPS_MAX_CONNECTIONS: open connections (each one file descriptor); 0 = derived from
    # the process's file limit at start (bot/serving.py:connection_cap).
    max_connections: int = 0

    # Issue 15: leases that know their holder, outages waited out, failures given up loudly.
    heartbeat_seconds: float = 2.0  # CHATOPS_HEARTBEAT_SECONDS: how often a process says alive
    holder_dead_seconds: float = 10.0  # CHATOPS_HOLDER_DEAD_SECONDS: silent this long = dead
    outage_horizon_hours: float = 24.0  # CHATOPS_OUTAGE_HORIZON_HOURS: wait out a peer this long
    max_attempts: int = 5  # CHATOPS_MAX_ATTEMPTS: tries of a unit failing other than by outage

    # MLflow model registry (docs/model-registry.md): webhooks in, REST API out.
    mlflow_webhook_secret: Secret | None = None  # turns on POST /mlflow/webhooks
    mlflow_tracking_uri: str | None = None  # REST base: run metrics, aliases
    mlflow_tracking_token: Secret | None = None  # bearer token for that API
    # Issue 14: retention of the tables that only grow (days; 0 = keep forever), pruned by the
    # leader's housekeeping in batches (bot/store/retention.py), and serving processes.
    keep_requests_days: int = 90  # CHATOPS_KEEP_REQUESTS_DAYS: finished requests, runs, approvals
    keep_deliveries_days: int = 7  # CHATOPS_KEEP_DELIVERIES_DAYS: processed webhook deliveries
    keep_sent_days: int = 30  # CHATOPS_KEEP_SENT_DAYS: side-effect keys (>= deliveries)
    keep_audit_days: int = 0  # CHATOPS_KEEP_AUDIT_DAYS: the audit trail (default: forever)
    workers: int = 1  # CHATOPS_WORKERS (or serve --workers): serving processes, PostgreSQL only

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None

    def secret_values(self) -> list[str]:
        """Every secret's plain value: used by the log redaction filter."""
        out = [self.slack_bot_token.get(), self.github_private_key.get()]
        for s in (
            self.slack_signing_secret,
            self.slack_app_token,
            self.github_webhook_secret,
            self.mlflow_webhook_secret,
            self.mlflow_tracking_token,
        ):
            if s:
                out.append(s.get())
        out.append(database_password(self.database_url))
        return [v for v in out if v]


def database_password(url: str) -> str:
    """The password in a database URL, if any (pure): it must not reach logs either."""
    try:
        return make_url(url).password or ""
    except ArgumentError:
        return ""


def _read_private_key(env: Mapping[str, str], problems: list[str]) -> str:
    pem = env.get("GITHUB_APP_PRIVATE_KEY", "").strip()
    path = env.get("GITHUB_APP_PRIVATE_KEY_PATH", "").strip()
    if pem and path:
        problems.append("set only one of GITHUB_APP_PRIVATE_KEY and GITHUB_APP_PRIVATE_KEY_PATH")
        return ""
    if path:
        p = Path(path)
        try:
            mode = p.stat().st_mode
            pem = p.read_text()
        except OSError as exc:
            problems.append(f"GITHUB_APP_PRIVATE_KEY_PATH: cannot read {path} ({exc.strerror})")
            return ""
        if mode & stat.S_IROTH:
            # Settings are read before logging is set up (bot/__main__.py), when Python's
            # last-resort handler prints the message alone: the path and the fix must be in it.
            log.warning(
                "private key file %s is world-readable (mode %03o); restrict it: chmod 600 %s",
                path,
                stat.S_IMODE(mode),
                path,
                extra={"path": path, "fix": f"chmod 600 {path}"},
            )
    if not pem:
        problems.append("GITHUB_APP_PRIVATE_KEY or GITHUB_APP_PRIVATE_KEY_PATH is required")
        return ""
    # Env files often carry the PEM with literal "\n" sequences.
    if "\\n" in pem and "\n" not in pem:
        pem = pem.replace("\\n", "\n")
    # Name the variable the operator set, and the file, so the fix is found where it is needed.
    source = f"GITHUB_APP_PRIVATE_KEY_PATH ({path})" if path else "GITHUB_APP_PRIVATE_KEY"
    if "PRIVATE KEY-----" not in pem:
        problems.append(f"{source} is not a PEM private key (BEGIN ... PRIVATE KEY)")
        return ""
    # Found at start, so a damaged key is not first met by a user's command, whose answer would
    # then never arrive; read with the standard library (bot/pem.py), so cryptography and PyJWT
    # wait for the first GitHub call.
    why = rsa_key_problem(pem)
    if why:
        problems.append(f"{source}: {why}")
        return ""
    return pem


def _url(env: Mapping[str, str], name: str, default: str, problems: list[str]) -> str:
    value = env.get(name, "").strip() or default
    if not value.startswith(("http://", "https://")):
        problems.append(f"{name} must be an http(s) URL, got {value!r}")
    return value


def _seconds(
    env: Mapping[str, str], name: str, default: float, low: float, problems: list[str]
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not low <= value <= 86400:
        problems.append(f"{name} must be a number of seconds ({low:g} to 86400), got {raw!r}")
        return default
    return value


def _whole(
    env: Mapping[str, str], name: str, default: int, low: int, high: int, problems: list[str]
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        problems.append(f"{name} must be a whole number from {low} to {high}, got {raw!r}")
        return default
    return int(raw)


def database_url_from(env: Mapping[str, str]) -> str:
    """DATABASE_URL as SQLAlchemy wants it (operator commands that need only the database)."""
    database_url = env.get("DATABASE_URL", "").strip() or "sqlite:///chatops.db"
    if database_url.startswith("postgres://"):
        # Heroku-style URLs; SQLAlchemy wants the dialect (and psycopg 3 as driver).
        database_url = "postgresql+psycopg://" + database_url[len("postgres://") :]
    elif database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    return database_url


# Prefixes of the variables this program reads; others under them are likely typos.
OUR_PREFIXES = ("SLACK_", "GITHUB_", "CHATOPS_", "MLFLOW_")
# Ours though load_settings does not read them: the OAuth
# variables that bot/__main__.py removes with its own warning, and the test suite's own
# (scripts/test, tests/conftest.py), which a developer's shell keeps set while serving.
ALSO_KNOWN = frozenset(
    {
        "SLACK_CLIENT_ID",
        "SLACK_CLIENT_SECRET",
        "CHATOPS_TEST_DB",
        "CHATOPS_TEST_PG",
    }
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Reading(Mapping[str, str]):
    """The environment, noting every name looked up: the known names are exactly those that
    load_settings reads, so a setting added there can never be reported as a typo."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)  # Mapping.get comes here too
        return self.env[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


def is_placeholder(value: str) -> bool:
    """A value copied unchanged from .env.example (`xoxb-...`, `...`). Pure."""
    return "..." in value or "\u2026" in value


def _unknown_and_placeholders(
    env: Mapping[str, str], known: set[str], problems: list[str]
) -> tuple[tuple[str, str], ...]:
    for name in sorted(known):
        value = env.get(name)
        # A PEM body is base64 and a path may hold "..", never "..."; no real value does.
        if value and is_placeholder(value):
            problems.append(f"{name} still holds the placeholder from .env.example: set it")
    unknown = []
    for name in sorted(env):
        if name.startswith(OUR_PREFIXES) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            unknown.append((name, close[0] if close else ""))
    return tuple(unknown)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming all problems at once."""
    reading = _Reading(os.environ if env is None else env)
    env = reading
    problems: list[str] = []

    bot_token = env.get("SLACK_BOT_TOKEN", "").strip()
    if not bot_token:
        problems.append("SLACK_BOT_TOKEN is required (the xoxb- bot token)")
    elif not bot_token.startswith("xoxb-"):
        problems.append("SLACK_BOT_TOKEN must start with xoxb-")

    app_token = env.get("SLACK_APP_TOKEN", "").strip() or None
    if app_token and not app_token.startswith("xapp-"):
        problems.append("SLACK_APP_TOKEN must start with xapp- (an app-level token)")
    signing = env.get("SLACK_SIGNING_SECRET", "").strip() or None
    if not signing and not app_token:
        problems.append("SLACK_SIGNING_SECRET is required in HTTP mode (or set SLACK_APP_TOKEN)")

    slack_api_url = _url(env, "SLACK_API_URL", "https://slack.com/api/", problems)
    if not slack_api_url.endswith("/"):
        slack_api_url += "/"

    app_id_raw = env.get("GITHUB_APP_ID", "").strip()
    app_id = 0
    if not app_id_raw:
        problems.append("GITHUB_APP_ID is required")
    elif not app_id_raw.isdigit():
        problems.append(f"GITHUB_APP_ID must be a number, got {app_id_raw!r}")
    else:
        app_id = int(app_id_raw)

    pem = _read_private_key(env, problems)
    webhook_secret = env.get("GITHUB_WEBHOOK_SECRET", "").strip() or None
    github_api_url = _url(env, "GITHUB_API_URL", "https://api.github.com", problems).rstrip("/")

    database_url = database_url_from(env)
    if not database_url.startswith(("sqlite:", "postgresql+")):
        problems.append("DATABASE_URL must be a sqlite:/// or postgresql:// URL")

    port_raw = env.get("PORT", "").strip() or "3000"
    port = 0
    if not port_raw.isdigit() or not 0 < int(port_raw) < 65536:
        problems.append(f"PORT must be a TCP port number, got {port_raw!r}")
    else:
        port = int(port_raw)

    log_format = env.get("CHATOPS_LOG_FORMAT", "json").strip() or "json"
    if log_format not in ("json", "text"):
        problems.append("CHATOPS_LOG_FORMAT must be json or text")

    # Recovery and leadership timing: defaults for production; tests make them short.
    sweep_seconds = _seconds(env, "CHATOPS_SWEEP_SECONDS", 15.0, 0.1, problems)
    stale_after = _seconds(env, "CHATOPS_STALE_AFTER_SECONDS", 30.0, 0.0, problems)
    lease_seconds = _seconds(env, "CHATOPS_LEASE_SECONDS", 120.0, 1.0, problems)
    leader_check = _seconds(env, "CHATOPS_LEADER_CHECK_SECONDS", 5.0, 0.1, problems)
    job_workers = _whole(env, "CHATOPS_JOB_WORKERS", 16, 1, 256, problems)

    max_headers = _whole(env, "CHATOPS_MAX_HEADERS", 100, 16, 10000, problems)
    max_header_bytes = _whole(env, "CHATOPS_MAX_HEADER_BYTES", 32768, 4096, 1048576, problems)
    header_timeout = _seconds(env, "CHATOPS_HEADER_TIMEOUT_SECONDS", 10.0, 1.0, problems)
    keepalive = _seconds(env, "CHATOPS_KEEPALIVE_SECONDS", 30.0, 1.0, problems)
    max_connections = _whole(env, "CHATOPS_MAX_CONNECTIONS", 0, 0, 1000000, problems)

    log_level = (env.get("LOG_LEVEL", "").strip() or "INFO").upper()
    if log_level not in LOG_LEVELS:
        problems.append(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    host = env.get("HOST", "").strip() or "0.0.0.0"  # noqa: S104
    config_path = Path(env.get("CHATOPS_CONFIG", "").strip() or "chatops.yml")
    heartbeat = _seconds(env, "CHATOPS_HEARTBEAT_SECONDS", 2.0, 0.1, problems)
    holder_dead = _seconds(env, "CHATOPS_HOLDER_DEAD_SECONDS", 10.0, 0.5, problems)
    if holder_dead <= heartbeat:
        problems.append(
            "CHATOPS_HOLDER_DEAD_SECONDS must be longer than CHATOPS_HEARTBEAT_SECONDS "
            f"({holder_dead:g} <= {heartbeat:g}): live processes would look dead"
        )
    horizon_raw = env.get("CHATOPS_OUTAGE_HORIZON_HOURS", "").strip() or "24"
    try:
        horizon = float(horizon_raw)
    except ValueError:
        horizon = -1.0
    if not 0 < horizon <= 24 * 30:
        problems.append(
            f"CHATOPS_OUTAGE_HORIZON_HOURS must be hours (above 0, up to 720), got {horizon_raw!r}"
        )
        horizon = 24.0
    max_attempts = _whole(env, "CHATOPS_MAX_ATTEMPTS", 5, 1, 100, problems)
    mlflow_secret = env.get("MLFLOW_WEBHOOK_SECRET", "").strip() or None
    mlflow_uri = env.get("MLFLOW_TRACKING_URI", "").strip().rstrip("/") or None
    if mlflow_uri and not mlflow_uri.startswith(("http://", "https://")):
        # mlflow's own clients also take file paths and `databricks`: the bridge needs the
        # tracking server's REST API.
        problems.append("MLFLOW_TRACKING_URI must be the http(s) URL of an MLflow server")
    mlflow_token = env.get("MLFLOW_TRACKING_TOKEN", "").strip() or None
    keep_requests = _whole(env, "CHATOPS_KEEP_REQUESTS_DAYS", 90, 0, 36500, problems)
    keep_deliveries = _whole(env, "CHATOPS_KEEP_DELIVERIES_DAYS", 7, 1, 36500, problems)
    keep_sent = _whole(env, "CHATOPS_KEEP_SENT_DAYS", 30, 1, 36500, problems)
    if keep_sent < keep_deliveries:
        problems.append(
            "CHATOPS_KEEP_SENT_DAYS must be at least CHATOPS_KEEP_DELIVERIES_DAYS "
            f"({keep_sent} < {keep_deliveries}): a redelivery would repeat its replies"
        )
    keep_audit = _whole(env, "CHATOPS_KEEP_AUDIT_DAYS", 0, 0, 36500, problems)
    workers = _whole(env, "CHATOPS_WORKERS", 1, 1, 64, problems)

    # Last: every name read above is known, so none of ours is taken for a typo.
    unknown = _unknown_and_placeholders(reading.env, reading.read | ALSO_KNOWN, problems)
    if problems:
        raise SettingsError(problems)
    return Settings(
        slack_bot_token=Secret(bot_token),
        slack_signing_secret=Secret(signing) if signing else None,
        slack_app_token=Secret(app_token) if app_token else None,
        slack_api_url=slack_api_url,
        github_app_id=app_id,
        github_private_key=Secret(pem),
        github_webhook_secret=Secret(webhook_secret) if webhook_secret else None,
        github_api_url=github_api_url,
        database_url=database_url,
        config_path=config_path,
        port=port,
        host=host,
        log_format=log_format,
        log_level=log_level,
        unknown_variables=unknown,
        sweep_seconds=sweep_seconds,
        stale_after_seconds=stale_after,
        lease_seconds=lease_seconds,
        leader_check_seconds=leader_check,
        job_workers=job_workers,
        max_headers=max_headers,
        max_header_bytes=max_header_bytes,
        header_timeout_seconds=header_timeout,
        keepalive_seconds=keepalive,
        max_connections=max_connections,
        heartbeat_seconds=heartbeat,
        holder_dead_seconds=holder_dead,
        outage_horizon_hours=horizon,
        max_attempts=max_attempts,
        mlflow_webhook_secret=Secret(mlflow_secret) if mlflow_secret else None,
        mlflow_tracking_uri=mlflow_uri,
        mlflow_tracking_token=Secret(mlflow_token) if mlflow_token else None,
        keep_requests_days=keep_requests,
        keep_deliveries_days=keep_deliveries,
        keep_sent_days=keep_sent,
        keep_audit_days=keep_audit,
        workers=workers,
    )
