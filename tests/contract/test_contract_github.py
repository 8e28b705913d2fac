"""Every GitHub operation of bot/github.py against Prism serving GitHub's own description.

The list of operations lives in cut_openapi.OPERATIONS. Three checks keep it honest:
- `test_code_calls_only_listed_operations` reads bot/github.py and fails on any `_raw(...)` /
  `_conditional(...)` path or PyGithub call that is not in the list;
- `test_every_public_method_is_exercised` fails when GitHubApp grows a method without an
  exercise below;
- `test_operation[...]` runs each exercise through the double, which refuses (and records as a
  violation) anything outside the cut-down description or anything Prism finds invalid.
"""

from __future__ import annotations

import ast
import inspect
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cut_openapi
import pytest
from github_contract import GitHubContract

from bot.github import GitHubApp, ValidationFailed

pytestmark = pytest.mark.contract

REPO = "acme/ml-models"
GITHUB_PY = Path(__file__).resolve().parents[2] / "bot" / "github.py"


@dataclass(frozen=True)
class Exercise:
    method: str
    template: str
    uses: str  # the GitHubApp method that performs it
    run: Callable[[GitHubApp, GitHubContract], Any]


def _conditional_twice(fetch: Callable[[str | None], Any]) -> tuple[Any, Any]:
    first = fetch(None)
    second = fetch(first.etag)
    return first, second


def _list_runs(app: GitHubApp, gh: GitHubContract) -> None:
    params = {"status": "completed", "event": "repository_dispatch", "per_page": 50}
    first, second = _conditional_twice(lambda etag: app.list_runs(REPO, params=params, etag=etag))
    assert not first.not_modified and first.etag
    assert first.data["total_count"] >= 1 and first.data["workflow_runs"][0]["id"]
    assert app.last_rate_remaining is not None
    assert second.not_modified and second.data is None and second.etag == first.etag
    sent = gh.calls_of("GET", "/repos/{owner}/{repo}/actions/runs")
    assert sent[1].headers.get("If-None-Match") == first.etag
    assert sent[0].query == {
        "status": "completed",
        "event": "repository_dispatch",
        "per_page": "50",
    }


def _list_comments(app: GitHubApp, gh: GitHubContract) -> None:
    first, second = _conditional_twice(
        lambda etag: app.list_comments(REPO, 42, since="2026-01-01T00:00:00Z", etag=etag)
    )
    assert isinstance(first.data, list) and first.data[0]["body"]
    assert second.not_modified
    sent = gh.calls_of("GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments")
    assert sent[0].path == f"/repos/{REPO}/issues/42/comments"
    assert sent[0].query["since"] == "2026-01-01T00:00:00Z"


def _get_pull(app: GitHubApp, gh: GitHubContract) -> None:
    pull = app.get_pull(REPO, 42)
    # Prism answers GitHub's example pull request whatever number is asked.
    assert pull.number == 1347 and pull.state == "open" and len(pull.head_sha) == 40
    assert pull.head_ref and pull.base_ref and pull.html_url.startswith("https://github.com/")
    assert gh.requests_to("GET", rf"^/repos/{REPO}/pulls/42$")


def _pull(app: GitHubApp, gh: GitHubContract) -> None:
    first, second = _conditional_twice(lambda etag: app.pull(REPO, 42, etag=etag))
    assert not first.not_modified and len(first.data["head"]["sha"]) == 40
    assert second.not_modified and second.etag == first.etag
    sent = gh.calls_of("GET", "/repos/{owner}/{repo}/pulls/{pull_number}")
    assert sent[-1].headers.get("If-None-Match") == first.etag


def _list_deployments(app: GitHubApp, gh: GitHubContract) -> None:
    params = {"environment": "production", "per_page": 20}
    first, second = _conditional_twice(
        lambda etag: app.list_deployments(REPO, params=params, etag=etag)
    )
    assert isinstance(first.data, list) and first.data[0]["id"] and first.data[0]["sha"]
    assert first.data[0]["created_at"] and second.not_modified
    sent = gh.calls_of("GET", "/repos/{owner}/{repo}/deployments")
    assert sent[0].query == {"environment": "production", "per_page": "20"}


