"""A recording loopback double of Slack's Web API (and of `response_url`) for tests.

`SlackDouble` serves the Web API the way slack_sdk's `WebClient` talks to it: POST (or GET for
the few methods slack_sdk sends as GET) to ``/api/<method>``, JSON or form bodies, the token in
``Authorization: Bearer ...``. Every request is recorded as a `Call`. Block Kit payloads are
checked with slack_sdk's own models plus the limits Slack enforces server side; every failure is
appended to `violations` (tests assert it stays empty) and answered with ``invalid_blocks``.

Usage::

    with SlackDouble() as slack:
        client = WebClient(token="xoxb-test", base_url=slack.url)
        client.chat_postMessage(channel="C1", text="hi")
        assert slack.wait_for("chat.postMessage")[0].params["text"] == "hi"
        assert slack.violations == []
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import itertools
import json
import socket
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

__all__ = ["Call", "SlackDouble", "validate_blocks"]

# Limits Slack enforces on its side (https://docs.slack.dev/reference/block-kit/blocks).
MAX_TEXT = 40_000
MAX_BLOCKS_MESSAGE = 50
MAX_BLOCKS_VIEW = 100
MAX_TABLES = 1
MAX_TABLE_ROWS = 100
MAX_TABLE_CELLS = 20
MAX_SECTION_TEXT = 3_000
MAX_MARKDOWN_TEXT = 12_000
MAX_HEADER_TEXT = 150
RESPONSE_URL_MAX_USES = 5
TABLE_CELL_TYPES = frozenset({"raw_text", "raw_number", "rich_text"})

# Form fields that slack_sdk (or a hand-written client) sends as JSON strings.
_JSON_FORM_FIELDS = frozenset(
    {"blocks", "attachments", "view", "metadata", "unfurls", "user_auth_blocks"}
)
_MESSAGE_METHODS = frozenset({"chat.postMessage", "chat.update", "chat.postEphemeral"})
_VIEW_METHODS = frozenset({"views.publish", "views.open", "views.update", "views.push"})


@dataclass
class Call:
    """One request received by the double."""

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.time)


def _text_of(obj: Any) -> str:
    """The `text` string of a text object (dict with "text") or of a plain string."""
    if isinstance(obj, dict):
        value = obj.get("text", "")
        return value if isinstance(value, str) else ""
    return obj if isinstance(obj, str) else ""


def validate_blocks(blocks: Any, *, surface: str = "message") -> list[str]:
    """Check a `blocks` array the way Slack would; return human-readable problems (empty = ok).

    ``surface`` is "message" (≤50 blocks) or "view" (≤100 blocks).
    """
    problems: list[str] = []
    if not isinstance(blocks, list):
        return [f"blocks must be a JSON array, got {type(blocks).__name__}"]
    limit = MAX_BLOCKS_VIEW if surface == "view" else MAX_BLOCKS_MESSAGE
    if len(blocks) > limit:
        problems.append(f"{len(blocks)} blocks; at most {limit} are allowed in a {surface}")
    tables = 0
    block_ids: set[str] = set()
    for i, raw in enumerate(blocks):
        where = f"block[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: not an object")
            continue
        btype = raw.get("type")
        where = f"block[{i}] ({btype})"
        block_id = raw.get("block_id")
        if isinstance(block_id, str):
            if block_id in block_ids:
                problems.append(f"{where}: duplicate block_id {block_id!r}")
            block_ids.add(block_id)
        try:
            parsed = Block.parse(dict(raw))
        except Exception as exc:
            problems.append(f"{where}: slack_sdk cannot parse it: {exc!r}")
            continue
        if parsed is None or type(parsed) is Block:
            problems.append(f"{where}: unknown block type")
            continue
        unknown = set(raw) - set(parsed.attributes) - {"type"}
        if unknown:
            problems.append(f"{where}: unknown properties {sorted(unknown)}")
        try:
            parsed.validate_json()
            parsed.to_dict()  # validates nested elements and text objects as well
        except Exception as exc:
            problems.append(f"{where}: {exc}")
        if btype == "table":
            tables += 1
            problems.extend(_table_problems(where, raw))
        elif btype == "section" and len(_text_of(raw.get("text"))) > MAX_SECTION_TEXT:
            problems.append(f"{where}: text longer than {MAX_SECTION_TEXT} characters")
        elif btype == "markdown" and len(_text_of(raw.get("text"))) > MAX_MARKDOWN_TEXT:
            problems.append(f"{where}: text longer than {MAX_MARKDOWN_TEXT} characters")
        elif btype == "header" and len(_text_of(raw.get("text"))) > MAX_HEADER_TEXT:
            problems.append(f"{where}: text longer than {MAX_HEADER_TEXT} characters")
    if tables > MAX_TABLES:
        problems.append(f"{tables} table blocks; only {MAX_TABLES} table is allowed per message")
    return problems


def _table_problems(where: str, raw: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    rows = raw.get("rows")
    if not isinstance(rows, list) or not rows:
        return [f"{where}: rows must be a non-empty array"]
    if len(rows) > MAX_TABLE_ROWS:
        problems.append(f"{where}: {len(rows)} rows; at most {MAX_TABLE_ROWS} are allowed")
    for r, row in enumerate(rows):
        if not isinstance(row, list):
            problems.append(f"{where}: row {r} is not an array")
            continue
        if len(row) > MAX_TABLE_CELLS:
            problems.append(f"{where}: row {r} has {len(row)} cells; at most {MAX_TABLE_CELLS}")
        for c, cell in enumerate(row):
            if not isinstance(cell, dict) or cell.get("type") not in TABLE_CELL_TYPES:
                problems.append(f"{where}: row {r} cell {c} is not raw_text/raw_number/rich_text")
    settings = raw.get("column_settings")
    if isinstance(settings, list) and len(settings) > MAX_TABLE_CELLS:
        problems.append(f"{where}: more than {MAX_TABLE_CELLS} column_settings")
    return problems


class _Handler(BaseHTTPRequestHandler):
    double: SlackDouble
    # Keep-alive, like slack.com: a client may send its next call on the same connection.
    protocol_version = "HTTP/1.1"
    server_version = "SlackDouble/1.0"
    timeout = 30
    # One send per answer and TCP_NODELAY: headers and body in separate small writes meet
    # delayed ACKs on keep-alive connections and cost ~40 ms per request.
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def setup(self) -> None:
        super().setup()
        with self.double._cond:
            self.double._connections.add(self.connection)
            self.double.connections_accepted += 1

    def finish(self) -> None:
        with self.double._cond:
            self.double._connections.discard(self.connection)
        # A client that gave up (the timeout tests) has closed its end already.
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        try:
            status, extra, body = self.double._dispatch(self.path, headers, raw)
        except Exception as exc:  # a bug in the double must be visible, not a hang
            self.double.server_errors.append(repr(exc))
            status, extra, body = 500, {}, b'{"ok":false,"error":"internal_error"}'
        self.send_response(status)
        content_type = extra.pop("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        if self.tls is not None:
            # The handshake runs on the connection's own thread (first read), not here.
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class SlackDouble:
    """Loopback stand-in for slack.com's Web API; see the module docstring.

    `tls=True` serves https with a certificate made for 127.0.0.1 at start; `ca_file` is the
    file a client must trust (e.g. SSL_CERT_FILE for another process)."""

    bot_user_id = "UBOTBRIDGE"
    team_id = "T0001"
    bot_id = "B0CHATOPS1"  # Slack's shape: ^B[A-Z0-9]{8,}$ (tests/contract checks answers)

    def __init__(self, *, tls: bool = False) -> None:
        self.tls = tls
        self.ca_file: str | None = None
        self.connections_accepted = 0  # TCP connections, over the double's life
        self._connections: set[socket.socket] = set()
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.server_errors: list[str] = []
        self.usergroups: dict[str, list[str]] = {}
        self.socket_mode_url: str | None = None
        self.missing_channels: set[str] = set()
        self.not_member: set[str] = set()
        self.users: dict[str, dict[str, Any]] = {}
        # (channel, ts) -> latest version of each message posted with chat.postMessage
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.response_url_uses: dict[str, int] = {}
        self._failures: dict[str, list[tuple[str, int, int | None]]] = {}
        self._delays: dict[str, list[float]] = {}
        # Slack down: every Web API call is answered 503 until this time (time.time()).
        self.down_until = 0.0
        self._cond = threading.Condition(threading.RLock())
        self._ts = itertools.count(1)
        self._view_ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SlackDouble:
        if self._server is not None:
            return self
        handler = type("SlackHandler", (_Handler,), {"double": self})
        server = _Server(("127.0.0.1", 0), handler)
        scheme = "http"
        if self.tls:
            from tests.doubles.tls import server_context

            server.tls, self.ca_file = server_context(tempfile.mkdtemp(prefix="slack-double-"))
            scheme = "https"
        self._server = server
        self._base = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self.close_connections()  # idle keep-alive connections would hold their threads
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> SlackDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Web API base URL for ``WebClient(base_url=...)`` (ends with ``/api/``)."""
        if not self._base:
            raise RuntimeError("SlackDouble is not started")
        return f"{self._base}/api/"

    def response_url(self, key: str = "1") -> str:
        """A `response_url`; POSTs to it are recorded as method ``"response_url"``."""
        if not self._base:
            raise RuntimeError("SlackDouble is not started")
        return f"{self._base}/response/{key}"

    # ------------------------------------------------------------------ inspection
    def calls_to(self, method: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        """Wait until at least ``count`` calls to ``method`` arrived; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self.calls if c.method == method]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    received = [c.method for c in self.calls]
                    raise AssertionError(
                        f"expected {count} call(s) to {method} within {timeout}s, "
                        f"got {len(found)}; received: {received}"
                    )
                self._cond.wait(left)

    def thread_replies(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """Messages posted in the thread of ``thread_ts`` (not the root), oldest first."""
        with self._cond:
            return [
                m
                for (ch, _), m in sorted(self.messages.items(), key=lambda kv: float(kv[0][1]))
                if ch == channel and m.get("thread_ts") == thread_ts
            ]

    def reset(self) -> None:
        """Forget recorded calls, violations and pending failures; keep messages and config."""
        with self._cond:
            self.calls.clear()
            self.violations.clear()
            self.server_errors.clear()
            self._failures.clear()
            self._delays.clear()

    def fail_next(
        self,
        method: str,
        error: str = "ratelimited",
        *,
        status: int = 200,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls to ``method`` with ``{"ok": false, "error": error}``.

        ``status=429`` adds ``Retry-After`` (``retry_after`` or 1 second).
        """
        with self._cond:
            queue = self._failures.setdefault(method, [])
            queue.extend([(error, status, retry_after)] * times)

    def delay_next(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Hold the next ``times`` calls to ``method`` for ``seconds``, then carry them out and
        answer as usual (a slow Slack: a client killed meanwhile never reads the answer)."""
        with self._cond:
            self._delays.setdefault(method, []).extend([seconds] * times)

    def go_down(self, seconds: float) -> None:
        """Slack is down for ``seconds``: every Web API call is answered ``503
        service_unavailable`` (and recorded) until then. ``go_down(0)`` ends an outage."""
        with self._cond:
            self.down_until = time.time() + seconds

    def close_connections(self) -> None:
        """End every open connection from the server's side, as slack.com ends idle ones."""
        with self._cond:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def delays_pending(self) -> int:
        """How many delays given to `delay_next` no call has taken yet."""
        with self._cond:
            return sum(len(queue) for queue in self._delays.values())

    # ------------------------------------------------------------------ request handling
    def _next_ts(self) -> str:
        micros = 1_700_000_000_000_000 + next(self._ts) * 100
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    @staticmethod
    def _decode(headers: dict[str, str], raw: bytes, query: str) -> dict[str, Any]:
        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        ctype = ""
        for key, value in headers.items():
            if key.lower() == "content-type":
                ctype = value
        if raw:
            if "application/json" in ctype:
                parsed = json.loads(raw.decode("utf-8"))
                if isinstance(parsed, dict):
                    params.update(parsed)
                else:
                    params["_body"] = parsed
            elif "multipart/form-data" in ctype:
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + raw
                )
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    payload = part.get_payload(decode=True)
                    if part.get_filename():
                        params[str(name)] = payload
                    else:
                        params[str(name)] = (payload or b"").decode("utf-8")
            else:
                params.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        for key in _JSON_FORM_FIELDS & params.keys():
            value = params[key]
            if isinstance(value, str) and value[:1] in ("[", "{"):
                with contextlib.suppress(ValueError):  # else block validation reports it
                    params[key] = json.loads(value)
        return params

    def _dispatch(
        self, raw_path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(raw_path)
        path = split.path
        if path.startswith("/response/"):
            method = "response_url"
        elif path.startswith("/api/"):
            method = path[len("/api/") :]
        else:
            method = path
        try:
            params = self._decode(headers, raw, split.query)
        except ValueError:
            params = {"_raw": raw.decode("utf-8", "replace")}
        with self._cond:
            queue = self._delays.get(method)
            delay = queue.pop(0) if queue else 0.0
        if delay > 0:
            time.sleep(delay)
        with self._cond:
            try:
                if method == "response_url":
                    status, extra, body = self._response_url(path.rsplit("/", 1)[-1], params)
                else:
                    status, extra, payload = self._api(method, params, headers)
                    body = json.dumps(payload).encode()
            finally:
                self.calls.append(Call(method=method, params=params, headers=headers))
                self._cond.notify_all()
        return status, extra, body

    def _injected(self, method: str) -> tuple[int, dict[str, str], dict[str, Any]] | None:
        queue = self._failures.get(method)
        if not queue:
            return None
        error, status, retry_after = queue.pop(0)
        extra: dict[str, str] = {}
        if status == 429:
            extra["Retry-After"] = str(1 if retry_after is None else retry_after)
        elif retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        return status, extra, {"ok": False, "error": error}

    def _response_url(self, key: str, params: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        text_plain = {"Content-Type": "text/html"}
        injected = self._injected("response_url")
        if injected is not None:
            status, extra, payload = injected
            return status, {**extra, **text_plain}, str(payload["error"]).encode()
        uses = self.response_url_uses.get(key, 0) + 1
        self.response_url_uses[key] = uses
        if uses > RESPONSE_URL_MAX_USES:
            return 404, text_plain, b"used_url"
        if params.get("delete_original"):
            return 200, text_plain, b"ok"
        problems = self._message_problems("response_url", params)
        if problems:
            return 400, text_plain, b"invalid_blocks"
        text = params.get("text")
        if not params.get("blocks") and not (isinstance(text, str) and text.strip()):
            return 400, text_plain, b"no_text"
        return 200, text_plain, b"ok"

    def _message_problems(self, method: str, params: dict[str, Any]) -> list[str]:
        problems: list[str] = []
        if "blocks" in params and params["blocks"] is not None:
            problems = validate_blocks(params["blocks"], surface="message")
            text = params.get("text")
            if not (isinstance(text, str) and text.strip()) and not params.get("markdown_text"):
                problems.append("message has blocks but no fallback `text`")
        if problems:
            self.violations.extend(f"{method}: {p}" for p in problems)
        return problems

    def _view_problems(self, method: str, params: dict[str, Any]) -> list[str]:
        view = params.get("view")
        if not isinstance(view, dict):
            problems = ["`view` must be a JSON object"]
        else:
            problems = validate_blocks(view.get("blocks", []), surface="view")
            try:
                View(**view).to_dict()
            except Exception as exc:
                problems.append(f"view: {exc}")
        self.violations.extend(f"{method}: {p}" for p in problems)
        return problems

    def _token(self, params: dict[str, Any], headers: dict[str, str]) -> str | None:
        for key, value in headers.items():
            if key.lower() == "authorization":
                scheme, _, token = value.partition(" ")
                return token.strip() if scheme.lower() == "bearer" else ""
        token = params.get("token")
        return token if isinstance(token, str) else None

    def _api(
        self, method: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        if time.time() < self.down_until:
            return 503, {}, {"ok": False, "error": "service_unavailable"}
        injected = self._injected(method)
        if injected is not None:
            return injected
        token = self._token(params, headers)
        if not token:
            return 200, {}, {"ok": False, "error": "not_authed"}
        if not token.startswith(("xoxb-", "xoxp-", "xapp-", "xoxe.")):
            return 200, {}, {"ok": False, "error": "invalid_auth"}
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {}, {"ok": False, "error": "unknown_method"}
        if method != "auth.test" and method.startswith("apps.") != token.startswith("xapp-"):
            return 200, {}, {"ok": False, "error": "not_allowed_token_type"}
        return 200, {}, handler(params)

    # ------------------------------------------------------------------ methods
    def _channel_error(self, channel: Any) -> str | None:
        if not isinstance(channel, str) or not channel or channel in self.missing_channels:
            return "channel_not_found"
        if channel in self.not_member:
            return "not_in_channel"
        return None

    def _message_checks(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        error = self._channel_error(params.get("channel"))
        if error:
            return {"ok": False, "error": error}
        text = params.get("text")
        if isinstance(text, str) and len(text) > MAX_TEXT:
            return {"ok": False, "error": "msg_too_long"}
        problems = self._message_problems(method, params)
        if problems:
            return {
                "ok": False,
                "error": "invalid_blocks",
                "errors": problems,
                "response_metadata": {"messages": [f"[ERROR] {p}" for p in problems]},
            }
        if method != "chat.update" and not (
            (isinstance(text, str) and text.strip())
            or params.get("blocks")
            or params.get("attachments")
            or params.get("markdown_text")
        ):
            return {"ok": False, "error": "no_text"}
        return None

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://acme.slack.com/",
            "team": "Acme",
            "user": "chatops",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        failure = self._message_checks("chat.postMessage", params)
        if failure:
            return failure
        channel = str(params["channel"])
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "subtype": "bot_message",
            "text": params.get("text", ""),
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "ts": ts,
        }
        if params.get("blocks"):
            message["blocks"] = params["blocks"]
        if params.get("thread_ts"):
            message["thread_ts"] = str(params["thread_ts"])
        if params.get("metadata"):
            message["metadata"] = params["metadata"]
        self.messages[(channel, ts)] = dict(message, channel=channel)
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        failure = self._message_checks("chat.update", params)
        if failure:
            return failure
        channel = str(params["channel"])
        ts = str(params.get("ts") or "")
        stored = self.messages.get((channel, ts))
        if stored is None:
            return {"ok": False, "error": "message_not_found"}
        for key in ("text", "blocks", "metadata"):
            if key in params:
                stored[key] = params[key]
        stored["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        message = {k: v for k, v in stored.items() if k != "channel"}
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": stored.get("text", ""),
            "message": message,
        }

    def _m_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        failure = self._message_checks("chat.postEphemeral", params)
        if failure:
            return failure
        if not params.get("user"):
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _view_answer(self, method: str, params: dict[str, Any], view_id: str) -> dict[str, Any]:
        if self._view_problems(method, params):
            return {"ok": False, "error": "invalid_arguments"}
        view = dict(params["view"])
        view.update(
            {
                "id": view_id,
                "team_id": self.team_id,
                "app_id": "A0001",
                "bot_id": self.bot_id,
                "hash": f"{int(time.time())}.{view_id}",
            }
        )
        return {"ok": True, "view": view}

    def _new_view_id(self) -> str:
        return f"V{next(self._view_ids):08d}"

    def _m_views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("user_id"):
            return {"ok": False, "error": "invalid_arguments"}
        return self._view_answer("views.publish", params, self._new_view_id())

    def _m_views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("trigger_id") and not params.get("interactivity_pointer"):
            return {"ok": False, "error": "invalid_arguments"}
        return self._view_answer("views.open", params, self._new_view_id())

    def _m_views_push(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._m_views_open(params)

    def _m_views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        view_id = params.get("view_id") or params.get("external_id")
        if not view_id:
            return {"ok": False, "error": "invalid_arguments"}
        return self._view_answer("views.update", params, str(view_id))

    def _m_usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        group = params.get("usergroup")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[str(group)])}

    def _m_users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = params.get("user")
        if not isinstance(user, str) or not user:
            return {"ok": False, "error": "user_not_found"}
        info: dict[str, Any] = {
            "id": user,
            "team_id": self.team_id,
            "name": user.lower(),
            "real_name": user,
            "deleted": False,
            "is_bot": user == self.bot_user_id,
            "tz": "UTC",
            "tz_label": "Coordinated Universal Time",
            "tz_offset": 0,
            "profile": {"display_name": user.lower(), "real_name": user},
        }
        info.update(self.users.get(user, {}))
        return {"ok": True, "user": info}

    def _m_conversations_join(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not isinstance(channel, str) or not channel or channel in self.missing_channels:
            return {"ok": False, "error": "channel_not_found"}
        self.not_member.discard(channel)
        return {"ok": True, "channel": self._channel_info(channel)}

    def _m_conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not isinstance(channel, str) or not channel or channel in self.missing_channels:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "channel": self._channel_info(channel)}

    def _channel_info(self, channel: str) -> dict[str, Any]:
        return {
            "id": channel,
            "name": channel.lower(),
            "is_channel": True,
            "is_private": False,
            "is_archived": False,
            "is_member": channel not in self.not_member,
        }

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.socket_mode_url is None:
            return {"ok": False, "error": "socket_mode_url_not_set_on_double"}
        return {"ok": True, "url": self.socket_mode_url}
