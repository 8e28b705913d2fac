"""Pure checks of signed payloads at intake: nesting depth and the types handlers rely on.

A payload that fails here gets 400 and is never stored, so it cannot turn into a delivery that
fails on every retry. The checks look only at fields that handlers read; a field that is absent
(or null where GitHub allows null) is the handler's business, one of the wrong type is not.
"""

from __future__ import annotations

from typing import Any

# GitHub's and Slack's payloads nest about 8 levels (a deployment's own `payload` object may
# add a few); 32 leaves room and stays far below the interpreter's recursion limit, which
# json.dumps and anything walking the payload would otherwise meet.
MAX_JSON_DEPTH = 32


_CONTAINERS = (dict, list)


def json_too_deep(value: Any, limit: int) -> bool:
    """Whether decoded JSON nests more than `limit` objects/arrays (level by level; pure)."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        deeper: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            deeper.extend([child for child in children if isinstance(child, _CONTAINERS)])
        level = deeper
    return False


# The JSON kinds checked; an integer is never a bool (which Python counts as int).
INT, STR, OBJ, OBJ_LIST = "an integer", "a string", "an object", "a list of objects"
Kind = str

# Per event: dotted path -> kind, for the fields handlers (and the poller's shared code) read.
# Null is accepted wherever GitHub documents it (conclusion, head_branch, ...): only the kinds
# listed are checked, and only when the value is not null. `*` applies to every list element.
_COMMON: dict[str, Kind] = {
    "repository.full_name": STR,
    "installation.id": INT,
    "sender.login": STR,
}
_RUN: dict[str, Kind] = {
    "id": INT,
    "run_attempt": INT,
    "name": STR,
    "display_title": STR,
    "status": STR,
    "conclusion": STR,
    "head_sha": STR,
    "head_branch": STR,
    "event": STR,
    "html_url": STR,
    "created_at": STR,
    "updated_at": STR,
    "run_started_at": STR,
    "path": STR,
    "pull_requests": OBJ_LIST,
    "pull_requests.*.number": INT,
}
EVENT_FIELDS: dict[str, dict[str, Kind]] = {
    "workflow_run": {f"workflow_run.{k}": v for k, v in _RUN.items()},
    "issue_comment": {
        "issue.number": INT,
        "issue.pull_request": OBJ,
        "comment.id": INT,
        "comment.body": STR,
        "comment.html_url": STR,
        "comment.user": OBJ,
        "comment.user.login": STR,
        "comment.user.type": STR,
        "comment.author_association": STR,
    },
    "pull_request": {
        "number": INT,
        "after": STR,
        "pull_request.number": INT,
        "pull_request.head": OBJ,
        "pull_request.head.sha": STR,
    },
    "deployment_status": {
        "deployment.id": INT,
        "deployment.environment": STR,
        "deployment.created_at": STR,
        "deployment_status.id": INT,
        "deployment_status.state": STR,
        "deployment_status.description": STR,
        "deployment_status.environment_url": STR,
        "deployment_status.log_url": STR,
        "workflow_run.id": INT,
        "workflow_run.display_title": STR,
    },
    "deployment_protection_rule": {
        "environment": STR,
        "event": STR,
        "deployment_callback_url": STR,
        "deployment.id": INT,
        "deployment.sha": STR,
        "deployment.environment": STR,
        "pull_requests": OBJ_LIST,
        "pull_requests.*.number": INT,
    },
    "installation": {"repositories": OBJ_LIST, "repositories.*.full_name": STR},
    "installation_repositories": {
        "repositories_added": OBJ_LIST,
        "repositories_added.*.full_name": STR,
        "repositories_removed": OBJ_LIST,
        "repositories_removed.*.full_name": STR,
    },
}


def _fits(value: Any, kind: Kind) -> bool:
    if kind is INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is STR:
        return isinstance(value, str)
    if kind is OBJ:
        return isinstance(value, dict)
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


def _values(payload: Any, parts: list[str]) -> list[Any]:
    """Every value at a dotted path (`*` fans out over a list); missing or null parts end it."""
    current = [payload]
    for part in parts:
        nxt: list[Any] = []
        for item in current:
            if part == "*":
                if isinstance(item, list):
                    nxt.extend(item)
            elif isinstance(item, dict) and item.get(part) is not None:
                nxt.append(item[part])
        current = nxt
    return current


def webhook_shape_problem(event: str, payload: dict[str, Any]) -> str | None:
    """Why this webhook's fields have the wrong types for its handlers, or None (pure)."""
    fields = {**_COMMON, **EVENT_FIELDS.get(event, {})}
    for path, kind in fields.items():
        for value in _values(payload, path.split(".")):
            if not _fits(value, kind):
                return f"{path} must be {kind}"
    return None
