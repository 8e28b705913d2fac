"""A recording, in-memory loopback double of GitHub's REST API for PyGithub tests.

`GitHubDouble` answers the endpoints chatops-bridge uses with GitHub's real shapes and wording,
checks App JWTs (RS256, against `public_key_pem`) and installation tokens the way GitHub does,
and records every request. URLs inside answers point back at the double, because PyGithub
refuses to follow URLs to another host or port; ``html_url`` values use https://github.com.

Usage::

    with GitHubDouble() as gh:
        gh.add_repo("acme/ml")
        gh.add_pull("acme/ml", 7, head_sha="a" * 40)
        gi = GithubIntegration(auth=Auth.AppAuth(gh.app_id, gh.private_key_pem),
                               base_url=gh.url, seconds_between_requests=0,
                               seconds_between_writes=0)
        ...
        assert gh.unknown_routes == []

Matching: ``requests_to``/``wait_for``/``fail`` take a method ("*" = any) and a regular
expression applied with `re.search` to the request path (no query string); anchor it with
``^...$`` for an exact match.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import re
import secrets
import socket
import string
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["GitHubDouble", "Recorded", "app_key_pair"]

DOCS = "https://docs.github.com/rest"
RATE_LIMIT = 5000
TOKEN_LENGTH = 500
JWT_LEEWAY = 1  # seconds of clock skew tolerated
_TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_"
_LEVELS = {"none": 0, "read": 1, "write": 2, "admin": 3}
_ROLE_TO_PERMISSION = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
DEFAULT_PERMISSIONS = {
    "metadata": "read",
    "contents": "write",
    "issues": "write",
    "pull_requests": "write",
    "actions": "write",
    "deployments": "write",
    "checks": "read",
    "statuses": "read",
}


@functools.cache
def app_key_pair() -> tuple[str, str]:
    """(private PEM, public PEM) of an RSA-2048 App key, generated once per process."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # "BEGIN RSA PRIVATE KEY", like GitHub's
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str, *, end_of_day: bool = False) -> datetime:
    value = value.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        day = datetime.fromisoformat(value).replace(tzinfo=UTC)
        return day + timedelta(days=1, microseconds=-1) if end_of_day else day
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _created_matches(created_at: str, spec: str) -> bool:
    """GitHub's `created` filter: ``X``, ``>=X``, ``>X``, ``<=X``, ``<X``, ``X..Y``, ``X..*``."""
    when = _parse_time(created_at)
    if ".." in spec:
        low, high = spec.split("..", 1)
        return (low == "*" or when >= _parse_time(low)) and (
            high == "*" or when <= _parse_time(high, end_of_day=True)
        )
    for op in (">=", "<=", ">", "<"):
        if spec.startswith(op):
            bound = spec[len(op) :]
            if op == ">=":
                return when >= _parse_time(bound)
            if op == "<=":
                return when <= _parse_time(bound, end_of_day=True)
            if op == ">":
                return when > _parse_time(bound, end_of_day=True)
            return when < _parse_time(bound)
    return _parse_time(spec) <= when <= _parse_time(spec, end_of_day=True)


@dataclass
class Recorded:
    """One request received by the double (``status`` is what it answered)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.time)
    status: int = 0


@dataclass
class _Repo:
    full_name: str
    id: int
    installation_id: int
    default_branch: str
    permissions: dict[str, str]

    @property
    def owner(self) -> str:
        return self.full_name.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/", 1)[1]


@dataclass
class _Token:
    installation_id: int
    expires_at: float
    permissions: dict[str, str]
    repositories: set[str] | None  # lower-case full names, None = all of the installation


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]
    times: int
    delay: float
    applied: bool


class _Answer(Exception):
    """Raised by route handlers to answer an error right away."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.payload: dict[str, Any] = {"message": message, "documentation_url": DOCS, **extra}


@dataclass
class _Ctx:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    params: dict[str, str]
    repo: _Repo | None = None
    token: _Token | None = None


Handler = Callable[[_Ctx], tuple[int, Any]]
# Each route: method, path regex, auth ("app" | "installation" | "any"), required permissions
# (any one of the (permission, level) pairs suffices), handler attribute name.
_REPO = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
_ROUTES: list[tuple[str, str, str, tuple[tuple[str, str], ...], str]] = [
    ("GET", r"/app", "app", (), "_get_app"),
    ("GET", r"/app/installations", "app", (), "_list_installations"),
    ("GET", r"/app/installations/(?P<iid>\d+)", "app", (), "_get_installation"),
    ("POST", r"/app/installations/(?P<iid>\d+)/access_tokens", "app", (), "_create_token"),
    ("GET", _REPO + r"/installation", "app", (), "_get_repo_installation"),
    ("GET", r"/installation/repositories", "installation", (), "_installation_repos"),
    ("GET", r"/rate_limit", "any", (), "_get_rate_limit"),
    ("GET", _REPO, "installation", (("metadata", "read"),), "_get_repo"),
    ("GET", _REPO + r"/pulls", "installation", (("pull_requests", "read"),), "_list_pulls"),
    (
        "GET",
        _REPO + r"/pulls/(?P<number>\d+)",
        "installation",
        (("pull_requests", "read"),),
        "_get_pull",
    ),
    (
        "GET",
        _REPO + r"/branches/(?P<branch>.+)",
        "installation",
        (("contents", "read"),),
        "_get_branch",
    ),
    (
        "GET",
        _REPO + r"/issues/(?P<number>\d+)",
        "installation",
        (("issues", "read"), ("pull_requests", "read")),
        "_get_issue",
    ),
    (
        "GET",
        _REPO + r"/issues/(?P<number>\d+)/labels",
        "installation",
        (("issues", "read"), ("pull_requests", "read")),
        "_get_labels",
    ),
    (
        "POST",
        _REPO + r"/issues/(?P<number>\d+)/labels",
        "installation",
        (("issues", "write"), ("pull_requests", "write")),
        "_add_labels",
    ),
    (
        "PUT",
        _REPO + r"/issues/(?P<number>\d+)/labels",
        "installation",
        (("issues", "write"), ("pull_requests", "write")),
        "_set_labels",
    ),
    (
        "DELETE",
        _REPO + r"/issues/(?P<number>\d+)/labels",
        "installation",
        (("issues", "write"), ("pull_requests", "write")),
        "_clear_labels",
    ),
    (
        "DELETE",
        _REPO + r"/issues/(?P<number>\d+)/labels/(?P<name>[^/]+)",
        "installation",
        (("issues", "write"), ("pull_requests", "write")),
        "_remove_label",
    ),
    (
        "GET",
        _REPO + r"/issues/(?P<number>\d+)/comments",
        "installation",
        (("issues", "read"), ("pull_requests", "read")),
        "_list_comments",
    ),
    (
        "POST",
        _REPO + r"/issues/(?P<number>\d+)/comments",
        "installation",
        (("issues", "write"), ("pull_requests", "write")),
        "_create_comment",
    ),
    (
        "GET",
        _REPO + r"/issues/comments/(?P<cid>\d+)",
        "installation",
        (("issues", "read"), ("pull_requests", "read")),
        "_get_comment",
    ),
    (
        "PATCH",
        _REPO + r"/issues/comments/(?P<cid>\d+)",
        "installation",
        (("issues", "write"), ("pull_requests", "write")),
        "_edit_comment",
    ),
    (
        "DELETE",
        _REPO + r"/issues/comments/(?P<cid>\d+)",
        "installation",
        (("issues", "write"), ("pull_requests", "write")),
        "_delete_comment",
    ),
    ("POST", _REPO + r"/dispatches", "installation", (("contents", "write"),), "_dispatch_event"),
    ("GET", _REPO + r"/actions/runs", "installation", (("actions", "read"),), "_list_runs"),
    (
        "GET",
        _REPO + r"/actions/runs/(?P<run_id>\d+)",
        "installation",
        (("actions", "read"),),
        "_get_run",
    ),
    (
        "POST",
        _REPO + r"/actions/runs/(?P<run_id>\d+)/cancel",
        "installation",
        (("actions", "write"),),
        "_cancel_run",
    ),
    (
        "POST",
        _REPO + r"/actions/runs/(?P<run_id>\d+)/deployment_protection_rule",
        "installation",
        (("deployments", "write"),),
        "_answer_gate",
    ),
    (
        "GET",
        _REPO + r"/actions/runs/(?P<run_id>\d+)/jobs",
        "installation",
        (("actions", "read"),),
        "_list_jobs",
    ),
    (
        "GET",
        _REPO + r"/collaborators/(?P<login>[^/]+)/permission",
        "installation",
        (("metadata", "read"),),
        "_get_permission",
    ),
    (
        "GET",
        _REPO + r"/deployments",
        "installation",
        (("deployments", "read"),),
        "_list_deployments",
    ),
    (
        "GET",
        _REPO + r"/deployments/(?P<deployment_id>\d+)/statuses",
        "installation",
        (("deployments", "read"),),
        "_list_deployment_statuses",
    ),
]
_COMPILED = [(m, re.compile(p), a, perms, h) for m, p, a, perms, h in _ROUTES]


