"""The chatops.yml model: one documented, validated schema; unknown keys are refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

# The building blocks (the record and its checks, ids, names) and the model registry's entries:
# bot/config_base.py.
from bot.config_base import (
    GITHUB_LOGIN_RE,
    Invalid,
    ModelSpec,
    Record,
    channel_id,
    event_type,
    flag,
    group_id,
    key,
    list_of,
    mapping,
    number,
    one_of,
    optional,
    parsed,
    permission,
    record,
    repo,
    text,
    then,
    user_id,
    whole_number,
)
from bot.cron import cron_trigger


@record
class Repositories(Record):
    default: str | None = key(optional(repo), default=None)
    channels: dict[str, str] = key(mapping(channel_id, repo), factory=dict)
    # Besides `default` and `channels`, the only repositories a command may name. The App may
    # be installed on more (an org-wide install): being installed is not being configured.
    allowed: list[str] = key(list_of(repo), factory=list)

    def permitted(self) -> frozenset[str]:
        """Every repository a command or schedule may touch, lower-cased (GitHub ignores case)."""
        names = [*self.allowed, *self.channels.values()]
        if self.default:
            names.append(self.default)
        return frozenset(n.lower() for n in names)

    def permits(self, repo: str) -> bool:
        return repo.lower() in self.permitted()


@record
class Access(Record):
    """Who may run a command. Empty lists mean "no restriction" for that dimension."""

    allowed_channels: list[str] = key(list_of(channel_id), factory=list)
    allowed_users: list[str] = key(list_of(user_id), factory=list)
    allowed_usergroups: list[str] = key(list_of(group_id), factory=list)
    require_github_permission: str | None = key(optional(permission), default=None)


@record
class ApprovalPolicy(Record):
    approvers: list[str] = key(list_of(user_id), factory=list)
    approver_usergroups: list[str] = key(list_of(group_id), factory=list)
    required: int = key(whole_number(ge=1, le=10), default=1)
    allow_self_approval: bool = key(flag, default=False)
    expires_after_minutes: int = key(whole_number(ge=1, le=7 * 24 * 60), default=30)
    require_github_permission: str | None = key(optional(permission), default=None)

    def whole(self, given: frozenset[str]) -> None:
        if not self.approvers and not self.approver_usergroups:
            raise ValueError("approval needs at least one of approvers or approver_usergroups")
        if not self.approver_usergroups and len(set(self.approvers)) < self.required:
            listed = len(set(self.approvers))
            raise ValueError(f"required is {self.required} but only {listed} approvers are listed")


def approval(value: Any) -> ApprovalPolicy | Literal["none"]:
    """`approval:` is a policy or the word none (pure check).

    `approval: none` is the one explicit way to deploy without approval; a missing `approval`
    is an error (DeployCommand.whole), so forgetting it cannot open a gate."""
    if value == "none" and isinstance(value, str):
        return "none"
    if isinstance(value, dict):
        return ApprovalPolicy.parse(value)
    raise Invalid.here("must be a policy (approvers, required, ...) or the word none")


@record
class EvaluateCommand(Access):
    trigger: Literal["label", "dispatch"] = key(one_of("label", "dispatch"), default="label")
    label: str = key(text(min_length=1, max_length=50), default="evaluate")
    event_type: str = key(event_type, default="evaluate")
    # Only runs of this workflow (name or file name) are relayed for /evaluate requests.
    workflow: str | None = key(optional(text()), default=None)


@record
class EnvironmentSettings(Record):
    approval: ApprovalPolicy | Literal["none"] | None = key(optional(approval), default=None)
    # github: the App is enabled on this environment as a custom deployment protection rule,
    # so GitHub itself waits for the approval (docs/deploy.md "GitHub enforces the approval").
    gate: Literal["github"] | None = key(optional(one_of("github")), default=None)


def _environment_names(v: dict[str, EnvironmentSettings]) -> dict[str, EnvironmentSettings]:
    if not v:
        raise ValueError("at least one environment is needed")
    for name in v:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", name):
            raise ValueError(f"environment name {name!r} has characters GitHub does not allow")
    return v


@record
class DeployCommand(Access):
    trigger: Literal["dispatch"] = key(one_of("dispatch"), default="dispatch")
    event_type: str = key(event_type, default="deploy")
    # Only runs of this workflow (name or file name) can follow a /deploy request.
    workflow: str | None = key(optional(text()), default=None)
    approval: ApprovalPolicy | Literal["none"] | None = key(optional(approval), default=None)
    environments: dict[str, EnvironmentSettings] = key(
        then(mapping(text(), parsed(EnvironmentSettings)), _environment_names),
        factory=lambda: {"production": EnvironmentSettings()},
    )
    # `/deploy lock` holds until unlocked; with this set, a lock ends by itself after so many
    # hours (it stops blocking at once; a housekeeping job removes it and says so).
    lock_expires_after_hours: int | None = key(
        optional(whole_number(ge=1, le=24 * 365)), default=None
    )
    # Where the cards of GitHub-initiated gates go when no channel maps to their repository.
    channel: str | None = key(optional(channel_id), default=None)

    def whole(self, given: frozenset[str]) -> None:
        if not given:
            return  # no commands.deploy in the file: /deploy refuses (unconfigured_policy)
        missing = self.unconfigured_environments()
        if missing:
            raise ValueError(self.missing_policy_text(missing))

    def approval_for(self, environment: str) -> ApprovalPolicy | Literal["none"] | None:
        """The environment's own setting, else the command's; None: nobody configured one."""
        env = self.environments.get(environment)
        if env is not None and env.approval is not None:
            return env.approval
        return self.approval

    def policy_for(self, environment: str) -> ApprovalPolicy | None:
        """The policy deciding a deploy; None only for `approval: none` (or no policy at all,
        which start-up refuses and /deploy refuses too)."""
        approval = self.approval_for(environment)
        return approval if isinstance(approval, ApprovalPolicy) else None

    def unconfigured_environments(self) -> list[str]:
        return [env for env in self.environments if self.approval_for(env) is None]

    @staticmethod
    def missing_policy_text(missing: list[str]) -> str:
        where = (
            f"commands.deploy.environments.{missing[0]}.approval"
            if len(missing) == 1
            else "commands.deploy.environments.<env>.approval"
        )
        return (
            f"no approval policy for {', '.join(missing)}: set commands.deploy.approval or "
            f"{where} (approvers: [...]), or write `approval: none` there to deploy without "
            "approval"
        )

    @property
    def default_environment(self) -> str:
        return next(iter(self.environments))

    def environment_named(self, name: str) -> str | None:
        """The configured environment of that name (GitHub compares names case-insensitively)."""
        return {e.lower(): e for e in self.environments}.get(name.lower())

    def gated(self, environment: str) -> bool:
        """Whether GitHub enforces this environment's approval (`gate: github`)."""
        env = self.environments.get(environment)
        return env is not None and env.gate == "github"

    def any_gate(self) -> bool:
        return any(env.gate == "github" for env in self.environments.values())


