"""The contract tier: the bot against GitHub's own API description, GitHub's real webhook
payloads and Slack's own response schemas (see README.md in this folder).

Needs the Node packages of package.json (`npm ci`) and, for the Slack schemas, `npm pack` of
one pinned package (slack_spec.py). Without them a local run skips these tests with a clear
message; with CI=true it fails instead, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # helper modules of this package-less folder
    sys.path.insert(0, str(HERE))

import contract_report  # noqa: E402
import cut_openapi  # noqa: E402
import slack_spec  # noqa: E402
import webhook_examples  # noqa: E402
from github_contract import GitHubContract, Prism, PrismError, PrismMissing  # noqa: E402

from bot.config import parse_config  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from tests.conftest import DEFAULT_CONFIG, Clock, Harness, make_env  # noqa: E402
from tests.doubles.slack_api import SlackDouble  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(message: str) -> None:
    """Skip locally, fail in CI: contract tests never pass by being skipped there."""
    if IN_CI:
        pytest.fail(f"contract tier cannot run in CI: {message}", pytrace=False)
    pytest.skip(f"contract tier skipped: {message}")


# --------------------------------------------------------------------------- GitHub (Prism)
@pytest.fixture(scope="session")
def github_contract(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHubContract]:
    """One Prism per session, behind the recording proxy."""
    if not cut_openapi.SOURCE.exists():
        unavailable(f"{cut_openapi.SOURCE} is missing; run `npm ci` in {cut_openapi.REPO_ROOT}")
    workdir = tmp_path_factory.mktemp("prism")
    proxy = GitHubContract().start()
    prism: Prism | None = None
    try:
        spec = cut_openapi.write_cut(workdir / "github-openapi.cut.json", proxy.url)
        try:
            prism = Prism(spec, workdir / "prism.log").start()
        except PrismMissing as exc:
            unavailable(f"the Prism GitHub double cannot start: {exc}")
        except PrismError as exc:  # installed but broken: a failure, locally too
            pytest.fail(f"the Prism GitHub double did not start: {exc}", pytrace=False)
        assert prism is not None
        proxy.upstream = prism.url
        proxy.prism_started_in = prism.started_in
        contract_report.facts["Prism (cut-down GitHub description) ready in"] = (
            f"{prism.started_in:.1f} s"
        )
        yield proxy
        listed = {(m, t) for m, t, _ in cut_openapi.OPERATIONS}
        contract_report.facts["GitHub operations exercised through Prism"] = (
            f"{len(proxy.operations_seen & listed)} of {len(listed)}"
        )
        if proxy.description_problems:
            # Prism's response check: GitHub's examples against GitHub's schemas (not the bot).
            ops = sorted({p.split(": ", 1)[0] for p in proxy.description_problems})
            contract_report.facts["GitHub examples that disagree with GitHub's own schemas"] = (
                f"{len(proxy.description_problems)} findings, in {'; '.join(ops)}"
            )
    finally:
        if prism is not None:
            prism.stop()
        proxy.stop()


@pytest.fixture
def gh(github_contract: GitHubContract) -> Iterator[GitHubContract]:
    """The session's GitHub double, reset for this test; its violations fail the test."""
    github_contract.reset()
    yield github_contract
    github_contract.check()


@pytest.fixture
def make_app(gh: GitHubContract) -> Callable[..., Any]:
    from bot.github import GitHubApp

    def build(**kwargs: Any) -> GitHubApp:
        options: dict[str, Any] = {
            "app_id": gh.app_id,
            "private_key": gh.private_key_pem,
            "base_url": gh.url,
            "seconds_between_requests": 0,
            "seconds_between_writes": 0,
            "timeout": 3,
        }
        options.update(kwargs)
        return GitHubApp(**options)

    return build


# --------------------------------------------------------------------------- Slack
@pytest.fixture(scope="session")
def slack_schemas() -> slack_spec.SlackSchemas:
    try:
        path = slack_spec.ensure()
    except slack_spec.SlackSpecUnavailable as exc:
        unavailable(f"Slack's response schemas are not available: {exc}")
    return slack_spec.SlackSchemas(path)


class SchemaCheckedSlack(SlackDouble):
    """The loopback Slack double, with every answer checked against Slack's own schemas."""

    schemas: slack_spec.SlackSchemas
    checked: dict[str, int]

    def _api(
        self, method: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        status, extra, payload = super()._api(method, params, headers)
        if method in slack_spec.METHODS:
            self.checked[method] = self.checked.get(method, 0) + 1
            self.violations.extend(
                f"the double answers unlike Slack: {p}"
                for p in self.schemas.problems(method, payload)
            )
        return status, extra, payload


@pytest.fixture
def slack(slack_schemas: slack_spec.SlackSchemas) -> Iterator[SlackDouble]:
    """Overrides tests/conftest.py's `slack` here: the same double, answers schema-checked."""
    double = SchemaCheckedSlack()
    double.schemas = slack_schemas
    double.checked = {}
    double.start()
    try:
        yield double
    finally:
        double.stop()
    assert not double.violations, (
        f"Slack would have refused, or answered otherwise: {double.violations}"
    )


# --------------------------------------------------------------------------- webhook corpus
@pytest.fixture(scope="session")
def corpus() -> list[dict[str, Any]]:
    if not webhook_examples.available():
        unavailable(
            "@octokit/webhooks-examples / @octokit/webhooks-schemas are missing; run `npm ci`"
        )
    return webhook_examples.load_index()


# --------------------------------------------------------------------------- the whole bridge
@pytest.fixture
def make_contract_harness(
    slack: SlackDouble,
    gh: GitHubContract,
    database_url: str,
    tmp_path: Path,
    clock: Clock,
    make_app: Callable[..., Any],
) -> Iterator[Callable[..., Harness]]:
    """Like tests/conftest.py's make_harness, with GitHub served by Prism through the proxy."""
    from starlette.testclient import TestClient

    from bot.wiring import Bridge

    opened: list[Any] = []

    def build(
        config: dict[str, Any] | None = None,
        *,
        use_clock: bool = False,
        app_options: dict[str, Any] | None = None,
        **env_extra: str,
    ) -> Harness:
        cfg_path = tmp_path / f"contract-{len(opened)}.yml"
        cfg_path.write_text(yaml.safe_dump(config if config is not None else DEFAULT_CONFIG))
        settings = load_settings(make_env(slack, gh, database_url, cfg_path, **env_extra))  # type: ignore[arg-type]
        cfg = parse_config(yaml.safe_load(cfg_path.read_text()))
        kwargs: dict[str, Any] = {
            "github": make_app(**(app_options or {})),
            "start_scheduler": False,
        }
        if use_clock:
            kwargs["clock"] = clock
        bridge = Bridge(settings, cfg, **kwargs)
        client = TestClient(bridge.asgi())
        client.__enter__()
        opened.append(client)
        return Harness(bridge, client, settings)

    yield build
    for client in reversed(opened):
        client.__exit__(None, None, None)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = contract_report.lines()
    if lines:
        terminalreporter.section("contract tier")
        for line in lines:
            terminalreporter.write_line(line)