def _deployment_statuses(app: GitHubApp, gh: GitHubContract) -> None:
    first, second = _conditional_twice(lambda etag: app.deployment_statuses(REPO, 7, etag=etag))
    assert isinstance(first.data, list) and first.data[0]["id"] and first.data[0]["state"]
    assert second.not_modified
    sent = gh.calls_of("GET", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses")
    assert sent[0].path == f"/repos/{REPO}/deployments/7/statuses"


def _branch_head(app: GitHubApp, gh: GitHubContract) -> None:
    sha = app.branch_head(REPO, "feature/eval")
    # Prism answers GitHub's example branch whatever name is asked.
    assert sha is not None and len(sha) == 40
    # A slash in a branch name is escaped: the name is one path segment.
    assert gh.requests_to("GET", rf"^/repos/{REPO}/branches/feature%2Feval$")


def _get_run(app: GitHubApp, gh: GitHubContract) -> None:
    run = app.get_run(REPO, 30433642)
    assert run.id and run.status and run.head_sha and run.html_url
    assert gh.requests_to("GET", rf"^/repos/{REPO}/actions/runs/30433642$")


def _add_label(app: GitHubApp, gh: GitHubContract) -> None:
    app.add_label(REPO, 42, "evaluate")
    (sent,) = gh.requests_to("POST", rf"^/repos/{REPO}/issues/42/labels$")
    assert sent.body == {"labels": ["evaluate"]}


def _remove_label(app: GitHubApp, gh: GitHubContract) -> None:
    app.remove_label(REPO, 42, "needs review/ml")
    (sent,) = gh.requests_to("DELETE", rf"^/repos/{REPO}/issues/42/labels/")
    assert sent.path.endswith("/labels/needs%20review%2Fml")  # one path segment, escaped


def _dispatch(app: GitHubApp, gh: GitHubContract) -> None:
    payload = {"request_id": "0123456789ab", "pr_number": 42, "head_sha": "a" * 40}
    app.dispatch(REPO, "evaluate", payload)
    (sent,) = gh.requests_to("POST", rf"^/repos/{REPO}/dispatches$")
    assert sent.body == {"event_type": "evaluate", "client_payload": payload}
    assert sent.status == 204


def _permission(app: GitHubApp, gh: GitHubContract) -> None:
    assert app.permission(REPO, "octo cat") == "admin"
    assert gh.requests_to("GET", rf"^/repos/{REPO}/collaborators/octo%20cat/permission$")


def _installations(app: GitHubApp, gh: GitHubContract) -> None:
    found = app.installations()
    assert found and found[0]["id"] == 1 and found[0]["account"]
    (sent,) = gh.requests_to("GET", r"^/app/installations$")
    assert sent.auth == "jwt"


def _installation(app: GitHubApp, gh: GitHubContract) -> None:
    assert app.installation_id(REPO) == 1
    assert app.installation_id(REPO) == 1  # cached
    assert len(gh.requests_to("GET", rf"^/repos/{REPO}/installation$")) == 1


def _access_token(app: GitHubApp, gh: GitHubContract) -> None:
    app.labels(REPO, 42)
    (minted,) = gh.requests_to("POST", r"^/app/installations/1/access_tokens$")
    assert minted.auth == "jwt" and minted.status == 201
    (read,) = gh.requests_to("GET", rf"^/repos/{REPO}/issues/42/labels$")
    assert read.headers["Authorization"] == f"token {gh.tokens_issued[0]}"


def _labels(app: GitHubApp, gh: GitHubContract) -> None:
    assert app.labels(REPO, 42) == ["bug", "enhancement"]


def _cancel_run(app: GitHubApp, gh: GitHubContract) -> None:
    app.cancel_run(REPO, 30433642)
    (sent,) = gh.requests_to("POST", rf"^/repos/{REPO}/actions/runs/30433642/cancel$")
    assert sent.status == 202


def _answer_gate(app: GitHubApp, gh: GitHubContract) -> None:
    app.answer_gate(REPO, 30433642, "production", "approved", "Approved in Slack by U0APPROVER1")
    app.answer_gate(REPO, 30433642, "production", "rejected", "expired")
    sent = gh.requests_to(
        "POST", rf"^/repos/{REPO}/actions/runs/30433642/deployment_protection_rule$"
    )
    assert [r.status for r in sent] == [204, 204]
    assert sent[0].body == {
        "environment_name": "production",
        "state": "approved",
        "comment": "Approved in Slack by U0APPROVER1",
    }
    assert sent[1].body["state"] == "rejected" and sent[0].auth == "token"


def _repository(app: GitHubApp, gh: GitHubContract) -> None:
    data = app.repository(REPO)
    assert data["full_name"] and data["default_branch"] and "permissions" in data
    (sent,) = gh.requests_to("GET", rf"^/repos/{REPO}$")
    assert sent.auth == "token"


EXERCISES = [
    Exercise("GET", "/app/installations", "installations", _installations),
    Exercise(
        "POST",
        "/app/installations/{installation_id}/access_tokens",
        "client_for",
        _access_token,
    ),
    Exercise("GET", "/repos/{owner}/{repo}/installation", "installation_id", _installation),
    Exercise("GET", "/repos/{owner}/{repo}", "repository", _repository),
    Exercise("GET", "/repos/{owner}/{repo}/pulls/{pull_number}", "get_pull", _get_pull),
    Exercise("GET", "/repos/{owner}/{repo}/pulls/{pull_number}", "pull", _pull),
    Exercise("GET", "/repos/{owner}/{repo}/branches/{branch}", "branch_head", _branch_head),
    Exercise("GET", "/repos/{owner}/{repo}/issues/{issue_number}/labels", "labels", _labels),
    Exercise("POST", "/repos/{owner}/{repo}/issues/{issue_number}/labels", "add_label", _add_label),
    Exercise(
        "DELETE",
        "/repos/{owner}/{repo}/issues/{issue_number}/labels/{name}",
        "remove_label",
        _remove_label,
    ),
    Exercise("POST", "/repos/{owner}/{repo}/dispatches", "dispatch", _dispatch),
    Exercise("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}", "get_run", _get_run),
    Exercise("GET", "/repos/{owner}/{repo}/actions/runs", "list_runs", _list_runs),
    Exercise(
        "POST", "/repos/{owner}/{repo}/actions/runs/{run_id}/cancel", "cancel_run", _cancel_run
    ),
    Exercise(
        "GET",
        "/repos/{owner}/{repo}/issues/{issue_number}/comments",
        "list_comments",
        _list_comments,
    ),
    Exercise(
        "POST",
        "/repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule",
        "answer_gate",
        _answer_gate,
    ),
    Exercise(
        "GET",
        "/repos/{owner}/{repo}/collaborators/{username}/permission",
        "permission",
        _permission,
    ),
    Exercise("GET", "/repos/{owner}/{repo}/deployments", "list_deployments", _list_deployments),
    Exercise(
        "GET",
        "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses",
        "deployment_statuses",
        _deployment_statuses,
    ),
]

# Public GitHubApp methods that do not call GitHub themselves.
NOT_GITHUB_CALLS = frozenset({"forget"})


def test_every_listed_operation_has_an_exercise() -> None:
    listed = {(m, t) for m, t, _ in cut_openapi.OPERATIONS}
    exercised = {(e.method, e.template) for e in EXERCISES}
    assert listed - exercised == set(), "operations in cut_openapi.OPERATIONS without an exercise"
    assert exercised - listed == set(), "exercises of operations not in cut_openapi.OPERATIONS"


def test_every_public_method_is_exercised() -> None:
    public = {
        name
        for name, fn in inspect.getmembers(GitHubApp, inspect.isfunction)
        if not name.startswith("_")
    }
    missing = public - NOT_GITHUB_CALLS - {e.uses for e in EXERCISES}
    assert not missing, (
        f"GitHubApp.{sorted(missing)} has no contract exercise: add its operation to "
        "tests/contract/cut_openapi.py OPERATIONS and an Exercise in this file"
    )


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: f"{e.method} {e.template}")
def test_operation(exercise: Exercise, gh: GitHubContract, make_app: Callable[..., Any]) -> None:
    """One operation through the real GitHubApp, Prism validating what it sends."""
    exercise.run(make_app(), gh)
    calls = gh.calls_of(exercise.method, exercise.template)
    assert calls, f"{exercise.uses} did not perform {exercise.method} {exercise.template}"
    assert all(200 <= c.status < 400 for c in calls), [(c.path, c.status) for c in calls]
    unknown = [f"{r.method} {r.path}" for r in gh.requests if r.operation is None]
    assert not unknown