@record
class Commands(Record):
    evaluate: EvaluateCommand = key(parsed(EvaluateCommand), factory=EvaluateCommand)
    deploy: DeployCommand = key(parsed(DeployCommand), factory=DeployCommand)


@record
class GitHubOptions(Record):
    # webhook: GitHub calls /github/webhooks. poll: the bridge polls GitHub (no public URL).
    # auto: poll when no GITHUB_WEBHOOK_SECRET is set, else webhooks.
    mode: Literal["webhook", "poll", "auto"] = key(
        one_of("webhook", "poll", "auto"), default="auto"
    )
    poll_interval_seconds: int = key(whole_number(ge=5, le=3600), default=30)
    poll_max_age_hours: int = key(whole_number(ge=1, le=24 * 30), default=24)
    # Polling pauses when fewer than this many REST calls remain in the rate-limit window.
    poll_min_rate_remaining: int = key(whole_number(ge=0), default=200)


@record
class ChannelSettings(Record):
    notify: Literal["all", "finished", "failures"] = key(
        one_of("all", "finished", "failures"), default="all"
    )
    broadcast_failures: bool = key(flag, default=False)


def _cron(v: str) -> str:
    try:
        cron_trigger(v)
    except ValueError as exc:
        raise ValueError(f"invalid cron expression: {exc}") from None
    return v


