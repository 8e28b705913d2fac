"""The building blocks of the chatops.yml model (bot/config.py): Slack and GitHub ids and
names, the strict base model, and the MLflow model registry's entries (`models[]`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
SLACK_USER_RE = re.compile(r"^[UW][A-Z0-9]{2,}$")
SLACK_CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")
SLACK_GROUP_RE = re.compile(r"^S[A-Z0-9]{2,}$")
EVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")

Repo = Annotated[str, Field(pattern=REPO_RE.pattern, description="owner/name")]
UserId = Annotated[str, Field(pattern=SLACK_USER_RE.pattern)]
ChannelId = Annotated[str, Field(pattern=SLACK_CHANNEL_RE.pattern)]
GroupId = Annotated[str, Field(pattern=SLACK_GROUP_RE.pattern)]
EventType = Annotated[str, Field(pattern=EVENT_TYPE_RE.pattern)]
Permission = Literal["read", "triage", "write", "maintain", "admin"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# MLflow's own alias rule is ^[\w\-]*$; lengths are capped so that `models:/<name>@<alias>`
# fits requests.run_ref (200) and the idempotency key (255).
MLFLOW_ALIAS_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MlflowAlias = Annotated[str, Field(pattern=MLFLOW_ALIAS_RE.pattern)]
# MLflow allows almost any registered model name; this bridge takes the ones a command can name
# and a workflow can pass safely (no spaces, quotes or slashes).
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")


class ModelTrigger(Strict):
    """`models[].on`: which registry events open an approval card (any of these)."""

    alias: MlflowAlias | None = None  # a version gets this alias
    tag: dict[str, str] | None = None  # a version gets this tag (one key: value)
    created: bool = False  # every new version

    @model_validator(mode="after")
    def _something(self) -> ModelTrigger:
        if self.alias is None and self.tag is None and not self.created:
            raise ValueError("give at least one of alias, tag or created: true")
        if self.tag is not None and len(self.tag) != 1:
            raise ValueError('tag takes exactly one key: value, e.g. {deploy: "true"}')
        return self

    def asked_by(self, entity: str, action: str, data: dict[str, Any]) -> str | None:
        """What in this registry event asks for a deploy, in words; None when nothing (pure)."""
        if entity == "model_version_alias" and action == "created":
            if self.alias is not None and data.get("alias") == self.alias:
                return f"alias {self.alias}"
        elif entity == "model_version_tag" and action == "set":
            for key, value in (self.tag or {}).items():
                if data.get("key") == key and data.get("value") == value:
                    return f"tag {key}={value}"
        elif entity == "model_version" and action == "created" and self.created:
            return "new version"
        return None


class ModelSpec(Strict):
    """`models[]`: a registered model in MLflow whose versions ask for their own deploy."""

    name: str = Field(pattern=MODEL_NAME_RE.pattern)
    repository: Repo
    channel: ChannelId
    environment: str | None = None  # default: the first of commands.deploy.environments
    on: ModelTrigger
    after_deploy_alias: MlflowAlias | None = None  # set on the version once its deploy succeeded

    @model_validator(mode="after")
    def _no_loop(self) -> ModelSpec:
        if self.after_deploy_alias is not None and self.after_deploy_alias == self.on.alias:
            # Setting it after a deploy would ask for the same deploy again, for ever.
            raise ValueError("after_deploy_alias must differ from on.alias")
        return self

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean True, as GitHub workflows know.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data
