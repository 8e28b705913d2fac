"""The GitHub App client: the only module that imports PyGithub.

Errors raised to callers: the tree in bot/github_errors.py (re-exported here).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.error import URLError
from urllib.parse import quote, urlencode, urlsplit

import certifi

if TYPE_CHECKING:
    from github import Github, GithubIntegration

from bot import inline
from bot.github_data import (
    Conditional,
    PullInfo,
    RunInfo,
    pull_from_payload,
    route_of,
    run_from_payload,
)
from bot.github_errors import (
    GitHubError,
    NotFound,
    NotInstalled,
    PermissionDenied,
    RateLimited,
    Unavailable,
    ValidationFailed,
)
from bot.github_errors import (
    Retryable as Retryable,  # re-exported: callers catch it from here
)
from bot.keepalive import Pool, trusting
from bot.metrics import Metrics
from bot.slacktext import hhmm

log = logging.getLogger(__name__)


def _sent(action: str, **fields: Any) -> None:
    """The log line of a write that GitHub accepted (ids only: never a payload)."""
    log.info("GitHub action sent", extra={"github_action": action, **fields})


def _rate_reset(headers: dict[str, Any]) -> float:
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after" in lowered:
        try:
            return time.time() + float(lowered["retry-after"])
        except ValueError:
            pass
    try:
        return float(lowered.get("x-ratelimit-reset", time.time() + 60))
    except ValueError:
        return time.time() + 60


def query_string(params: dict[str, Any]) -> str:
    """A request's query as PyGithub writes it: a list is a repeated key, a boolean is
    lower case, pairs sorted. Pure."""
    pairs = [
        (key, str(value).lower() if isinstance(value, bool) else value)
        for key, values in params.items()
        for value in (values if isinstance(values, list) else [values])
    ]
    return urlencode(sorted(pairs))


def answer_headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """An answer's headers as requests hands them to PyGithub: names in lower case, a repeated
    header's values joined by ", ". Pure."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


USER_AGENT = "chatops-bridge"
_MOVED = frozenset({301, 302, 307, 308})  # PyGithub follows these (a renamed repository: 301)
_RETRIED = frozenset({500, 502, 503, 504})  # a read answered so is asked again


class _PyGithub:
    """PyGithub and the requests/urllib3 names used with it, imported at the first GitHub call
    (`_pygithub()`), not at start-up: ~0.1 s of imports (0.2 s on a slow host) and ~10 MB
    resident that a process which has not talked to GitHub yet does without."""

    def __init__(self) -> None:
        import github
        import requests.exceptions
        import urllib3.util
        from github.GithubException import GithubException, UnknownObjectException

        self.Auth = github.Auth
        self.GithubIntegration = github.GithubIntegration
        self.GithubException = GithubException
        self.UnknownObjectException = UnknownObjectException
        self.RequestException = requests.exceptions.RequestException
        self.Retry = urllib3.util.Retry
        # What a call raises when GitHub refuses or does not answer: PyGithub's errors, and
        # the lean exchange's (a socket's: OSError, which URLError and a timeout are).
        self.errors: tuple[type[Exception], ...] = (
            GithubException,
            self.RequestException,
            OSError,
        )


@functools.cache
def _pygithub() -> _PyGithub:
    return _PyGithub()


def translate(exc: Exception, *, what: str, repo: str) -> GitHubError:
    """Turn a PyGithub/requests exception into the bridge's error tree (pure)."""
    if isinstance(exc, GitHubError):
        return exc
    lib = _pygithub()
    if isinstance(exc, (lib.RequestException, OSError)):
        return Unavailable(f"GitHub did not answer in time while trying to {what}. I will retry.")
    if not isinstance(exc, lib.GithubException):
        return Unavailable(f"Unexpected failure while trying to {what}: {type(exc).__name__}")
    status = exc.status
    data = exc.data if isinstance(exc.data, dict) else {}
    message = str(data.get("message") or "")
    headers = exc.headers or {}
    remaining = {k.lower(): v for k, v in headers.items()}.get("x-ratelimit-remaining")
    if status == 429 or (status == 403 and (remaining == "0" or "rate limit" in message.lower())):
        retry_at = _rate_reset(headers)
        when = hhmm(retry_at)
        return RateLimited(
            f"GitHub's rate limit is spent; I will retry after {when}.",
            retry_at=retry_at,
            status=status,
        )
    if status == 404 or isinstance(exc, lib.UnknownObjectException):
        return NotFound(f"GitHub found nothing when trying to {what} in {repo}.", status=404)
    if status == 403 or status == 401:
        return PermissionDenied(
            f"The GitHub App may not {what} in {repo} ({message or 'forbidden'}). "
            "An owner must grant the permission in the App's settings and accept it for "
            "the installation.",
            status=status,
        )
    if status == 422:
        return ValidationFailed(
            f"GitHub refused to {what} in {repo}: {message or 'validation failed'}.", status=422
        )
    if status is not None and status >= 500:
        return Unavailable(f"GitHub is having trouble ({status}) while I {what}. I will retry.")
    return GitHubError(f"GitHub answered {status} when trying to {what} in {repo}.", status=status)


