"""`chatops-bridge` command line: serve (default) and operator tools."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.config import Config
    from bot.settings import Settings

log = logging.getLogger("bot")


def serve(args: argparse.Namespace) -> int:
    from bot import logs, startup
    from bot.config import ConfigError, load_config
    from bot.serving import run_workers
    from bot.settings import SettingsError, load_settings

    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(exc.render(), file=sys.stderr)
        return startup.EXIT_CONFIG
    logs.setup(fmt=settings.log_format, secrets=settings.secret_values(), level=settings.log_level)
    for name, close in settings.unknown_variables:
        # A typo such as GITHUB_WEBHOOK_SECRETS would otherwise silently change behaviour.
        log.warning(
            "%s is not a chatops-bridge setting and is ignored%s",
            name,
            f"; did you mean {close}?" if close else "",
            extra={"variable": name, "closest": close or None},
        )
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        print("chatops-bridge cannot start: the config file has problems:", file=sys.stderr)
        for p in exc.problems:
            print(f"  - {p}", file=sys.stderr)
        return startup.EXIT_CONFIG
    if not settings.config_path.exists():
        log.warning("no config file; using defaults", extra={"path": str(settings.config_path)})
    for var in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        # Bolt would switch itself to multi-workspace OAuth when these are set; the bridge is a
        # single-workspace app, so they are removed before Bolt reads the environment.
        if os.environ.pop(var, None) is not None:
            log.warning("ignoring OAuth variable; single-workspace app", extra={"variable": var})
    # Bolt's App() reads SLACK_BOT_TOKEN by itself and, given the bridge's own client too,
    # warns that the token is unused at every start; the settings hold it already.
    os.environ.pop("SLACK_BOT_TOKEN", None)
    host, port = args.host or settings.host, args.port or settings.port
    workers = args.workers or settings.workers
    if workers > 1 and not settings.database_url.startswith("postgresql"):
        print(startup.workers_problem(workers), file=sys.stderr)
        return startup.EXIT_CONFIG
    try:
        # Before the database: a port in use is found at once and named as such.
        sock = startup.bind(host, port)
    except OSError as exc:
        print(startup.port_problem(host, port, exc), file=sys.stderr)
        return startup.EXIT_PORT
    if workers == 1:
        return serve_one(settings, config, sock, port)
    # Worker processes share the listening socket; each builds its own bridge (database pool,
    # process heartbeat, scheduler standing for leadership) after the fork.
    fatal = {startup.EXIT_CONFIG, startup.EXIT_DATABASE, startup.EXIT_PORT}
    gc.enable()  # the supervisor lives as long as its workers; each worker turns it off to start
    return run_workers(workers, lambda: serve_one(settings, config, sock, port), fatal=fatal)


def serve_one(settings: Settings, config: Config, sock: socket.socket, port: int) -> int:
    """One serving process on an already bound socket: the bridge and its uvicorn server."""
    gc.disable()  # until everything built is frozen, below (a forked worker starts with it on)
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from bot import startup
    from bot.serving import uvicorn_options
    from bot.wiring import Bridge

    host = sock.getsockname()[0]
    try:
        bridge = Bridge(settings, config)
    except SQLAlchemyError as exc:
        sock.close()
        problem = startup.database_problem(settings.database_url, exc)
        for secret in settings.secret_values():
            problem = problem.replace(secret, "[redacted]")
        print(problem, file=sys.stderr)
        return startup.EXIT_DATABASE
    server = uvicorn.Server(
        uvicorn.Config(
            bridge.asgi(),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=20,
            backlog=2048,
            # Header limits and timeout, idle timeout, connection cap (CHATOPS_* settings).
            **uvicorn_options(settings),
        )
    )
    log.info(
        startup_summary(settings, bridge.config, bridge.housekeeping.github_mode),
        extra={
            "port": port,
            "slack_mode": "socket" if settings.socket_mode else "http",
            "github_mode": bridge.housekeeping.github_mode,
        },
    )
    gate_problem = startup.gate_mode_problem(bridge.config, bridge.housekeeping.github_mode)
    if gate_problem:
        log.warning(gate_problem)  # also a failure in `chatops-bridge check`
    # Everything built so far (modules, the app, the engine, the config) lives as long as the
    # process: moved out of the cyclic collector's sight, so its full collections under load
    # walk only what requests allocate. No collection first: with the collector off since
    # main() began, it would walk every object made at start (70-90 ms on a 2-core host) to
    # free the imports' garbage, about 1,800 objects and 0.4 MB, which stay instead.
    gc.freeze()
    gc.enable()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal: the stop was
        # asked for, so no traceback (128 + SIGINT, as a shell reports it).
        return 130
    return 0


def startup_summary(settings: Settings, config: Config, github_mode: str) -> str:
    """One line saying how this process runs, and why (no secrets: the database's password is
    not shown). Pure."""
    from bot import startup

    slack = (
        "Socket Mode (SLACK_APP_TOKEN is set)"
        if settings.socket_mode
        else "HTTP at POST /slack/events (SLACK_APP_TOKEN is not set)"
    )
    why = startup.github_mode(settings, config)[1]
    cfg = str(settings.config_path) + ("" if settings.config_path.exists() else " (absent)")
    return (
        f"chatops-bridge serving: Slack {slack}; "
        f"GitHub {github_mode} ({why}) at {settings.github_api_url}; "
        f"database {startup.database_target(settings.database_url)}; config {cfg}; "
        f"log level {settings.log_level}"
    )


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The entry point; `env` (default os.environ) lets tests run operator commands in-process."""
    # Start-up makes some 140,000 tracked objects that live as long as the process (modules,
    # the Bolt app, the engine, the config); the cyclic collector would walk them again and
    # again while they are made, about a tenth of the imports' time. It stays off until they are
    # built and frozen (serve_one), or until an operator command is about to run.
    gc.disable()
    try:
        return _main(argv, env)
    finally:
        gc.enable()


def _main(argv: Sequence[str] | None, env: Mapping[str, str] | None) -> int:
    parser = argparse.ArgumentParser(prog="chatops-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    p_serve = sub.add_parser("serve", help="serve Slack and GitHub traffic (default)")
    p_serve.add_argument("--host", default=None)
    p_serve.add_argument("--port", type=int, default=None)
    p_serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="serving processes sharing the port (PostgreSQL only; default CHATOPS_WORKERS or 1)",
    )
    from bot import cli

    cli.add_commands(sub)
    args = parser.parse_args(argv)
    if args.cmd in (None, "serve"):
        if args.cmd is None:
            args.host, args.port, args.workers = None, None, None
        return serve(args)
    args.env = os.environ if env is None else env  # the one place operator commands read it
    gc.enable()
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
