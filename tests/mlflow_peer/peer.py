"""MLflow as a real peer: the pinned `mlflow` from PyPI in its own virtualenv (scripts/test
makes it: tests/.cache/mlflow-venv), never imported by the bridge nor by the test process.

Tests reach it two ways: `examples()` runs MLflow's own code (its example payloads and its
signer) in that interpreter; `MlflowServer` runs `mlflow server` on loopback with a SQLite
backend. Without the virtualenv a local run skips these tests; with CI=true it fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_VERSION = "3.17.2"  # pinned in scripts/test
VENV = Path(os.environ.get("CHATOPS_MLFLOW_VENV") or ROOT / "tests/.cache/mlflow-venv")
PYTHON = VENV / "bin" / "python"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# MLflow's own example payloads (mlflow/webhooks/types.py), each sent as delivery.py sends it:
# the envelope, json.dumps'ed, signed by MLflow's _generate_hmac_signature.
_EXAMPLES = r"""
import json, sys, time, uuid
from datetime import datetime, timezone
import mlflow
from mlflow.webhooks.delivery import _generate_hmac_signature
from mlflow.webhooks.types import EVENT_TO_PAYLOAD_CLASS
secret = sys.argv[1]
out = []
for (entity, action), cls in EVENT_TO_PAYLOAD_CLASS.items():
    envelope = {"entity": entity.value, "action": action.value,
                "timestamp": datetime.now(timezone.utc).isoformat(), "data": cls.example()}
    body = json.dumps(envelope)
    delivery_id, ts = str(uuid.uuid4()), str(int(time.time()))
    signature = _generate_hmac_signature(secret, delivery_id, ts, body)
    out.append({"event": f"{entity.value}.{action.value}", "body": body,
                "delivery_id": delivery_id, "timestamp": ts, "signature": signature})
print(json.dumps({"version": mlflow.__version__, "examples": out}))
"""


def unavailable(message: str) -> None:
    """Skip locally, fail in CI: the MLflow tier never passes by being skipped there."""
    if IN_CI:
        pytest.fail(f"MLflow tier cannot run in CI: {message}", pytrace=False)
    pytest.skip(f"MLflow tier skipped: {message}")


def require() -> None:
    if not PYTHON.exists():
        unavailable(
            f"no MLflow virtualenv at {VENV} (scripts/test installs mlflow=={MLFLOW_VERSION})"
        )


def examples(secret: str) -> dict[str, Any]:
    """{"version", "examples": [{event, body, delivery_id, timestamp, signature}]}."""
    require()
    done = subprocess.run(
        [str(PYTHON), "-c", _EXAMPLES, secret], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        pytest.fail(f"MLflow's example script failed: {done.stderr[-2000:]}", pytrace=False)
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MlflowServer:
    """`mlflow server` on loopback, SQLite backend (webhooks need a SQL store), own session so
    that stop() ends it and its workers together."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log_path = workdir / "mlflow-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # No kept-alive connections: the server closes idle ones after 5 s, and a request sent
        # on one as it closes fails with "Server disconnected" (seen under load).
        self.http = httpx.Client(
            base_url=self.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
        )
        self.started_in = 0.0

    def start(self) -> MlflowServer:
        require()
        from cryptography.fernet import Fernet

        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.workdir),
            # MLflow's SSRF guard refuses loopback targets and plain http by default; these
            # are its documented switches, for tests only (docs/model-registry.md).
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            # Without a fixed key each server worker encrypts webhook secrets with its own
            # random key, and deliveries from the other workers fail (seen with 3.17.2).
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        }
        db = self.workdir / "mlflow.db"
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(VENV / "bin" / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{db}",
                    "--default-artifact-root",
                    str(self.workdir / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if self.http.get("/health", timeout=2).status_code == 200:
                    self.started_in = time.monotonic() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"mlflow server did not answer: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.http.close()

    # -- the REST API, as MlflowClient calls it ------------------------------------------------
    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self.http.request(method, f"/api/2.0/mlflow/{path}", json=body)
        assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text[:500]}"
        data: dict[str, Any] = resp.json()
        return data

    def create_webhook(self, name: str, url: str, events: list[str], secret: str) -> str:
        """MlflowClient().create_webhook(name, url, events=[...], secret=...), over REST."""
        body = {
            "name": name,
            "url": url,
            "events": [
                {"entity": e.split(".")[0].upper(), "action": e.split(".")[1].upper()}
                for e in events
            ],
            "secret": secret,
        }
        webhook_id: str = self.call("POST", "webhooks", body)["webhook"]["webhook_id"]
        return webhook_id

    def test_webhook(self, webhook_id: str) -> dict[str, Any]:
        """MlflowClient().test_webhook(id): MLflow sends its example payload, reports the answer."""
        result: dict[str, Any] = self.call("POST", f"webhooks/{webhook_id}/test", {})["result"]
        return result

    def training_run(self, metrics: dict[str, float], user: str = "alice") -> str:
        run = self.call("POST", "runs/create", {"experiment_id": "0", "user_id": user})
        run_id: str = run["run"]["info"]["run_id"]
        for key, value in metrics.items():
            self.call(
                "POST",
                "runs/log-metric",
                {"run_id": run_id, "key": key, "value": value, "timestamp": 1, "step": 0},
            )
        self.call("POST", "runs/update", {"run_id": run_id, "status": "FINISHED"})
        return run_id

    def register(self, name: str, run_id: str) -> str:
        self.http.post("/api/2.0/mlflow/registered-models/create", json={"name": name})
        mv = self.call(
            "POST",
            "model-versions/create",
            {"name": name, "source": f"runs:/{run_id}/model", "run_id": run_id},
        )
        version: str = mv["model_version"]["version"]
        return version

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.call(
            "POST", "registered-models/alias", {"name": name, "alias": alias, "version": version}
        )

    def aliases(self, name: str, version: str) -> list[str]:
        resp = self.http.get(
            "/api/2.0/mlflow/model-versions/get", params={"name": name, "version": version}
        )
        found: list[str] = resp.json()["model_version"].get("aliases") or []
        return found
