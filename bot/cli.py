"""Operator commands beside `serve`: check, manifest, audit export.

Each reads the environment only from `args.env`, which bot.__main__.main sets (os.environ by
default), so tests run them in-process with a plain mapping.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TextIO
from urllib.parse import urlparse

import yaml

from bot.config import Config, ConfigError, load_config
from bot.mlflow import MlflowError, MlflowRegistry
from bot.settings import Settings, SettingsError, database_url_from, load_settings
from bot.slacktext import iso_utc

PLACEHOLDER_HOST = "https://YOUR-HOST.example.com"
PLACEHOLDER = f"{PLACEHOLDER_HOST}/slack/events"
AUDIT_COLUMNS = ("id", "at", "request_id", "actor", "action", "outcome", "detail")


def add_commands(sub: Any) -> None:
    """Register operator sub-commands (check, manifest, audit) on the argparse sub-parsers."""
    p = sub.add_parser(
        "check",
        help="validate settings and chatops.yml, then reach the database, Slack and GitHub",
    )
    p.set_defaults(func=check)

    p = sub.add_parser("manifest", help="print the Slack app manifest with your URL filled in")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--url", help="public base URL of the bridge, e.g. https://chatops.acme.io")
    how.add_argument("--socket-mode", action="store_true", help="Socket Mode: no public URL at all")
    p.set_defaults(func=manifest)

    p = sub.add_parser("audit", help="the audit trail")
    audit_sub = p.add_subparsers(dest="audit_cmd", required=True)
    p = audit_sub.add_parser("export", help="write the audit trail as CSV or JSON")
    p.add_argument("--since", default="7d", help="30m, 24h, 7d, 2w or a date (2026-01-31)")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", help="file to write (default: standard output)")
    p.set_defaults(func=audit_export)


# -- check ------------------------------------------------------------------------------------


class Report:
    """Progress lines as the checks go, and the problems found, for the summary."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def step(self, text: str) -> None:
        print(f"...  {text}", file=self.out, flush=True)

    def ok(self, text: str) -> None:
        print(f"ok   {text}", file=self.out, flush=True)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        print(f"warn {text}", file=self.out, flush=True)

    def fail(self, text: str) -> None:
        self.problems.append(text)
        print(f"FAIL {text}", file=self.out, flush=True)


LEVELS = {"none": 0, "read": 1, "write": 2, "admin": 3}


def permission_findings(permissions: Mapping[str, str], config: Config) -> list[tuple[bool, str]]:
    """(is_problem, text) for each permission the App lacks for what chatops.yml asks. Pure."""

    def has(*wanted: tuple[str, str]) -> bool:
        return any(
            LEVELS.get(permissions.get(p, "none"), 0) >= LEVELS[level] for p, level in wanted
        )

    out: list[tuple[bool, str]] = []
    needs: list[tuple[bool, tuple[tuple[str, str], ...], str]] = [
        (True, (("metadata", "read"),), "every call"),
        (True, (("pull_requests", "read"),), "/evaluate reads the pull request"),
        (True, (("actions", "read"),), "workflow runs are matched to requests"),
    ]
    evaluate = config.commands.evaluate
    if evaluate.trigger == "label":
        needs.append(
            (
                True,
                (("issues", "write"), ("pull_requests", "write")),
                "/evaluate adds a label",
            )
        )
    dispatch_schedules = any(s.command == "dispatch" for s in config.schedules)
    if evaluate.trigger == "dispatch" or dispatch_schedules:
        needs.append((True, (("contents", "write"),), "repository_dispatch (evaluate/schedules)"))
    needs.append((False, (("contents", "write"),), "/deploy sends repository_dispatch"))
    needs.append((False, (("actions", "write"),), "`@chatops-bridge cancel` stops runs"))
    if config.commands.deploy.any_gate():
        # GitHub's custom deployment protection rules (gate: github): answered with these.
        needs.append((True, (("deployments", "write"),), "`gate: github` answers protection rules"))
    seen: set[tuple[tuple[str, str], ...]] = set()
    for hard, wanted, why in needs:
        if has(*wanted) or wanted in seen:
            continue
        seen.add(wanted)
        names = " or ".join(f"{p}: {level}" for p, level in wanted)
        out.append((hard, f"needs {names} ({why})"))
    return out


