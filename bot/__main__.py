"""`chatops-bridge` command line: serve (default) and operator tools."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from bot.config import ConfigError, load_config
from bot.settings import SettingsError, load_settings

log = logging.getLogger("bot")


def serve(args: argparse.Namespace) -> int:
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from bot import logs
    from bot.serving import uvicorn_options
    from bot.wiring import Bridge

    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    logs.setup(fmt=settings.log_format, secrets=settings.secret_values())
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        print("chatops-bridge cannot start: the config file has problems:", file=sys.stderr)
        for p in exc.problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    if not settings.config_path.exists():
        log.warning("no config file; using defaults", extra={"path": str(settings.config_path)})
    for var in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        # Bolt would switch itself to multi-workspace OAuth when these are set; the bridge is a
        # single-workspace app, so they are removed before Bolt reads the environment.
        if os.environ.pop(var, None) is not None:
            log.warning("ignoring OAuth variable; single-workspace app", extra={"variable": var})
    try:
        bridge = Bridge(settings, config)
    except SQLAlchemyError as exc:
        print(
            f"chatops-bridge cannot start: the database is unavailable ({type(exc).__name__}). "
            "Check DATABASE_URL and that the server is running.",
            file=sys.stderr,
        )
        return 3
    server = uvicorn.Server(
        uvicorn.Config(
            bridge.asgi(),
            host=args.host or settings.host,
            port=args.port or settings.port,
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
        "chatops-bridge serving",
        extra={
            "port": args.port or settings.port,
            "slack_mode": "socket" if settings.socket_mode else "http",
        },
    )
    server.run()
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The entry point; `env` (default os.environ) lets tests run operator commands in-process."""
    parser = argparse.ArgumentParser(prog="chatops-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    p_serve = sub.add_parser("serve", help="serve Slack and GitHub traffic (default)")
    p_serve.add_argument("--host", default=None)
    p_serve.add_argument("--port", type=int, default=None)
    from bot import cli

    cli.add_commands(sub)
    args = parser.parse_args(argv)
    if args.cmd in (None, "serve"):
        if args.cmd is None:
            args.host, args.port = None, None
        return serve(args)
    args.env = os.environ if env is None else env  # the one place operator commands read it
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
