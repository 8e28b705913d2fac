"""Operator commands run in-process through bot.__main__.main with an explicit environment."""

from __future__ import annotations

import csv
import gc
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from bot.__main__ import main
from bot.cli import audit_rows_as, filled_manifest, parse_since, permission_findings
from bot.config import parse_config
from bot.db import make_engine, migrate
from bot.store import Store
from tests.conftest import DEFAULT_CONFIG, REPO, Clock, make_env

ROOT = Path(__file__).resolve().parents[1]


def _env(slack: Any, github: Any, database_url: str, tmp_path: Path, config: Any) -> dict:
    path = tmp_path / "chatops.yml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return make_env(slack, github, database_url, path)


# -- check ------------------------------------------------------------------------------------


def test_check_good_configuration_passes_and_lists_permissions(
    slack, github, database_url, tmp_path, capsys
) -> None:
    """Settings, config, database, Slack and every configured repository are fine: exit 0."""
    env = _env(slack, github, database_url, tmp_path, DEFAULT_CONFIG)
    assert main(["check"], env=env) == 0
    out = capsys.readouterr().out
    print(out)
    assert "ok   settings: Slack HTTP" in out
    assert "ok   database: reachable" in out
    assert "ok   Slack: bot @chatops (UBOTBRIDGE) in workspace Acme (T0001)" in out
    assert "ok   GitHub: 1 installation(s): acme (id 101)" in out
    assert f"ok   {REPO}: reachable through installation 101; permissions actions: write" in out
    assert "issues: write" in out
    assert out.rstrip().endswith("All checks passed.")
    assert [c.method for c in slack.calls] == ["auth.test"]
    # Progress: each network step is announced before it runs, so a hang shows where it is.
    for step, result in (
        ("...  database ", "ok   database: reachable"),
        ("...  Slack auth.test at ", "ok   Slack: bot"),
        ("...  GitHub App installations", "ok   GitHub: 1 installation(s)"),
        (f"...  {REPO} (repositories.default)", f"ok   {REPO}: reachable"),
    ):
        assert out.index(step) < out.index(result), step


def test_check_broken_configuration_explains_every_problem(
    slack, github, database_url, tmp_path, capsys
) -> None:
    """A repo the App is not installed on, one it lacks permissions on, and a bad Slack token
    are each named, with what to do; the exit code is 1."""
    github.add_repo(
        "acme/limited",
        installation_id=102,
        permissions={"metadata": "read", "pull_requests": "read", "actions": "read"},
    )
    config = json.loads(json.dumps(DEFAULT_CONFIG))
    config["repositories"]["channels"] = {
        "C0OTHER01": "acme/forecasting",
        "C0OTHER02": "acme/limited",
    }
    env = _env(slack, github, database_url, tmp_path, config)
    slack.fail_next("auth.test", "invalid_auth")
    assert main(["check"], env=env) == 1
    out = capsys.readouterr().out
    print(out)
    assert "FAIL Slack: auth.test failed with invalid_auth: SLACK_BOT_TOKEN is not valid" in out
    assert "FAIL acme/forecasting: The GitHub App is not installed on acme/forecasting" in out
    assert (
        "FAIL acme/limited: the App needs issues: write or pull_requests: write "
        "(/evaluate adds a label)" in out
    )
    assert "warn acme/limited: the App needs actions: write" in out
    assert "3 problem(s):" in out


def test_check_refuses_bad_settings_and_bad_config(
    slack, github, database_url, tmp_path, capsys
) -> None:
    env = _env(slack, github, database_url, tmp_path, DEFAULT_CONFIG)
    del env["SLACK_BOT_TOKEN"]
    assert main(["check"], env=env) == 2
    out = capsys.readouterr().out
    assert "FAIL setting: SLACK_BOT_TOKEN is required" in out

    env = _env(slack, github, database_url, tmp_path, {"repositories": {"defualt": REPO}})
    assert main(["check"], env=env) == 2
    out = capsys.readouterr().out
    assert "repositories.defualt: unknown key" in out
    assert slack.calls == [] and github.requests == []


def test_check_reports_an_app_key_that_does_not_match(
    slack, github, database_url, tmp_path, capsys
) -> None:
    env = _env(slack, github, database_url, tmp_path, DEFAULT_CONFIG)
    env["GITHUB_APP_ID"] = "999"
    assert main(["check"], env=env) == 1
    out = capsys.readouterr().out
    assert "FAIL GitHub: cannot list the App's installations" in out
    assert "GITHUB_APP_ID and the private key belong to the same App" in out


def test_permission_findings_follow_the_config() -> None:
    """Dispatch-triggered evaluation needs contents: write; labels need issues/PR write."""
    full = {"metadata": "read", "pull_requests": "write", "actions": "write", "contents": "write"}
    assert permission_findings(full, parse_config(DEFAULT_CONFIG)) == []
    cfg = parse_config({"commands": {"evaluate": {"trigger": "dispatch"}}})
    found = permission_findings(
        {"metadata": "read", "pull_requests": "read", "actions": "read"}, cfg
    )
    assert (True, "needs contents: write (repository_dispatch (evaluate/schedules))") in found
    assert not any("issues" in text for _, text in found)


# -- manifest ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    from tests.test_manifest import schema_validator  # fails in CI, skips with directions

    return schema_validator()


def test_packaged_manifest_is_the_top_level_manifest() -> None:
    """bot/manifest.yml ships in the wheel; after editing manifest.yml, copy it there:
    `cp manifest.yml bot/manifest.yml`."""
    assert (ROOT / "bot" / "manifest.yml").read_text() == (ROOT / "manifest.yml").read_text()


