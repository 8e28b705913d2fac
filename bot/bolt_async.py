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
import logging
from collections.abc import Callable
from typing import Any

import anyio.from_thread
import anyio.to_thread
from slack_bolt.async_app import AsyncApp
from slack_bolt.util.utils import is_callable_coroutine
from slack_sdk import WebClient

from bot.inline import NeedsThread, Writer, finish, running_inline

log = logging.getLogger(__name__)

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


def run_on_threads(
    func: Callable[..., Any], client: WebClient, *, inline: Writer | None = None
) -> Callable[..., Any]:
    """An async listener that runs the sync `func` on the thread pool (async ones unchanged).

    With `inline` (slash commands: the process's writer thread), `func` is first run on the
    event loop (bot/inline.py): if it gets through without a blocking step, its deferred write
    runs on that writer thread and no thread of the pool is involved; if it reaches one
    (`NeedsThread`), it runs again on the thread pool as any other listener.
    """
    if is_callable_coroutine(func):
        return func

    # functools.wraps sets __wrapped__: Bolt reads the argument names to pass through it
    # (slack_bolt.util.utils.get_arg_names_of_callable unwraps), so `func`'s names are asked for.
    @functools.wraps(func)
    async def listener(**kwargs: Any) -> Any:
        if inline is not None and not any(
            name == "client" or (name != "ack" and is_callable_coroutine(value))
            for name, value in kwargs.items()
        ):  # only `ack` among Bolt's utilities (no say, respond or client): it may run inline
            attempt = dict(kwargs)
            if "ack" in attempt:
                attempt["ack"] = _on_loop(attempt["ack"])
            try:
                with running_inline() as deferred:
                    result = func(**attempt)
            except NeedsThread as needs:
                log.debug("listener moved to a thread", extra={"needs": needs.what})
            else:
                await finish(deferred, inline)
                return result
        for name, value in kwargs.items():
            if name == "client":
                kwargs[name] = client
            elif is_callable_coroutine(value):
                kwargs[name] = _blocking(value)
        return await anyio.to_thread.run_sync(functools.partial(func, **kwargs))

    return listener


def _on_loop(async_ack: Callable[..., Any]) -> Callable[..., Any]:
    """Bolt's `ack` as a plain callable on the event loop. AsyncAck only records the response
    (it awaits nothing), so its coroutine completes in one step; anything else is a bug."""

    def call(*args: Any, **kwargs: Any) -> Any:
        coro = async_ack(*args, **kwargs)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        coro.close()
        raise RuntimeError("ack() suspended; it cannot be answered inline")

    return call


def _blocking(async_callable: Callable[..., Any]) -> Callable[..., Any]:
    """Call an async Bolt utility (ack, say, respond) from a worker thread, waiting for it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return anyio.from_thread.run(functools.partial(async_callable, *args, **kwargs))

    return call


class SyncListeners:
    """What `handlers.register_slack` registers on: AsyncApp's listener decorators, taking
    sync functions. `app.command("/x")(f)`, `app.action(...)`, `app.event(...)`, … all work
    as on a sync `App`; other attributes are the AsyncApp's own."""

    def __init__(self, app: AsyncApp, client: WebClient, writer: Writer | None = None) -> None:
        self.app = app
        self.client = client
        self.writer = writer  # given: slash commands are tried inline first (bot/inline.py)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.app, name)
        if name not in LISTENER_DECORATORS:
            return attr

        def decorator_factory(*args: Any, **kwargs: Any) -> Callable[..., Any]:
            register = attr(*args, **kwargs)

            def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
                writer = self.writer if name == "command" else None
                register(run_on_threads(func, self.client, inline=writer))
                return func

            return decorate

        return decorator_factory