def _timezone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {v!r} (use an IANA name like Europe/Berlin)") from None
    return v


def _payload_value(value: Any) -> str | int | float | bool:
    if isinstance(value, str | int | float | bool):
        return value
    raise Invalid.here("must be a string, a number or true/false")


@record
class Schedule(Record):
    name: str = key(
        text(re.compile(r"^[A-Za-z0-9_.-]{1,64}$"), "1 to 64 letters, digits, '_', '.' or '-'")
    )
    cron: str = key(then(text(), _cron))
    timezone: str = key(then(text(), _timezone), default="UTC")
    command: Literal["dispatch", "evaluate"] = key(
        one_of("dispatch", "evaluate"), default="dispatch"
    )
    event_type: str | None = key(optional(event_type), default=None)
    pr: int | None = key(optional(whole_number(ge=1)), default=None)
    repository: str | None = key(optional(repo), default=None)
    channel: str = key(channel_id)
    client_payload: dict[str, str | int | float | bool] = key(
        mapping(text(), _payload_value), factory=dict
    )

    def whole(self, given: frozenset[str]) -> None:
        if self.command == "dispatch" and not self.event_type:
            raise ValueError("a dispatch schedule needs event_type")
        if self.command == "evaluate" and self.pr is None:
            raise ValueError("an evaluate schedule needs pr")
        if len(self.client_payload) > 6:
            raise ValueError("client_payload takes at most 6 keys (GitHub allows 10, 4 are ours)")


@record
class RateLimits(Record):
    commands_per_minute: int = key(whole_number(ge=1, le=1000), default=10)
    # At most one edit of a thread's root message per this many seconds (chat.update is rate
    # limited by Slack); the last edit of a burst follows at the end of the interval, and the
    # edit to a final state is sent at once. 0 edits on every change.
    root_edit_seconds: float = key(number(ge=0, le=60), default=3.0)


@record
class MetricsTrust(Record):
    """Who may supply the metrics relayed into threads and shown on deploy cards.

    GitHub Apps (bots: github-actions[bot], this bridge's App) always may. Others only when
    listed here, or when their author_association on the repository is at least the floor.
    Anyone else's metrics comment is not relayed (bot/provenance.py, docs/security.md).
    """

    trusted_authors: list[str] = key(
        list_of(text(re.compile(r"^[A-Za-z0-9-]{1,39}(\[bot\])?$"), "a GitHub login")),
        factory=list,
    )
    # A floor: OWNER accepts OWNER; MEMBER accepts OWNER and MEMBER; COLLABORATOR all three.
    author_association: Literal["OWNER", "MEMBER", "COLLABORATOR"] | None = key(
        optional(one_of("OWNER", "MEMBER", "COLLABORATOR")), default=None
    )