def gate_event_problem(config: Config, events: list[str]) -> str | None:
    """The App is not subscribed to the event `gate: github` needs. Pure."""
    if not config.commands.deploy.any_gate() or "deployment_protection_rule" in events:
        return None
    return (
        "the App does not subscribe to the *Deployment protection rule* event (App settings → "
        "Permissions & events → Subscribe to events), which `gate: github` needs"
    )


def configured_repos(config: Config) -> dict[str, list[str]]:
    """Each repository chatops.yml names, with where it is named. Pure."""
    found: dict[str, list[str]] = {}
    if config.repositories.default:
        found.setdefault(config.repositories.default, []).append("repositories.default")
    for channel, repo in config.repositories.channels.items():
        found.setdefault(repo, []).append(f"repositories.channels.{channel}")
    for repo in config.repositories.allowed:
        found.setdefault(repo, []).append("repositories.allowed")
    for s in config.schedules:
        target = s.repository or config.repository_for(s.channel)
        if target:
            found.setdefault(target, []).append(f"schedules[{s.name}]")
    return found


def check(args: argparse.Namespace) -> int:
    """0: all good; 1: problems found (each explained); 2: settings or chatops.yml invalid."""
    report = Report(sys.stdout)
    report.step("settings (environment)")
    try:
        settings = load_settings(args.env)
    except SettingsError as exc:
        for p in exc.problems:
            report.fail(f"setting: {p}")
        return _summary(report, code=2)
    mode = "Socket Mode" if settings.socket_mode else "HTTP (POST /slack/events)"
    report.ok(
        f"settings: Slack {mode}; GitHub App {settings.github_app_id} at {settings.github_api_url}"
    )

    report.step(f"config file {settings.config_path}")
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        for p in exc.problems:
            report.fail(p)
        return _summary(report, code=2)
    if not settings.config_path.exists():
        report.warn(f"{settings.config_path} does not exist: every default applies")
    repos = configured_repos(config)
    report.ok(
        f"config: {len(repos)} repositor{'y' if len(repos) == 1 else 'ies'}, "
        f"{len(config.schedules)} schedule(s), {len(config.channels)} channel setting(s)"
    )
    if not repos:
        report.warn("no repository configured: every command must name one (owner/repo#42)")
    from bot.startup import gate_mode_problem, github_mode

    for name, close in settings.unknown_variables:
        hint = f"; did you mean {close}?" if close else ""
        report.warn(f"{name} is not a chatops-bridge setting and is ignored{hint}")
    mode, why = github_mode(settings, config)
    report.ok(f"GitHub mode: {mode} ({why})")
    gate_problem = gate_mode_problem(config, mode)  # bot/startup.py: also said at start
    if gate_problem:
        report.fail(gate_problem)

    _check_database(report, settings.database_url)
    _check_slack(report, settings.slack_bot_token.get(), settings.slack_api_url)
    _check_github(report, settings, config, repos)
    _check_mlflow(report, settings, config)
    return _summary(report, code=1)


def _check_mlflow(report: Report, settings: Settings, config: Config) -> None:
    """The MLflow settings, and whether the registry answers (docs/model-registry.md)."""
    models = ", ".join(m.name for m in config.models)
    uri = settings.mlflow_tracking_uri
    if not (models or uri or settings.mlflow_webhook_secret):
        return
    hooks = "on (POST /mlflow/webhooks)" if settings.mlflow_webhook_secret else "off"
    report.ok(
        f"MLflow: webhooks {hooks}; models: {models or 'none'}; tracking URI: {uri or 'unset'}"
    )
    if models and not settings.mlflow_webhook_secret:
        report.warn(
            "models: are configured but MLFLOW_WEBHOOK_SECRET is unset: registry events "
            "cannot reach the bridge (only `/deploy model:…` works)"
        )
    if not uri:
        if models:
            report.warn(
                "MLFLOW_TRACKING_URI is unset: cards show only what the webhook says, "
                "and `/deploy model:…` is refused"
            )
        return
    report.step(f"MLflow registry at {uri}")
    try:
        n = MlflowRegistry(uri, settings.mlflow_tracking_token, timeout=10).ping()
    except MlflowError as exc:
        report.fail(f"MLflow: {exc.message}")
        return
    report.ok(f"MLflow: the registry answers ({n} registered model(s) on its first page)")


