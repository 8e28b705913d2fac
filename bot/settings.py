"""Process settings read once from an environment mapping (never from os.environ directly)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

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
    # Issue 15: leases that know their holder, outages waited out, failures given up loudly.
    heartbeat_seconds: float = 2.0  # CHATOPS_HEARTBEAT_SECONDS: how often a process says alive
    holder_dead_seconds: float = 10.0  # CHATOPS_HOLDER_DEAD_SECONDS: silent this long = dead
    outage_horizon_hours: float = 24.0  # CHATOPS_OUTAGE_HORIZON_HOURS: wait out a peer this long
    max_attempts: int = 5  # CHATOPS_MAX_ATTEMPTS: tries of a unit failing other than by outage

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None

    def secret_values(self) -> list[str]:
        """Every secret's plain value: used by the log redaction filter."""
        out = [self.slack_bot_token.get(), self.github_private_key.get()]
        for s in (self.slack_signing_secret, self.slack_app_token, self.github_webhook_secret):
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
    if "PRIVATE KEY-----" not in pem:
        problems.append("GITHUB_APP_PRIVATE_KEY is not a PEM private key (BEGIN ... PRIVATE KEY)")
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


def database_url_from(env: Mapping[str, str]) -> str:
    """DATABASE_URL as SQLAlchemy wants it (operator commands that need only the database)."""
    database_url = env.get("DATABASE_URL", "").strip() or "sqlite:///chatops.db"
    if database_url.startswith("postgres://"):
        # Heroku-style URLs; SQLAlchemy wants the dialect (and psycopg 3 as driver).
        database_url = "postgresql+psycopg://" + database_url[len("postgres://") :]
    elif database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    return database_url


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming all problems at once."""
    env = os.environ if env is None else env
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
    workers_raw = env.get("CHATOPS_JOB_WORKERS", "").strip() or "16"
    job_workers = 16
    if not workers_raw.isdigit() or not 1 <= int(workers_raw) <= 256:
        problems.append(
            f"CHATOPS_JOB_WORKERS must be a whole number from 1 to 256, got {workers_raw!r}"
        )
    else:
        job_workers = int(workers_raw)

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
    attempts_raw = env.get("CHATOPS_MAX_ATTEMPTS", "").strip() or "5"
    max_attempts = 5
    if not attempts_raw.isdigit() or not 1 <= int(attempts_raw) <= 100:
        problems.append(
            f"CHATOPS_MAX_ATTEMPTS must be a whole number from 1 to 100, got {attempts_raw!r}"
        )
    else:
        max_attempts = int(attempts_raw)

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
        config_path=Path(env.get("CHATOPS_CONFIG", "").strip() or "chatops.yml"),
        port=port,
        host=env.get("HOST", "").strip() or "0.0.0.0",  # noqa: S104
        log_format=log_format,
        sweep_seconds=sweep_seconds,
        stale_after_seconds=stale_after,
        lease_seconds=lease_seconds,
        leader_check_seconds=leader_check,
        job_workers=job_workers,
        heartbeat_seconds=heartbeat,
        holder_dead_seconds=holder_dead,
        outage_horizon_hours=horizon,
        max_attempts=max_attempts,
    )
