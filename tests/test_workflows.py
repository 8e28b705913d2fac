"""The example GitHub Actions workflows are valid and keep the bridge's conventions."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = REPO_ROOT / "examples" / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.yml"))
# The bridge matches `workflow_run.display_title` against this prefix to find a request's runs.
RUN_NAME_PREFIX = "chatops ${{ github.event.client_payload.request_id }}:"
METRICS_MARKER = "<!-- chatops:metrics -->"


def _check_jsonschema() -> list[str]:
    if importlib.util.find_spec("check_jsonschema") is not None:
        return [sys.executable, "-m", "check_jsonschema"]
    script = shutil.which("check-jsonschema")
    if script:
        return [script]
    pytest.fail("check-jsonschema is not installed: pip install -e '.[dev]'")


def _validate(path: Path, builtin: str) -> subprocess.CompletedProcess[str]:
    # --builtin-schema reads the schema that ships inside the package: no network.
    return subprocess.run(
        [*_check_jsonschema(), "--builtin-schema", builtin, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _triggers(doc: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True.
    on = doc.get("on", doc.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on


def _dispatch_workflows() -> list[Path]:
    return [p for p in WORKFLOWS if "repository_dispatch" in _triggers(_load(p))]


def _step(doc: dict[str, Any], step_id: str) -> dict[str, Any]:
    for job in doc["jobs"].values():
        for step in job.get("steps", []):
            if step.get("id") == step_id:
                return step
    raise AssertionError(f"no step with id {step_id!r}")


def test_the_examples_are_there() -> None:
    assert {p.name for p in WORKFLOWS} >= {
        "evaluate-label.yml",
        "evaluate-dispatch.yml",
        "deploy.yml",
    }


@pytest.mark.parametrize(
    "builtin", ["vendor.github-workflows", "custom.github-workflows-require-timeout"]
)
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid(path: Path, builtin: str) -> None:
    """SchemaStore's GitHub workflow schema (and the every-job-has-a-timeout rule) accept it."""
    result = _validate(path, builtin)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_jsonschema_rejects_a_broken_workflow(tmp_path: Path) -> None:
    """The validator can fail: a misspelt job key is reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "name: bad\non: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    stepz: []\n",
        encoding="utf-8",
    )
    result = _validate(bad, "vendor.github-workflows")
    assert result.returncode != 0
    assert "stepz" in result.stdout + result.stderr


def test_there_are_dispatch_workflows() -> None:
    assert {p.name for p in _dispatch_workflows()} == {"evaluate-dispatch.yml", "deploy.yml"}


@pytest.mark.parametrize("path", _dispatch_workflows(), ids=lambda p: p.name)
def test_dispatch_run_name_starts_with_request_id(path: Path) -> None:
    """run-name carries the request id where the bridge looks for it."""
    run_name = _load(path).get("run-name", "")
    assert run_name.startswith(RUN_NAME_PREFIX), run_name


def test_dispatch_event_types_match_config_defaults() -> None:
    """The event types are the ones chatops.yml uses by default."""
    types = {
        p.name: _triggers(_load(p))["repository_dispatch"]["types"] for p in _dispatch_workflows()
    }
    assert types == {"evaluate-dispatch.yml": ["evaluate"], "deploy.yml": ["deploy"]}


def test_deploy_uses_the_requested_environment_one_at_a_time() -> None:
    """The environment makes GitHub create a deployment; no deploy cancels another."""
    doc = _load(WORKFLOW_DIR / "deploy.yml")
    envs = [job.get("environment") for job in doc["jobs"].values()]
    assert "${{ github.event.client_payload.environment }}" in envs
    assert doc["concurrency"] == {
        "group": "deploy-${{ github.event.client_payload.environment }}",
        "cancel-in-progress": False,
    }
    uses = [s.get("uses", "") for job in doc["jobs"].values() for s in job.get("steps", [])]
    assert any(u.startswith("actions/download-artifact@") for u in uses)


def test_label_workflow_runs_only_for_the_evaluate_label() -> None:
    doc = _load(WORKFLOW_DIR / "evaluate-label.yml")
    assert _triggers(doc)["pull_request"] == {"types": ["labeled"]}
    assert doc["jobs"]["evaluate"]["if"] == "github.event.label.name == 'evaluate'"
    assert "pull_request.number" in doc["concurrency"]["group"]


def test_both_evaluate_workflows_share_one_script() -> None:
    """The inline evaluation is copied in two files; keep the copies equal."""
    label = _step(_load(WORKFLOW_DIR / "evaluate-label.yml"), "evaluate")
    dispatch = _step(_load(WORKFLOW_DIR / "evaluate-dispatch.yml"), "evaluate")
    assert label["run"] == dispatch["run"]
    assert label["shell"] == dispatch["shell"] == "python"


def _parse_table(body: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for m in re.finditer(r"^\| (Head|Base|Diff) \| ([-+\d.]+) \| ([-+\d.]+) \|$", body, re.M):
        rows[m[1]] = (float(m[2]), float(m[3]))
    return rows


@pytest.mark.parametrize("name", ["evaluate-label.yml", "evaluate-dispatch.yml"])
def test_evaluation_script_runs_and_writes_the_metrics_comment(name: str, tmp_path: Path) -> None:
    """The inline script runs as GitHub would run it (`shell: python`) and writes the comment."""
    step = _step(_load(WORKFLOW_DIR / name), "evaluate")
    script = tmp_path / "evaluate.py"
    script.write_text(step["run"], encoding="utf-8")
    (tmp_path / "head").mkdir()
    (tmp_path / "base").mkdir()
    # The head has a better model than the base's default one.
    (tmp_path / "head" / "model.json").write_text(
        json.dumps({"weights": [3.0, -1.6], "bias": 0.2}), encoding="utf-8"
    )
    summary = tmp_path / "summary.md"
    env = {
        **os.environ,
        "HEAD_DIR": "head",
        "BASE_DIR": "base",
        "MODEL_FILE": "model.json",
        "METRICS_FILE": "metrics.md",
        "PR_NUMBER": "2",
        "HEAD_SHA": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
        "BASE_SHA": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
        "REQUEST_ID": "0123456789ab",
        "RUN_ID": "30433642",
        "RUN_URL": "https://github.example/acme/ml/actions/runs/30433642",
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    body = (tmp_path / "metrics.md").read_text(encoding="utf-8")
    assert body.startswith(METRICS_MARKER + "\n")
    assert "| Source | Loss | Accuracy |" in body
    rows = _parse_table(body)
    assert set(rows) == {"Head", "Base", "Diff"}
    head, base, diff = rows["Head"], rows["Base"], rows["Diff"]
    assert head[0] < base[0] and head[1] > base[1]
    assert diff == pytest.approx((head[0] - base[0], head[1] - base[1]), abs=2e-4)
    assert all(0.0 <= acc <= 1.0 for _, acc in (head, base))

    data = json.loads(re.search(r"<!-- chatops:data (\{.*\}) -->", body)[1])
    assert data["request_id"] == "0123456789ab"
    assert data["pr_number"] == 2
    assert data["head_sha"] == env["HEAD_SHA"]
    assert summary.read_text(encoding="utf-8") == body

    # Deterministic: the same inputs give the same comment.
    again = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, check=False
    )
    assert again.returncode == 0
    assert (tmp_path / "metrics.md").read_text(encoding="utf-8") == body
