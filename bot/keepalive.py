"""slack_sdk's WebClient on reused connections.

slack_sdk's sync client sends every call through `urllib.request.urlopen`, which opens a new
connection and closes it after the answer: against slack.com each Web API call is a TCP and a
TLS handshake (and, with no SSL context given, a CA store loaded for the new connection). The
bridge makes two or three calls per relayed webhook, so that is most of a call's cost.

`KeepAliveWebClient` replaces only the last step, the one HTTP exchange
(`_perform_urllib_http_request_internal`); slack_sdk's request building, retry handlers and
response parsing are unchanged. Idle connections are kept per origin in a small LIFO pool
shared by the threads, and one is taken by one call at a time. What it keeps of urllib's
contract, so that callers and retry handlers see the same thing:

- a non-2xx answer raises `urllib.error.HTTPError` (headers and body readable);
- a failure to connect or to send raises `URLError` (retried by ConnectionErrorRetryHandler),
  a failure while waiting for the answer raises as it is (a timeout is not retried: Slack may
  have acted on the call);
- any failure closes the connection, so a late answer can never be read by the next call.

An idle connection the server has closed (Slack ends idle ones) is seen before reuse: its
socket reads as ready. A proxy (HTTPS_PROXY) falls back to urllib.
"""

from __future__ import annotations

import io
import select
import ssl
import threading
import time
from http.client import HTTPConnection, HTTPResponse, HTTPSConnection
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request

from slack_sdk import WebClient

MAX_IDLE = 16  # idle connections kept per origin; more are closed after their answer
# A connection idle longer than this is closed rather than reused: a peer or a NAT on the way
# may have dropped it without a word (no FIN to see), and a call sent on it would wait for its
# whole timeout before failing.
MAX_IDLE_SECONDS = 30.0

Origin = tuple[str, str, int]

_default_tls: ssl.SSLContext | None = None
_default_tls_lock = threading.Lock()


def default_tls() -> ssl.SSLContext:
    """The process's one client TLS context (the system's CAs, or SSL_CERT_FILE), built on
    first use. Python's urllib builds a new one for every connection when given none, which
    reads the whole CA bundle again: ~30 ms of CPU per call on the development machine.
    Every outgoing https client of the bridge that takes a context is given this one."""
    global _default_tls
    with _default_tls_lock:
        if _default_tls is None:
            _default_tls = ssl.create_default_context()
        return _default_tls


def origin_of(url: str) -> tuple[Origin, str]:
    """(scheme, host, port) and the request target of an http(s) URL. Pure."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, host, port), target


def is_stale(conn: HTTPConnection) -> bool:
    """Whether an idle connection has been closed by the server (or sent something unasked):
    an idle keep-alive socket has nothing to read, so a readable one is not reusable."""
    sock = conn.sock
    if sock is None:
        return False  # not connected: http.client connects on the next request
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class KeepAliveWebClient(WebClient):
    """A WebClient whose calls reuse connections (see the module docstring)."""

    def __init__(
        self,
        *args: Any,
        max_idle: int = MAX_IDLE,
        max_idle_seconds: float = MAX_IDLE_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_idle = max_idle
        self.max_idle_seconds = max_idle_seconds
        self._idle: dict[Origin, list[tuple[float, HTTPConnection]]] = {}
        self._idle_lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self.connections_opened = 0  # for tests and the benchmark

    # -- the pool ------------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        # Built once: http.client would load the CA store again for every new connection.
        if self._tls is None:
            self._tls = self.ssl or default_tls()
        return self._tls

    def _take(self, origin: Origin) -> HTTPConnection:
        while True:
            with self._idle_lock:
                idle = self._idle.get(origin)
                since, conn = idle.pop() if idle else (0.0, None)
                if conn is None:
                    self.connections_opened += 1  # counted under the lock: threads share it
                    break
            if time.monotonic() - since < self.max_idle_seconds and not is_stale(conn):
                return conn
            conn.close()
        scheme, host, port = origin
        if scheme == "https":
            return HTTPSConnection(host, port, timeout=self.timeout, context=self._context())
        return HTTPConnection(host, port, timeout=self.timeout)

    def _give_back(self, origin: Origin, conn: HTTPConnection) -> None:
        with self._idle_lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.max_idle:
                idle.append((time.monotonic(), conn))
                return
        conn.close()

    # -- the exchange --------------------------------------------------------------------
    def _perform_urllib_http_request_internal(self, url: str, req: Request) -> dict[str, Any]:
        if self.proxy is not None or not url.lower().startswith(("http://", "https://")):
            return super()._perform_urllib_http_request_internal(url, req)
        origin, target = origin_of(url)
        conn = self._take(origin)
        try:
            try:
                conn.request(
                    req.get_method(), target, body=req.data, headers=dict(req.header_items())
                )
            except OSError as exc:
                raise URLError(exc) from exc  # as urllib reports a failure to connect or send
            resp = conn.getresponse()
            body = resp.read()
        except BaseException:
            conn.close()
            raise
        if resp.will_close:
            conn.close()
        else:
            self._give_back(origin, conn)
        if not 200 <= resp.status < 300:
            raise HTTPError(url, resp.status, resp.reason, resp.headers, io.BytesIO(body))
        return _answer(resp, body)


def _answer(resp: HTTPResponse, body: bytes) -> dict[str, Any]:
    """What slack_sdk's urllib exchange returns for a 2xx answer."""
    if resp.headers.get_content_type() == "application/gzip":
        return {"status": resp.status, "headers": resp.headers, "body": body}
    charset = resp.headers.get_content_charset() or "utf-8"
    return {"status": resp.status, "headers": resp.headers, "body": body.decode(charset)}
