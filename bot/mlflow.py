"""The MLflow tracking server's REST API (model registry and runs): the bridge's only way to
MLflow. It does not import mlflow; it speaks the documented REST API over HTTP itself.

Errors raised to callers form one tree, so handlers can word them for people::

    MlflowError
    ├── MlflowNotFound      no such model version, alias or run (RESOURCE_DOES_NOT_EXIST)
    ├── MlflowRefused       401/403 (MLFLOW_TRACKING_TOKEN) or a request MLflow will not take
    └── MlflowUnavailable   5xx, 429, timeout, connection refused: an outage, waited out
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlparse

from bot import inline
from bot.keepalive import default_tls
from bot.settings import Secret

log = logging.getLogger(__name__)

API = "/api/2.0/mlflow"
MAX_ANSWER = 4 * 1024 * 1024  # a run with thousands of metrics is still far below this


class MlflowError(Exception):
    """An MLflow failure described in words a Slack user can act on (never the token)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class MlflowNotFound(MlflowError):
    pass


class MlflowRefused(MlflowError):
    pass


class MlflowUnavailable(MlflowError):
    def __init__(
        self, message: str, *, status: int | None = None, retry_at: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_at = retry_at


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    run_id: str | None
    source: str | None
    user_id: str | None  # who registered it, when MLflow knows (empty without auth)
    status: str | None
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    name: str | None
    status: str | None
    user_id: str | None
    experiment_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)


def model_version_from(data: dict[str, Any]) -> ModelVersion:
    """A model version from MLflow's JSON (`model_version` of model-versions/get). Pure."""
    tags = {
        str(t.get("key")): str(t.get("value"))
        for t in data.get("tags") or []
        if isinstance(t, dict) and t.get("key") is not None
    }
    return ModelVersion(
        name=str(data.get("name") or ""),
        version=str(data.get("version") or ""),
        run_id=str(data["run_id"]) if data.get("run_id") else None,
        source=str(data["source"]) if data.get("source") else None,
        user_id=str(data["user_id"]) if data.get("user_id") else None,
        status=str(data["status"]) if data.get("status") else None,
        aliases=tuple(str(a) for a in data.get("aliases") or []),
        tags=tags,
    )


def run_facts_from(run: dict[str, Any]) -> RunFacts:
    """A run from MLflow's JSON (`run` of runs/get): the latest value of each metric. Pure."""
    info = run.get("info") or {}
    data = run.get("data") or {}
    metrics: dict[str, float] = {}
    latest: dict[str, tuple[int, int]] = {}
    for m in data.get("metrics") or []:
        if not isinstance(m, dict) or not isinstance(m.get("key"), str):
            continue
        try:
            value = float(m.get("value"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        order = (int(m.get("step") or 0), int(m.get("timestamp") or 0))
        if m["key"] not in latest or order >= latest[m["key"]]:
            latest[m["key"]] = order
            metrics[m["key"]] = value
    return RunFacts(
        run_id=str(info.get("run_id") or info.get("run_uuid") or ""),
        name=info.get("run_name") or None,
        status=info.get("status") or None,
        user_id=info.get("user_id") or None,
        experiment_id=str(info["experiment_id"]) if info.get("experiment_id") else None,
        metrics=metrics,
    )


def _retry_at(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value and str(value).strip().isdigit():
        return time.time() + float(value)
    return None


class MlflowRegistry:
    """Calls to one MLflow tracking server (MLFLOW_TRACKING_URI), with MLFLOW_TRACKING_TOKEN as
    a bearer token when set. Each call is one HTTP request: retries belong to the job layer,
    which waits an outage out (bot/jobs.py)."""

    def __init__(self, base_url: str, token: Secret | None = None, *, timeout: float = 10.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("the MLflow tracking URI must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.host = urlparse(self.base_url).netloc
        self._token = token
        self.timeout = timeout
        # Proxies from the environment apply (HTTPS_PROXY, NO_PROXY), as for Slack and GitHub.
        # https: the process's one TLS context (urllib would build one per connection).
        self._opener = (
            urllib.request.build_opener(urllib.request.HTTPSHandler(context=default_tls()))
            if self.base_url.startswith("https://")
            else urllib.request.build_opener()
        )

    def __repr__(self) -> str:
        return f"MlflowRegistry({self.base_url!r})"

    # -- calls ----------------------------------------------------------------------------
    def get_model_version(self, name: str, version: str) -> ModelVersion:
        answer = self._call("GET", "/model-versions/get", {"name": name, "version": version})
        return model_version_from(answer.get("model_version") or {})

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        answer = self._call("GET", "/registered-models/alias", {"name": name, "alias": alias})
        return model_version_from(answer.get("model_version") or {})

    def get_run(self, run_id: str) -> RunFacts:
        answer = self._call("GET", "/runs/get", {"run_id": run_id})
        return run_facts_from(answer.get("run") or {})

    def set_alias(self, name: str, alias: str, version: str) -> None:
        body = {"name": name, "alias": alias, "version": version}
        self._call("POST", "/registered-models/alias", body)

    def ping(self) -> int:
        """The registry answers (and lets this token in): how many models one page lists."""
        answer = self._call("GET", "/registered-models/search", {"max_results": 10})
        return len(answer.get("registered_models") or [])

    # -- HTTP -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        inline.guard("MLflow")
        url = f"{self.base_url}{API}{path}"
        data = None
        headers = {"Accept": "application/json", "User-Agent": "chatops-bridge"}
        if method == "GET":
            url += "?" + urlencode(params)
        else:
            data = json.dumps(params).encode()
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token.get()}"
        # The scheme is http(s): checked in __init__ (and by bot/settings.py before that).
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        what = f"MLflow at {self.host}"
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                raw = resp.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            raise self._error(exc, what) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise MlflowUnavailable(f"{what} did not answer ({reason})") from None
        if len(raw) > MAX_ANSWER:
            raise MlflowRefused(f"{what} answered more than {MAX_ANSWER} bytes")
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            # A proxy's HTML error page, say: not MLflow answering.
            raise MlflowUnavailable(f"{what} answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise MlflowRefused(f"{what} answered JSON that is not an object")
        return answer

    @staticmethod
    def _error(exc: urllib.error.HTTPError, what: str) -> MlflowError:
        status = exc.code
        try:
            body = json.loads(exc.read(65536) or b"{}")
        except (ValueError, OSError):
            body = {}
        code = str(body.get("error_code") or "") if isinstance(body, dict) else ""
        # MLflow's own message names the model, version or alias; it holds no secret.
        said = str(body.get("message") or "")[:300] if isinstance(body, dict) else ""
        if status == 429 or status >= 500:
            return MlflowUnavailable(
                f"{what} answered {status}", status=status, retry_at=_retry_at(exc.headers)
            )
        if status == 404 or code == "RESOURCE_DOES_NOT_EXIST":
            return MlflowNotFound(said or f"{what}: not found", status=status)
        if status in (401, 403):
            return MlflowRefused(
                f"{what} refused the bridge ({status}): check MLFLOW_TRACKING_TOKEN",
                status=status,
            )
        return MlflowRefused(f"{what} refused the request ({status} {code}): {said}", status=status)
