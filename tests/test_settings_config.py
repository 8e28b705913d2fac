"""Settings from the environment and chatops.yml: every problem named at once."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config, parse_config
from bot.settings import SettingsError, load_settings
from tests.doubles.github_api import app_key_pair

ROOT = Path(__file__).resolve().parents[1]
# A real key: settings try signing a JWT with it at load.
PEM = app_key_pair()[0]
PEM_LINE = PEM.splitlines()[1]
GOOD = {
    "SLACK_BOT_TOKEN": "xoxb-1-2-abc",
    "SLACK_SIGNING_SECRET": "s3cr3t-signing",
    "GITHUB_APP_ID": "123",
    "GITHUB_APP_PRIVATE_KEY": PEM,
    "GITHUB_WEBHOOK_SECRET": "whsec-123456",
}


def test_defaults() -> None:
    s = load_settings(GOOD)
    assert s.slack_api_url == "https://slack.com/api/"
    assert s.github_api_url == "https://api.github.com"
    assert s.database_url == "sqlite:///chatops.db"
    assert s.port == 3000 and not s.socket_mode
    assert "s3cr3t" not in repr(s)


def test_every_missing_setting_is_named() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({})
    text = err.value.render()
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "GITHUB_APP_ID",
        "GITHUB_APP_PRIVATE_KEY",
    ):
        assert name in text


def test_bad_values_are_named() -> None:
    env = {
        **GOOD,
        "SLACK_BOT_TOKEN": "xoxp-user",
        "GITHUB_APP_ID": "abc",
        "PORT": "99999",
        "DATABASE_URL": "mysql://x",
        "SLACK_APP_TOKEN": "nope",
        "CHATOPS_JOB_WORKERS": "0",
    }
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    problems = " ".join(err.value.problems)
    names = ("SLACK_BOT_TOKEN", "GITHUB_APP_ID", "PORT", "DATABASE_URL", "SLACK_APP_TOKEN")
    for name in (*names, "CHATOPS_JOB_WORKERS"):
        assert name in problems
    assert load_settings(GOOD).job_workers == 16
    assert load_settings({**GOOD, "CHATOPS_JOB_WORKERS": "4"}).job_workers == 4


def test_socket_mode_needs_no_signing_secret_and_postgres_urls_are_normalised() -> None:
    env = {**GOOD, "SLACK_APP_TOKEN": "xapp-1-abc", "DATABASE_URL": "postgres://u@h/db"}
    del env["SLACK_SIGNING_SECRET"]
    s = load_settings(env)
    assert s.socket_mode
    assert s.database_url == "postgresql+psycopg://u@h/db"


def test_the_database_password_is_a_secret_for_the_log_redactor() -> None:
    s = load_settings({**GOOD, "DATABASE_URL": "postgres://chatops:s3cr%40t-pw@db:5432/chatops"})
    assert "s3cr@t-pw" in s.secret_values()
    assert "" not in load_settings({**GOOD, "DATABASE_URL": "sqlite:///x.db"}).secret_values()


def test_private_key_from_file_and_world_readable_warning(tmp_path: Path, caplog) -> None:
    key = tmp_path / "app.pem"
    key.write_text(PEM)
    key.chmod(0o644)
    env = {**GOOD, "GITHUB_APP_PRIVATE_KEY_PATH": str(key)}
    del env["GITHUB_APP_PRIVATE_KEY"]
    with caplog.at_level("WARNING"):
        s = load_settings(env)
    assert s.github_private_key.get() == PEM
    warned = [r.getMessage() for r in caplog.records if "world-readable" in r.getMessage()]
    assert warned and str(key) in warned[0] and f"chmod 600 {key}" in warned[0]
    key.chmod(stat.S_IRUSR | stat.S_IWUSR)
    caplog.clear()
    load_settings(env)
    assert not any("world-readable" in r.message for r in caplog.records)


def test_escaped_newlines_in_pem_are_restored() -> None:
    s = load_settings({**GOOD, "GITHUB_APP_PRIVATE_KEY": PEM.replace("\n", "\\n")})
    assert s.github_private_key.get() == PEM


def test_design_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "chatops.example.yml")
    assert cfg.repositories.default == "acme/ml-models"
    assert cfg.commands.evaluate.trigger == "label"
    assert cfg.commands.deploy.approval is not None
    assert cfg.repository_for("C0123ABCD") == "acme/forecasting"
    assert cfg.repository_for("C0OTHER") == "acme/ml-models"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"repositories": {"defualt": "a/b"}}, "repositories.defualt: unknown key"),
        ({"repositories": {"default": "not a repo"}}, "repositories.default"),
        ({"commands": {"evaluate": {"trigger": "email"}}}, "commands.evaluate.trigger"),
        (
            {"commands": {"deploy": {"approval": {"approvers": [], "required": 1}}}},
            "commands.deploy.approval",
        ),
        (
            {"commands": {"deploy": {"approval": {"approvers": ["U1AAA"], "required": 2}}}},
            "required is 2",
        ),
        (
            {
                "schedules": [
                    {"name": "n", "cron": "61 * * * *", "channel": "C123", "event_type": "x"}
                ]
            },
            "schedules[0].cron",
        ),
        (
            {"schedules": [{"name": "n", "cron": "* * * *", "channel": "C123", "event_type": "x"}]},
            "5 fields",
        ),
        ({"channels": {"C123": {"notify": "sometimes"}}}, "channels.C123.notify"),
        ({"rate_limits": {"commands_per_minute": 0}}, "rate_limits.commands_per_minute"),
        ([1, 2], "top level"),
    ],
)
def test_bad_config_names_the_key(data, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert path in " ".join(err.value.problems)


def test_every_problem_in_the_config_is_named_at_once_with_its_path() -> None:
    data = {
        "repositories": {"defualt": "a/b", "channels": {"general": "a/b", "C0123": 7}},
        "commands": {"deploy": {"approval": {"approvers": ["U1AAA"], "required": True}}},
        "rate_limits": {"root_edit_seconds": 61},
        "schedules": [{"cron": "0 1 * * *", "channel": "C0123", "client_payload": {"a": None}}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert sorted(err.value.problems) == sorted(
        f"chatops.yml: {p}"
        for p in (
            "repositories.channels.general: the key must be a Slack channel id "
            "(C…, G… or D…, capitals and digits)",
            "repositories.channels.C0123: must be a repository as owner/name",
            "repositories.defualt: unknown key",
            # true is not a number, though YAML's booleans are ints to Python
            "commands.deploy.approval.required: must be a whole number",
            "rate_limits.root_edit_seconds: must be between 0 and 60",
            "schedules[0].name: is required",
            "schedules[0].client_payload.a: must be a string, a number or true/false",
        )
    )


def test_quoted_numbers_and_yaml_booleans_are_read_as_before() -> None:
    cfg = parse_config(
        {
            "commands": {
                "deploy": {"approval": {"approvers": ["U1AAA", "U2BBB"], "required": "2"}}
            },
            "rate_limits": {"root_edit_seconds": "1.5", "commands_per_minute": 20.0},
            "channels": {"C0123": {"broadcast_failures": "yes"}},
        }
    )
    policy = cfg.commands.deploy.policy_for("production")
    assert policy is not None and policy.required == 2
    assert cfg.rate_limits.root_edit_seconds == 1.5 and cfg.rate_limits.commands_per_minute == 20
    assert cfg.channel_settings("C0123").broadcast_failures is True
    for bad in ("2.5", "two", float("nan")):
        with pytest.raises(ConfigError):
            parse_config({"rate_limits": {"commands_per_minute": bad}})


def test_a_parsed_config_cannot_be_changed() -> None:
    cfg = parse_config({"rate_limits": {"commands_per_minute": 5}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rate_limits.commands_per_minute = 500  # type: ignore[misc]
    assert cfg.rate_limits.commands_per_minute == 5


def test_serve_without_settings_lists_them_and_exits_non_zero(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "GITHUB_", "DATABASE_"))
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for name in ("SLACK_BOT_TOKEN", "GITHUB_APP_ID", "GITHUB_APP_PRIVATE_KEY"):
        assert name in proc.stderr


def run_serve(settings: dict[str, str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m bot serve` with these settings (and none from the caller's environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "GITHUB_"))}
    return subprocess.run(
        [sys.executable, "-m", "bot", "serve"],
        env={**env, **settings},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_with_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "chatops.yml"
    cfg.write_text(
        "repositories:\n  default: acme/ml\ncommands:\n  evaluate:\n    trigerr: label\n"
    )
    proc = run_serve({**GOOD, "CHATOPS_CONFIG": str(cfg)}, cwd=tmp_path)
    assert proc.returncode == 2
    assert "commands.evaluate.trigerr: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_warns_about_a_world_readable_key_before_logging_is_set_up(tmp_path: Path) -> None:
    """Settings are read before logging is configured: the warning must still name the file
    and the fix on stderr (and show no part of the key)."""
    key = tmp_path / "app.pem"
    key.write_text(PEM)
    key.chmod(0o644)
    env = {
        **{k: v for k, v in GOOD.items() if k != "GITHUB_APP_PRIVATE_KEY"},
        "GITHUB_APP_PRIVATE_KEY_PATH": str(key),
        # No database: the start stops right after the settings (exit 3), nothing is served.
        "DATABASE_URL": f"sqlite:///{tmp_path}/no/such/dir/chatops.db",
        "CHATOPS_CONFIG": str(tmp_path / "chatops.yml"),
    }
    proc = run_serve(env, cwd=ROOT)
    assert proc.returncode == 3
    warning = [ln for ln in proc.stderr.splitlines() if "world-readable" in ln]
    assert len(warning) == 1 and str(key) in warning[0] and f"chmod 600 {key}" in warning[0]
    assert PEM_LINE not in proc.stderr and "Traceback" not in proc.stderr
