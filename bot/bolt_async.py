"""Bolt's AsyncApp for the HTTP endpoint, with the handlers' listeners kept synchronous.

The Slack endpoint runs on the event loop: Bolt's signature check, parsing and middleware are
coroutines, with no thread hop per request. The listeners (handlers/) stay plain functions: the
registration point (`SyncListeners`, passed to `handlers.register_slack` in place of a sync
`App`) wraps every listener registered through it, whatever its kind, so that it runs on the
thread pool with the arguments it asks for in their synchronous form:

- `ack`, `say`, `respond` and Bolt's other async utilities become plain callables that run the
  async one on the event loop and wait for it (`anyio.from_thread.run`), so `ack()` inside a
  listener sets Bolt's response exactly as the sync App's does;
- `client` is the bridge's sync `WebClient`;
- everything else (body, command, event, view, action, context, logger, …) is passed as is.

Bolt runs with `process_before_response=True`: the answer goes to Slack when the listener has
returned; a listener stores, acks and hands slow work to the job pool, as before.
Socket Mode keeps the sync `App` (bot/wiring.py): its client runs listeners on threads anyway.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import anyio.from_thread
import anyio.to_thread
from slack_bolt.async_app import AsyncApp
from slack_bolt.util.utils import is_callable_coroutine
from slack_sdk import WebClient

# AsyncApp's decorators that register a listener: `app.<name>(matcher, ...)(function)`.
LISTENER_DECORATORS = frozenset(
    {
        "action",
        "attachment_action",
        "block_action",
        "block_suggestion",
        "command",
        "dialog_cancellation",
        "dialog_submission",
        "dialog_suggestion",
        "event",
        "function",
        "global_shortcut",
        "message",
        "message_shortcut",
        "options",
        "shortcut",
        "view",
        "view_closed",
        "view_submission",
    }
)


def run_on_threads(func: Callable[..., Any], client: WebClient) -> Callable[..., Any]:
    """An async listener that runs the sync `func` on the thread pool (async ones unchanged)."""
    if is_callable_coroutine(func):
        return func

    # functools.wraps sets __wrapped__: Bolt reads the argument names to pass through it
    # (slack_bolt.util.utils.get_arg_names_of_callable unwraps), so `func`'s names are asked for.
    @functools.wraps(func)
    async def listener(**kwargs: Any) -> Any:
        for name, value in kwargs.items():
            if name == "client":
                kwargs[name] = client
            elif is_callable_coroutine(value):
                kwargs[name] = _blocking(value)
        return await anyio.to_thread.run_sync(functools.partial(func, **kwargs))

    return listener


def _blocking(async_callable: Callable[..., Any]) -> Callable[..., Any]:
    """Call an async Bolt utility (ack, say, respond) from a worker thread, waiting for it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return anyio.from_thread.run(functools.partial(async_callable, *args, **kwargs))

    return call


class SyncListeners:
    """What `handlers.register_slack` registers on: AsyncApp's listener decorators, taking
    sync functions. `app.command("/x")(f)`, `app.action(...)`, `app.event(...)`, … all work
    as on a sync `App`; other attributes are the AsyncApp's own."""

    def __init__(self, app: AsyncApp, client: WebClient) -> None:
        self.app = app
        self.client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.app, name)
        if name not in LISTENER_DECORATORS:
            return attr

        def decorator_factory(*args: Any, **kwargs: Any) -> Callable[..., Any]:
            register = attr(*args, **kwargs)

            def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
                register(run_on_threads(func, self.client))
                return func

            return decorate

        return decorator_factory
