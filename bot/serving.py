"""Serving limits: one client must not stall the event loop or use up the process's sockets.

Two layers, because either alone leaves a gap:
- `HeaderGuard` (ASGI): refuses a request with too many or too large headers (431) before
  routing, signature checks or any other work. It holds under any ASGI server and in tests.
- `guarded_httptools_protocol` (uvicorn's httptools protocol with limits): counts headers while
  they are parsed (uvicorn and httptools have no header count or size limit of their own, so
  100,000 headers were all parsed and handed to the app), gives a connection
  `header_timeout` seconds from connect to its last header (uvicorn has no such timeout: a
  client that connects and sends nothing kept its socket forever), and keeps the number of
  open connections under a cap by closing the oldest connection that has no request in
  progress, so idle or half-open clients cannot lock out /healthz or Slack.

`run_workers` runs `serve --workers N`: N forked processes accept on one listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOO_LARGE = b"request header fields too large"
REFUSED_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(TOO_LARGE), TOO_LARGE)
)
# Descriptors kept for what is not an inbound connection: the database pool (up to 64 on
# PostgreSQL), Slack and GitHub connections of 16+ job threads, log files, the listening socket.
RESERVED_FDS = 256


def header_problem(
    headers: list[tuple[bytes, bytes]], max_count: int, max_bytes: int
) -> str | None:
    """Why these headers are refused, or None (pure; linear and stops at the first excess)."""
    if len(headers) > max_count:
        return f"too many header fields (at most {max_count})"
    size = 0
    for name, value in headers:
        size += len(name) + len(value)
        if size > max_bytes:
            return f"header fields too large (at most {max_bytes} bytes)"
    return None


class HeaderGuard:
    """ASGI middleware: 431 for requests past the header limits, before anything else runs."""

    def __init__(self, app: ASGIApp, *, max_count: int, max_bytes: int) -> None:
        self.app = app
        self.max_count = max_count
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = header_problem(scope.get("headers") or [], self.max_count, self.max_bytes)
            if problem is not None:
                log.warning("request refused: %s", problem, extra={"path": scope.get("path")})
                body = problem.encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 431,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def connection_cap(configured: int) -> int:
    """Open connections allowed: the setting, or what the file limit leaves (at least 64)."""
    if configured > 0:
        return configured
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(64, min(4096, soft - RESERVED_FDS))


def guarded_httptools_protocol(
    *, max_count: int, max_bytes: int, header_timeout: float, max_connections: int
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with header limits, a header timeout and a connection cap."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    # Connections with no request in progress, oldest first, per server (one per process).
    waiting: OrderedDict[Any, None] = OrderedDict()

    class GuardedHttpTools(HttpToolsProtocol):
        _refused = False
        _header_count = 0
        _header_bytes = 0
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._wait()
            if len(self.connections) > max_connections:
                # The oldest connection with nothing in progress gives way (usually an idle or
                # half-open one); if every connection is busy, this new one is turned away.
                victim = next((p for p in waiting if p is not self), self)
                victim._close_quietly()

        def connection_lost(self, exc: Exception | None) -> None:
            waiting.pop(self, None)
            self._stop_timer()
            super().connection_lost(exc)

        def _wait(self) -> None:
            waiting[self] = None
            waiting.move_to_end(self)
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._close_quietly)

        def _stop_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _close_quietly(self) -> None:
            waiting.pop(self, None)
            # Counted out at once (connection_lost comes a loop turn later), so that uvicorn's
            # limit_concurrency does not refuse the connection this one made room for.
            self.connections.discard(self)
            self._stop_timer()
            if not self.transport.is_closing():
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_count = 0
            self._header_bytes = 0
            if self._header_timer is None:  # the next request on a kept-alive connection
                self._header_timer = self.loop.call_later(header_timeout, self._close_quietly)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            self._header_bytes += len(name) + len(value)
            if self._header_count > max_count or self._header_bytes > max_bytes:
                self._refused = True
                raise httptools.HttpParserError("header limits")  # stops the parser at once
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._stop_timer()
            waiting.pop(self, None)
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                # Between requests uvicorn's keep-alive timeout closes it; it may give way.
                waiting[self] = None
                waiting.move_to_end(self)

        def send_400_response(self, msg: str) -> None:
            if not self._refused:
                super().send_400_response(msg)
                return
            with contextlib.suppress(Exception):
                self.transport.write(REFUSED_431)
            self._close_quietly()

    return GuardedHttpTools


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """The uvicorn.Config keywords that bound what one client can hold (besides app/host/port)."""
    cap = connection_cap(settings.max_connections)
    options: dict[str, Any] = {
        "timeout_keep_alive": settings.keepalive_seconds,
        # Requests in progress beyond this get 503 from uvicorn instead of queueing without end.
        # One above the connection cap: uvicorn counts the connection asking, which the
        # protocol below has already made room for.
        "limit_concurrency": cap + 1,
        # h11 (used when httptools is missing) refuses a request head larger than this.
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        # No WebSocket endpoint: an upgrade request is answered as plain HTTP, and uvicorn does
        # not import a WebSocket library at start (when one is installed, as in development).
        "ws": "none",
    }
    try:
        options["http"] = guarded_httptools_protocol(
            max_count=settings.max_headers,
            max_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout_seconds,
            max_connections=cap,
        )
    except ImportError:  # no httptools: plain h11 with its head-size limit and HeaderGuard
        log.warning("httptools is not installed: no header timeout for slow clients")
    return options


def run_workers(count: int, serve_one: Callable[[], int], *, fatal: Collection[int]) -> int:
    """Fork `count` serving processes (sharing the socket bound before) and supervise them.

    Each worker builds its own bridge after the fork: its database pool, its row and heartbeat
    in `processes`, its job pool, and a scheduler that stands for leadership (the PostgreSQL
    advisory lock in bot/scheduler.py lets exactly one of them run the periodic jobs). A worker
    that dies is started again (its units are taken over through its stopped heartbeat); one
    that exits with a start-up error code (`fatal`: settings, database, port) stops them all
    with that code, as a single process would. SIGTERM or SIGINT to the supervisor stops every
    worker gracefully (SIGTERM each, uvicorn drains its requests).
    """
    children: dict[int, int] = {}  # pid -> worker number
    state = {"stopping": False, "code": 0}

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which
                # stops each worker once (uvicorn takes a second signal as "exit at once").
                os.setpgid(0, 0)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _exit_with_parent(os.getppid())
                code = serve_one()
            except BaseException:
                log.exception("worker failed", extra={"worker": number})
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = number
        log.info("worker started", extra={"worker": number, "pid": pid})

    def stop(signum: int, _frame: object) -> None:
        state["stopping"] = True
        state["code"] = 130 if signum == signal.SIGINT else 0
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for number in range(1, count + 1):
            spawn(number)
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            number = children.pop(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if state["stopping"]:
                continue
            if code in fatal:
                log.error("worker could not start; stopping", extra={"worker": number})
                stop(signal.SIGTERM, None)
                state["code"] = code
                continue
            log.warning("worker exited; starting it again", extra={"worker": number, "code": code})
            time.sleep(1.0)  # a worker failing at once must not spin the supervisor
            if not state["stopping"]:
                spawn(number)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return int(state["code"])


def _exit_with_parent(parent: int) -> None:
    """Stop this worker (gracefully: SIGTERM) when its supervisor is gone, e.g. killed with
    SIGKILL: an orphaned worker would keep serving with nobody to restart or stop it."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="chatops-parent-watch", daemon=True).start()
