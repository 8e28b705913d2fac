"""The chatops.yml model: one documented, validated schema; unknown keys are refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

# The building blocks (ids, names, Strict) and the model registry's entries: bot/config_base.py.
from bot.config_base import (
    ChannelId,
    EventType,
    GroupId,
    ModelSpec,
    Permission,
    Repo,
    Strict,
    UserId,
)
from bot.cron import cron_trigger


class Repositories(Strict):
    default: Repo | None = None
    channels: dict[ChannelId, Repo] = {}
    # Besides `default` and `channels`, the only repositories a command may name. The App may
    # be installed on more (an org-wide install): being installed is not being configured.
    allowed: list[Repo] = []

    def permitted(self) -> frozenset[str]:
        """Every repository a command or schedule may touch, lower-cased (GitHub ignores case)."""
        names = [*self.allowed, *self.channels.values()]
        if self.default:
            names.append(self.default)
        return frozenset(n.lower() for n in names)

    def permits(self, repo: str) -> bool:
        return repo.lower() in self.permitted()


class Access(Strict):
    """Who may run a command. Empty lists mean "no restriction" for that dimension."""

    allowed_channels: list[ChannelId] = []
    allowed_users: list[UserId] = []
    allowed_usergroups: list[GroupId] = []
    require_github_permission: Permission | None = None


class ApprovalPolicy(Strict):
    approvers: list[UserId] = []
    approver_usergroups: list[GroupId] = []
    required: int = Field(1, ge=1, le=10)
    allow_self_approval: bool = False
    expires_after_minutes: int = Field(30, ge=1, le=7 * 24 * 60)
    require_github_permission: Permission | None = None

    @model_validator(mode="after")
    def _enough_approvers(self) -> ApprovalPolicy:
        if not self.approvers and not self.approver_usergroups:
            raise ValueError("approval needs at least one of approvers or approver_usergroups")
        if not self.approver_usergroups and len(set(self.approvers)) < self.required:
            listed = len(set(self.approvers))
            raise ValueError(f"required is {self.required} but only {listed} approvers are listed")
        return self


def _approval_kind(value: Any) -> str:
    return "none" if isinstance(value, str) else "policy"


# `approval: none` is the one explicit way to deploy without approval; a missing `approval` is
# an error (DeployCommand._every_environment_has_a_policy), so forgetting it cannot open a gate.
Approval = Annotated[
    Annotated[ApprovalPolicy, Tag("policy")] | Annotated[Literal["none"], Tag("none")],
    Discriminator(_approval_kind),
]


class EvaluateCommand(Access):
    trigger: Literal["label", "dispatch"] = "label"
    label: str = Field("evaluate", min_length=1, max_length=50)
    event_type: EventType = "evaluate"
    # Only runs of this workflow (name or file name) are relayed for /evaluate requests.
    workflow: str | None = None


class EnvironmentSettings(Strict):
    approval: Approval | None = None
    # github: the App is enabled on this environment as a custom deployment protection rule,
    # so GitHub itself waits for the approval (docs/deploy.md "GitHub enforces the approval").
    gate: Literal["github"] | None = None


class DeployCommand(Access):
    trigger: Literal["dispatch"] = "dispatch"
    event_type: EventType = "deploy"
    # Only runs of this workflow (name or file name) can follow a /deploy request.
    workflow: str | None = None
    approval: Approval | None = None
    environments: dict[str, EnvironmentSettings] = {"production": EnvironmentSettings()}
    # `/deploy lock` holds until unlocked; with this set, a lock ends by itself after so many
    # hours (it stops blocking at once; a housekeeping job removes it and says so).
    lock_expires_after_hours: int | None = Field(None, ge=1, le=24 * 365)
    # Where the cards of GitHub-initiated gates go when no channel maps to their repository.
    channel: ChannelId | None = None

    @field_validator("environments")
    @classmethod
    def _env_names(cls, v: dict[str, EnvironmentSettings]) -> dict[str, EnvironmentSettings]:
        if not v:
            raise ValueError("at least one environment is needed")
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", name):
                raise ValueError(f"environment name {name!r} has characters GitHub does not allow")
        return v

    @model_validator(mode="after")
    def _every_environment_has_a_policy(self) -> DeployCommand:
        if not self.model_fields_set:
            return self  # no commands.deploy in the file: /deploy refuses (unconfigured_policy)
        missing = self.unconfigured_environments()
        if missing:
            raise ValueError(self.missing_policy_text(missing))
        return self

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


class Commands(Strict):
    evaluate: EvaluateCommand = EvaluateCommand()
    deploy: DeployCommand = DeployCommand()


class GitHubOptions(Strict):
    # webhook: GitHub calls /github/webhooks. poll: the bridge polls GitHub (no public URL).
    # auto: poll when no GITHUB_WEBHOOK_SECRET is set, else webhooks.
    mode: Literal["webhook", "poll", "auto"] = "auto"
    poll_interval_seconds: int = Field(30, ge=5, le=3600)
    poll_max_age_hours: int = Field(24, ge=1, le=24 * 30)
    # Polling pauses when fewer than this many REST calls remain in the rate-limit window.
    poll_min_rate_remaining: int = Field(200, ge=0)


class ChannelSettings(Strict):
    notify: Literal["all", "finished", "failures"] = "all"
    broadcast_failures: bool = False


class Schedule(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    cron: str
    timezone: str = "UTC"
    command: Literal["dispatch", "evaluate"] = "dispatch"
    event_type: EventType | None = None
    pr: int | None = Field(None, ge=1)
    repository: Repo | None = None
    channel: ChannelId
    client_payload: dict[str, str | int | float | bool] = {}

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        try:
            cron_trigger(v)
        except ValueError as exc:
            raise ValueError(f"invalid cron expression: {exc}") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {v!r} (use an IANA name like Europe/Berlin)"
            ) from None
        return v

    @model_validator(mode="after")
    def _shape(self) -> Schedule:
        if self.command == "dispatch" and not self.event_type:
            raise ValueError("a dispatch schedule needs event_type")
        if self.command == "evaluate" and self.pr is None:
            raise ValueError("an evaluate schedule needs pr")
        if len(self.client_payload) > 6:
            raise ValueError("client_payload takes at most 6 keys (GitHub allows 10, 4 are ours)")
        return self


class RateLimits(Strict):
    commands_per_minute: int = Field(10, ge=1, le=1000)
    # At most one edit of a thread's root message per this many seconds (chat.update is rate
    # limited by Slack); the last edit of a burst follows at the end of the interval, and the
    # edit to a final state is sent at once. 0 edits on every change.
    root_edit_seconds: float = Field(3.0, ge=0, le=60)


class MetricsTrust(Strict):
    """Who may supply the metrics relayed into threads and shown on deploy cards.

    GitHub Apps (bots: github-actions[bot], this bridge's App) always may. Others only when
    listed here, or when their author_association on the repository is at least the floor.
    Anyone else's metrics comment is not relayed (bot/provenance.py, docs/security.md).
    """

    trusted_authors: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,39}(\[bot\])?$")]] = []
    # A floor: OWNER accepts OWNER; MEMBER accepts OWNER and MEMBER; COLLABORATOR all three.
    author_association: Literal["OWNER", "MEMBER", "COLLABORATOR"] | None = None


class Config(Strict):
    repositories: Repositories = Repositories()
    commands: Commands = Commands()
    github_users: dict[UserId, Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,39}$")]] = {}
    github: GitHubOptions = GitHubOptions()
    schedules: list[Schedule] = []
    channels: dict[ChannelId, ChannelSettings] = {}
    rate_limits: RateLimits = RateLimits()
    metrics: MetricsTrust = MetricsTrust()
    models: list[ModelSpec] = []

    @model_validator(mode="after")
    def _models(self) -> Config:
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
        return self

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

    @model_validator(mode="after")
    def _unique_schedules(self) -> Config:
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
        return self

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


def _path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("function-after[_enough_approvers(), ApprovalPolicy]",):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def parse_config(data: Any, *, source: str = "chatops.yml") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(x for x in err["loc"] if not str(x).startswith("function-"))
            msg = err["msg"].removeprefix("Value error, ")
            if len(loc) > 1 and loc[-2] == "approval" and loc[-1] == "none":
                msg = "must be a policy (approvers, required, ...) or the word none"
            # Drop the union's tag: `commands.deploy.approval.required`, not `.policy.required`.
            loc = tuple(
                x
                for i, x in enumerate(loc)
                if not (i and loc[i - 1] == "approval" and x in ("policy", "none"))
            )
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{source}: {_path(loc)}: {msg}")
        raise ConfigError(problems) from None


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