def _jwt_signer(private_key: str) -> Callable[[dict[str, Any]], str]:
    """Sign App JWTs with the key parsed once (on first use).

    Given the PEM text, PyJWT parses and checks the RSA key on every signature: ~28 ms of CPU
    each, against ~0.3 ms with the parsed key (measured; cryptography validates RSA keys on
    load). Parsed lazily so a bad key still surfaces at the first GitHub call, as before.
    """
    lock = threading.Lock()
    parsed: list[Any] = []

    def sign(payload: dict[str, Any]) -> str:
        # Imported here, with PyGithub (which needs both): not at start-up (bot/pem.py).
        import jwt
        from cryptography.hazmat.primitives import serialization

        with lock:
            if not parsed:
                parsed.append(serialization.load_pem_private_key(private_key.encode(), None))
        return jwt.encode(payload, parsed[0], algorithm="RS256")

    return sign


class GitHubApp:
    """A GitHub App's view of GitHub: one cached client per installation."""

    def __init__(
        self,
        *,
        app_id: int,
        private_key: str,
        base_url: str = "https://api.github.com",
        timeout: int = 10,
        seconds_between_requests: float | None = None,
        seconds_between_writes: float | None = None,
        read_retries: int = 2,
        metrics: Metrics | None = None,
    ) -> None:
        # Reads may be retried on 5xx; writes never are at this level (PyGithub's default retry
        # would POST a dispatch twice after one 502 — PLATFORM.md). The job layer retries writes
        # carrying the same request id, so a repeat is recognisable.
        # Plain urllib3 Retry, not GithubRetry: that one sleeps through rate limits on the
        # calling thread; the bridge instead gives the work back and retries after the reset.
        self._retry: dict[str, Any] = {
            "total": read_retries,
            "backoff_factor": 0.2,
            "status_forcelist": (500, 502, 503, 504),
            "allowed_methods": frozenset({"GET", "HEAD"}),
            "raise_on_status": False,
            "respect_retry_after_header": False,
        }
        self._kwargs: dict[str, Any] = {
            "base_url": base_url,
            "timeout": timeout,
            "seconds_between_requests": seconds_between_requests,
            "seconds_between_writes": seconds_between_writes,
            "pool_size": 16,
        }
        self.base_url = base_url
        self._timeout = timeout
        self._read_retries = read_retries
        self._tls: ssl.SSLContext | None = None
        self._app_id = app_id
        self._sign = _jwt_signer(private_key)
        self._lock = threading.Lock()
        self._installations: dict[str, tuple[int, float]] = {}  # repo -> (id, cached at)
        self._clients: dict[int, Github] = {}
        self.installation_ttl = 3600.0
        self.last_rate_remaining: int | None = None
        self.last_rate_reset: float | None = None  # when the rate-limit window refills (UNIX s)
        self.metrics = metrics

    @functools.cached_property
    def _integration(self) -> GithubIntegration:
        """PyGithub's App client, made (and PyGithub imported) at the first GitHub call."""
        lib = _pygithub()
        return lib.GithubIntegration(
            auth=lib.Auth.AppAuth(self._app_id, sign_func=self._sign),
            lazy=True,
            retry=lib.Retry(**self._retry),
            **self._kwargs,
        )

    # -- installations --------------------------------------------------------------------
    def installation_id(self, repo: str) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._installations.get(repo)
        if cached and now - cached[1] < self.installation_ttl:
            return cached[0]
        owner, name = repo.split("/", 1)
        inline.guard("GitHub")
        integration = self._integration
        try:
            inst = integration.get_repo_installation(owner, name)
            inst_id = int(inst.id)
        except _pygithub().errors as exc:
            if getattr(exc, "status", None) == 404:
                raise NotInstalled(
                    f"The GitHub App is not installed on {repo}. An owner of {owner} can install "
                    "it from the App's page (Install App), choosing this repository."
                ) from None
            raise translate(exc, what="look up the App installation", repo=repo) from None
        with self._lock:
            self._installations[repo] = (inst_id, now)
        return inst_id

    def client_for(self, repo: str) -> Github:
        inst_id = self.installation_id(repo)
        with self._lock:
            client = self._clients.get(inst_id)
            if client is None:
                # PyGithub's AppInstallationAuth mints the token and refreshes it before expiry.
                client = self._integration.get_github_for_installation(inst_id)
                self._clients[inst_id] = client
            return client

    def forget(self, repo: str) -> None:
        with self._lock:
            cached = self._installations.pop(repo, None)
            if cached is not None:
                # Its client too: a client keeps its token until near expiry, so after a
                # revocation (App reinstalled, key rotated) only a new client mints a new one.
                self._clients.pop(cached[0], None)

    def installations(self) -> list[dict[str, Any]]:
        inline.guard("GitHub")
        try:
            return [
                {
                    "id": i.id,
                    "account": i.raw_data.get("account", {}).get("login"),
                    "permissions": dict(i.raw_data.get("permissions") or {}),
                    "repository_selection": i.raw_data.get("repository_selection"),
                    "events": list(i.raw_data.get("events") or []),
                }
                for i in self._integration.get_installations()
            ]
        except _pygithub().errors as exc:
            raise translate(exc, what="list the App's installations", repo="-") from None

    # -- the lean exchange ----------------------------------------------------------------
    @functools.cached_property
    def _pool(self) -> Pool | None:
        """Connections to GitHub for `_exchange`; None where PyGithub's Requester carries every
        call instead: a proxy applies to base_url (requests honours HTTPS_PROXY and NO_PROXY,
        the pool does not), or a pause between requests is asked for (the Requester keeps it).
        Read at the first call."""
        if self._kwargs["seconds_between_requests"] or self._kwargs["seconds_between_writes"]:
            return None
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https"):
            return None
        proxies = urllib.request.getproxies()
        if (proxies.get(parts.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(
            parts.hostname or ""
        ):
            return None
        return Pool(tls=self._context)

    def _context(self) -> ssl.SSLContext:
        """The TLS trust requests gives PyGithub: certifi's bundle, or the file or folder named
        by REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE); built once, at the first https connection."""
        with self._lock:
            if self._tls is None:
                where = (
                    os.environ.get("REQUESTS_CA_BUNDLE")
                    or os.environ.get("CURL_CA_BUNDLE")
                    or certifi.where()
                )
                self._tls = trusting(where)
            return self._tls

    def _exchange(
        self,
        client: Github,
        verb: str,
        path: str,
        params: dict[str, Any] | None,
        headers: dict[str, str] | None,
        body: Any,
    ) -> tuple[int, dict[str, str], str] | None:
        """One call on a pooled keep-alive connection (bot/keepalive.py), without PyGithub's
        Requester, requests and urllib3 (a third of an `/evaluate` job's CPU,
        docs/benchmarks.md); None when PyGithub must make it (see `_pool`, and an answer that
        redirects, or a 202 to a read, which it waits out). What the Requester did is kept:
        the installation token from PyGithub's auth (minted and refreshed there), a JSON body,
        the timeout; a read is tried again after a 5xx or a failure, up to `read_retries` times
        (the second wait 0.4 s, as urllib3's Retry); a write only when it was not sent."""
        pool = self._pool
        if pool is None:
            return None
        url = self.base_url + path + (f"?{query_string(params)}" if params else "")
        sent = dict(headers or {})
        auth = client.requester.auth
        if auth is not None:
            auth.authentication(sent)  # "Authorization: token …", refreshed before expiry
        sent["User-Agent"] = USER_AGENT
        payload = b""
        if body is not None:
            sent["Content-Type"] = "application/json"
            payload = json.dumps(body).encode()
        read = verb in ("GET", "HEAD")
        tries = 0
        while True:
            try:
                status, answer = pool.exchange(verb, url, sent, payload, self._timeout)
            except URLError:  # not sent whole: GitHub cannot have acted on it
                if tries >= self._read_retries:
                    raise
            except OSError:  # sent: GitHub may have acted, so only a read goes again
                if not read or tries >= self._read_retries:
                    raise
            else:
                if status in _MOVED or (status == 202 and read):
                    return None
                if not (read and status in _RETRIED and tries < self._read_retries):
                    log.debug("GitHub answered", extra={"route": route_of(path), "status": status})
                    text = b"".join(answer.body).decode("utf-8", "replace")
                    return status, answer_headers(answer.headers), text
            tries += 1
            if tries > 1:
                time.sleep(0.2 * 2 ** (tries - 1))

    # -- raw calls ------------------------------------------------------------------------
    def _call(
        self, repo: str, what: str, fn: Callable[[Github], Any], *, operation: str = "other"
    ) -> Any:
        inline.guard("GitHub")
        started = time.monotonic()
        outcome = "ok"
        try:
            try:
                return fn(self.client_for(repo))
            except _pygithub().GithubException as exc:
                # 401 "Bad credentials" with a cached client: its token was revoked or expired
                # early (App reinstalled, key rotated, clock skew). Nothing was done, so one more
                # try with a fresh client and token is safe, even for a write.
                if exc.status != 401:
                    raise
                self.forget(repo)
                return fn(self.client_for(repo))
        except _pygithub().errors as exc:
            err = translate(exc, what=what, repo=repo)
            # 401 "Bad credentials": _raw raises a plain GithubException(401), never PyGithub's
            # BadCredentialsException, so test the status; forget() drops the cached client
            # as well, and the next attempt mints a fresh token (tests/contract).
            if isinstance(err, PermissionDenied) and getattr(exc, "status", None) == 401:
                self.forget(repo)
            outcome = type(err).__name__
            raise err from None
        except GitHubError as exc:  # NotInstalled and friends from client_for
            outcome = type(exc).__name__
            raise
        finally:
            if self.metrics is not None:
                self.metrics.github_calls.labels(operation, outcome).observe(
                    time.monotonic() - started
                )

    def _raw(
        self,
        repo: str,
        what: str,
        verb: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 204),
    ) -> tuple[int, dict[str, Any], Any]:
        def go(client: Github) -> tuple[int, dict[str, Any], Any]:
            lean = self._exchange(client, verb, path, params, headers, body)
            status, resp_headers, data = lean or client.requester.requestJson(
                verb, self.base_url + path, parameters=params, headers=headers, input=body
            )
            self._note_rate(resp_headers)
            if status in ok:
                return status, resp_headers, json.loads(data) if data else None
            try:
                parsed = json.loads(data) if data else None
            except ValueError:
                parsed = None
            raise _pygithub().GithubException(status, parsed, resp_headers)

        result: tuple[int, dict[str, Any], Any] = self._call(
            repo, what, go, operation=f"{verb} {route_of(path)}"
        )
        return result

    def _note_rate(self, headers: dict[str, Any]) -> None:
        lowered = {k.lower(): v for k, v in headers.items()}
        value = lowered.get("x-ratelimit-remaining")
        if value is not None and str(value).isdigit():
            self.last_rate_remaining = int(value)
        reset = lowered.get("x-ratelimit-reset")
        if reset is not None and str(reset).isdigit():
            self.last_rate_reset = float(reset)

    # -- operations -----------------------------------------------------------------------
    def get_pull(self, repo: str, number: int) -> PullInfo:
        what = f"read pull request #{number}"
        _, _, data = self._raw(repo, what, "GET", f"/repos/{repo}/pulls/{int(number)}")
        return pull_from_payload(repo, data)

    def pull(self, repo: str, number: int, *, etag: str | None = None) -> Conditional:
        """The pull request as GitHub sends it, conditionally (poll mode: has its head moved?)."""
        what = f"read pull request #{number}"
        return self._conditional(repo, what, f"/repos/{repo}/pulls/{int(number)}", {}, etag)

    def labels(self, repo: str, number: int) -> list[str]:
        _, _, data = self._raw(
            repo,
            f"read the labels of #{number}",
            "GET",
            f"/repos/{repo}/issues/{int(number)}/labels",
        )
        return [str(lbl["name"]) for lbl in data or []]

    def add_label(self, repo: str, number: int, label: str) -> None:
        self._raw(
            repo,
            f"add the label {label!r} to #{number}",
            "POST",
            f"/repos/{repo}/issues/{int(number)}/labels",
            body={"labels": [label]},
        )
        _sent("add_label", repo=repo, pr_number=number, label=label)

    def remove_label(self, repo: str, number: int, label: str) -> None:
        with contextlib.suppress(NotFound):  # already gone: the goal of the call is reached
            self._raw(
                repo,
                f"remove the label {label!r} from #{number}",
                "DELETE",
                f"/repos/{repo}/issues/{int(number)}/labels/{quote(label, safe='')}",
            )
        _sent("remove_label", repo=repo, pr_number=number, label=label)

    def dispatch(self, repo: str, event_type: str, client_payload: dict[str, Any]) -> None:
        if not 1 <= len(event_type) <= 100:
            raise ValidationFailed("event_type must be 1 to 100 characters")
        if len(client_payload) > 10:
            raise ValidationFailed("client_payload may hold at most 10 top-level keys")
        self._raw(
            repo,
            f"send the {event_type!r} repository_dispatch event",
            "POST",
            f"/repos/{repo}/dispatches",
            body={"event_type": event_type, "client_payload": client_payload},
            ok=(204,),
        )
        # Not the payload: it names people and threads; the request id is the line's context.
        _sent("dispatch", repo=repo, event_type=event_type)

    def branch_head(self, repo: str, branch: str) -> str | None:
        """The head commit of a branch; None when there is no such branch (deleted, a fork's)."""
        try:
            _, _, data = self._raw(
                repo,
                f"read branch {branch}",
                "GET",
                f"/repos/{repo}/branches/{quote(branch, safe='')}",
            )
        except NotFound:
            return None
        return str((data.get("commit") or {}).get("sha") or "") or None

    def get_run(self, repo: str, run_id: int) -> RunInfo:
        _, _, data = self._raw(
            repo, f"read workflow run {run_id}", "GET", f"/repos/{repo}/actions/runs/{int(run_id)}"
        )
        return run_from_payload(repo, data)

    def list_runs(
        self, repo: str, *, params: dict[str, Any], etag: str | None = None
    ) -> Conditional:
        return self._conditional(
            repo, "list workflow runs", f"/repos/{repo}/actions/runs", params, etag
        )

    def list_comments(
        self, repo: str, number: int, *, since: str | None = None, etag: str | None = None
    ) -> Conditional:
        params: dict[str, Any] = {"per_page": 100}
        if since:
            params["since"] = since
        return self._conditional(
            repo,
            f"read the comments of #{number}",
            f"/repos/{repo}/issues/{int(number)}/comments",
            params,
            etag,
        )

    def list_deployments(
        self, repo: str, *, params: dict[str, Any], etag: str | None = None
    ) -> Conditional:
        return self._conditional(
            repo, "list deployments", f"/repos/{repo}/deployments", params, etag
        )

    def deployment_statuses(
        self, repo: str, deployment_id: int, *, etag: str | None = None
    ) -> Conditional:
        return self._conditional(
            repo,
            f"list the statuses of deployment {deployment_id}",
            f"/repos/{repo}/deployments/{int(deployment_id)}/statuses",
            {"per_page": 100},
            etag,
        )

    def _conditional(
        self, repo: str, what: str, path: str, params: dict[str, Any], etag: str | None
    ) -> Conditional:
        # A 304 answer to If-None-Match does not count against the rate limit.
        headers = {"If-None-Match": etag} if etag else None
        status, resp_headers, data = self._raw(
            repo, what, "GET", path, params=params, headers=headers, ok=(200, 304)
        )
        lowered = {k.lower(): v for k, v in resp_headers.items()}
        return Conditional(not_modified=status == 304, etag=lowered.get("etag") or etag, data=data)

    def repository(self, repo: str) -> dict[str, Any]:
        """The repository as the installation token sees it (operator `check`)."""
        _, _, data = self._raw(repo, "read the repository", "GET", f"/repos/{repo}")
        return dict(data or {})

    def cancel_run(self, repo: str, run_id: int) -> None:
        """Ask GitHub to cancel a workflow run (the App needs `actions: write`)."""
        self._raw(
            repo,
            f"cancel workflow run {run_id}",
            "POST",
            f"/repos/{repo}/actions/runs/{int(run_id)}/cancel",
            ok=(202,),
        )
        _sent("cancel_run", repo=repo, run_id=str(run_id))

    def answer_gate(self, repo: str, run_id: int, env: str, state: str, comment: str) -> None:
        """Answer a run's custom deployment protection rule; never to a URL from a payload."""
        body = {"environment_name": env, "state": state, "comment": comment[:1000]}
        self._raw(
            repo,
            f"answer the deployment protection rule of run {run_id} ({env})",
            "POST",
            f"/repos/{repo}/actions/runs/{int(run_id)}/deployment_protection_rule",
            body=body,
        )

    def permission(self, repo: str, login: str) -> str:
        """The login's permission on repo: admin, maintain, write, triage, read or none."""
        try:
            _, _, data = self._raw(
                repo,
                f"check {login}'s permission",
                "GET",
                f"/repos/{repo}/collaborators/{quote(login, safe='')}/permission",
            )
        except NotFound:
            return "none"
        role = str(data.get("role_name") or "")
        if role in ("admin", "maintain", "write", "triage", "read"):
            return role
        return str(data.get("permission") or "none")
