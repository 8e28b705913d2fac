"""Outgoing HTTP on reused connections: slack_sdk's WebClient, and GitHub's calls.

`Pool` keeps idle connections per origin; `KeepAliveWebClient` sends Slack's calls through one,
and `GitHubApp._exchange` (bot/github.py) GitHub's through another. The rest of this text is
about Slack's client.

slack_sdk's sync client sends every call through `urllib.request.urlopen`, which opens a new
connection and closes it after the answer: against slack.com each Web API call is a TCP and a
TLS handshake (and, with no SSL context given, a CA store loaded for the new connection). The
bridge makes two or three calls per relayed webhook, so that is most of a call's cost.

`KeepAliveWebClient` replaces only the last step, the one HTTP exchange
(`_perform_urllib_http_request_internal`); slack_sdk's request building, retry handlers and
response parsing are unchanged. Idle connections are kept per origin in a small LIFO pool
shared by the threads, and one is taken by one call at a time. The exchange itself is one
`sendall` of the request and httptools' C parser (a dependency already, uvicorn's) over the
answer: http.client parsed every answer's headers through the `email` package, ~11 % of a relayed
event's CPU (docs/benchmarks.md). What it keeps of urllib's contract, so that callers and retry
handlers see the same thing:

- a non-2xx answer raises `urllib.error.HTTPError` (headers and body readable);
- a failure to connect or to send raises `URLError` (retried by ConnectionErrorRetryHandler),
  a failure while waiting for the answer raises as it is (a timeout is not retried: Slack may
  have acted on the call), a connection closed before any answer raises `RemoteDisconnected`
  as http.client's does, and an answer cut short or not HTTP raises `BrokenAnswer`;
- any failure closes the connection, so a late answer can never be read by the next call;
- the answer's headers are an `http.client.HTTPMessage`, as urllib's are;
- an interim answer (1xx) is skipped for the final one, and bytes that follow an answer unasked
  end its connection.

An idle connection the server has closed (Slack ends idle ones) is seen before reuse: its
socket reads as ready. A proxy (HTTPS_PROXY) falls back to urllib.

`SlackOut` goes one step further for its JSON calls (`lean_call`): the request slack_sdk would
build (its URL, headers and body), the answer parsed once, and the retry handlers asked as
slack_sdk asks them, without the per-call objects of its request building (a urllib Request,
the handlers' request and response, a SlackResponse): 40 % of a call's CPU outside the
exchange itself (docs/benchmarks.md).
"""

from __future__ import annotations

import io
import json
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.client import HTTPMessage, RemoteDisconnected
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request

import httptools
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.internal_utils import _get_headers, _get_url

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


def trusting(where: str) -> ssl.SSLContext:
    """A client TLS context that trusts the CA bundle file, or the folder of CA files, at
    `where` (requests' REQUESTS_CA_BUNDLE may name either)."""
    if os.path.isdir(where):
        return ssl.create_default_context(capath=where)
    return ssl.create_default_context(cafile=where)


def origin_of(url: str) -> tuple[Origin, str]:
    """(scheme, host, port) and the request target of an http(s) URL. Pure."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, host, port), target


def is_stale(conn: Any) -> bool:
    """Whether an idle connection has been closed by the server (or sent something unasked):
    an idle keep-alive socket has nothing to read, so a readable one is not reusable."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


# What may not appear in a request line or a header: a CR or LF would end the line early and let
# the rest be read as another header or request (http.client refuses the same).
_FORBIDDEN = frozenset("\r\n\0")
# Written by request_head itself, whatever the caller gave (slack_sdk sets Content-Length for
# an upload).
_OURS = frozenset({"host", "accept-encoding", "content-length"})


