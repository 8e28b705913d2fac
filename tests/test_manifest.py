"""manifest.yml is a Slack app manifest that Slack's own JSON Schema accepts."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = REPO_ROOT / "manifest.yml"
# Slack's schema (slackapi/manifest-schema, MIT) lives in the shared folder beside the repo, not
# in it; CI has that folder, a bare clone may not. MANIFEST_SCHEMA_DIR points elsewhere.
SCHEMA_NAME = "slack-app-manifest.schema.1.0.0.json"
SCHEMA = (
    Path(os.environ.get("MANIFEST_SCHEMA_DIR") or REPO_ROOT.parent / "shared" / "schemas")
    / SCHEMA_NAME
)
PLACEHOLDER = "https://YOUR-HOST.example.com/slack/events"


def in_ci(env: dict[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get("CI", "").strip().lower()
    return value not in ("", "0", "false", "no")


def missing_schema_message(schema: Path = SCHEMA) -> str:
    return (
        f"Slack's manifest schema is missing: {schema} does not exist, so manifest.yml is not "
        f"validated. Put {SCHEMA_NAME} (github.com/slackapi/manifest-schema) in "
        "../shared/schemas beside this repository, or set MANIFEST_SCHEMA_DIR to the folder "
        "holding it, then run: .venv/bin/pytest tests/test_manifest.py"
    )


def schema_validator(schema: Path = SCHEMA) -> Draft7Validator:
    """Slack's schema as a validator; in CI its absence fails the run (a skip there would let
    an invalid manifest ship), elsewhere the tests skip saying how to run them."""
    if not schema.exists():
        if in_ci():
            pytest.fail(missing_schema_message(schema), pytrace=False)
        pytest.skip(missing_schema_message(schema))
    data = json.loads(schema.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(data)
    return Draft7Validator(data)


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    return schema_validator()


@pytest.fixture
def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))


def _errors(validator: Draft7Validator, instance: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def test_manifest_validates_against_slack_schema(
    validator: Draft7Validator, manifest: dict[str, Any]
) -> None:
    """Slack's own schema accepts the manifest as written."""
    assert _errors(validator, manifest) == []


def test_schema_rejects_command_without_slash(
    validator: Draft7Validator, manifest: dict[str, Any]
) -> None:
    """The schema is strict enough to catch a slash command without its leading '/'."""
    bad = copy.deepcopy(manifest)
    bad["features"]["slash_commands"][0]["command"] = "evaluate"
    errors = _errors(validator, bad)
    assert any(e.startswith("features/slash_commands/0/command") for e in errors), errors


def test_schema_rejects_long_display_name(
    validator: Draft7Validator, manifest: dict[str, Any]
) -> None:
    """display_information.name is limited to 35 characters."""
    bad = copy.deepcopy(manifest)
    bad["display_information"]["name"] = "x" * 36
    errors = _errors(validator, bad)
    assert any(e.startswith("display_information/name") for e in errors), errors


def test_schema_rejects_unknown_keys(validator: Draft7Validator, manifest: dict[str, Any]) -> None:
    """A misspelt key is an error, not silently ignored."""
    bad = copy.deepcopy(manifest)
    bad["settings"]["interactivity"]["is_enable"] = True
    assert _errors(validator, bad)


def test_background_color_is_a_hex_colour(manifest: dict[str, Any]) -> None:
    """Slack's schema spells this check `regex`, which JSON Schema ignores, so check it here."""
    colour = manifest["display_information"]["background_color"]
    assert re.fullmatch(r"#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?", colour), colour


def test_every_url_is_the_obvious_placeholder(manifest: dict[str, Any]) -> None:
    """All three Slack URLs point at the one Bolt endpoint on the placeholder host, which
    `chatops-bridge manifest --url` replaces."""
    settings = manifest["settings"]
    urls = [c["url"] for c in manifest["features"]["slash_commands"]]
    urls += [
        settings["event_subscriptions"]["request_url"],
        settings["interactivity"]["request_url"],
    ]
    assert urls == [PLACEHOLDER] * len(urls)


def test_manifest_names_the_documented_commands_and_scopes(manifest: dict[str, Any]) -> None:
    """The commands and bot scopes the bridge relies on are declared."""
    commands = [c["command"] for c in manifest["features"]["slash_commands"]]
    assert commands == ["/evaluate", "/deploy"]
    assert manifest["_metadata"] == {"major_version": 1, "minor_version": 1}
    assert {"commands", "chat:write", "app_mentions:read"} <= set(
        manifest["oauth_config"]["scopes"]["bot"]
    )
    assert set(manifest["settings"]["event_subscriptions"]["bot_events"]) == {
        "app_home_opened",
        "app_mention",
    }


def test_a_missing_schema_fails_in_ci_and_skips_with_directions_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / SCHEMA_NAME
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="MANIFEST_SCHEMA_DIR"):
        schema_validator(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"tests/test_manifest\.py"):
        schema_validator(missing)
