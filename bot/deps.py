"""The collaborators handlers receive: passed in, never imported from globals."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.config import Config
from bot.github import GitHubApp
from bot.jobs import Jobs
from bot.metrics import Metrics
from bot.mlflow import MlflowRegistry
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
    metrics: Metrics | None = None  # None: nothing is counted (tests that build Deps by hand)
    health: Callable[[], dict[str, Any]] | None = None  # the GET /healthz report (App Home)
    caches: Caches = field(default_factory=lambda: Caches())
    mlflow: MlflowRegistry | None = None  # None: MLFLOW_TRACKING_URI is not set


@dataclass
class Cached:
    """A value read at `at` (UNIX seconds), kept by whoever reads it for as long as it likes."""

    at: float = float("-inf")
    value: str | None = None


@dataclass
class Caches:
    """In-process caches of handlers (per process; nothing that must agree across replicas)."""

    installations: Cached = field(default_factory=Cached)  # App Home: "N installations"