def _summary(report: Report, *, code: int) -> int:
    if not report.problems:
        extra = f" ({len(report.warnings)} warning(s))" if report.warnings else ""
        print(f"\nAll checks passed{extra}.", file=report.out)
        return 0
    print(f"\n{len(report.problems)} problem(s):", file=report.out)
    for p in report.problems:
        print(f"  - {p}", file=report.out)
    return code


def _check_database(report: Report, url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from bot.db import make_engine

    shown = make_url(url).render_as_string(hide_password=True)
    report.step(f"database {shown}")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        report.ok("database: reachable")
    except SQLAlchemyError as exc:
        from bot.startup import database_reason, database_target

        report.fail(
            f"database: cannot connect to {database_target(url)}: {database_reason(exc)}; "
            "check DATABASE_URL, that the server runs and that the database exists"
        )
    finally:
        engine.dispose()


def _check_slack(report: Report, token: str, api_url: str) -> None:
    from bot.slack import SlackFailure, SlackOut, make_client
    from bot.startup import network_reason

    report.step(f"Slack auth.test at {api_url}")
    try:
        who = SlackOut(make_client(token, api_url)).auth_test()
    except SlackFailure as exc:
        # Slack never answered: the token was not even looked at, so do not blame it.
        network = network_reason(exc) if exc.error.startswith("connection") else None
        if network:
            report.fail(
                f"Slack: network failure reaching {api_url}auth.test: {network}. "
                "Check SLACK_API_URL, DNS, proxy and firewall (the token was not checked)"
            )
            return
        hint = {
            "invalid_auth": "SLACK_BOT_TOKEN is not valid (copy it again from OAuth & Permissions)",
            "account_inactive": "the app was uninstalled or its token revoked: reinstall it",
            "token_revoked": "the token was revoked: reinstall the app and copy the new token",
        }.get(exc.error, "check SLACK_BOT_TOKEN and SLACK_API_URL")
        report.fail(f"Slack: auth.test failed with {exc.error}: {hint}")
        return
    report.ok(
        f"Slack: bot @{who.get('user')} ({who.get('user_id')}) in workspace "
        f"{who.get('team')} ({who.get('team_id')})"
    )


def _check_github(
    report: Report, settings: Any, config: Config, repos: dict[str, list[str]]
) -> None:
    from bot.github import GitHubApp, GitHubError
    from bot.startup import network_reason

    report.step("GitHub App installations")
    gh = GitHubApp(
        app_id=settings.github_app_id,
        private_key=settings.github_private_key.get(),
        base_url=settings.github_api_url,
    )
    try:
        installations = gh.installations()
    except GitHubError as exc:
        network = network_reason(exc)
        if network:
            report.fail(
                f"GitHub: network failure reaching {settings.github_api_url}/app/installations: "
                f"{network}. Check GITHUB_API_URL, DNS, proxy and firewall (the App id and key "
                "were not checked)"
            )
            return
        report.fail(
            f"GitHub: cannot list the App's installations: {one_shot(exc.message)} Check that "
            "GITHUB_APP_ID and the private key belong to the same App."
        )
        return
    if not installations:
        report.fail("GitHub: the App has no installations: install it on your repositories")
        return
    by_id = {int(i["id"]): i for i in installations}
    names = ", ".join(f"{i['account']} (id {i['id']})" for i in installations)
    report.ok(f"GitHub: {len(installations)} installation(s): {names}")
    for inst in installations:
        problem = gate_event_problem(config, list(inst.get("events") or []))
        if problem:
            report.fail(f"GitHub installation {inst['id']}: {problem}")
    for repo, where in repos.items():
        report.step(f"{repo} ({', '.join(where)})")
        try:
            inst_id = gh.installation_id(repo)
            gh.repository(repo)
        except GitHubError as exc:
            network = network_reason(exc)
            report.fail(
                f"{repo}: network failure: {network}"
                if network
                else f"{repo}: {one_shot(exc.message)}"
            )
            continue
        perms = dict(by_id.get(inst_id, {}).get("permissions") or {})
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(perms.items())) or "none"
        report.ok(f"{repo}: reachable through installation {inst_id}; permissions {listed}")
        for hard, text in permission_findings(perms, config):
            (report.fail if hard else report.warn)(f"{repo}: the App {text}")


