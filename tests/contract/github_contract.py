"""Prism serving GitHub's own description, behind a small recording, fault-injecting proxy.

    bot (PyGithub) ──▶ GitHubContract (this proxy, loopback) ──▶ Prism (node, loopback)

Prism answers from the cut-down OpenAPI description (cut_openapi.py) and validates each
request against it; the proxy adds what Prism does not do:

- records every request (method, path, query, headers, body, status, matched operation);
- refuses and records any request that is not one of cut_openapi.OPERATIONS;
- turns Prism's `sl-violations` header into recorded violations (request side: the bot sent
  something GitHub's description does not allow; response side: GitHub's own example disagrees
  with GitHub's own schema, kept apart in `description_problems` — not the bot's fault);
- checks authentication the way GitHub does, which Prism does not: the App JWT (RS256, decoded
  with the session's public key; `iss` = App id, `exp` - `iat` ≤ 600 s, not expired) on the
  App endpoints, and an installation token this proxy issued and that has not expired on the
  others. Each token it issues is unique and expires `token_ttl` seconds later;
- conditional requests: GET answers carry an ETag, and `If-None-Match` with it answers 304;
- faults the description does not document (403 with `X-RateLimit-Remaining: 0`, 429 with
  `Retry-After`, 502, a slow answer) and documented ones chosen with Prism's `Prefer: code=`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cut_openapi import APP_JWT_OPERATIONS, REPO_ROOT, match_operation

PRISM = REPO_ROOT / "node_modules" / ".bin" / "prism"
JWT_MAX_LIFETIME = 600  # GitHub: exp at most 10 minutes after iat
JWT_LEEWAY = 60  # seconds of clock drift GitHub tolerates on iat
RATE_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
)


def key_pair() -> tuple[str, str]:
    """A fresh (private PEM, public PEM) RSA-2048 App key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrismError(RuntimeError):
    """Prism did not start or answer: always a failure."""


class PrismMissing(PrismError):
    """Node or the npm packages are not installed (a local run may skip)."""


