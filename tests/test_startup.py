"""Start-up and operator messages name their cause (issue 15), and Slack's rejected requests
leave one short log line (issue 10)."""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from bot.__main__ import main, startup_summary
from bot.config import parse_config
from bot.logs import MAX_FIELD, ContextFilter, JsonFormatter, Redactor
from bot.settings import SettingsError, load_settings
from bot.startup import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_PORT,
    database_reason,
    database_target,
    network_reason,
)
from tests.conftest import make_env
from tests.doubles.github_api import app_key_pair

ROOT = Path(__file__).resolve().parents[1]
PEM = app_key_pair()[0]
GOOD = {
    "SLACK_BOT_TOKEN": "xoxb-1-2-abc",
    "SLACK_SIGNING_SECRET": "s3cr3t-signing",
    "GITHUB_APP_ID": "123",
    "GITHUB_APP_PRIVATE_KEY": PEM,
    "GITHUB_WEBHOOK_SECRET": "whsec-123456",
}


def damaged(pem: str) -> str:
    """The PEM with its BEGIN/END lines intact and a body that is no longer a key."""
    lines = pem.splitlines()
    lines[5] = lines[5][:10] + ("AAAA" if lines[5][10:14] != "AAAA" else "BBBB") + lines[5][14:]
    return "\n".join(lines) + "\n"


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    return err.value.problems


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- A: a key that cannot sign ----------------------------------------------------------------


def test_a_damaged_key_is_refused_at_load_naming_its_variable(tmp_path: Path) -> None:
    (problem,) = problems_of({**GOOD, "GITHUB_APP_PRIVATE_KEY": damaged(PEM)})
    assert problem.startswith("GITHUB_APP_PRIVATE_KEY: it cannot sign a GitHub App JWT")
    assert PEM.splitlines()[2] not in problem

    key = tmp_path / "app.pem"
    key.write_text(damaged(PEM))
    key.chmod(0o600)
    env = {k: v for k, v in GOOD.items() if k != "GITHUB_APP_PRIVATE_KEY"}
    (problem,) = problems_of({**env, "GITHUB_APP_PRIVATE_KEY_PATH": str(key)})
    assert problem.startswith(f"GITHUB_APP_PRIVATE_KEY_PATH ({key}): it cannot sign")

    key.write_text("not a key at all")
    (problem,) = problems_of({**env, "GITHUB_APP_PRIVATE_KEY_PATH": str(key)})
    assert problem.startswith(f"GITHUB_APP_PRIVATE_KEY_PATH ({key}) is not a PEM private key")


