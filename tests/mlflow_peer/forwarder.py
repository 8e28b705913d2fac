"""A recording loopback forwarder between two real peers (MLflow ⇄ the bridge).

It passes every request on unchanged and records what passed (path, headers, body, the
answer's status), so a test can say exactly which events and headers MLflow sent. Two faults,
each taken once: `lose_next_answer()` forwards a request but answers 503 instead of the real
answer (MLflow's own retry then resends the same delivery: a redelivery of something the
bridge already stored), and `hold(pattern, seconds)` keeps a request before forwarding it
(so a test can kill the bridge while it waits inside a call).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2 as httpx

HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


@dataclass
class Passed:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what upstream answered
    answered: int = 0  # what the caller got
    at: float = field(default_factory=time.time)


class Forwarder:
    def __init__(self, upstream: str = "") -> None:
        self.upstream = upstream
        self.passed: list[Passed] = []
        self._lose = 0
        self._holds: list[tuple[re.Pattern[str], float]] = []
        self.holding = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer._serve(self)

            def do_POST(self) -> None:
                outer._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # No kept-alive upstream connections (an idle one closing as it is reused fails).
        self._client = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def lose_next_answer(self) -> None:
        with self._lock:
            self._lose += 1

    def hold(self, pattern: str, seconds: float) -> None:
        with self._lock:
            self._holds.append((re.compile(pattern), seconds))
            self.holding.clear()

    def to(self, path_regex: str) -> list[Passed]:
        with self._lock:
            return [p for p in self.passed if re.search(path_regex, p.path)]

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {k: v for k, v in handler.headers.items()}
        record = Passed(handler.command, handler.path, headers, body)
        with self._lock:
            self.passed.append(record)
            hold = next((h for h in self._holds if h[0].search(handler.path)), None)
            if hold is not None:
                self._holds.remove(hold)
        if hold is not None:
            self.holding.set()
            time.sleep(hold[1])
        try:
            resp = self._client.request(
                handler.command,
                self.upstream + handler.path,
                content=body,
                headers={k: v for k, v in headers.items() if k.lower() not in HOP},
            )
            status, answer, ctype = (
                resp.status_code,
                resp.content,
                resp.headers.get("content-type", "application/json"),
            )
        except httpx.HTTPError:
            status, answer, ctype = 502, b'{"error": "upstream down"}', "application/json"
        record.status = status
        with self._lock:
            lose = self._lose > 0 and handler.command == "POST"
            if lose:
                self._lose -= 1
        if lose:
            status, answer = 503, b'{"error": "answer lost on the way"}'
        record.answered = status
        try:
            handler.send_response(status)
            handler.send_header("content-type", ctype)
            handler.send_header("content-length", str(len(answer)))
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:
            pass
