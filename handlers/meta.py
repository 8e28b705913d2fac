"""`installation*` events: keep the App's view of installations fresh."""

from __future__ import annotations

import logging
from typing import Any

from bot.deps import Deps

log = logging.getLogger(__name__)


def on_installation_change(deps: Deps, payload: dict[str, Any]) -> None:
    """Installed, removed or repositories changed: drop cached installation ids."""
    repos = [r.get("full_name") for r in payload.get("repositories_removed") or []]
    repos += [r.get("full_name") for r in payload.get("repositories") or []]
    for repo in repos:
        if repo:
            deps.github.forget(str(repo))
    log.info("installation changed", extra={"action": payload.get("action"), "repos": len(repos)})