def test_serve_and_check_stop_on_a_damaged_key_with_one_line(tmp_path: Path, capsys) -> None:
    env = {**GOOD, "GITHUB_APP_PRIVATE_KEY": damaged(PEM)}
    proc = run_serve(env, tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert "Traceback" not in proc.stderr
    named = [ln for ln in proc.stderr.splitlines() if "GITHUB_APP_PRIVATE_KEY" in ln]
    assert len(named) == 1 and "cannot sign" in named[0]

    assert main(["check"], env={**env, "CHATOPS_CONFIG": str(tmp_path / "none.yml")}) == 2
    out = capsys.readouterr().out
    assert "Traceback" not in out
    assert "FAIL setting: GITHUB_APP_PRIVATE_KEY: it cannot sign a GitHub App JWT" in out


# -- B: settings that look wrong ---------------------------------------------------------------


def test_placeholders_from_env_example_are_refused_by_name() -> None:
    problems = problems_of(
        {**GOOD, "SLACK_BOT_TOKEN": "xoxb-...", "GITHUB_WEBHOOK_SECRET": "\u2026"}
    )
    assert any(p.startswith("SLACK_BOT_TOKEN still holds the placeholder") for p in problems)
    assert any(p.startswith("GITHUB_WEBHOOK_SECRET still holds the placeholder") for p in problems)


def test_variables_that_look_like_ours_are_reported_with_the_closest_name() -> None:
    s = load_settings(
        {
            **GOOD,
            "GITHUB_WEBHOOK_SECRETS": "x",
            "CHATOPS_SWEEP_SECOND": "3",
            "SLACK_WHATEVER": "1",
            "MLFLOW_TRACKING_URI": "http://mlflow",  # the design's: not a typo
            "CHATOPS_JOB_WORKERS": "4",  # read by load_settings: known without a list
            "HOME": "/root",  # not ours at all
        }
    )
    assert dict(s.unknown_variables) == {
        "CHATOPS_SWEEP_SECOND": "CHATOPS_SWEEP_SECONDS",
        "GITHUB_WEBHOOK_SECRETS": "GITHUB_WEBHOOK_SECRET",
        "SLACK_WHATEVER": "",
    }


def test_every_setting_the_bridge_reads_is_known_not_a_typo() -> None:
    """Names are known because load_settings read them: one read after the look-alike check
    would be reported as a typo of itself."""
    ours = {
        name: value
        for name, value in {
            "CHATOPS_SWEEP_SECONDS": "3",
            "CHATOPS_STALE_AFTER_SECONDS": "30",
            "CHATOPS_LEASE_SECONDS": "120",
            "CHATOPS_LEADER_CHECK_SECONDS": "5",
            "CHATOPS_JOB_WORKERS": "4",
            "CHATOPS_MAX_HEADERS": "100",
            "CHATOPS_MAX_HEADER_BYTES": "32768",
            "CHATOPS_HEADER_TIMEOUT_SECONDS": "10",
            "CHATOPS_KEEPALIVE_SECONDS": "30",
            "CHATOPS_MAX_CONNECTIONS": "100",
            "CHATOPS_HEARTBEAT_SECONDS": "2",
            "CHATOPS_HOLDER_DEAD_SECONDS": "10",
            "CHATOPS_OUTAGE_HORIZON_HOURS": "24",
            "CHATOPS_MAX_ATTEMPTS": "5",
            "CHATOPS_LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }.items()
    }
    assert dict(load_settings({**GOOD, **ours}).unknown_variables) == {}


def test_log_level_setting() -> None:
    assert load_settings(GOOD).log_level == "INFO"
    assert load_settings({**GOOD, "LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert any(
        p.startswith("LOG_LEVEL must be one of") for p in problems_of({**GOOD, "LOG_LEVEL": "loud"})
    )


def test_startup_summary_says_each_mode_and_why_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://chatops:pa55word@db.internal:5433/chatops"
    s = load_settings({**GOOD, "DATABASE_URL": url, "CHATOPS_CONFIG": str(tmp_path / "c.yml")})
    auto = parse_config({})
    line = startup_summary(s, auto, "webhook")
    assert "Slack HTTP at POST /slack/events (SLACK_APP_TOKEN is not set)" in line
    assert "GitHub webhook (GITHUB_WEBHOOK_SECRET is set)" in line
    assert "database postgresql+psycopg at db.internal:5433, database 'chatops'" in line
    assert f"config {tmp_path / 'c.yml'} (absent)" in line and "pa55word" not in line
    no_secret = load_settings({k: v for k, v in GOOD.items() if k != "GITHUB_WEBHOOK_SECRET"})
    assert "GitHub poll (GITHUB_WEBHOOK_SECRET is not set)" in startup_summary(
        no_secret, auto, "poll"
    )
    forced = parse_config({"github": {"mode": "poll"}})
    line = startup_summary(load_settings(GOOD), forced, "poll")
    assert "GitHub poll (github.mode is poll in chatops.yml)" in line


def test_database_errors_name_host_port_database_and_the_drivers_reason() -> None:
    assert database_target("sqlite:///x/chatops.db") == "sqlite file x/chatops.db"
    assert (
        database_target("postgresql+psycopg://u:secret@h/db")
        == "postgresql+psycopg at h:5432, database 'db'"
    )

    class Orig(Exception):
        pass

    class Wrapped(Exception):
        orig = Orig(
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
            'FATAL:  database "nope" does not exist'
        )

    assert database_reason(Wrapped()) == 'database "nope" does not exist'


def test_network_failures_are_classified() -> None:
    def wrapped(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as exc:
                raise RuntimeError("outer") from exc
        except RuntimeError as outer:
            return outer

    assert "DNS" in (
        network_reason(wrapped(socket.gaierror(-2, "Name or service not known"))) or ""
    )
    assert "refused" in (network_reason(wrapped(ConnectionRefusedError(111, "x"))) or "")
    assert "timed out" in (network_reason(wrapped(TimeoutError())) or "")
    assert "TLS" in (network_reason(wrapped(ssl.SSLCertVerificationError("bad cert"))) or "")
    assert "proxy" in (
        network_reason(requests.exceptions.ProxyError("Tunnel connection failed: 403")) or ""
    )
    assert network_reason(ValueError("not a network problem")) is None


# -- B: serve and check, as an operator runs them ----------------------------------------------


def run_serve(settings: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "GITHUB_"))}
    return subprocess.run(
        [sys.executable, "-m", "bot", "serve"],
        env={
            **env,
            "CHATOPS_CONFIG": str(cwd / "chatops.yml"),
            "DATABASE_URL": f"sqlite:///{cwd}/chatops.db",
            **settings,
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_serve_names_an_unreachable_database_with_its_own_exit_code(tmp_path: Path) -> None:
    port = closed_port()
    proc = run_serve(
        {**GOOD, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/x"}, tmp_path
    )
    assert proc.returncode == EXIT_DATABASE == 3
    (line,) = [ln for ln in proc.stderr.splitlines() if "cannot start" in ln]
    assert f"postgresql+psycopg at 127.0.0.1:{port}, database 'x'" in line
    assert "Connection refused" in line and "Traceback" not in proc.stderr


def test_serve_names_a_port_in_use_and_a_typo_with_their_own_exit_code(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_serve(
            {**GOOD, "HOST": "127.0.0.1", "PORT": str(port), "GITHUB_WEBHOOK_SECRETS": "x"},
            tmp_path,
        )
    assert proc.returncode == EXIT_PORT == 4
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if "cannot start" in ln]
    assert f"cannot listen on 127.0.0.1:{port}" in line and "set PORT" in line
    (typo,) = [ln for ln in proc.stderr.splitlines() if "GITHUB_WEBHOOK_SECRETS" in ln]
    assert "did you mean GITHUB_WEBHOOK_SECRET?" in typo


@pytest.mark.slow
def test_serve_logs_one_summary_and_only_json_lines_without_colour_or_bolt_warnings(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "GITHUB_"))}
    port = closed_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve"],
        env={
            **env,
            **GOOD,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "CHATOPS_CONFIG": str(tmp_path / "chatops.yml"),
            "DATABASE_URL": f"sqlite:///{tmp_path}/chatops.db",
            # An unreachable GitHub/Slack: this test only looks at start-up lines.
            "SLACK_API_URL": f"http://127.0.0.1:{closed_port()}/api/",
            "GITHUB_API_URL": f"http://127.0.0.1:{closed_port()}",
        },
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "Application startup complete" in line:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
    lines += rest.splitlines()
    text = "".join(lines)
    assert "Application startup complete" in text
    summary = [ln for ln in lines if "chatops-bridge serving:" in ln]
    assert len(summary) == 1 and "GitHub webhook (GITHUB_WEBHOOK_SECRET is set)" in summary[0]
    assert "color_message" not in text and "\x1b[" not in text
    assert "will be unused" not in text and "Traceback" not in text
    assert all(ln.lstrip().startswith("{") for ln in lines if ln.strip()), text
    assert proc.returncode == 130


@pytest.mark.slow
@pytest.mark.parametrize("base", ["closed", "http://nonexistent.invalid"])
def test_check_reports_network_failures_as_such(
    base: str, slack: Any, github: Any, database_url: str, tmp_path: Path, capsys
) -> None:
    url = f"http://127.0.0.1:{closed_port()}" if base == "closed" else base
    config = tmp_path / "chatops.yml"
    config.write_text("repositories: {default: acme/ml}\n")
    env = make_env(slack, github, database_url, config)
    env.update(SLACK_API_URL=f"{url}/api/", GITHUB_API_URL=url)
    assert main(["check"], env=env) == 1
    out = capsys.readouterr().out
    reason = "connection refused" if base == "closed" else "DNS lookup failed"
    assert f"FAIL Slack: network failure reaching {url}/api/auth.test: {reason}" in out
    assert f"FAIL GitHub: network failure reaching {url}/app/installations: {reason}" in out
    assert "I will retry" not in out and "not valid" not in out and "Traceback" not in out


# -- C: logs ------------------------------------------------------------------------------------


def test_the_redactor_catches_response_urls_in_any_encoding_and_bounds_fields() -> None:
    r = Redactor([])
    url = "https://hooks.slack.com/commands/T0001/123/AbCdEf"
    for form in (
        url,
        url.replace("/", "\\/"),
        "https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT0001%2F123%2FAbCdEf",
        "https%253A%252F%252Fhooks.slack.com%252Fcommands%252FT0001",
        "HTTPS%3a%2f%2fhooks.slack.com%2fcommands",
    ):
        out = r.scrub(f"text=hi&response_url={form}&trigger_id=1")
        assert "hooks.slack.com" not in out and out.endswith("&trigger_id=1"), out
    record = logging.LogRecord("x", logging.INFO, "", 0, "a" * 10 * MAX_FIELD, None, None)
    record.body = "b" * 10 * MAX_FIELD
    record.color_message = "\x1b[32mINFO\x1b[0m"
    r.filter(record)
    assert len(record.getMessage()) < MAX_FIELD + 50 and len(record.body) < MAX_FIELD + 50
    assert not hasattr(record, "color_message")


@pytest.fixture
def json_log() -> Any:
    """The production handler (JSON, ids, redactor) on the root logger, at INFO, into a buffer."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(Redactor([]))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buf
    root.removeHandler(handler)
    root.setLevel(old_level)


RESPONSE_URL = "https://hooks.slack.com/commands/T0001/42/SeCrEtCaPaBiLiTy"


def test_stale_and_badly_signed_commands_leave_one_short_warning(
    make_harness: Any, json_log
) -> None:
    # Built after the log is at INFO: Bolt copies the root level into its loggers at
    # construction, as in production (bot/__main__.py sets logging up first).
    harness = make_harness()
    from urllib.parse import urlencode

    body = urlencode(
        {"command": "/evaluate", "text": "private words 42", "response_url": RESPONSE_URL}
    )
    stale = str(int(time.time()) - 600)
    from slack_sdk.signature import SignatureVerifier

    from tests.conftest import SIGNING_SECRET

    stale_sig = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=stale, body=body)
    ctype = "application/x-www-form-urlencoded"
    r1 = harness.slack_post(
        body, ctype, **{"x-slack-request-timestamp": stale, "x-slack-signature": stale_sig}
    )
    r2 = harness.slack_post(body, ctype, **{"x-slack-signature": "v0=" + "0" * 64})
    assert r1.status_code == 401 and r2.status_code == 401
    log = json_log.getvalue()
    assert (
        "private words" not in log
        and "private+words" not in log
        and "hooks.slack.com" not in log
        and "SeCrEt" not in log
    )
    assert "hooks%3A" not in log.lower() and "response_url" not in log
    warnings = [ln for ln in log.splitlines() if "rejected" in ln]
    assert len(warnings) == 2 and all('"level": "warning"' in ln for ln in warnings)


@pytest.mark.slow
def test_a_flood_of_unsigned_megabyte_bodies_leaves_bounded_log(
    make_harness: Any, json_log
) -> None:
    harness = make_harness()
    from bot.http import MAX_BODY

    body = "text=" + "x" * (MAX_BODY - 100)  # just under the HTTP layer's limit: Bolt sees it
    for _ in range(50):
        resp = harness.client.post(
            "/slack/events",
            content=body.encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert resp.status_code == 401
    size = len(json_log.getvalue().encode())
    # 50 rejections of ~200 bytes each; Bolt's own line was over 1 MiB each (52 MB in all).
    assert size < 50 * 600, size


def test_check_says_the_github_mode_and_warns_about_a_typo(
    slack: Any, github: Any, database_url: str, tmp_path: Path, capsys
) -> None:
    config = tmp_path / "chatops.yml"
    config.write_text("repositories: {default: acme/ml}\n")
    env = make_env(slack, github, database_url, config)
    env["GITHUB_WEBHOOK_SECRETS"] = env.pop("GITHUB_WEBHOOK_SECRET")
    main(["check"], env=env)
    out = capsys.readouterr().out
    assert (
        "warn GITHUB_WEBHOOK_SECRETS is not a chatops-bridge setting and is ignored; "
        "did you mean GITHUB_WEBHOOK_SECRET?"
    ) in out
    assert "ok   GitHub mode: poll (GITHUB_WEBHOOK_SECRET is not set)" in out


def test_start_up_leaves_what_the_first_use_needs_unimported() -> None:
    """The serving process's imports (composition root, server, CLI) do not load PyGithub (and
    requests), markdown-it, SQLAlchemy's PostgreSQL dialect, PyJWT or cryptography (the first
    four ~0.4 s of a start on a slow host and ~13 MB resident, the last two ~9 MB). The first
    GitHub call, comment or PostgreSQL engine imports them."""
    code = (
        "import sys, bot.wiring, bot.serving, bot.__main__\n"
        "late = ('github', 'requests', 'markdown_it', 'sqlalchemy.dialects.postgresql',"
        " 'jwt', 'cryptography')\n"
        "print(sorted(m for m in late if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_serving_process_runs_with_the_collector_on_and_the_start_frozen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve_one turns the cyclic collector off while it builds the bridge, freezes what it
    built, and turns the collector back on before the server runs: a server without it
    would never free a reference cycle for the life of the process."""
    import gc

    import uvicorn

    from bot.__main__ import serve_one

    seen: list[tuple[bool, int]] = []

    def run(self: Any, sockets: Any = None) -> None:
        seen.append((gc.isenabled(), gc.get_freeze_count()))

    monkeypatch.setattr(uvicorn.Server, "run", run)
    settings = load_settings(
        {
            **GOOD,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'chatops.db'}",
            "CHATOPS_CONFIG": str(tmp_path / "absent.yml"),
        }
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        assert serve_one(settings, parse_config({}), sock, sock.getsockname()[1]) == 0
    finally:
        sock.close()
        gc.unfreeze()
        gc.enable()
    assert len(seen) == 1
    enabled, frozen = seen[0]
    assert enabled and frozen > 0
