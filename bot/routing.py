"""Webhook routing by event and action, in the manner of gidgethub's Router."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

Handler = Callable[[dict[str, Any]], None]


class Router:
    def __init__(self) -> None:
        self._routes: dict[tuple[str, str | None], list[Handler]] = defaultdict(list)

    def add(self, event: str, fn: Handler, action: str | None = None) -> None:
        self._routes[(event, action)].append(fn)

    def handlers_for(self, event: str, payload: dict[str, Any]) -> list[Handler]:
        action = payload.get("action") if isinstance(payload, dict) else None
        found = list(self._routes.get((event, None), ()))
        if isinstance(action, str):
            found += self._routes.get((event, action), ())
        return found

    def dispatch(self, event: str, payload: dict[str, Any]) -> int:
        """Run every matching handler; returns how many ran (0: ignored)."""
        handlers = self.handlers_for(event, payload)
        for fn in handlers:
            fn(payload)
        return len(handlers)
