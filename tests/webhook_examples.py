"""GitHub's community webhook payloads and their JSON Schema, from the npm packages.

The packages are pinned in package.json (`@octokit/webhooks-examples`, `@octokit/webhooks-schemas`)
and installed with `npm ci`. Tests that need the whole corpus call `available()` and skip without
it; the core tests use the trimmed copies in tests/fixtures/ and need no Node at all.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO_ROOT / "node_modules"
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"

_INSTALL_HINT = (
    "run `npm ci` in {root} to install @octokit/webhooks-examples and "
    "@octokit/webhooks-schemas (pinned in package.json); missing: {path}"
)


def _require(path: Path) -> Path:
    if not path.exists():
        raise RuntimeError(_INSTALL_HINT.format(root=REPO_ROOT, path=path))
    return path


def examples_dir() -> Path:
    """The folder holding api.github.com/index.json of @octokit/webhooks-examples."""
    return _require(NODE_MODULES / "@octokit" / "webhooks-examples" / "api.github.com")


def schema_path() -> Path:
    """The draft-07 schema.json of @octokit/webhooks-schemas."""
    return _require(NODE_MODULES / "@octokit" / "webhooks-schemas" / "schema.json")


def available() -> bool:
    """True when both npm packages are installed (so the helpers below will not raise)."""
    try:
        examples_dir()
        schema_path()
    except RuntimeError:
        return False
    return True


@functools.cache
def _index() -> tuple[dict[str, Any], ...]:
    with (examples_dir() / "index.json").open(encoding="utf-8") as fh:
        return tuple(json.load(fh))


def load_index() -> list[dict[str, Any]]:
    """index.json: one entry per event, each with `name`, `description`, `actions` (the actions
    GitHub documents for it; empty for events without one, such as `ping`), `properties` and
    `examples` (the payloads). 58 events and 329 payloads in 7.6.1.

    Returns a deep copy, so callers may edit what they get.
    """
    return copy.deepcopy(list(_index()))


def events() -> list[str]:
    """The names of the events that have examples, in index order."""
    return [entry["name"] for entry in _index()]


def payloads(event: str, action: str | None = None) -> list[dict[str, Any]]:
    """The example payloads of `event`, only those whose `action` matches when one is given.

    Raises KeyError for an event that the package has no entry for; an action without examples
    gives an empty list (7.6.1 has none for `workflow_run` `in_progress`, for instance).
    """
    for entry in _index():
        if entry["name"] == event:
            found = [p for p in entry["examples"] if action is None or p.get("action") == action]
            return copy.deepcopy(found)
    raise KeyError(f"no webhook examples for event {event!r}; known: {', '.join(events())}")


@functools.cache
def _schema() -> dict[str, Any]:
    with schema_path().open(encoding="utf-8") as fh:
        return json.load(fh)


def schema() -> dict[str, Any]:
    """The whole draft-07 schema: `definitions` (e.g. `workflow_run$completed`,
    `workflow_run_event`) and a top-level `oneOf` over every event."""
    return copy.deepcopy(_schema())


def event_schema(definition: str) -> dict[str, Any]:
    """A schema that validates against one definition, e.g. `workflow_run$completed` or
    `ping_event`, keeping the shared `definitions` so that `$ref`s resolve."""
    full = _schema()
    if definition not in full["definitions"]:
        raise KeyError(f"no definition {definition!r} in @octokit/webhooks-schemas")
    return {
        "$schema": full["$schema"],
        "definitions": full["definitions"],
        "$ref": f"#/definitions/{definition}",
    }


def fixture(name: str) -> dict[str, Any]:
    """A committed trimmed payload, e.g. `fixture("workflow_run.completed")`; needs no Node."""
    with (FIXTURES_DIR / f"{name}.json").open(encoding="utf-8") as fh:
        return json.load(fh)