def one_shot(message: str) -> str:
    """A GitHub error message for a one-shot command: the bridge's "I will retry" (right for
    a user's request, which the bridge does retry) is not true of `check`. Pure."""
    return re.sub(r"\s*I will retry[^.]*\.", "", message).strip()


# -- manifest ---------------------------------------------------------------------------------


def manifest_text() -> str:
    """The manifest shipped inside the package (bot/manifest.yml, a copy of manifest.yml)."""
    return resources.files("bot").joinpath("manifest.yml").read_text(encoding="utf-8")


def filled_manifest(data: dict[str, Any], *, url: str | None) -> dict[str, Any]:
    """The manifest for a host (url) or for Socket Mode (url None: no request URLs). Pure."""
    out = json.loads(json.dumps(data))
    settings = out.setdefault("settings", {})
    commands = out.get("features", {}).get("slash_commands", [])
    if url is None:
        settings["socket_mode_enabled"] = True
        for command in commands:
            command.pop("url", None)
        settings.get("event_subscriptions", {}).pop("request_url", None)
        settings.get("interactivity", {}).pop("request_url", None)
        return out
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/slack/events"):
        endpoint += "/slack/events"
    settings["socket_mode_enabled"] = False
    for command in commands:
        command["url"] = endpoint
    for key in ("event_subscriptions", "interactivity"):
        if key in settings:
            settings[key]["request_url"] = endpoint
    return out


def manifest(args: argparse.Namespace) -> int:
    if args.url:
        parsed = urlparse(args.url)
        if parsed.scheme != "https" or not parsed.hostname or parsed.query or parsed.fragment:
            print(
                f"--url must be the bridge's public https:// URL (Slack calls only HTTPS), "
                f"got {args.url!r}",
                file=sys.stderr,
            )
            return 2
    data = yaml.safe_load(manifest_text())
    filled = filled_manifest(data, url=args.url if not args.socket_mode else None)
    how = "--socket-mode" if args.socket_mode else f"--url {args.url}"
    print(f"# Slack app manifest for chatops-bridge (chatops-bridge manifest {how}).")
    print("# Import: https://api.slack.com/apps -> Create New App -> From an app manifest.")
    if args.socket_mode:
        print("# Socket Mode: create an app-level token (connections:write) for SLACK_APP_TOKEN.")
    print(yaml.safe_dump(filled, sort_keys=False, allow_unicode=True, width=100), end="")
    return 0


# -- audit export -----------------------------------------------------------------------------

_SPAN = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, *, now: float) -> float:
    """`30m`, `24h`, `7d`, `2w` before now, or an ISO date/time (UTC unless it says). Pure."""
    value = text.strip().lower()
    if m := _SPAN.match(value):
        return now - int(m[1]) * _UNIT[m[2]]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: use a span like 30m, 24h, 7d, 2w or a date like 2026-01-31"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet would run a cell starting like a formula (details hold user text).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def audit_rows_as(rows: list[dict[str, Any]], fmt: str) -> str:
    """CSV (with a header) or a JSON array; `at` in ISO 8601 UTC. Pure."""
    shaped = [{**{c: r.get(c) for c in AUDIT_COLUMNS}, "at": iso_utc(float(r["at"]))} for r in rows]
    if fmt == "json":
        return json.dumps(shaped, indent=1, ensure_ascii=False) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(AUDIT_COLUMNS)
    for row in shaped:
        writer.writerow([_cell(row[c]) for c in AUDIT_COLUMNS])
    return buf.getvalue()


def audit_export(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from bot.db import make_engine
    from bot.store import Store

    try:
        since = parse_since(args.since, now=time.time())
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    engine = make_engine(database_url_from(args.env))
    try:
        rows = Store(engine).audit_rows(since=since)
    except SQLAlchemyError as exc:
        print(
            f"cannot read the audit trail ({type(exc).__name__}): check DATABASE_URL, and that "
            "the bridge has run against this database at least once",
            file=sys.stderr,
        )
        return 3
    finally:
        engine.dispose()
    text = audit_rows_as(rows, args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        print(
            f"wrote {len(rows)} audit row(s) since {iso_utc(since)} to {args.output}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
        print(f"{len(rows)} audit row(s) since {iso_utc(since)}", file=sys.stderr)
    return 0