class Prism:
    """`prism mock` on a free loopback port; started and stopped by PID."""

    def __init__(self, spec: Path, log_path: Path, *, ready_timeout: float = 45.0) -> None:
        self.spec = spec
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prism:
        if shutil.which("node") is None:
            raise PrismMissing("`node` is not on PATH (Prism needs Node 20)")
        if not PRISM.exists():
            raise PrismMissing(f"{PRISM} is missing: run `npm ci` in {REPO_ROOT}")
        self.port = free_port()
        t0 = time.monotonic()
        log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.proc = subprocess.Popen(
            [str(PRISM), "mock", "-h", "127.0.0.1", "-p", str(self.port), str(self.spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=env,
            start_new_session=True,  # its own process group: stopped as one, by our PID only
        )
        log.close()
        deadline = t0 + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrismError(f"Prism exited with {self.proc.returncode}: {self._log_tail()}")
            if "Prism is listening" in self._log_tail():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        self.started_in = time.monotonic() - t0
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise PrismError(f"Prism was not ready within {self.ready_timeout}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group Popen made for this PID
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@dataclass
class Recorded:
    """One request the bot sent (``status``: what it was answered)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    operation: tuple[str, str] | None
    auth: str | None = None  # "jwt" | "token" | None
    status: int = 0
    fault: str | None = None
    at: float = field(default_factory=time.time)


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int  # 0: answer normally (after `delay`)
    headers: dict[str, str]
    body: Any
    times: int
    delay: float
    prism_code: int | None  # ask Prism for a status its description documents
    applied: bool  # forward to Prism first, then answer the fault (a lost success)
    name: str


@dataclass
class _Token:
    value: str
    installation_id: int
    expires_at: float


class _Handler(BaseHTTPRequestHandler):
    proxy: GitHubContract
    protocol_version = "HTTP/1.1"
    server_version = "GitHub.com"
    timeout = 30
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def setup(self) -> None:
        super().setup()
        self.proxy._connections.add(self.connection)

    def finish(self) -> None:
        self.proxy._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        try:
            status, out_headers, body = self.proxy._handle(self.command, self.path, headers, raw)
        except Exception as exc:  # a bug here must show, not hang the bot
            self.proxy.violations.append(f"proxy error: {exc!r}")
            status, out_headers, body = 500, {}, b'{"message":"Server Error"}'
        try:
            self.send_response(status)
            for key, value in out_headers.items():
                self.send_header(key, value)
            if status not in (204, 304):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and status not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass  # the client gave up (slow-answer fault)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GitHubContract:
    """The recording proxy. ``url``, ``app_id`` and ``private_key_pem`` configure the bot."""

    app_id = 31337

    def __init__(self) -> None:
        self.private_key_pem, self.public_key_pem = key_pair()
        self.upstream: str | None = None
        self.prism_started_in = 0.0
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.description_problems: set[str] = set()
        self.jwt_claims: list[dict[str, Any]] = []
        self.tokens_issued: list[str] = []
        self.operations_seen: set[tuple[str, str]] = set()  # whole session
        self.token_ttl = 3600.0
        self.rate_limit = 5000
        self.rate_remaining = 5000
        self._tokens: dict[str, _Token] = {}
        self._revoked: set[str] = set()
        self._faults: list[Fault] = []
        self._allowed_violations = 0
        self._lock = threading.RLock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> GitHubContract:
        handler = type("ContractHandler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def reset(self) -> None:
        """Forget what one test did; keep issued tokens (clients are per test anyway)."""
        with self._lock:
            self.requests.clear()
            self.violations.clear()
            self.jwt_claims.clear()
            self.tokens_issued.clear()
            self._faults.clear()
            self._allowed_violations = 0
            self.token_ttl = 3600.0
            self.rate_remaining = self.rate_limit

    # ------------------------------------------------------------------ set-up
    def fail(
        self,
        method: str,
        path_regex: str,
        status: int = 0,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay: float = 0.0,
        prism_code: int | None = None,
        applied: bool = False,
        name: str = "",
    ) -> None:
        """Answer the next ``times`` matching requests with a fault (see the helpers below)."""
        with self._lock:
            self._faults.append(
                Fault(
                    method=method.upper(),
                    pattern=re.compile(path_regex),
                    status=status,
                    headers=dict(headers or {}),
                    body=body,
                    times=times,
                    delay=delay,
                    prism_code=prism_code,
                    applied=applied,
                    name=name or (f"prism {prism_code}" if prism_code else str(status)),
                )
            )

    def documented(self, method: str, path_regex: str, code: int, *, times: int = 1) -> None:
        """Prism answers a status the description documents (`Prefer: code=...`)."""
        self.fail(method, path_regex, prism_code=code, times=times)

    def rate_limited(self, method: str, path_regex: str, *, reset_in: int = 120) -> float:
        """Primary rate limit spent: 403 with X-RateLimit-Remaining: 0. Returns the reset."""
        reset = int(time.time()) + reset_in
        self.fail(
            method,
            path_regex,
            403,
            body={
                "message": "API rate limit exceeded for installation ID 101. If you reach out to "
                "GitHub Support for help, please include the request ID 0000:1111:2222.",
                "documentation_url": RATE_DOCS,
                "status": "403",
            },
            headers={
                "X-RateLimit-Limit": "5000",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Used": "5000",
                "X-RateLimit-Reset": str(reset),
                "X-RateLimit-Resource": "core",
            },
            name="rate limit 403",
        )
        return float(reset)

    def secondary_rate_limited(
        self, method: str, path_regex: str, *, retry_after: int = 60
    ) -> None:
        """Secondary rate limit: 429 with Retry-After (and a quota that is not spent)."""
        self.fail(
            method,
            path_regex,
            429,
            body={
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes "
                "before you try again.",
                "documentation_url": RATE_DOCS + "#about-secondary-rate-limits",
                "status": "429",
            },
            headers={"Retry-After": str(retry_after), "X-RateLimit-Remaining": "4321"},
            name="secondary rate limit 429",
        )

    def forbidden(self, method: str, path_regex: str, *, times: int = 1) -> None:
        """The App lacks a permission: 403 "Resource not accessible by integration"."""
        self.fail(
            method,
            path_regex,
            403,
            body={
                "message": "Resource not accessible by integration",
                "documentation_url": "https://docs.github.com/rest",
                "status": "403",
            },
            times=times,
            name="403 not accessible",
        )

    def bad_gateway(
        self, method: str, path_regex: str, *, times: int = 1, applied: bool = False
    ) -> None:
        """502 from GitHub's front end (an HTML page, not JSON)."""
        self.fail(
            method,
            path_regex,
            502,
            body=b"<html><body><h1>502 Bad Gateway</h1></body></html>",
            headers={"Content-Type": "text/html"},
            times=times,
            applied=applied,
            name="502",
        )

    def slow(self, method: str, path_regex: str, seconds: float, *, times: int = 1) -> None:
        """Answer normally, but only after ``seconds`` (past the client's timeout)."""
        self.fail(method, path_regex, 0, delay=seconds, times=times, name=f"slow {seconds}s")

    def revoke_tokens(self) -> None:
        """Every installation token issued so far is refused (App reinstalled, key rotated)."""
        with self._lock:
            self._revoked.update(self._tokens)
            self._tokens.clear()

    @contextlib.contextmanager
    def expect_violations(self) -> Iterator[list[str]]:
        """Within the block, request violations are expected: collected, not failures."""
        with self._lock:
            self._allowed_violations += 1
            start = len(self.violations)
        got: list[str] = []
        try:
            yield got
        finally:
            with self._lock:
                self._allowed_violations -= 1
                got.extend(self.violations[start:])
                del self.violations[start:]

    # ------------------------------------------------------------------ inspection
    def requests_to(self, method: str, path_regex: str) -> list[Recorded]:
        pattern = re.compile(path_regex)
        with self._lock:
            return [
                r
                for r in self.requests
                if (method == "*" or r.method == method.upper()) and pattern.search(r.path)
            ]

    def calls_of(self, method: str, template: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.operation == (method.upper(), template)]

    def check(self) -> None:
        with self._lock:
            problems = list(self.violations)
        assert not problems, "GitHub contract violations:\n- " + "\n- ".join(problems)

    # ------------------------------------------------------------------ handling
    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.method in (method, "*") and fault.pattern.search(path):
                    fault.times -= 1
                    return fault
        return None

    def _rate_headers(self) -> dict[str, str]:
        with self._lock:
            self.rate_remaining = max(0, self.rate_remaining - 1)
            remaining = self.rate_remaining
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Used": str(self.rate_limit - remaining),
            "X-RateLimit-Reset": str(int(time.time()) + 3600),
            "X-RateLimit-Resource": "core",
            "X-GitHub-Request-Id": secrets.token_hex(8).upper(),
        }

    def _violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    def _check_auth(self, rec: Recorded) -> tuple[int, str] | None:
        """None when authenticated like GitHub wants; else (status, message)."""
        assert rec.operation is not None
        value = next((v for k, v in rec.headers.items() if k.lower() == "authorization"), "")
        scheme, _, credential = value.partition(" ")
        credential = credential.strip()
        where = f"{rec.method} {rec.path}"
        if (rec.operation[0], rec.operation[1]) in APP_JWT_OPERATIONS:
            rec.auth = "jwt"
            if scheme.lower() != "bearer" or credential.count(".") != 2:
                self._violation(f"{where}: App endpoint called without an App JWT ({scheme!r})")
                return 401, "A JSON web token could not be decoded"
            try:
                claims = jwt.decode(
                    credential,
                    self.public_key_pem,
                    algorithms=["RS256"],
                    options={"require": ["iat", "exp", "iss"], "verify_iat": False},
                    leeway=JWT_LEEWAY,
                )
            except jwt.PyJWTError as exc:
                self._violation(f"{where}: App JWT refused: {exc}")
                return 401, "A JSON web token could not be decoded"
            with self._lock:
                self.jwt_claims.append(claims)
            problems = []
            if str(claims["iss"]) != str(self.app_id):
                problems.append(f"iss {claims['iss']!r} is not the App id {self.app_id}")
            if int(claims["exp"]) - int(claims["iat"]) > JWT_MAX_LIFETIME:
                problems.append(f"exp - iat = {int(claims['exp']) - int(claims['iat'])}s > 600s")
            if int(claims["iat"]) > time.time() + JWT_LEEWAY:
                problems.append("iat is in the future")
            if problems:
                self._violation(f"{where}: App JWT: " + "; ".join(problems))
                return 401, "'Expiration time' claim ('exp') is too far in the future"
            return None
        rec.auth = "token"
        if scheme.lower() not in ("token", "bearer"):
            self._violation(f"{where}: no installation token ({scheme!r})")
            return 401, "Requires authentication"
        if credential.count(".") == 2:
            self._violation(f"{where}: App JWT used where an installation token is needed")
            return 401, "Bad credentials"
        with self._lock:
            token = self._tokens.get(credential)
        if token is None:
            # Revoked by the test (revoke_tokens) or never issued: GitHub says Bad credentials.
            if credential not in self._revoked:
                self._violation(f"{where}: an installation token this GitHub never issued")
            return 401, "Bad credentials"
        if token.expires_at <= time.time():
            self._violation(f"{where}: installation token used after it expired")
            return 401, "Bad credentials"
        return None

    def _handle(
        self, method: str, raw_path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(raw_path)
        path = split.path
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        op = match_operation(method, path)
        rec = Recorded(
            method=method,
            path=path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            body=body,
            operation=op,
        )
        with self._lock:
            self.requests.append(rec)
        status, out_headers, out = self._answer(rec, raw_path, raw)
        rec.status = status
        return status, out_headers, out

    def _json(
        self, status: int, payload: Any, extra: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json; charset=utf-8", **self._rate_headers()}
        headers.update(extra or {})
        return status, headers, json.dumps(payload).encode()

    def _answer(
        self, rec: Recorded, raw_path: str, raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if rec.operation is None:
            self._violation(
                f"{rec.method} {rec.path}: not an operation of the cut-down description "
                "(add it to cut_openapi.OPERATIONS, then exercise it)"
            )
            return self._json(
                404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
            )
        with self._lock:
            self.operations_seen.add(rec.operation)
        refused = self._check_auth(rec)
        if refused is not None:
            return self._json(
                refused[0],
                {"message": refused[1], "documentation_url": "https://docs.github.com/rest"},
            )
        fault = self._take_fault(rec.method, rec.path)
        forward_headers = {
            k: v
            for k, v in rec.headers.items()
            if k.lower() not in ("host", "connection", "accept-encoding", "content-length")
        }
        if fault is not None:
            rec.fault = fault.name
            if fault.delay:
                time.sleep(fault.delay)
            if fault.prism_code is not None:
                forward_headers["Prefer"] = f"code={fault.prism_code}"
            elif fault.status:
                if fault.applied:
                    self._forward(rec, raw_path, raw, forward_headers)
                extra = {"Content-Type": "application/json; charset=utf-8", **self._rate_headers()}
                extra.update(fault.headers)
                payload = (
                    fault.body
                    if isinstance(fault.body, bytes)
                    else json.dumps(fault.body or {"message": "Server Error"}).encode()
                )
                return fault.status, extra, payload
        status, headers, out = self._forward(rec, raw_path, raw, forward_headers)
        return status, headers, out

    def _forward(
        self, rec: Recorded, raw_path: str, raw: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if not self.upstream:
            raise RuntimeError("no upstream Prism")
        target = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            conn.request(rec.method, raw_path, body=raw or None, headers=headers)
            resp = conn.getresponse()
            out = resp.read()
            status = resp.status
            got = {k: v for k, v in resp.getheaders()}
        finally:
            conn.close()
        violations = next((v for k, v in got.items() if k.lower() == "sl-violations"), None)
        if violations:
            self._record_prism_violations(rec, violations)
        out_headers = {
            k: v
            for k, v in got.items()
            if k.lower() not in _HOP_BY_HOP
            and k.lower() != "sl-violations"
            and not k.lower().startswith("access-control-")
        }
        out_headers.update(self._rate_headers())
        if rec.operation == ("POST", "/app/installations/{installation_id}/access_tokens") and (
            status == 201
        ):
            out = self._issue_token(rec, out)
        if rec.method == "GET" and status == 200:
            etag = 'W/"' + hashlib.sha256(out).hexdigest()[:40] + '"'
            out_headers["ETag"] = etag
            asked = next((v for k, v in rec.headers.items() if k.lower() == "if-none-match"), None)
            if asked == etag:
                return 304, {"ETag": etag, **self._rate_headers()}, b""
        return status, out_headers, out

    def _record_prism_violations(self, rec: Recorded, header: str) -> None:
        try:
            items = json.loads(header)
        except ValueError:
            items = [{"location": ["request"], "message": header}]
        for item in items:
            location = item.get("location") or []
            at = ".".join(map(str, location))
            text = f"{rec.method} {rec.path}: {item.get('message')} (at {at})"
            if location[:1] == ["request"]:
                self._violation(f"Prism: {text}")
            else:
                # GitHub's example disagrees with GitHub's schema: the description's problem.
                op = " ".join(rec.operation or (rec.method, rec.path))
                with self._lock:
                    self.description_problems.add(f"{op}: {item.get('message')}")

    def _issue_token(self, rec: Recorded, out: bytes) -> bytes:
        data = json.loads(out)
        m = re.search(r"/app/installations/(\d+)/", rec.path)
        # Long like today's ghs_ tokens: nothing may assume a fixed length.
        value = "ghs_" + secrets.token_urlsafe(240).replace("-", "A").replace("_", "b")
        expires = time.time() + self.token_ttl
        data["token"] = value
        data["expires_at"] = _iso(expires)
        with self._lock:
            self._tokens[value] = _Token(value, int(m[1]) if m else 0, expires)
            self.tokens_issued.append(value)
        return json.dumps(data).encode()
