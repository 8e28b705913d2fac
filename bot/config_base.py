"""The building blocks of the chatops.yml model (bot/config.py): a small validating record (each
key checked, unknown keys refused, every problem reported with its path), the checks of Slack
and GitHub ids and names, and the MLflow model registry's entries (`models[]`).

The records are frozen dataclasses. Validation is a handful of plain functions rather than a
schema library: the model is small, and a library's import and class building were an eighth
of the process's start (docs/benchmarks.md, "A start without pydantic")."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar, dataclass_transform

Loc = tuple[str | int, ...]
Check = Callable[[Any], Any]
R = TypeVar("R", bound="Record")


class Invalid(Exception):
    """What is wrong in a value, each problem with its path below that value."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(m for _, m in problems))
        self.problems = problems

    @classmethod
    def here(cls, message: str) -> Invalid:
        return cls([((), message)])

    def under(self, step: str | int) -> list[tuple[Loc, str]]:
        return [((step, *loc), m) for loc, m in self.problems]


# -- checks of single values (pure; each returns the value it accepts or raises Invalid) ------


def text(
    pattern: re.Pattern[str] | None = None,
    what: str = "",
    *,
    min_length: int = 0,
    max_length: int | None = None,
) -> Check:
    """A string; with a pattern it must match it (`what` says in words what matches)."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid.here(f"must be {what or 'a string'}")
        if pattern is not None and not pattern.match(value):
            raise Invalid.here(f"must be {what}")
        if len(value) < min_length or (max_length is not None and len(value) > max_length):
            longest = f"to {max_length}" if max_length is not None else "or more"
            raise Invalid.here(f"must be {min_length} {longest} characters long")
        return value

    return check


def _bounds(value: float, ge: float | None, le: float | None) -> None:
    if (ge is not None and value < ge) or (le is not None and value > le):
        if ge is not None and le is not None:
            raise Invalid.here(f"must be between {ge:g} and {le:g}")
        raise Invalid.here(
            f"must be at least {ge:g}" if ge is not None else f"must be at most {le:g}"
        )


def whole_number(ge: int | None = None, le: int | None = None) -> Check:
    """An integer (a quoted one, or a float without a fraction, is taken too; true/false not)."""

    def check(value: Any) -> int:
        quoted = isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,18}\s*", value)
        if quoted or (isinstance(value, float) and value.is_integer()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid.here("must be a whole number")
        _bounds(value, ge, le)
        return value

    return check


def number(ge: float | None = None, le: float | None = None) -> Check:
    """A number (an integer or a decimal; a quoted one is taken too; true/false not)."""

    def check(value: Any) -> float:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)\s*", value):
            value = float(value)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Invalid.here("must be a number")
        if not math.isfinite(value):
            raise Invalid.here("must be a finite number")
        _bounds(value, ge, le)
        return float(value)

    return check


_TRUE = frozenset({"true", "yes", "on"})
_FALSE = frozenset({"false", "no", "off"})


def flag(value: Any) -> bool:
    """true or false (YAML's yes/no/on/off, quoted or not, too)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise Invalid.here("must be true or false")


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise Invalid.here("must be one of: " + ", ".join(choices))

    return check


def optional(check: Check) -> Check:
    """The check, or nothing (null, or the key left out)."""

    def either(value: Any) -> Any:
        return None if value is None else check(value)

    return either


def then(check: Check, rule: Callable[[Any], Any]) -> Check:
    """`check`, then `rule` on what it accepted; a ValueError from the rule is the problem."""

    def both(value: Any) -> Any:
        accepted = check(value)
        try:
            return rule(accepted)
        except ValueError as exc:
            raise Invalid.here(str(exc)) from None

    return both


def list_of(item: Check) -> Check:
    def check(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise Invalid.here("must be a list")
        return _each(enumerate(value), lambda _, v: item(v))

    return check


def mapping(of_keys: Check, of_values: Check) -> Check:
    """A mapping; a bad key is named with its path and the words of the key's check."""

    def check(data: Any) -> dict[Any, Any]:
        if not isinstance(data, dict):
            raise Invalid.here("must be a mapping (key: value)")
        problems: list[tuple[Loc, str]] = []
        keys: list[Any] = []
        values: list[Any] = []
        try:
            keys = _each(((k, k) for k in data), lambda _, k: of_keys(k), what="the key ")
        except Invalid as exc:
            problems.extend(exc.problems)
        try:
            values = _each(data.items(), lambda _, v: of_values(v))
        except Invalid as exc:
            problems.extend(exc.problems)
        if problems:
            raise Invalid(problems)
        return dict(zip(keys, values, strict=True))

    return check


def _each(
    items: Iterable[tuple[Any, Any]], check: Callable[[Any, Any], Any], *, what: str = ""
) -> list[Any]:
    """Every item checked, every problem collected under the item's step."""
    accepted: list[Any] = []
    problems: list[tuple[Loc, str]] = []
    for step, value in items:
        try:
            accepted.append(check(step, value))
        except Invalid as exc:
            at = step if isinstance(step, str | int) and not isinstance(step, bool) else str(step)
            problems.extend((loc, what + m) for loc, m in exc.under(at))
    if problems:
        raise Invalid(problems)
    return accepted


# -- the record -------------------------------------------------------------------------------


def key(check: Check, *, default: Any = dataclasses.MISSING, factory: Any = None) -> Any:
    """A record's key: its check and its default; with neither default nor factory the key is
    required."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"check": check})
    return dataclasses.field(default=default, metadata={"check": check})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    """A part of chatops.yml: read-only, built by `parse` from a mapping whose every key is
    checked. Subclasses are `@record` dataclasses whose fields are made with `key`."""

    _keys: ClassVar[dict[str, dataclasses.Field[Any]]]

    def whole(self, given: frozenset[str]) -> None:
        """Rules across keys, run once every key passed its own check (`given`: the keys the
        file set). A ValueError is reported at this record's path."""

    @classmethod
    def before(cls, data: Any) -> Any:
        """The mapping as read, before its keys are checked."""
        return data

    @classmethod
    def parse(cls: type[R], data: Any) -> R:
        data = cls.before(data)
        if not isinstance(data, dict):
            raise Invalid.here("must be a mapping (key: value)")
        keys = cls.__dict__.get("_keys")
        if keys is None:
            keys = {f.name: f for f in dataclasses.fields(cls)}
            cls._keys = keys
        values: dict[str, Any] = {}
        problems: list[tuple[Loc, str]] = []
        for name, spec in keys.items():
            if name in data:
                try:
                    values[name] = spec.metadata["check"](data[name])
                except Invalid as exc:
                    problems.extend(exc.under(name))
            elif (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            ):
                problems.append(((name,), "is required"))
        for extra in data:
            if not (isinstance(extra, str) and extra in keys):
                problems.append(((str(extra),), "unknown key"))
        if problems:
            raise Invalid(problems)
        made = cls(**values)
        try:
            made.whole(frozenset(values))
        except ValueError as exc:
            raise Invalid.here(str(exc)) from None
        return made


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(key,))
def record(cls: type[R]) -> type[R]:
    """The decorator of every Record subclass."""
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


def parsed(cls: type[Record]) -> Check:
    return cls.parse


# -- ids and names ----------------------------------------------------------------------------

REPO_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
SLACK_USER_RE = re.compile(r"^[UW][A-Z0-9]{2,}$")
SLACK_CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")
SLACK_GROUP_RE = re.compile(r"^S[A-Z0-9]{2,}$")
EVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
GITHUB_LOGIN_RE = re.compile(r"^[A-Za-z0-9-]{1,39}$")

repo = text(REPO_RE, "a repository as owner/name")
user_id = text(SLACK_USER_RE, "a Slack user id (U… or W…, capitals and digits)")
channel_id = text(SLACK_CHANNEL_RE, "a Slack channel id (C…, G… or D…, capitals and digits)")
group_id = text(SLACK_GROUP_RE, "a Slack user group id (S…, capitals and digits)")
event_type = text(EVENT_TYPE_RE, "1 to 100 letters, digits, '_', '.', ':' or '-'")
permission = one_of("read", "triage", "write", "maintain", "admin")

# MLflow's own alias rule is ^[\w\-]*$; lengths are capped so that `models:/<name>@<alias>`
# fits requests.run_ref (200) and the idempotency key (255).
MLFLOW_ALIAS_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
mlflow_alias = text(MLFLOW_ALIAS_RE, "an alias of 1 to 64 letters, digits, '_' or '-'")
# MLflow allows almost any registered model name; this bridge takes the ones a command can name
# and a workflow can pass safely (no spaces, quotes or slashes).
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")


@record
class ModelTrigger(Record):
    """`models[].on`: which registry events open an approval card (any of these)."""

    alias: str | None = key(optional(mlflow_alias), default=None)  # a version gets this alias
    # a version gets this tag (one key: value)
    tag: dict[str, str] | None = key(optional(mapping(text(), text())), default=None)
    created: bool = key(flag, default=False)  # every new version

    def whole(self, given: frozenset[str]) -> None:
        if self.alias is None and self.tag is None and not self.created:
            raise ValueError("give at least one of alias, tag or created: true")
        if self.tag is not None and len(self.tag) != 1:
            raise ValueError('tag takes exactly one key: value, e.g. {deploy: "true"}')

    def asked_by(self, entity: str, action: str, data: dict[str, Any]) -> str | None:
        """What in this registry event asks for a deploy, in words; None when nothing (pure)."""
        if entity == "model_version_alias" and action == "created":
            if self.alias is not None and data.get("alias") == self.alias:
                return f"alias {self.alias}"
        elif entity == "model_version_tag" and action == "set":
            for name, value in (self.tag or {}).items():
                if data.get("key") == name and data.get("value") == value:
                    return f"tag {name}={value}"
        elif entity == "model_version" and action == "created" and self.created:
            return "new version"
        return None


@record
class ModelSpec(Record):
    """`models[]`: a registered model in MLflow whose versions ask for their own deploy."""

    name: str = key(text(MODEL_NAME_RE, "a model name: up to 120 letters, digits, '.', '_', '-'"))
    repository: str = key(repo)
    channel: str = key(channel_id)
    environment: str | None = key(
        optional(text()), default=None
    )  # default: commands.deploy's first
    on: ModelTrigger = key(parsed(ModelTrigger))
    # set on the version once its deploy succeeded
    after_deploy_alias: str | None = key(optional(mlflow_alias), default=None)

    @classmethod
    def before(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean True, as GitHub workflows know.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    def whole(self, given: frozenset[str]) -> None:
        if self.after_deploy_alias is not None and self.after_deploy_alias == self.on.alias:
            # Setting it after a deploy would ask for the same deploy again, for ever.
            raise ValueError("after_deploy_alias must differ from on.alias")