@record
class Config(Record):
    repositories: Repositories = key(parsed(Repositories), factory=Repositories)
    commands: Commands = key(parsed(Commands), factory=Commands)
    github_users: dict[str, str] = key(
        mapping(user_id, text(GITHUB_LOGIN_RE, "a GitHub login")), factory=dict
    )
    github: GitHubOptions = key(parsed(GitHubOptions), factory=GitHubOptions)
    schedules: list[Schedule] = key(list_of(parsed(Schedule)), factory=list)
    channels: dict[str, ChannelSettings] = key(
        mapping(channel_id, parsed(ChannelSettings)), factory=dict
    )
    rate_limits: RateLimits = key(parsed(RateLimits), factory=RateLimits)
    metrics: MetricsTrust = key(parsed(MetricsTrust), factory=MetricsTrust)
    models: list[ModelSpec] = key(list_of(parsed(ModelSpec)), factory=list)

    def whole(self, given: frozenset[str]) -> None:
        self._models()
        self._unique_schedules()

    def _models(self) -> None:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models[].name must be unique: {', '.join(dupes)}")
        envs = self.commands.deploy.environments
        for i, model in enumerate(self.models):
            if not self.repositories.permits(model.repository):
                raise ValueError(
                    f"models[{i}].repository {model.repository} is not a configured repository: "
                    "add it to repositories.allowed (or use repositories.default / channels)"
                )
            if model.environment is not None and model.environment not in envs:
                raise ValueError(
                    f"models[{i}].environment {model.environment!r} is not one of "
                    f"commands.deploy.environments ({', '.join(envs)})"
                )
            env = self.model_environment(model)
            if self.commands.deploy.approval_for(env) is None:
                # A registry event must never deploy without approval by omission.
                raise ValueError(
                    f"models[{i}] deploys to {env}: "
                    + self.commands.deploy.missing_policy_text([env])
                )

    def model_named(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def model_environment(self, model: ModelSpec) -> str:
        return model.environment or self.commands.deploy.default_environment

    def models_asked(
        self, entity: str, action: str, data: dict[str, Any]
    ) -> list[tuple[ModelSpec, str]]:
        """The configured models this registry event asks a deploy for, with what asked (pure)."""
        found = []
        for model in self.models:
            if data.get("name") != model.name:
                continue
            asked = model.on.asked_by(entity, action, data)
            if asked is not None:
                found.append((model, asked))
        return found

    def _unique_schedules(self) -> None:
        names = [s.name for s in self.schedules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"schedule names must be unique: {', '.join(dupes)}")
        for i, sched in enumerate(self.schedules):
            if not sched.repository and not self.repository_for(sched.channel):
                raise ValueError(
                    f"schedules[{i}].repository is needed: no repositories.default or "
                    f"repositories.channels entry for channel {sched.channel}"
                )
            if sched.repository and not self.repositories.permits(sched.repository):
                raise ValueError(
                    f"schedules[{i}].repository {sched.repository} is not a configured "
                    "repository: add it to repositories.allowed (or use repositories.default "
                    "/ repositories.channels)"
                )
        deploy = self.commands.deploy
        if deploy.any_gate() and deploy.channel is None:
            unmapped = sorted(
                r for r in self.repositories.permitted() if self.gate_channel(r) is None
            )
            if unmapped or not self.repositories.permitted():
                raise ValueError(
                    "commands.deploy.channel is needed: an environment has `gate: github`, and "
                    "GitHub's protection-rule requests for "
                    + (", ".join(unmapped) if unmapped else "any repository")
                    + " need a channel for their approval card (or map each repository to a "
                    "channel in repositories.channels)"
                )

    def gate_channel(self, repo: str) -> str | None:
        """Where a GitHub-initiated gate's card goes: the first channel mapped to the
        repository, else commands.deploy.channel."""
        for channel, mapped in self.repositories.channels.items():
            if mapped.lower() == repo.lower():
                return channel
        return self.commands.deploy.channel

    def repository_for(self, channel_id: str) -> str | None:
        return self.repositories.channels.get(channel_id) or self.repositories.default

    def channel_settings(self, channel_id: str) -> ChannelSettings:
        return self.channels.get(channel_id) or ChannelSettings()


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _path(loc: tuple[str | int, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def parse_config(data: Any, *, source: str = "chatops.yml") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    try:
        return Config.parse(data)
    except Invalid as exc:
        raise ConfigError([f"{source}: {_path(loc)}: {msg}" for loc, msg in exc.problems]) from None


def load_config(path: Path) -> Config:
    """Read chatops.yml; a missing file means all defaults (then the commands need a repo)."""
    if not path.exists():
        return Config()
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    except ValueError as exc:
        # PyYAML builds dates and numbers after parsing: `2001-13-01` or `!!int x` raise
        # ValueError, not YAMLError (found by tests/test_fuzz.py).
        raise ConfigError([f"{path}: a value cannot be read: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply to read"]) from None
    return parse_config(data, source=str(path))