def test_manifest_with_url_fills_every_url(capsys, validator: Draft7Validator) -> None:
    assert main(["manifest", "--url", "https://chatops.acme.io/"], env={}) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    endpoint = "https://chatops.acme.io/slack/events"
    assert [c["url"] for c in data["features"]["slash_commands"]] == [endpoint, endpoint]
    assert data["settings"]["event_subscriptions"]["request_url"] == endpoint
    assert data["settings"]["interactivity"]["request_url"] == endpoint
    assert data["settings"]["socket_mode_enabled"] is False
    assert list(validator.iter_errors(data)) == []


def test_manifest_for_socket_mode_has_no_urls(capsys, validator: Draft7Validator) -> None:
    assert main(["manifest", "--socket-mode"], env={}) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    assert "YOUR-HOST" not in text and "request_url" not in text and "url:" not in text
    assert data["settings"]["socket_mode_enabled"] is True
    assert data["settings"]["interactivity"]["is_enabled"] is True
    assert list(validator.iter_errors(data)) == []


def test_manifest_refuses_plain_http_and_needs_a_choice(capsys) -> None:
    assert main(["manifest", "--url", "http://chatops.acme.io"], env={}) == 2
    assert "https://" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["manifest"], env={})


def test_filled_manifest_keeps_a_path_prefix() -> None:
    data = {"settings": {"interactivity": {"is_enabled": True, "request_url": "x"}}}
    out = filled_manifest(data, url="https://acme.io/chatops")
    assert out["settings"]["interactivity"]["request_url"] == "https://acme.io/chatops/slack/events"
    assert data["settings"]["interactivity"]["request_url"] == "x"  # input untouched


# -- audit export -----------------------------------------------------------------------------


def _audit_db(database_url: str) -> None:
    clock = Clock()
    engine = make_engine(database_url)
    migrate(engine)
    store = Store(engine, clock=clock)
    clock.advance(-10 * 86400)
    store.audit(actor="U0OLD", action="evaluate.requested", outcome="accepted", detail="old")
    clock.advance(10 * 86400 - 60)
    store.audit(
        actor="U0REQUESTER",
        action="deploy.rejected",
        outcome="rejected",
        request_id="a1b2c3d4e5f6",
        detail='=HYPERLINK("x") not now, "quoted"',
    )
    store.audit(
        actor="bridge", action="evaluate.triggered", outcome="ok", request_id="a1b2c3d4e5f6"
    )
    engine.dispose()


def test_audit_export_csv_to_a_file(database_url, tmp_path, capsys) -> None:
    _audit_db(database_url)
    out = tmp_path / "audit.csv"
    env = {"DATABASE_URL": database_url}
    assert main(["audit", "export", "--since", "7d", "--output", str(out)], env=env) == 0
    assert "wrote 2 audit row(s) since" in capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["action"] for r in rows] == ["deploy.rejected", "evaluate.triggered"]
    assert rows[0]["detail"].startswith("'=HYPERLINK")  # no formula in a spreadsheet
    assert rows[0]["at"].endswith("Z") and rows[0]["request_id"] == "a1b2c3d4e5f6"


def test_audit_export_json_to_stdout(database_url, capsys) -> None:
    _audit_db(database_url)
    env = {"DATABASE_URL": database_url}
    assert main(["audit", "export", "--since", "30d", "--format", "json"], env=env) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["actor"] for r in rows] == ["U0OLD", "U0REQUESTER", "bridge"]
    assert rows[1]["detail"] == '=HYPERLINK("x") not now, "quoted"'


def test_audit_export_refuses_a_bad_span(capsys) -> None:
    assert main(["audit", "export", "--since", "soon"], env={}) == 2
    assert "--since 'soon'" in capsys.readouterr().err


def test_parse_since() -> None:
    now = 1_800_000_000.0
    assert parse_since("7d", now=now) == now - 7 * 86400
    assert parse_since("90m", now=now) == now - 5400
    assert parse_since("2w", now=now) == now - 14 * 86400
    assert parse_since("2027-01-15", now=now) == datetime(2027, 1, 15, tzinfo=UTC).timestamp()
    assert (
        parse_since("2027-01-15T10:00:00+02:00", now=now)
        == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    )
    with pytest.raises(ValueError):
        parse_since("yesterday", now=now)


def test_audit_rows_as_is_a_pure_function() -> None:
    rows = [
        {
            "id": 1,
            "at": 0.0,
            "request_id": None,
            "actor": "a",
            "action": "b",
            "outcome": "c",
            "detail": "+1",
        }
    ]
    assert audit_rows_as(rows, "csv") == (
        "id,at,request_id,actor,action,outcome,detail\n1,1970-01-01T00:00:00Z,,a,b,c,'+1\n"
    )
    assert json.loads(audit_rows_as(rows, "json"))[0]["detail"] == "+1"


def test_operator_commands_run_with_the_garbage_collector_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() turns the cyclic collector off for the start (bot/__main__.py); an operator
    command gets it back before it runs, and the caller has it after main() returns."""
    from bot import cli

    seen: list[bool] = []
    manifest = cli.manifest

    def watched(args: Any) -> int:
        seen.append(gc.isenabled())
        return manifest(args)

    monkeypatch.setattr(cli, "manifest", watched)
    assert main(["manifest", "--url", "https://chatops.acme.io/"], env={}) == 0
    assert seen == [True] and gc.isenabled()