# ------------------------------------------------------------------ no silent drift
PYGITHUB_CALLS = {
    # PyGithub method → the operation it performs
    "get_repo_installation": ("GET", "/repos/{owner}/{repo}/installation"),
    "get_installations": ("GET", "/app/installations"),
    # mints tokens lazily with POST .../access_tokens (AppInstallationAuth)
    "get_github_for_installation": ("POST", "/app/installations/{installation_id}/access_tokens"),
    "get_access_token": ("POST", "/app/installations/{installation_id}/access_tokens"),
}
# Names of PyGithub API methods (get_*, create_*, ...): a call to one of them that is not in
# PYGITHUB_CALLS is an operation nobody checked against the description.
_PYGITHUB_VERBS = re.compile(
    r"^(get|create|add|remove|delete|edit|update|set|cancel|rerun|merge|list)_[a-z_]+$"
)
_SAMPLE_VALUES = {"repo": "acme/ml-models"}


def _sample_path(node: ast.expr) -> str | None:
    """A concrete path from the f-string (or constant) given as a request path."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return None
    out = []
    for part in node.values:
        if isinstance(part, ast.Constant):
            out.append(str(part.value))
        elif isinstance(part, ast.FormattedValue):
            names = [n.id for n in ast.walk(part.value) if isinstance(n, ast.Name)]
            out.append(next((_SAMPLE_VALUES[n] for n in names if n in _SAMPLE_VALUES), "x1"))
    return "".join(out)


def _forwarders(tree: ast.AST) -> dict[str, tuple[str, int]]:
    """Functions that pass one of their parameters on as the path of `_raw(...)`, like
    `_conditional`: name → (HTTP method, index of the path among the call's arguments)."""
    found: dict[str, tuple[str, int]] = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or fn.name == "_raw":
            continue
        params = [a.arg for a in fn.args.args if a.arg != "self"]
        for call in ast.walk(fn):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "_raw"
                and len(call.args) >= 4
                and isinstance(call.args[3], ast.Name)
                and call.args[3].id in params
                and isinstance(call.args[2], ast.Constant)
            ):
                found[fn.name] = (str(call.args[2].value), params.index(call.args[3].id))
    return found


