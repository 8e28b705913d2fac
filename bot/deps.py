"""The collaborators handlers receive: passed in, never imported from globals."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.config import Config
from bot.github import GitHubApp
from bot.jobs import Jobs
from bot.slack import SlackOut
from bot.store import Store


@dataclass
class Deps:
    config: Config
    store: Store
    github: GitHubApp
    slack: SlackOut
    jobs: Jobs
    clock: Callable[[], float] = time.time
    web_base: str = "https://github.com"  # where PR and run links point (GHES: its host)
    web_hosts: tuple[str, ...] = ("github.com", "www.github.com")  # hosts of accepted PR URLs
    bot_user_id: str | None = None
    extras: dict[str, object] = field(default_factory=dict)
