"""The bridge built in the benchmark's own process, as `serve` builds it: what bench/relay.py
and bench/ack_path.py share. Its log lines are written as `serve` writes them (JSON at INFO,
the redactor with every secret), to /dev/null or `log_path`; they are part of the cost."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def bridge(
    run: Any,
    doubles: Any,
    database_url: str,
    tmp: Path,
    *,
    config: dict[str, Any] | None = None,
    signing_secret: str | None = None,
    webhook_secret: str | None = None,
    log_path: str = os.devnull,
) -> Iterator[Any]:
    """A `bot.wiring.Bridge` against the doubles (no scheduler), stopped after the block.
    `run` is bench/run.py (its config and bot token); `config` a parsed chatops.yml to use
    instead of run.CONFIG."""
    import yaml

    from bot import logs
    from bot.config import parse_config
    from bot.settings import load_settings
    from bot.wiring import Bridge

    info = doubles.info
    settings = load_settings(
        {
            "SLACK_BOT_TOKEN": run.BOT_TOKEN,
            "SLACK_SIGNING_SECRET": signing_secret or "bench-" + secrets.token_hex(8),
            "SLACK_API_URL": str(info["slack_url"]),
            "GITHUB_APP_ID": str(info["app_id"]),
            "GITHUB_APP_PRIVATE_KEY": str(info["private_key_pem"]),
            "GITHUB_WEBHOOK_SECRET": webhook_secret or "bench-" + secrets.token_hex(8),
            "GITHUB_API_URL": str(info["github_url"]),
            "DATABASE_URL": database_url,
            "CHATOPS_CONFIG": str(tmp / "unused.yml"),
            "PORT": "3000",
        }
    )
    stderr, sys.stderr = sys.stderr, open(log_path, "w")  # noqa: SIM115
    logs.setup(fmt=settings.log_format, secrets=settings.secret_values(), level=settings.log_level)
    built = Bridge(
        settings, parse_config(config or yaml.safe_load(run.CONFIG)), start_scheduler=False
    )
    try:
        yield built
    finally:
        built.jobs.shutdown(wait=True)
        built.engine.dispose()
        sys.stderr.close()
        sys.stderr = stderr


def report(title: str, figures: dict[str, str], width: int = 34) -> None:
    """Print a title naming the measured tree, then one figure a line."""
    import bot

    print(f"{title} · bot from {Path(bot.__file__).parent.parent}")
    for key, value in figures.items():
        print(f"  {key:<{width}} {value}")