def request_head(
    method: str, target: str, host: str, headers: dict[str, str], length: int
) -> bytes:
    """The request line and headers of one HTTP/1.1 request with a body of `length` bytes. Pure.
    Raises ValueError for a control character where it would split the request."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity"]
    lines.extend(f"{name}: {value}" for name, value in headers.items() if name.lower() not in _OURS)
    lines.append(f"Content-Length: {length}")
    if (
        " " in target
        or not all(_FORBIDDEN.isdisjoint(line) for line in lines)
        or not all(name and " " not in name and ":" not in name for name in headers)
    ):
        raise ValueError("a request line or header holds a character that would split it")
    head = "\r\n".join(lines)
    return (head + "\r\n\r\n").encode("latin-1")


def host_header(origin: Origin) -> str:
    """The Host header for an origin: the port only when not the scheme's own, an IPv6 literal in
    brackets (RFC 9110, 7.2). Pure."""
    scheme, host, port = origin
    name = f"[{host}]" if ":" in host else host
    return name if port == (443 if scheme == "https" else 80) else f"{name}:{port}"


def media_type(content_type: str | None) -> tuple[str, str | None]:
    """(type/subtype in lower case, charset or None) of a Content-Type value. Pure."""
    if not content_type:
        return "text/plain", None
    kind, *params = content_type.split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return kind.strip().lower(), charset


class BrokenAnswer(ConnectionError):
    """An answer cut short or not HTTP. A connection failure to the caller (SlackOut: an outage,
    the job tries again later), but not one slack_sdk retries at once: the request was delivered
    and Slack may have acted on it."""


class _Answer:
    """httptools' callbacks for one answer: status, headers (in order) and body. An interim
    answer (1xx other than 101) is skipped, as the final one follows it; bytes after the final
    answer, which no request asked for, mark the connection as not reusable."""

    __slots__ = ("body", "done", "extra", "headers", "headers_done", "parser", "reason", "status")

    def __init__(self) -> None:
        self.parser: Any = None  # the HttpResponseParser feeding this answer (its status code)
        self._start()

    def _start(self) -> None:
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.done = False
        self.extra = False

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True

    def on_status(self, reason: bytes) -> None:
        if not self.done:
            self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.done:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if not self.done:
            self.status = self.parser.get_status_code()
            self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.done:
            return
        if 100 <= self.status < 200 and self.status != 101:  # interim: the answer follows
            self._start()
            return
        self.done = True

    def message(self) -> HTTPMessage:
        msg = HTTPMessage()  # what urllib hands out: case-insensitive, ordered, repeatable
        for name, value in self.headers:
            msg[name] = value
        return msg

    def keep_alive(self, version: str) -> bool:
        """Whether the connection may carry another exchange (RFC 9112, 9.3)."""
        tokens = {
            token.strip().lower()
            for name, value in self.headers
            if name.lower() == "connection"
            for token in value.split(",")
        }
        if version == "1.1":
            return "close" not in tokens
        return version == "1.0" and "keep-alive" in tokens and "close" not in tokens

    def delimited(self) -> bool:
        """Whether the answer says where its body ends (else it ends where the connection does)."""
        names = {name.lower() for name, _ in self.headers}
        return "content-length" in names or "transfer-encoding" in names


class Connection:
    """One HTTP/1.1 connection (TLS for https), one exchange at a time."""

    __slots__ = ("host", "sock")

    def __init__(self, origin: Origin, timeout: float | None, tls: ssl.SSLContext | None) -> None:
        scheme, host, port = origin
        self.host = host_header(origin)
        sock = socket.create_connection((host, port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                assert tls is not None
                sock = tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self.sock: socket.socket | None = sock

    def send(self, head: bytes, body: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(head + body)

    def receive(self) -> tuple[int, _Answer, bool]:
        """(status, answer, whether the connection may be reused) of the answer to the request
        just sent. Raises as http.client does for a connection closed early."""
        assert self.sock is not None
        answer = _Answer()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        try:
            return self._read(answer, parser)
        finally:
            answer.parser = None  # the two refer to each other

    def _read(self, answer: _Answer, parser: Any) -> tuple[int, _Answer, bool]:
        assert self.sock is not None
        received = False
        while not answer.done:
            data = self.sock.recv(65536)
            if not data:
                if answer.headers_done and not answer.delimited():
                    return answer.status, answer, False  # read to the close
                if not received:  # as http.client says it (slack_sdk retries this one)
                    raise RemoteDisconnected("Remote end closed connection without response")
                raise BrokenAnswer("the connection closed inside the answer")
            received = True
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise BrokenAnswer(f"malformed answer: {type(exc).__name__}") from None
        # httptools' should_keep_alive() reads False once the message is complete: decided here.
        reusable = not answer.extra and answer.keep_alive(parser.get_http_version())
        return answer.status, answer, reusable

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Pool:
    """Idle connections per origin, kept in a small LIFO list shared by the threads; one call
    at a time on a connection. Slack's client and GitHub's lean exchange each keep one."""

    def __init__(
        self,
        *,
        tls: Callable[[], ssl.SSLContext],
        max_idle: int = MAX_IDLE,
        max_idle_seconds: float = MAX_IDLE_SECONDS,
    ) -> None:
        self.max_idle = max_idle
        self.max_idle_seconds = max_idle_seconds
        self.idle: dict[Origin, list[tuple[float, Connection]]] = {}
        self._lock = threading.Lock()
        self._tls = tls  # called at the first https connection (a context is built once)
        self.connections_opened = 0  # for tests and the benchmark

    def take(self, origin: Origin, timeout: float | None) -> Connection:
        """An idle connection to origin that is still good, else a new one (`timeout` for its
        connect and its reads). Raises URLError when none can be made."""
        while True:
            with self._lock:
                idle = self.idle.get(origin)
                since, conn = idle.pop() if idle else (0.0, None)
                if conn is None:
                    self.connections_opened += 1  # counted under the lock: threads share it
                    break
            if time.monotonic() - since < self.max_idle_seconds and not is_stale(conn):
                return conn
            conn.close()
        try:
            tls = self._tls() if origin[0] == "https" else None
            return Connection(origin, timeout, tls)
        except OSError as exc:
            raise URLError(exc) from exc  # as urllib reports a failure to connect

    def give_back(self, origin: Origin, conn: Connection) -> None:
        with self._lock:
            idle = self.idle.setdefault(origin, [])
            if len(idle) < self.max_idle:
                idle.append((time.monotonic(), conn))
                return
        conn.close()

    def exchange(
        self, method: str, url: str, headers: dict[str, str], body: bytes, timeout: float | None
    ) -> tuple[int, _Answer]:
        """One request and its answer on a pooled connection. A failure to connect or to send
        raises URLError, as urllib does: the server cannot have acted on a request it did not
        receive whole, so such a call may be sent again. A failure while waiting for the answer
        raises as it is (see Connection.receive): the server may have acted. Any failure closes
        the connection; one whose answer allows it goes back to the pool."""
        origin, target = origin_of(url)
        conn = self.take(origin, timeout)
        try:
            head = request_head(method, target, conn.host, headers, len(body))
            try:
                conn.send(head, body)
            except OSError as exc:
                raise URLError(exc) from exc  # as urllib reports a failure to send
            status, answer, reusable = conn.receive()
        except BaseException:
            conn.close()
            raise
        if reusable:
            self.give_back(origin, conn)
        else:
            conn.close()
        return status, answer


class KeepAliveWebClient(WebClient):
    """A WebClient whose calls reuse connections (see the module docstring)."""

    # Retry handler types that never retry a success (a 2xx answer): `lean_call` does not
    # build the objects to ask them about one. Exact types: a subclass may decide otherwise.
    success_is_final: frozenset[type[RetryHandler]] = frozenset({ConnectionErrorRetryHandler})

    def __init__(
        self,
        *args: Any,
        max_idle: int = MAX_IDLE,
        max_idle_seconds: float = MAX_IDLE_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.pool = Pool(tls=self._context, max_idle=max_idle, max_idle_seconds=max_idle_seconds)
        self._tls: ssl.SSLContext | None = None

    @property
    def connections_opened(self) -> int:
        return self.pool.connections_opened

    @property
    def max_idle_seconds(self) -> float:
        return self.pool.max_idle_seconds

    @max_idle_seconds.setter
    def max_idle_seconds(self, value: float) -> None:
        self.pool.max_idle_seconds = value

    def _context(self) -> ssl.SSLContext:
        # Built once: a context per connection would load the CA store again each time.
        if self._tls is None:
            self._tls = self.ssl or default_tls()
        return self._tls

    # -- the exchange --------------------------------------------------------------------
    def _perform_urllib_http_request_internal(self, url: str, req: Request) -> dict[str, Any]:
        if self.proxy is not None or not url.lower().startswith(("http://", "https://")):
            return super()._perform_urllib_http_request_internal(url, req)
        body = req.data if isinstance(req.data, bytes) else b""
        status, answer = self.pool.exchange(
            req.get_method(), url, dict(req.header_items()), body, self.timeout
        )
        data = b"".join(answer.body)
        headers = answer.message()
        if not 200 <= status < 300:
            raise HTTPError(url, status, answer.reason, headers, io.BytesIO(data))
        kind, charset = media_type(headers.get("Content-Type"))
        if kind == "application/gzip":
            return {"status": status, "headers": headers, "body": data}
        return {"status": status, "headers": headers, "body": data.decode(charset or "utf-8")}

    # -- a JSON call past slack_sdk's request building -----------------------------------
    @property
    def lean(self) -> bool:
        """Whether `lean_call` may carry this client's calls (no proxy, an http(s) base)."""
        return self.proxy is None and self.base_url.lower().startswith(("http://", "https://"))

    def lean_call(
        self, method: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """(status, headers, parsed body) of `api_call(method, json=params)`, sent as slack_sdk
        sends it (its URL, headers and JSON body) and retried by the client's retry handlers
        as slack_sdk consults them, without its per-call objects: a urllib Request, the retry
        handlers' request and response (built here only when an answer is not a success or a
        handler other than the bridge's own might retry one), SlackResponse. Raises what the
        exchange raised when no handler retries it. The caller reads `ok` (SlackOut._call)."""
        url = _get_url(self.base_url, method)
        headers = _get_headers(
            headers=self.headers,
            token=self.token,
            has_json=True,
            has_files=False,
            request_specific_headers=None,
        )
        body = json.dumps(params).encode("utf-8")
        state = RetryState()
        while True:
            state.next_attempt_requested = False
            try:
                status, answer = self.pool.exchange("POST", url, headers, body, self.timeout)
            except Exception as failed:
                if self._retried(state, url, headers, body, None, failed):
                    continue
                raise
            raw = b"".join(answer.body)
            _kind, charset = media_type(
                next((v for k, v in answer.headers if k.lower() == "content-type"), None)
            )
            text = raw.decode(charset or "utf-8", "replace")
            try:  # an object, or nothing usable (slack_sdk reads only a text that opens one)
                data: dict[str, Any] = json.loads(text) if text.startswith("{") else {}
            except ValueError:
                data = {}
            found: dict[str, Any] = dict(answer.headers)
            if 200 <= status < 300:
                if self._plain_handlers() or not self._retried(
                    state,
                    url,
                    headers,
                    body,
                    HttpResponse(status_code=status, headers=found, body=data, data=raw),
                    None,
                ):
                    return status, found, data
                continue
            listed: dict[str, Any] = {k: [v] for k, v in found.items()}
            refusal = HTTPError(url, status, answer.reason, answer.message(), None)
            response = HttpResponse(status_code=status, headers=listed, data=raw)
            if not self._retried(state, url, headers, body, response, refusal):
                return status, found, data

    def _plain_handlers(self) -> bool:
        """Whether every retry handler is of a type that never retries a success
        (`success_is_final`)."""
        return all(type(h) in self.success_is_final for h in self.retry_handlers)

    def _retried(
        self,
        state: RetryState,
        url: str,
        headers: dict[str, str],
        body: bytes,
        response: HttpResponse | None,
        error: Exception | None,
    ) -> bool:
        """Ask the retry handlers, first to last, as slack_sdk does: the first that can retry
        prepares the next attempt (it may sleep, or raise)."""
        request = HttpRequest(
            method="POST", url=url, headers={k: [v] for k, v in headers.items()}, data=body
        )
        handler: RetryHandler
        for handler in self.retry_handlers:
            if handler.can_retry(state=state, request=request, response=response, error=error):
                handler.prepare_for_next_attempt(
                    state=state, request=request, response=response, error=error
                )
                break
        return bool(state.next_attempt_requested)