def code_operations(source: str) -> tuple[set[tuple[str, str]], list[str]]:
    """(operations bot/github.py performs, problems) read from its source."""
    found: set[tuple[str, str]] = set()
    problems: list[str] = []
    tree = ast.parse(source)
    forwarders = _forwarders(tree)
    public = {n for n in dir(GitHubApp) if not n.startswith("_")}
    raw_lines: set[int] = set()  # where requestJson may appear: inside _raw only
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name == "_raw":
            raw_lines.update(range(fn.lineno, (fn.end_lineno or fn.lineno) + 1))
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name = node.func.attr
            where = f"bot/github.py:{node.lineno}"
            if name == "_raw" and fn.name in forwarders:
                continue  # its callers name the path
            if name == "_raw" or name in forwarders:
                verb, index = ("", 3) if name == "_raw" else forwarders[name]
                if (
                    name == "_raw"
                    and len(node.args) >= 3
                    and isinstance(node.args[2], ast.Constant)
                ):
                    verb = str(node.args[2].value)
                path = _sample_path(node.args[index]) if len(node.args) > index else None
                if not verb or path is None:
                    problems.append(f"{where}: {name}() with a method/path this check cannot read")
                    continue
                op = cut_openapi.match_operation(verb, path)
                if op is None:
                    problems.append(f"{where}: {verb} {path} is not in cut_openapi.OPERATIONS")
                else:
                    found.add(op)
            elif name in PYGITHUB_CALLS:
                found.add(PYGITHUB_CALLS[name])
            elif _PYGITHUB_VERBS.match(name) and name not in public:
                problems.append(
                    f"{where}: PyGithub call .{name}() is not mapped in PYGITHUB_CALLS "
                    "(add its operation to cut_openapi.OPERATIONS)"
                )
            elif name in ("requestJson", "requestJsonAndCheck", "requestBlob") and (
                node.lineno not in raw_lines
            ):
                problems.append(f"{where}: raw {name}() outside _raw(): route it through _raw")
    return found, sorted(set(problems))


def test_code_calls_only_listed_operations() -> None:
    found, problems = code_operations(GITHUB_PY.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)
    listed = {(m, t) for m, t, _ in cut_openapi.OPERATIONS}
    assert found <= listed
    assert listed - found == set(), "operations listed but no longer called: drop them"


def test_only_bot_github_talks_to_github() -> None:
    """The checks above read bot/github.py only: nothing else may reach GitHub's API."""
    root = GITHUB_PY.parents[1]
    found = []
    for path in sorted([*root.glob("bot/*.py"), *root.glob("handlers/*.py")]):
        if path == GITHUB_PY:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n == "github" or n.startswith("github.") for n in names):
                found.append(f"{path.relative_to(root)}:{node.lineno} imports PyGithub")
            if isinstance(node, ast.Attribute) and node.attr in (
                "_raw",
                "requester",
                "_integration",
            ):
                found.append(f"{path.relative_to(root)}:{node.lineno} uses .{node.attr}")
    assert found == []


