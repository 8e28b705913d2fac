"""Start-up problems described by their cause: database, port, network. Pure helpers, except
`bind` (which opens the listening socket)."""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

if TYPE_CHECKING:
    from bot.config import Config
    from bot.settings import Settings

# Exit codes of `chatops-bridge serve` (documented in docs/operations.md and the README): a
# supervisor or an operator can tell "fix the settings" from "the database is down" from
# "another process has the port" without reading the log.
EXIT_CONFIG = 2  # settings (environment) or chatops.yml invalid
EXIT_DATABASE = 3  # the database cannot be reached or opened
EXIT_PORT = 4  # the HTTP port cannot be bound (in use, or not allowed)


def github_mode(settings: Settings, config: Config) -> tuple[str, str]:
    """(webhook | poll, why), by the rule bot/scheduler.py applies. Pure."""
    mode = config.github.mode
    if mode != "auto":
        return mode, f"github.mode is {mode} in {settings.config_path}"
    if settings.github_webhook_secret is None:
        return "poll", "GITHUB_WEBHOOK_SECRET is not set"
    return "webhook", "GITHUB_WEBHOOK_SECRET is set"


def gate_mode_problem(config: Config, mode: str) -> str | None:
    """`gate: github` in poll mode: GitHub sends deployment_protection_rule only by webhook,
    so the protected deploy jobs would wait unanswered. Pure."""
    gated = [e for e in config.commands.deploy.environments if config.commands.deploy.gated(e)]
    if mode != "poll" or not gated:
        return None
    return (
        f"`gate: github` on {', '.join(gated)}, but GitHub is polled: the "
        "deployment_protection_rule event only arrives by webhook, so those deploy jobs would "
        "wait unanswered. Set GITHUB_WEBHOOK_SECRET and the App's webhook URL (github.mode: "
        "webhook), or remove `gate: github`"
    )


def database_target(url: str) -> str:
    """Driver, host:port and database of a URL, never its password. Pure."""
    try:
        u = make_url(url)
    except ArgumentError:
        return "an unreadable DATABASE_URL"
    if u.get_backend_name() == "sqlite":
        return f"sqlite file {u.database or ':memory:'}"
    port = u.port or (5432 if u.get_backend_name() == "postgresql" else None)
    where = f"{u.host or 'localhost'}:{port}" if port else (u.host or "localhost")
    return f"{u.drivername} at {where}, database {u.database!r}"


def database_reason(exc: BaseException) -> str:
    """The driver's own reason, one line, from an SQLAlchemy error (e.g. "Connection refused",
    'database "x" does not exist'). Pure."""
    orig: Any = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split()) or type(orig).__name__
    # psycopg: 'connection failed: connection to server at "h" (h), port 1 failed: <reason>'
    # (the host and port are already in the message around it).
    if " failed: " in text:
        text = text.rsplit(" failed: ", 1)[1]
    text = text.removeprefix("FATAL: ").split(" Is the server running", 1)[0]
    return text[:300]


def database_problem(url: str, exc: BaseException) -> str:
    return (
        f"chatops-bridge cannot start: the database is unavailable ({database_target(url)}): "
        f"{database_reason(exc)}. Check DATABASE_URL and that the server is running "
        "and the database exists."
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened before anything slow, so a port in use is reported as such
    (uvicorn would log a bare bind error and exit 1). Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def workers_problem(workers: int) -> str:
    """Why more than one serving process is refused on SQLite (one line, says what to do)."""
    return (
        f"chatops-bridge cannot start: --workers {workers} (CHATOPS_WORKERS) needs PostgreSQL; "
        "DATABASE_URL is SQLite, which has one writer and no scheduler lock shared between "
        "processes. Serve with one worker, or set DATABASE_URL to a postgresql:// database."
    )


def port_problem(host: str, port: int, exc: OSError) -> str:
    why = exc.strerror or str(exc)
    return (
        f"chatops-bridge cannot start: cannot listen on {host}:{port} ({why}). Another process "
        "may be using the port: stop it, or set PORT to a free port."
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and everything it wraps (causes, contexts, urllib's .reason, urllib3's args)."""
    seen: list[BaseException] = []
    todo: list[Any] = [exc]
    while todo and len(seen) < 20:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return seen


def network_reason(exc: BaseException) -> str | None:
    """What went wrong on the network (DNS, refused, timeout, TLS, proxy), or None when exc
    is not a network failure. Pure."""
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    if "ProxyError" in names or "tunnel connection failed" in text:
        return "the proxy refused or failed the connection (check HTTPS_PROXY / NO_PROXY)"
    if any(isinstance(e, socket.gaierror) for e in chain) or "NameResolutionError" in names:
        return "DNS lookup failed (the host name does not resolve)"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in text:
        return "connection refused (nothing listens at that address)"
    if any(isinstance(e, ssl.SSLError) for e in chain) or "SSLError" in names:
        return "TLS failed (certificate or protocol; check the URL and any TLS-intercepting proxy)"
    if any(isinstance(e, TimeoutError) for e in chain) or names & {
        "ConnectTimeout",
        "ReadTimeout",
        "Timeout",
        "ConnectTimeoutError",
        "ReadTimeoutError",
    }:
        return "timed out"
    if any(isinstance(e, OSError) for e in chain) or names & {
        "ConnectionError",
        "NewConnectionError",
        "URLError",
        "SlackRequestError",
    }:
        return f"network error ({type(chain[-1]).__name__})"
    return None
