"""Cut GitHub's OpenAPI description down to the operations chatops-bridge performs.

`OPERATIONS` below is THE list of GitHub REST operations the bot may call (method + path
template, as written in GitHub's description). Everything else derives from it:

- the cut-down description that Prism serves in the contract tests (only these operations and
  the components they reference, with the adjustments listed in ../shared/PEERS.md);
- the recording proxy's check that every request the bot sends matches one of them;
- the static check that every `_raw(...)` / PyGithub call in bot/github.py is one of them;
- the table of contract exercises (tests/contract/test_contract_github.py), which must have an
  entry for each.

A new GitHub call in bot/github.py therefore fails the contract tier until its operation is
added here (and so checked against GitHub's own description) and exercised.

Usage (the tests call `write_cut()` themselves; this is for looking at the result)::

    python tests/contract/cut_openapi.py [--base-url http://127.0.0.1:4010] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = REPO_ROOT / "node_modules" / "@octokit" / "openapi" / "generated" / "api.github.com.json"
CACHE_DIR = REPO_ROOT / "tests" / ".cache"
GITHUB_API = "https://api.github.com"

# (method, path template, what uses it). Keep in sync with bot/github.py: the contract tests
# fail when the code calls an operation missing here, or when an entry here is not exercised.
OPERATIONS: list[tuple[str, str, str]] = [
    ("GET", "/app/installations", "GitHubApp.installations (PyGithub get_installations)"),
    (
        "POST",
        "/app/installations/{installation_id}/access_tokens",
        "installation token, minted by PyGithub's AppInstallationAuth",
    ),
    (
        "GET",
        "/repos/{owner}/{repo}/installation",
        "GitHubApp.installation_id (PyGithub get_repo_installation)",
    ),
    ("GET", "/repos/{owner}/{repo}", "GitHubApp.repository (operator check)"),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}", "GitHubApp.get_pull, pull (ETag)"),
    ("GET", "/repos/{owner}/{repo}/branches/{branch}", "GitHubApp.branch_head (deploy card)"),
    ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/labels", "GitHubApp.labels"),
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/labels", "GitHubApp.add_label"),
    (
        "DELETE",
        "/repos/{owner}/{repo}/issues/{issue_number}/labels/{name}",
        "GitHubApp.remove_label",
    ),
    ("POST", "/repos/{owner}/{repo}/dispatches", "GitHubApp.dispatch"),
    ("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}", "GitHubApp.get_run"),
    ("GET", "/repos/{owner}/{repo}/actions/runs", "GitHubApp.list_runs (ETag)"),
    ("POST", "/repos/{owner}/{repo}/actions/runs/{run_id}/cancel", "GitHubApp.cancel_run"),
    (
        "POST",
        "/repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule",
        "GitHubApp.answer_gate (custom deployment protection rules, issue 12)",
    ),
    (
        "GET",
        "/repos/{owner}/{repo}/issues/{issue_number}/comments",
        "GitHubApp.list_comments (ETag)",
    ),
    (
        "GET",
        "/repos/{owner}/{repo}/collaborators/{username}/permission",
        "GitHubApp.permission",
    ),
    ("GET", "/repos/{owner}/{repo}/deployments", "GitHubApp.list_deployments (ETag)"),
    (
        "GET",
        "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses",
        "GitHubApp.deployment_statuses (ETag)",
    ),
]

# Operations GitHub authenticates with the App's JWT; all others need an installation token.
APP_JWT_OPERATIONS = frozenset(
    {
        ("GET", "/app/installations"),
        ("POST", "/app/installations/{installation_id}/access_tokens"),
        ("GET", "/repos/{owner}/{repo}/installation"),
    }
)

# Media types PyGithub sends in Accept: the default one and GithubIntegration's preview type.
# Prism matches Accept strictly, so JSON answers are offered under these names too.
VND_MEDIA_TYPES = (
    "application/vnd.github+json",
    "application/vnd.github.v3+json",
    "application/vnd.github.machine-man-preview+json",
)

DOCS = "https://docs.github.com/rest"
# GitHub's real wording per status; PyGithub picks its exception class from some of them.
ERROR_MESSAGES: dict[str, str] = {
    "moved_permanently": "Moved Permanently",
    "not_found": "Not Found",
    "forbidden": "Resource not accessible by integration",
    "requires_authentication": "Requires authentication",
    "gone": "Gone",
    "conflict": "Conflict",
    "internal_error": "Server Error",
    "service_unavailable": "Service unavailable",
    "bad_request": "Problems parsing JSON",
}
STATUS_OF = {
    "moved_permanently": "301",
    "not_found": "404",
    "forbidden": "403",
    "requires_authentication": "401",
    "gone": "410",
    "conflict": "409",
    "internal_error": "500",
    "service_unavailable": "503",
    "bad_request": "400",
    "validation_failed": "422",
    "validation_failed_simple": "422",
}
FUTURE = "2099-01-01T00:00:00Z"


def template_regex(template: str) -> re.Pattern[str]:
    """`/repos/{owner}/{repo}` → a regex matching one concrete path (one segment per param)."""
    parts = re.split(r"(\{[^}]+\})", template)
    pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{pattern}$")


_COMPILED = [(m, template_regex(t), t) for m, t, _ in OPERATIONS]


def match_operation(method: str, path: str) -> tuple[str, str] | None:
    """The (method, template) of OPERATIONS that a concrete request matches, or None."""
    path = path.split("?", 1)[0]
    if len(path) > 1:
        path = path.rstrip("/")
    for m, regex, template in _COMPILED:
        if m == method.upper() and regex.match(path):
            return m, template
    return None


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            found.add(ref)
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _replace_urls(node: Any, base_url: str) -> Any:
    if isinstance(node, str):
        return node.replace(GITHUB_API, base_url)
    if isinstance(node, dict):
        return {k: _replace_urls(v, base_url) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_urls(v, base_url) for v in node]
    return node


def _each_response(cut: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for item in cut["paths"].values():
        for op in item.values():
            if isinstance(op, dict) and "responses" in op:
                found += [r for r in op["responses"].values() if "$ref" not in r]
    found += list(cut["components"].get("responses", {}).values())
    return found


def cut(spec: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The cut-down, adjusted description (pure: `spec` is not changed)."""
    paths: dict[str, Any] = {}
    for method, template, _ in OPERATIONS:
        item = spec["paths"].get(template)
        if item is None or method.lower() not in item:
            raise KeyError(f"{method} {template} is not in GitHub's OpenAPI description")
        target = paths.setdefault(template, {})
        for key, value in item.items():  # path-level parameters, summary, ...
            if key not in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
                target[key] = copy.deepcopy(value)
        target[method.lower()] = copy.deepcopy(item[method.lower()])

    # 1. Only the components the kept operations reference (transitively).
    wanted: set[str] = set()
    _refs(paths, wanted)
    todo = list(wanted)
    while todo:
        ref = todo.pop()
        more: set[str] = set()
        _refs(_resolve(spec, ref), more)
        for r in more - wanted:
            wanted.add(r)
            todo.append(r)
    components: dict[str, dict[str, Any]] = {}
    for ref in sorted(wanted):
        _, _, kind, name = ref.split("/", 3)
        components.setdefault(kind, {})[name] = copy.deepcopy(_resolve(spec, ref))

    result: dict[str, Any] = {
        "openapi": spec["openapi"],
        "info": {
            **spec["info"],
            "title": spec["info"].get("title", "GitHub") + " (cut down for chatops-bridge)",
        },
        "servers": [{"url": base_url}],
        "paths": paths,
        "components": components,
    }
    # 2. URLs in examples point at the double: PyGithub refuses to follow other hosts/ports.
    result = _replace_urls(result, base_url)

    for response in _each_response(result):
        # 5. No example Link headers: they point at ?page=2 and make PyGithub page on and on.
        headers = response.get("headers")
        if isinstance(headers, dict):
            for key in [k for k in headers if k.lower() == "link"]:
                del headers[key]
            if not headers:
                del response["headers"]
        # 3. application/vnd.github.* accepted as JSON (Prism matches Accept strictly).
        content = response.get("content")
        if isinstance(content, dict) and "application/json" in content:
            for media in VND_MEDIA_TYPES:
                content.setdefault(media, content["application/json"])

    # 4. "Add labels" also takes a plain array (its own text says so; PyGithub sends one).
    add_labels = result["paths"]["/repos/{owner}/{repo}/issues/{issue_number}/labels"]["post"]
    schema = add_labels["requestBody"]["content"]["application/json"]["schema"]
    schema["oneOf"].append(
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
    )

    # 6a. The example installation token expires in the future (else PyGithub mints a new
    # one before every call; the recording proxy also gives each token its own expiry).
    token_example = result["components"]["examples"]["installation-token"]["value"]
    token_example["expires_at"] = FUTURE
    # 6b. Error answers in GitHub's wording (PyGithub picks exception classes from it).
    for name, response in result["components"].get("responses", {}).items():
        content = response.get("content") or {}
        for media in content.values():
            if name in ("validation_failed", "validation_failed_simple"):
                errors: list[Any] = (
                    ["Invalid request."]
                    if name == "validation_failed_simple"
                    else [{"resource": "Issue", "code": "invalid", "field": "labels"}]
                )
                example = {
                    "message": "Validation Failed",
                    "errors": errors,
                    "documentation_url": DOCS,
                    "status": "422",
                }
            elif name in ERROR_MESSAGES:
                example = {"message": ERROR_MESSAGES[name], "documentation_url": DOCS}
                if name not in ("service_unavailable",):
                    example["status"] = STATUS_OF[name]
            else:
                continue
            media.pop("examples", None)
            media["example"] = example
    return result


def load_source(source: Path = SOURCE) -> dict[str, Any]:
    if not source.exists():
        raise FileNotFoundError(
            f"{source} is missing: run `npm ci` in {REPO_ROOT} (installs @octokit/openapi, "
            "pinned in package.json)"
        )
    with source.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def write_cut(out: Path, base_url: str, source: Path = SOURCE) -> Path:
    """Write the cut-down description for a double served at `base_url`; return `out`."""
    result = cut(load_source(source), base_url.rstrip("/"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:4010")
    parser.add_argument("--out", type=Path, default=CACHE_DIR / "github-openapi.cut.json")
    args = parser.parse_args(argv)
    out = write_cut(args.out, args.base_url)
    data = json.loads(out.read_text(encoding="utf-8"))
    count = sum(len([k for k in v if k != "parameters"]) for v in data["paths"].values())
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB, {count} operations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