def test_drift_check_catches_an_unlisted_operation() -> None:
    """The static check itself: a new raw call or PyGithub call is reported."""
    source = (
        "class X:\n"
        "    def peek(self):\n"
        "        return self.client.requester.requestJson('GET', '/x')\n"
        "    def tags(self, repo, name):\n"
        "        return self._raw(repo, 'read', 'GET', f'/repos/{repo}/tags/{name}')\n"
        "    def go(self, repo):\n"
        "        return self.client.get_repo(repo).create_deployment('main')\n"
    )
    _, problems = code_operations(source)
    text = "\n".join(problems)
    assert "/repos/acme/ml-models/tags/x1 is not in cut_openapi.OPERATIONS" in text
    assert ".get_repo() is not mapped" in text and ".create_deployment() is not mapped" in text
    assert "raw requestJson() outside _raw()" in text


def test_double_refuses_operations_outside_the_description(
    gh: GitHubContract, make_app: Callable[..., Any]
) -> None:
    """At run time too: a request outside the cut-down description is a recorded violation."""
    app = make_app()
    with gh.expect_violations() as seen, pytest.raises(Exception) as caught:
        app._raw(REPO, "read the tags", "GET", f"/repos/{REPO}/tags")
    assert "not an operation of the cut-down description" in " ".join(seen)
    assert getattr(caught.value, "status", None) == 404


def test_prism_validates_what_the_bot_sends(
    gh: GitHubContract, make_app: Callable[..., Any]
) -> None:
    """GitHub's limits hold twice: the bot refuses bad dispatches itself (no request), and
    Prism refuses them by the description when sent anyway."""
    app = make_app()
    too_many = {f"k{i}": i for i in range(11)}
    with pytest.raises(ValidationFailed):
        app.dispatch(REPO, "evaluate", too_many)
    with pytest.raises(ValidationFailed):
        app.dispatch(REPO, "x" * 101, {})
    assert gh.requests_to("POST", r"/dispatches$") == []
    with gh.expect_violations() as seen, pytest.raises(ValidationFailed) as caught:
        app._raw(
            REPO,
            "send a dispatch",
            "POST",
            f"/repos/{REPO}/dispatches",
            body={"event_type": "evaluate", "client_payload": too_many},
            ok=(204,),
        )
    assert "Validation Failed" in caught.value.message
    assert any("must NOT have more than 10 properties" in v for v in seen), seen


# ------------------------------------------------------------------ App authentication
def test_app_jwt_is_checked_and_installation_token_reused(
    gh: GitHubContract, make_app: Callable[..., Any]
) -> None:
    app = make_app()
    app.get_pull(REPO, 42)
    app.labels(REPO, 42)
    app.add_label(REPO, 42, "evaluate")
    app.get_run(REPO, 1)
    app.list_runs(REPO, params={"per_page": 10})
    app.permission(REPO, "octocat")
    app.installations()
    minted = gh.requests_to("POST", r"/access_tokens$")
    assert len(minted) == 1, "the installation token must be reused until it nears expiry"
    assert len(gh.requests_to("GET", rf"^/repos/{REPO}/installation$")) == 1
    (token,) = gh.tokens_issued
    assert len(token) > 300  # long ghs_ tokens work (no fixed-length assumption)
    for rec in gh.requests:
        if rec.auth == "token":
            assert rec.headers["Authorization"] == f"token {token}"
        else:
            assert rec.headers["Authorization"].startswith("Bearer ")
    assert gh.jwt_claims, "no App JWT seen"
    for claims in gh.jwt_claims:  # decoded with the session's public key by the double
        assert str(claims["iss"]) == str(gh.app_id)
        assert claims["exp"] - claims["iat"] <= 600
        assert claims["exp"] > time.time()


def test_installation_token_renewed_near_expiry(
    gh: GitHubContract, make_app: Callable[..., Any]
) -> None:
    gh.token_ttl = 22.0  # PyGithub renews 20 s before expires_at (whole seconds on the wire)
    app = make_app()
    app.labels(REPO, 42)
    app.labels(REPO, 42)
    assert len(gh.tokens_issued) == 1
    time.sleep(2.1)
    app.labels(REPO, 42)
    assert len(gh.tokens_issued) == 2
    last = gh.requests_to("GET", r"/labels$")[-1]
    assert last.headers["Authorization"] == f"token {gh.tokens_issued[1]}"


def test_revoked_token_is_dropped_and_a_new_one_minted(
    gh: GitHubContract, make_app: Callable[..., Any]
) -> None:
    """After "Bad credentials" (App reinstalled, token revoked) the same call recovers: the
    client is dropped and the call is tried once more with a fresh token (a 401 did nothing)."""
    app = make_app()
    app.labels(REPO, 42)
    gh.revoke_tokens()
    assert app.labels(REPO, 42) == ["bug", "enhancement"]
    assert len(gh.tokens_issued) == 2