class _HTTPHandler(BaseHTTPRequestHandler):
    double: GitHubDouble
    protocol_version = "HTTP/1.1"  # keep-alive, like api.github.com (requests reuses sockets)
    server_version = "GitHubDouble/1.0"
    timeout = 30
    # One send per answer and TCP_NODELAY: headers and body in separate small writes meet
    # delayed ACKs on keep-alive connections and cost ~40 ms per request.
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def setup(self) -> None:
        super().setup()
        self.double._connections.add(self.connection)

    def finish(self) -> None:
        self.double._connections.discard(self.connection)
        # A client that gave up (the bridge's timeout tests) has closed its end already.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().finish()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        try:
            status, extra, body = self.double._handle(self.command, self.path, headers, raw)
        except Exception as exc:  # a bug in the double must be visible, not a hang
            self.double.server_errors.append(repr(exc))
            status, extra, body = 500, {}, b'{"message":"Server Error"}'
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and status != 304:
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            super().handle_error(request, client_address)


class GitHubDouble:
    """Loopback stand-in for api.github.com; see the module docstring."""

    app_id: int = 4242
    app_slug: str = "chatops-bridge"

    def __init__(self) -> None:
        self.private_key_pem, self.public_key_pem = app_key_pair()
        self.requests: list[Recorded] = []
        self.jwt_claims: list[dict[str, Any]] = []
        self.jwt_rejections: list[str] = []
        self.tokens_issued: list[str] = []
        self.dispatches: list[dict[str, Any]] = []
        # answers to custom deployment protection rules (POST .../deployment_protection_rule)
        self.gate_answers: list[dict[str, Any]] = []
        self.events = ["issue_comment", "pull_request", "workflow_run", "repository_dispatch"]
        self.unknown_routes: list[str] = []
        self.server_errors: list[str] = []
        self.not_modified = 0
        self.rate_remaining = RATE_LIMIT
        self.rate_reset = int(time.time()) + 3600
        self.token_ttl = 3600.0  # seconds; PyGithub refreshes 20 s before expiry
        # run id -> jobs served by GET .../actions/runs/{id}/jobs (synthesised when absent)
        self.jobs: dict[int, list[dict[str, Any]]] = {}
        # (repo full name, deployment id) -> statuses
        self.deployment_statuses: dict[tuple[str, int], list[dict[str, Any]]] = {}
        # repo full name -> deployments, newest first (as GitHub lists them)
        self.deployments: dict[str, list[dict[str, Any]]] = {}
        self._repos: dict[str, _Repo] = {}
        self._pulls: dict[tuple[str, int], dict[str, Any]] = {}
        self._labels: dict[tuple[str, int], list[str]] = {}
        self._branches: dict[tuple[str, str], str] = {}
        self._comments: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self._runs: dict[str, dict[int, dict[str, Any]]] = {}
        self._permissions: dict[tuple[str, str], str] = {}
        self._tokens: dict[str, _Token] = {}
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1001)
        self._connections: set[socket.socket] = set()
        self._cond = threading.Condition(threading.RLock())
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base = ""
        self._created = time.time()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> GitHubDouble:
        if self._server is not None:
            return self
        handler = type("GitHubHandler", (_HTTPHandler,), {"double": self})
        server = _Server(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        self._server = server
        self._base = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        for conn in list(self._connections):  # end idle keep-alive connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> GitHubDouble:
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
        """Base URL for PyGithub's ``base_url`` (no trailing slash)."""
        if not self._base:
            raise RuntimeError("GitHubDouble is not started")
        return self._base

    # ------------------------------------------------------------------ set-up
    def add_repo(
        self,
        full_name: str,
        *,
        installation_id: int = 1,
        default_branch: str = "main",
        permissions: dict[str, str] | None = None,
    ) -> None:
        """Add a repository the App is installed on (``permissions``: the App's on this repo)."""
        with self._cond:
            self._repos[full_name.lower()] = _Repo(
                full_name=full_name,
                id=next(self._ids),
                installation_id=installation_id,
                default_branch=default_branch,
                permissions=dict(DEFAULT_PERMISSIONS if permissions is None else permissions),
            )
            self._runs.setdefault(full_name.lower(), {})

    def add_pull(
        self,
        full_name: str,
        number: int,
        *,
        head_sha: str,
        head_ref: str = "feature",
        base_ref: str = "main",
        state: str = "open",
        merged: bool = False,
        title: str = "Improve model",
        user: str = "octocat",
        labels: list[str] | None = None,
        head_repo: str | None = None,
        body: str = "",
    ) -> None:
        """Add a pull request (``head_repo``: full name of a fork it comes from)."""
        repo = self._repo(full_name)
        now = time.time()
        with self._cond:
            self._pulls[(repo.full_name.lower(), number)] = {
                "id": next(self._ids),
                "number": number,
                "head_sha": head_sha,
                "head_ref": head_ref,
                "base_ref": base_ref,
                "state": state,
                "merged": merged,
                "title": title,
                "user": user,
                "head_repo": head_repo or repo.full_name,
                "body": body,
                "created_at": now,
                "updated_at": now,
            }
            self._labels[(repo.full_name.lower(), number)] = list(labels or [])
            self._comments.setdefault((repo.full_name.lower(), number), [])

    def set_branch(self, full_name: str, branch: str, sha: str) -> None:
        """Make ``branch`` exist with ``sha`` at its head."""
        repo = self._repo(full_name)
        with self._cond:
            self._branches[(repo.full_name.lower(), branch)] = sha

    def set_permission(self, full_name: str, login: str, permission: str) -> None:
        """Set ``login``'s role on the repo: admin|maintain|write|triage|read|none."""
        if permission not in _ROLE_TO_PERMISSION:
            raise ValueError(f"unknown permission {permission!r}")
        repo = self._repo(full_name)
        with self._cond:
            self._permissions[(repo.full_name.lower(), login.lower())] = permission

    def add_run(self, full_name: str, run: dict[str, Any]) -> dict[str, Any]:
        """Add a workflow run; missing fields get defaults. The same dict is served, so
        changing it later (``run["status"] = "completed"``) changes what GitHub answers."""
        repo = self._repo(full_name)
        full = repo.full_name
        with self._cond:
            run_id = int(run.setdefault("id", next(self._ids)))
            now = _iso(time.time())
            api = f"{self._base}/repos/{full}/actions/runs/{run_id}"
            name = run.get("name", "evaluate")
            defaults: dict[str, Any] = {
                "name": name,
                "node_id": f"WFR_{run_id}",
                "head_branch": repo.default_branch,
                "head_sha": secrets.token_hex(20),
                "path": ".github/workflows/evaluate.yml",
                "display_title": name,
                "run_number": len(self._runs[full.lower()]) + 1,
                "event": "repository_dispatch",
                "status": "queued",
                "conclusion": None,
                "workflow_id": 161335,
                "check_suite_id": run_id + 7,
                "check_suite_node_id": f"CS_{run_id}",
                "url": api,
                "html_url": f"https://github.com/{full}/actions/runs/{run_id}",
                "pull_requests": [],
                "created_at": now,
                "updated_at": now,
                "run_attempt": 1,
                "referenced_workflows": [],
                "run_started_at": now,
                "actor": self._user("octocat"),
                "triggering_actor": self._user("octocat"),
                "jobs_url": f"{api}/jobs",
                "logs_url": f"{api}/logs",
                "check_suite_url": f"{self._base}/repos/{full}/check-suites/{run_id + 7}",
                "artifacts_url": f"{api}/artifacts",
                "cancel_url": f"{api}/cancel",
                "rerun_url": f"{api}/rerun",
                "previous_attempt_url": None,
                "workflow_url": f"{self._base}/repos/{full}/actions/workflows/161335",
                "repository": self._repo_json(repo, minimal=True),
                "head_repository": self._repo_json(repo, minimal=True),
            }
            for key, value in defaults.items():
                run.setdefault(key, value)
            self._runs[full.lower()][run_id] = run
        return run

    def add_comment(
        self,
        full_name: str,
        number: int,
        body: str,
        *,
        user: str = "github-actions[bot]",
        user_type: str = "Bot",
    ) -> dict[str, Any]:
        """Add a comment to PR ``number`` as if ``user`` wrote it; return the served dict."""
        repo = self._repo(full_name)
        with self._cond:
            if (repo.full_name.lower(), number) not in self._pulls:
                raise KeyError(f"no pull request {full_name}#{number}: call add_pull first")
            return self._new_comment(repo, number, body, user, user_type)

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay: float = 0.0,
        applied: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` after ``delay`` seconds.

        ``status=0`` only delays and then answers normally. Without ``body``, GitHub's usual
        wording for the status is used (403 with ``X-RateLimit-Remaining: 0`` → rate limit).
        ``applied=True`` first handles the request for real (a dispatch is accepted, a label
        added) and only then answers the fault, like a gateway error that hides a success.
        """
        with self._cond:
            self._faults.append(
                _Fault(
                    method=method.upper(),
                    pattern=re.compile(path_regex),
                    status=status,
                    body=body,
                    headers=dict(headers or {}),
                    times=times,
                    delay=delay,
                    applied=applied,
                )
            )

    def expire_tokens(self) -> None:
        """Make every installation token issued so far expired (GitHub answers 401)."""
        with self._cond:
            for token in self._tokens.values():
                token.expires_at = time.time() - 1

    # ------------------------------------------------------------------ inspection
    def labels(self, full_name: str, number: int) -> list[str]:
        with self._cond:
            return list(self._labels.get((self._repo(full_name).full_name.lower(), number), []))

    def comments(self, full_name: str, number: int) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._comments.get((self._repo(full_name).full_name.lower(), number), []))

    def requests_to(self, method: str, path_regex: str) -> list[Recorded]:
        pattern = re.compile(path_regex)
        method = method.upper()
        with self._cond:
            return [
                r
                for r in self.requests
                if (method == "*" or r.method == method) and pattern.search(r.path)
            ]

    def wait_for(
        self, method: str, path_regex: str, count: int = 1, timeout: float = 5.0
    ) -> list[Recorded]:
        """Wait until ``count`` matching requests were answered; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.requests_to(method, path_regex)
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    received = [f"{r.method} {r.path} -> {r.status}" for r in self.requests]
                    raise AssertionError(
                        f"expected {count} {method} request(s) matching {path_regex!r} within "
                        f"{timeout}s, got {len(found)}; received: {received}"
                    )
                self._cond.wait(left)

    def reset(self) -> None:
        """Forget recorded requests, claims, dispatches and faults; keep the repositories."""
        with self._cond:
            self.requests.clear()
            self.jwt_claims.clear()
            self.jwt_rejections.clear()
            self.dispatches.clear()
            self.gate_answers.clear()
            self.unknown_routes.clear()
            self.server_errors.clear()
            self._faults.clear()
            self.not_modified = 0

    # ------------------------------------------------------------------ JSON shapes
    def _repo(self, full_name: str) -> _Repo:
        repo = self._repos.get(full_name.lower())
        if repo is None:
            raise KeyError(f"unknown repository {full_name!r}: call add_repo first")
        return repo

    def _user(self, login: str, user_type: str | None = None) -> dict[str, Any]:
        uid = zlib.crc32(login.encode()) % 10_000_000 + 1
        if user_type is None:
            user_type = "Bot" if login.endswith("[bot]") else "User"
        return {
            "login": login,
            "id": uid,
            "node_id": f"U_{uid}",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
            "url": f"{self._base}/users/{quote(login)}",
            "html_url": f"https://github.com/{quote(login)}",
            "type": user_type,
            "site_admin": False,
        }

    def _repo_json(self, repo: _Repo, *, minimal: bool = False) -> dict[str, Any]:
        full = repo.full_name
        api = f"{self._base}/repos/{full}"
        data: dict[str, Any] = {
            "id": repo.id,
            "node_id": f"R_{repo.id}",
            "name": repo.name,
            "full_name": full,
            "private": True,
            "owner": self._user(repo.owner, "Organization"),
            "html_url": f"https://github.com/{full}",
            "description": None,
            "fork": False,
            "url": api,
        }
        if minimal:
            return data
        created = _iso(self._created)
        data.update(
            {
                "issues_url": f"{api}/issues{{/number}}",
                "pulls_url": f"{api}/pulls{{/number}}",
                "labels_url": f"{api}/labels{{/name}}",
                "created_at": created,
                "updated_at": created,
                "pushed_at": created,
                "default_branch": repo.default_branch,
                "visibility": "private",
                "archived": False,
                "disabled": False,
                "has_issues": True,
                "open_issues_count": sum(
                    1
                    for (name, _), p in self._pulls.items()
                    if name == full.lower() and p["state"] == "open"
                ),
                "permissions": {
                    "admin": False,
                    "maintain": False,
                    "push": False,
                    "triage": False,
                    "pull": True,
                },
            }
        )
        return data

    def _label_json(self, repo: _Repo, name: str) -> dict[str, Any]:
        lid = zlib.crc32(f"{repo.full_name}:{name}".encode())
        return {
            "id": lid,
            "node_id": f"LA_{lid}",
            "url": f"{self._base}/repos/{repo.full_name}/labels/{quote(name, safe='')}",
            "name": name,
            "color": "ededed",
            "default": False,
            "description": None,
        }

    def _pull_json(self, repo: _Repo, pull: dict[str, Any]) -> dict[str, Any]:
        full = repo.full_name
        n = pull["number"]
        api = f"{self._base}/repos/{full}"
        head_repo = self._repos.get(pull["head_repo"].lower())
        head_repo_json = (
            self._repo_json(head_repo, minimal=True)
            if head_repo is not None
            else {
                **self._repo_json(repo, minimal=True),
                "full_name": pull["head_repo"],
                "name": pull["head_repo"].split("/", 1)[-1],
                "owner": self._user(pull["head_repo"].split("/", 1)[0]),
                "fork": True,
                "id": zlib.crc32(pull["head_repo"].encode()),
            }
        )
        closed = pull["state"] == "closed"
        updated = _iso(pull["updated_at"])
        return {
            "url": f"{api}/pulls/{n}",
            "id": pull["id"],
            "node_id": f"PR_{pull['id']}",
            "html_url": f"https://github.com/{full}/pull/{n}",
            "diff_url": f"https://github.com/{full}/pull/{n}.diff",
            "patch_url": f"https://github.com/{full}/pull/{n}.patch",
            "issue_url": f"{api}/issues/{n}",
            "commits_url": f"{api}/pulls/{n}/commits",
            "review_comments_url": f"{api}/pulls/{n}/comments",
            "comments_url": f"{api}/issues/{n}/comments",
            "statuses_url": f"{api}/statuses/{pull['head_sha']}",
            "number": n,
            "state": pull["state"],
            "locked": False,
            "title": pull["title"],
            "user": self._user(pull["user"]),
            "body": pull["body"],
            "labels": [self._label_json(repo, x) for x in self._labels[(full.lower(), n)]],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": _iso(pull["created_at"]),
            "updated_at": updated,
            "closed_at": updated if closed else None,
            "merged_at": updated if pull["merged"] else None,
            "merge_commit_sha": None,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": {
                "label": f"{head_repo_json['owner']['login']}:{pull['head_ref']}",
                "ref": pull["head_ref"],
                "sha": pull["head_sha"],
                "user": head_repo_json["owner"],
                "repo": head_repo_json,
            },
            "base": {
                "label": f"{repo.owner}:{pull['base_ref']}",
                "ref": pull["base_ref"],
                "sha": "0" * 40,
                "user": self._user(repo.owner, "Organization"),
                "repo": self._repo_json(repo, minimal=True),
            },
            "author_association": "CONTRIBUTOR",
            "auto_merge": None,
            "draft": False,
            "merged": pull["merged"],
            "mergeable": None,
            "mergeable_state": "unknown",
            "merged_by": None,
            "comments": len(self._comments[(full.lower(), n)]),
            "review_comments": 0,
            "maintainer_can_modify": False,
            "commits": 1,
            "additions": 1,
            "deletions": 0,
            "changed_files": 1,
        }

    def _issue_json(self, repo: _Repo, pull: dict[str, Any]) -> dict[str, Any]:
        full = repo.full_name
        n = pull["number"]
        api = f"{self._base}/repos/{full}"
        p = self._pull_json(repo, pull)
        return {
            "url": f"{api}/issues/{n}",
            "repository_url": api,
            "labels_url": f"{api}/issues/{n}/labels{{/name}}",
            "comments_url": f"{api}/issues/{n}/comments",
            "events_url": f"{api}/issues/{n}/events",
            "html_url": p["html_url"],
            "id": pull["id"] + 500_000,
            "node_id": f"I_{pull['id']}",
            "number": n,
            "title": p["title"],
            "user": p["user"],
            "labels": p["labels"],
            "state": p["state"],
            "locked": False,
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "comments": p["comments"],
            "created_at": p["created_at"],
            "updated_at": p["updated_at"],
            "closed_at": p["closed_at"],
            "author_association": p["author_association"],
            "active_lock_reason": None,
            "draft": False,
            "body": p["body"],
            "pull_request": {
                "url": p["url"],
                "html_url": p["html_url"],
                "diff_url": p["diff_url"],
                "patch_url": p["patch_url"],
                "merged_at": p["merged_at"],
            },
        }

    def _new_comment(
        self, repo: _Repo, number: int, body: str, login: str, user_type: str
    ) -> dict[str, Any]:
        cid = next(self._ids)
        now = _iso(time.time())
        full = repo.full_name
        comment = {
            "id": cid,
            "node_id": f"IC_{cid}",
            "url": f"{self._base}/repos/{full}/issues/comments/{cid}",
            "html_url": f"https://github.com/{full}/pull/{number}#issuecomment-{cid}",
            "issue_url": f"{self._base}/repos/{full}/issues/{number}",
            "body": body,
            "user": self._user(login, user_type),
            "created_at": now,
            "updated_at": now,
            "author_association": "NONE" if user_type == "Bot" else "CONTRIBUTOR",
            "performed_via_github_app": None,
        }
        self._comments.setdefault((full.lower(), number), []).append(comment)
        return comment

    def _installation_json(self, iid: int) -> dict[str, Any]:
        repos = [r for r in self._repos.values() if r.installation_id == iid]
        account = repos[0].owner if repos else "acme"
        created = _iso(self._created)
        return {
            "id": iid,
            "account": self._user(account, "Organization"),
            "repository_selection": "selected",
            "access_tokens_url": f"{self._base}/app/installations/{iid}/access_tokens",
            "repositories_url": f"{self._base}/installation/repositories",
            "html_url": f"https://github.com/organizations/{account}/settings/installations/{iid}",
            "app_id": self.app_id,
            "app_slug": self.app_slug,
            "target_id": self._user(account)["id"],
            "target_type": "Organization",
            "permissions": self._installation_permissions(iid),
            "events": list(self.events),
            "created_at": created,
            "updated_at": created,
            "single_file_name": None,
            "has_multiple_single_files": False,
            "single_file_paths": [],
            "suspended_by": None,
            "suspended_at": None,
        }

    def _installation_permissions(self, iid: int) -> dict[str, str]:
        merged: dict[str, str] = {}
        for repo in self._repos.values():
            if repo.installation_id != iid:
                continue
            for perm, level in repo.permissions.items():
                if _LEVELS.get(level, 0) > _LEVELS.get(merged.get(perm, "none"), 0):
                    merged[perm] = level
        return merged

    # ------------------------------------------------------------------ HTTP plumbing
    def _rate_headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(RATE_LIMIT),
            "X-RateLimit-Remaining": str(max(self.rate_remaining, 0)),
            "X-RateLimit-Reset": str(self.rate_reset),
            "X-RateLimit-Used": str(RATE_LIMIT - max(self.rate_remaining, 0)),
            "X-RateLimit-Resource": "core",
        }

    @staticmethod
    def _default_error(status: int, headers: dict[str, str]) -> dict[str, Any]:
        lowered = {k.lower(): v for k, v in headers.items()}
        if status == 403 and lowered.get("x-ratelimit-remaining") == "0":
            message = "API rate limit exceeded for installation ID 1."
        elif status in (403, 429) and "retry-after" in lowered:
            message = (
                "You have exceeded a secondary rate limit. "
                "Please wait a few minutes before you try again."
            )
        else:
            message = {
                400: "Problems parsing JSON",
                401: "Bad credentials",
                403: "Resource not accessible by integration",
                404: "Not Found",
                409: "Conflict",
                422: "Validation Failed",
                429: "API rate limit exceeded for installation ID 1.",
                500: "Server Error",
                502: "Server Error",
                503: "Service Unavailable",
                504: "We couldn't respond to your request in time.",
            }.get(status, "Server Error")
        return {"message": message, "documentation_url": DOCS}

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if (
                fault.times > 0
                and fault.method in ("*", method)
                and fault.pattern.search(path) is not None
            ):
                fault.times -= 1
                return fault
        return None

    def _handle(
        self, method: str, raw_path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(raw_path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw.decode("utf-8"))
            except ValueError:
                bad_json = True
        record = Recorded(method=method, path=path, query=query, headers=headers, body=body)
        with self._cond:
            fault = self._take_fault(method, path)
        if fault is not None and fault.delay > 0:
            time.sleep(fault.delay)
        with self._cond:
            try:
                if fault is not None and fault.status >= 100:
                    if fault.applied and not bad_json:
                        self._route(method, path, query, headers, body)
                    extra = {**self._rate_headers(), **fault.headers}
                    payload: Any = fault.body or self._default_error(fault.status, fault.headers)
                    status = fault.status
                elif bad_json:
                    status, extra = 400, self._rate_headers()
                    payload = {"message": "Problems parsing JSON", "documentation_url": DOCS}
                else:
                    status, extra, payload = self._route(method, path, query, headers, body)
                encoded = b"" if payload is None else json.dumps(payload).encode()
                extra.setdefault("Content-Type", "application/json; charset=utf-8")
                extra["X-GitHub-Request-Id"] = secrets.token_hex(8).upper()
                if method == "GET" and status == 200:
                    etag = '"' + hashlib.sha256(encoded).hexdigest() + '"'
                    extra["ETag"] = etag
                    wanted = _header(headers, "If-None-Match")
                    if wanted and etag in {t.strip().removeprefix("W/") for t in wanted.split(",")}:
                        self.not_modified += 1
                        status, encoded = 304, b""
                        extra.pop("Content-Type", None)
                injected = fault is not None and fault.status >= 100
                if status != 304 and path != "/rate_limit" and not injected:
                    self.rate_remaining -= 1
                    extra.update(self._rate_headers())
                record.status = status
                return status, extra, encoded
            finally:
                self.requests.append(record)
                self._cond.notify_all()

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, str], Any]:
        extra = self._rate_headers()
        if self.rate_remaining <= 0 and path != "/rate_limit":
            return 403, extra, self._default_error(403, {"X-RateLimit-Remaining": "0"})
        for route_method, pattern, auth, perms, handler_name in _COMPILED:
            match = pattern.fullmatch(path)
            if match is None or route_method != method:
                continue
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            ctx = _Ctx(method, path, query, headers, body, params)
            try:
                self._authorize(ctx, auth, perms)
                handler: Handler = getattr(self, handler_name)
                status, payload = handler(ctx)
            except _Answer as answer:
                return answer.status, extra, answer.payload
            if isinstance(payload, tuple):  # (items, link header)
                payload, link = payload
                if link:
                    extra["Link"] = link
            return status, extra, payload
        self.unknown_routes.append(f"{method} {path}")
        return 404, extra, {"message": "Not Found", "documentation_url": DOCS}

    def _authorize(self, ctx: _Ctx, auth: str, perms: tuple[tuple[str, str], ...]) -> None:
        value = _header(ctx.headers, "Authorization")
        scheme, _, credential = (value or "").partition(" ")
        credential = credential.strip()
        if auth == "any":
            return
        if auth == "app":
            self._check_jwt(scheme, credential)
            return
        if not value:
            raise _Answer(401, "Requires authentication")
        token = self._tokens.get(credential) if scheme.lower() in ("token", "bearer") else None
        if token is None or token.expires_at <= time.time():
            raise _Answer(401, "Bad credentials")
        ctx.token = token
        if "owner" in ctx.params:
            repo = self._repos.get(f"{ctx.params['owner']}/{ctx.params['repo']}".lower())
            if (
                repo is None
                or repo.installation_id != token.installation_id
                or (
                    token.repositories is not None
                    and repo.full_name.lower() not in token.repositories
                )
            ):
                raise _Answer(404, "Not Found")
            ctx.repo = repo
            if perms and not any(
                min(
                    _LEVELS.get(token.permissions.get(p, "none"), 0),
                    _LEVELS.get(repo.permissions.get(p, "none"), 0),
                )
                >= _LEVELS[level]
                for p, level in perms
            ):
                raise _Answer(403, "Resource not accessible by integration")

    def _check_jwt(self, scheme: str, credential: str) -> None:
        if scheme.lower() != "bearer" or not credential:
            self.jwt_rejections.append(f"not a Bearer JWT: {scheme!r}")
            raise _Answer(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(
                credential,
                self.public_key_pem,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
                leeway=JWT_LEEWAY,
            )
        except jwt.PyJWTError as exc:
            self.jwt_rejections.append(repr(exc))
            raise _Answer(401, "A JSON web token could not be decoded") from exc
        if int(claims["exp"]) - time.time() > 600 + JWT_LEEWAY:  # GitHub: at most 10 min ahead
            self.jwt_rejections.append("exp more than 600 s in the future")
            raise _Answer(401, "'Expiration time' claim ('exp') is too far in the future")
        if str(claims["iss"]) != str(self.app_id):
            self.jwt_rejections.append(f"iss {claims['iss']!r} is not {self.app_id}")
            raise _Answer(401, "A JSON web token could not be decoded")
        self.jwt_claims.append(claims)

    def _paginate(self, ctx: _Ctx, items: list[Any]) -> tuple[list[Any], str]:
        try:
            per_page = min(max(int(ctx.query.get("per_page", 30)), 1), 100)
            page = max(int(ctx.query.get("page", 1)), 1)
        except ValueError as exc:
            raise _Answer(422, "Validation Failed") from exc
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]

        def link(p: int, rel: str) -> str:
            query = urlencode({**ctx.query, "per_page": per_page, "page": p})
            return f'<{self._base}{ctx.path}?{query}>; rel="{rel}"'

        links = []
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        return chunk, ", ".join(links)

    # ------------------------------------------------------------------ route handlers
    def _get_app(self, ctx: _Ctx) -> tuple[int, Any]:
        created = _iso(self._created)
        return 200, {
            "id": self.app_id,
            "slug": self.app_slug,
            "node_id": f"A_{self.app_id}",
            "client_id": "Iv1.chatopsbridge0001",
            "owner": self._user("acme", "Organization"),
            "name": "chatops-bridge",
            "description": "Drive GitHub from Slack",
            "external_url": "https://chatops.example.com",
            "html_url": f"https://github.com/apps/{self.app_slug}",
            "created_at": created,
            "updated_at": created,
            "permissions": dict(DEFAULT_PERMISSIONS),
            "events": list(self.events),
            "installations_count": len({r.installation_id for r in self._repos.values()}),
        }

    def _list_installations(self, ctx: _Ctx) -> tuple[int, Any]:
        ids = sorted({r.installation_id for r in self._repos.values()})
        return 200, self._paginate(ctx, [self._installation_json(i) for i in ids])

    def _known_installation(self, ctx: _Ctx) -> int:
        iid = int(ctx.params["iid"])
        if not any(r.installation_id == iid for r in self._repos.values()):
            raise _Answer(404, "Not Found")
        return iid

    def _get_installation(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, self._installation_json(self._known_installation(ctx))

    def _create_token(self, ctx: _Ctx) -> tuple[int, Any]:
        iid = self._known_installation(ctx)
        granted = self._installation_permissions(iid)
        body = ctx.body if isinstance(ctx.body, dict) else {}
        requested = body.get("permissions") or {}
        if not isinstance(requested, dict):
            raise _Answer(422, "Invalid request.")
        for perm, level in requested.items():
            if _LEVELS.get(str(level), 99) > _LEVELS.get(granted.get(perm, "none"), 0):
                raise _Answer(
                    422, "The permissions requested are not granted to this installation."
                )
        own = {r.full_name.lower(): r for r in self._repos.values() if r.installation_id == iid}
        names = body.get("repositories")
        selected: set[str] | None = None
        if names:
            owner = next(iter(own.values())).owner
            selected = {f"{owner}/{n}".lower() for n in names}
            if not selected <= own.keys():
                raise _Answer(
                    422,
                    "There is at least one repository that does not exist or is not "
                    "accessible to the parent installation.",
                )
        token = "ghs_" + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))
        expires = time.time() + self.token_ttl
        permissions = dict(requested) if requested else granted
        self._tokens[token] = _Token(iid, expires, permissions, selected)
        self.tokens_issued.append(token)
        answer: dict[str, Any] = {
            "token": token,
            "expires_at": _iso(expires),
            "permissions": permissions,
            "repository_selection": "selected",
        }
        if selected is not None:
            answer["repositories"] = [self._repo_json(own[n]) for n in sorted(selected)]
        return 201, answer

    def _get_repo_installation(self, ctx: _Ctx) -> tuple[int, Any]:
        repo = self._repos.get(f"{ctx.params['owner']}/{ctx.params['repo']}".lower())
        if repo is None:
            raise _Answer(404, "Not Found")
        return 200, self._installation_json(repo.installation_id)

    def _installation_repos(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.token is not None
        repos = [
            self._repo_json(r)
            for r in self._repos.values()
            if r.installation_id == ctx.token.installation_id
            and (ctx.token.repositories is None or r.full_name.lower() in ctx.token.repositories)
        ]
        chunk, link = self._paginate(ctx, repos)
        payload = {
            "total_count": len(repos),
            "repository_selection": "selected",
            "repositories": chunk,
        }
        return 200, (payload, link)

    def _get_rate_limit(self, ctx: _Ctx) -> tuple[int, Any]:
        core = {
            "limit": RATE_LIMIT,
            "remaining": max(self.rate_remaining, 0),
            "reset": self.rate_reset,
            "used": RATE_LIMIT - max(self.rate_remaining, 0),
            "resource": "core",
        }
        other = {"limit": 30, "remaining": 30, "reset": self.rate_reset, "used": 0}
        return 200, {
            "resources": {
                "core": core,
                "search": {**other, "resource": "search"},
                "graphql": {**other, "limit": 5000, "remaining": 5000, "resource": "graphql"},
            },
            "rate": core,
        }

    def _get_repo(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.repo is not None
        return 200, self._repo_json(ctx.repo)

    def _pull(self, ctx: _Ctx) -> dict[str, Any]:
        assert ctx.repo is not None
        pull = self._pulls.get((ctx.repo.full_name.lower(), int(ctx.params["number"])))
        if pull is None:
            raise _Answer(404, "Not Found")
        return pull

    def _list_pulls(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.repo is not None
        state = ctx.query.get("state", "open")
        head = ctx.query.get("head")
        pulls = [
            self._pull_json(ctx.repo, p)
            for (name, _), p in sorted(self._pulls.items(), key=lambda kv: -kv[0][1])
            if name == ctx.repo.full_name.lower() and (state == "all" or p["state"] == state)
        ]
        if head:
            pulls = [p for p in pulls if p["head"]["label"] == head]
        if "base" in ctx.query:
            pulls = [p for p in pulls if p["base"]["ref"] == ctx.query["base"]]
        return 200, self._paginate(ctx, pulls)

    def _get_pull(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.repo is not None
        return 200, self._pull_json(ctx.repo, self._pull(ctx))

    def _get_branch(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.repo is not None
        name = ctx.params["branch"]
        sha = self._branches.get((ctx.repo.full_name.lower(), name))
        if sha is None:
            raise _Answer(404, "Branch not found")
        api = f"{self.url}/repos/{ctx.repo.full_name}"
        return 200, {
            "name": name,
            "commit": {"sha": sha, "url": f"{api}/commits/{sha}"},
            "protected": False,
            "protection_url": f"{api}/branches/{name}/protection",
            "_links": {
                "self": f"{api}/branches/{name}",
                "html": f"https://github.com/{ctx.repo.full_name}/tree/{name}",
            },
        }

    def _get_issue(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.repo is not None
        return 200, self._issue_json(ctx.repo, self._pull(ctx))

    def _labels_answer(self, ctx: _Ctx) -> list[dict[str, Any]]:
        assert ctx.repo is not None
        key = (ctx.repo.full_name.lower(), int(ctx.params["number"]))
        return [self._label_json(ctx.repo, name) for name in self._labels[key]]

    def _get_labels(self, ctx: _Ctx) -> tuple[int, Any]:
        self._pull(ctx)
        return 200, self._paginate(ctx, self._labels_answer(ctx))

    @staticmethod
    def _label_names(body: Any) -> list[str]:
        items = body.get("labels") if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise _Answer(422, "Invalid request.", errors=["labels must be an array"])
        names: list[str] = []
        for item in items:
            name = item.get("name") if isinstance(item, dict) else item
            if not isinstance(name, str) or not name.strip():
                raise _Answer(422, "Invalid request.", errors=[f"invalid label {item!r}"])
            names.append(name)
        return names

    def _touch(self, ctx: _Ctx) -> list[str]:
        pull = self._pull(ctx)
        pull["updated_at"] = time.time()
        assert ctx.repo is not None
        return self._labels[(ctx.repo.full_name.lower(), pull["number"])]

    def _add_labels(self, ctx: _Ctx) -> tuple[int, Any]:
        names = self._label_names(ctx.body)
        current = self._touch(ctx)
        for name in names:
            if name.lower() not in {x.lower() for x in current}:
                current.append(name)
        return 200, self._labels_answer(ctx)

    def _set_labels(self, ctx: _Ctx) -> tuple[int, Any]:
        names = self._label_names(ctx.body)
        current = self._touch(ctx)
        current[:] = list(dict.fromkeys(names))
        return 200, self._labels_answer(ctx)

    def _clear_labels(self, ctx: _Ctx) -> tuple[int, Any]:
        self._touch(ctx).clear()
        return 204, None

    def _remove_label(self, ctx: _Ctx) -> tuple[int, Any]:
        current = self._touch(ctx)
        wanted = ctx.params["name"].lower()
        for name in current:
            if name.lower() == wanted:
                current.remove(name)
                return 200, self._labels_answer(ctx)
        raise _Answer(404, "Label does not exist")

    def _list_comments(self, ctx: _Ctx) -> tuple[int, Any]:
        self._pull(ctx)
        assert ctx.repo is not None
        comments = self._comments[(ctx.repo.full_name.lower(), int(ctx.params["number"]))]
        since = ctx.query.get("since")
        if since:
            try:
                bound = _parse_time(since)
            except ValueError as exc:
                raise _Answer(422, "Validation Failed") from exc
            comments = [c for c in comments if _parse_time(c["updated_at"]) >= bound]
        return 200, self._paginate(ctx, [dict(c) for c in comments])

    def _create_comment(self, ctx: _Ctx) -> tuple[int, Any]:
        pull = self._pull(ctx)
        assert ctx.repo is not None
        body = ctx.body.get("body") if isinstance(ctx.body, dict) else None
        if not isinstance(body, str) or not body:
            raise _Answer(422, "Invalid request.", errors=["body is missing"])
        if len(body) > 65536:
            raise _Answer(422, "Validation Failed", errors=["body is too long (maximum is 65536)"])
        comment = self._new_comment(ctx.repo, pull["number"], body, f"{self.app_slug}[bot]", "Bot")
        return 201, dict(comment)

    def _find_comment(self, ctx: _Ctx) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        assert ctx.repo is not None
        cid = int(ctx.params["cid"])
        for (name, _), comments in self._comments.items():
            if name != ctx.repo.full_name.lower():
                continue
            for comment in comments:
                if comment["id"] == cid:
                    return comments, comment
        raise _Answer(404, "Not Found")

    def _get_comment(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, dict(self._find_comment(ctx)[1])

    def _edit_comment(self, ctx: _Ctx) -> tuple[int, Any]:
        _, comment = self._find_comment(ctx)
        body = ctx.body.get("body") if isinstance(ctx.body, dict) else None
        if not isinstance(body, str) or not body:
            raise _Answer(422, "Invalid request.", errors=["body is missing"])
        comment["body"] = body
        comment["updated_at"] = _iso(time.time())
        return 200, dict(comment)

    def _delete_comment(self, ctx: _Ctx) -> tuple[int, Any]:
        comments, comment = self._find_comment(ctx)
        comments.remove(comment)
        return 204, None

    def _dispatch_event(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.repo is not None
        body = ctx.body
        errors: list[str] = []
        if not isinstance(body, dict):
            errors.append("request body must be an object")
            body = {}
        event_type = body.get("event_type")
        if not isinstance(event_type, str):
            errors.append("event_type wasn't supplied or is not a string")
        elif not 1 <= len(event_type) <= 100:
            errors.append(f"event_type must be 1..100 characters, got {len(event_type)}")
        if "client_payload" in body:
            payload = body["client_payload"]
            if not isinstance(payload, dict):
                errors.append("client_payload is not an object")
            else:
                if len(payload) > 10:
                    errors.append(
                        f"No more than 10 properties are allowed; {len(payload)} were supplied."
                    )
                if len(json.dumps(payload)) >= 65536:
                    errors.append("client_payload must be under 64 KB")
        unknown = set(body) - {"event_type", "client_payload"}
        if unknown:
            errors.append(f"unknown properties {sorted(unknown)}")
        if errors:
            raise _Answer(422, "Invalid request.", errors=errors)
        self.dispatches.append({"repo": ctx.repo.full_name, **body})
        return 204, None

    def _list_runs(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.repo is not None
        runs = sorted(self._runs[ctx.repo.full_name.lower()].values(), key=lambda r: -int(r["id"]))
        q = ctx.query
        if "head_sha" in q:
            runs = [r for r in runs if r.get("head_sha") == q["head_sha"]]
        if "event" in q:
            runs = [r for r in runs if r.get("event") == q["event"]]
        if "branch" in q:
            runs = [r for r in runs if r.get("head_branch") == q["branch"]]
        if "actor" in q:
            runs = [r for r in runs if (r.get("actor") or {}).get("login") == q["actor"]]
        if "status" in q:
            runs = [r for r in runs if q["status"] in (r.get("status"), r.get("conclusion"))]
        if "created" in q:
            try:
                runs = [r for r in runs if _created_matches(str(r["created_at"]), q["created"])]
            except ValueError as exc:
                raise _Answer(422, "Validation Failed") from exc
        if q.get("exclude_pull_requests") in ("1", "true"):
            runs = [dict(r, pull_requests=[]) for r in runs]
        chunk, link = self._paginate(ctx, [dict(r) for r in runs])
        return 200, ({"total_count": len(runs), "workflow_runs": chunk}, link)

    def _run(self, ctx: _Ctx) -> dict[str, Any]:
        assert ctx.repo is not None
        run = self._runs[ctx.repo.full_name.lower()].get(int(ctx.params["run_id"]))
        if run is None:
            raise _Answer(404, "Not Found")
        return run

    def _get_run(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, dict(self._run(ctx))

    def _cancel_run(self, ctx: _Ctx) -> tuple[int, Any]:
        run = self._run(ctx)
        if run.get("status") == "completed":
            raise _Answer(409, "Cannot cancel a workflow run that is completed.")
        run.update(status="completed", conclusion="cancelled", updated_at=_iso(time.time()))
        return 202, {}

    def _answer_gate(self, ctx: _Ctx) -> tuple[int, Any]:
        """GitHub's actions/review-custom-gates-for-run: environment_name, and state
        approved|rejected (or a comment alone); answered 204, recorded in gate_answers."""
        run = self._run(ctx)
        body = ctx.body if isinstance(ctx.body, dict) else None
        errors: list[str] = []
        if body is None:
            raise _Answer(400, "Problems parsing JSON")
        if not isinstance(body.get("environment_name"), str):
            errors.append("environment_name is missing or not a string")
        if "state" in body and body["state"] not in ("approved", "rejected"):
            errors.append("state must be approved or rejected")
        if "state" not in body and not isinstance(body.get("comment"), str):
            errors.append("comment is required when state is not provided")
        if "comment" in body and not isinstance(body["comment"], str):
            errors.append("comment is not a string")
        if set(body) - {"environment_name", "state", "comment"}:
            errors.append(f"unknown properties {sorted(set(body) - {'environment_name'})}")
        if errors:
            raise _Answer(422, "Invalid request.", errors=errors)
        self.gate_answers.append(
            {"repo": ctx.repo.full_name if ctx.repo else "", "run_id": int(run["id"]), **body}
        )
        return 204, None

    def _list_jobs(self, ctx: _Ctx) -> tuple[int, Any]:
        run = self._run(ctx)
        jobs = self.jobs.get(int(run["id"]))
        if jobs is None:
            assert ctx.repo is not None
            job_id = int(run["id"]) * 10 + 1
            jobs = [
                {
                    "id": job_id,
                    "run_id": run["id"],
                    "run_url": run["url"],
                    "node_id": f"CR_{job_id}",
                    "head_sha": run["head_sha"],
                    "head_branch": run["head_branch"],
                    "url": f"{self._base}/repos/{ctx.repo.full_name}/actions/jobs/{job_id}",
                    "html_url": f"{run['html_url']}/job/{job_id}",
                    "status": run["status"],
                    "conclusion": run["conclusion"],
                    "created_at": run["created_at"],
                    "started_at": run["run_started_at"],
                    "completed_at": run["updated_at"] if run["status"] == "completed" else None,
                    "name": run["name"],
                    "steps": [],
                    "check_run_url": f"{self._base}/repos/{ctx.repo.full_name}/check-runs/{job_id}",
                    "labels": ["ubuntu-latest"],
                    "runner_id": None,
                    "runner_name": None,
                    "runner_group_id": None,
                    "runner_group_name": None,
                    "run_attempt": run["run_attempt"],
                    "workflow_name": run["name"],
                }
            ]
        chunk, link = self._paginate(ctx, [dict(j) for j in jobs])
        return 200, ({"total_count": len(jobs), "jobs": chunk}, link)

    def _get_permission(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.repo is not None
        login = ctx.params["login"]
        role = self._permissions.get((ctx.repo.full_name.lower(), login.lower()))
        if role is None:
            raise _Answer(404, "Not Found")
        ranks = ["read", "triage", "write", "maintain", "admin"]
        rank = ranks.index(role) if role in ranks else -1
        user = self._user(login)
        user["permissions"] = {
            "admin": rank >= 4,
            "maintain": rank >= 3,
            "push": rank >= 2,
            "triage": rank >= 1,
            "pull": rank >= 0,
        }
        user["role_name"] = role
        return 200, {"permission": _ROLE_TO_PERMISSION[role], "role_name": role, "user": user}

    def _list_deployments(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.repo is not None
        found = [
            dict(d)
            for d in self.deployments.get(ctx.repo.full_name, [])
            if all(str(d.get(k)) == ctx.query[k] for k in ("environment", "sha") if k in ctx.query)
        ]
        return 200, self._paginate(ctx, found)

    def _list_deployment_statuses(self, ctx: _Ctx) -> tuple[int, Any]:
        assert ctx.repo is not None
        key = (ctx.repo.full_name, int(ctx.params["deployment_id"]))
        statuses = self.deployment_statuses.get(key, [])
        return 200, self._paginate(ctx, [dict(s) for s in statuses])


def _header(headers: dict[str, str], name: str) -> str | None:
    """Case-insensitive header lookup."""
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None
