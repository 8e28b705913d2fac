"""What a deploy card says about a registered model version (Block Kit pieces, pure).

Every fact names its source (DESIGN.md "Trust"): the signed MLflow webhook, or MLflow's REST
API at MLFLOW_TRACKING_URI ("from MLflow run …"). Text from MLflow (metric keys, run names,
user names) is escaped like any text from outside.
"""

from __future__ import annotations

from typing import Any

from bot import slacktext
from bot.model import Request
from bot.slacktext import escape_mrkdwn, slack_date
from handlers.deploy.facts import REGISTRY_USER, DeployDetails, ModelFacts, details_of

Block = dict[str, Any]
MAX_METRICS = 20


def model_of(req: Request) -> ModelFacts | None:
    model = details_of(req).get("model")
    return model if isinstance(model, dict) else None


def _code(text: object, n: int = 100) -> str:
    """Outside text as inline code: escaped, without backticks (they would end the span)."""
    return "`" + escape_mrkdwn(str(text).replace("`", "'"))[:n] + "`"


def subject(req: Request, n: int = 60) -> str:
    """What is deployed, in words: "model `churn-model` version 7" or "run `123`"."""
    model = model_of(req)
    if model is None:
        run = req.run_ref or "?"
        return f"run `{run if len(run) <= n else run[: n - 1] + '…'}`"
    which = (
        f"version {model['version']}"
        if model.get("version")
        else f"alias {_code(model.get('alias'))}"
    )
    return f"model {_code(model.get('name'), n)} {which}"


def requester(req: Request) -> str:
    """Who asked: a Slack user, or the registry (a signed webhook)."""
    if req.user_id == REGISTRY_USER:
        return "the MLflow registry"
    return f"<@{req.user_id}>"


def header(req: Request, repo_link: str) -> list[Block]:
    model = model_of(req) or {}
    asked = ""
    if req.user_id == REGISTRY_USER:
        asked = (
            f"Asked by the MLflow registry: {escape_mrkdwn(str(model.get('asked_by') or '?'))} "
            f"({_code(model.get('event') or 'event')}, signed webhook)"
        )
    else:
        asked = f"Requested by <@{req.user_id}>"
        if model.get("alias"):
            asked += f" as {_code(str(model.get('name')) + '@' + str(model.get('alias')))}"
    when = slack_date(req.created_at, "{date_short_pretty} at {time}")
    return [
        slacktext.section(
            f":rocket: *Deploy of {subject(req, 100)} to {req.environment}* in {repo_link}\n"
            f"{asked} {when}"
        )
    ]


def facts(details: DeployDetails) -> list[Block]:
    """The version's source run, metrics and registrant, with where each came from."""
    model = details.get("model") or {}
    if not details.get("facts_checked"):
        return [slacktext.context("Reading the model version from MLflow…")]
    host = model.get("mlflow_host")
    if not host:
        return [
            slacktext.context(
                "MLFLOW_TRACKING_URI is not set: only what the signed MLflow webhook said is "
                "shown (no source run, metrics or registrant)."
                + (f" Source run: {_code(model['run_id'], 40)}." if model.get("run_id") else "")
            )
        ]
    blocks: list[Block] = []
    lines = []
    run = details.get("mlflow_run")
    if model.get("run_id"):
        line = f"*Source run:* {_code(model['run_id'], 40)}"
        if isinstance(run, dict):
            if run.get("name"):
                line += f" ({_code(run['name'], 80)})"
            if run.get("status"):
                line += f" · {escape_mrkdwn(str(run['status']))[:20]}"
            if run.get("user"):
                line += f" · run by {_code(run['user'], 60)}"
        lines.append(line)
    else:
        lines.append("*Source run:* none (MLflow records no run for this version)")
    if model.get("registered_by"):
        lines.append(f"*Registered by:* {_code(model['registered_by'], 60)} (MLflow user)")
    if model.get("source"):
        lines.append(f"*Model source:* {_code(model['source'], 200)}")
    blocks.append(slacktext.section("\n".join(lines)))
    metrics = (run or {}).get("metrics") if isinstance(run, dict) else None
    if isinstance(metrics, dict) and metrics:
        rows = [f"{_code(k, 60)}  {_number(v)}" for k, v in list(metrics.items())[:MAX_METRICS]]
        more = len(metrics) - MAX_METRICS
        if more > 0:
            rows.append(f"…and {more} more")
        blocks.append(slacktext.section("\n".join(rows)))
    if model.get("run_id"):
        read = (
            f", read {slack_date(run['read_at'], '{time}')}"
            if isinstance(run, dict) and run.get("read_at")
            else ""
        )
        blocks.append(
            slacktext.context(
                f"From MLflow run {_code(model['run_id'], 40)} (`runs/get` on "
                f"{escape_mrkdwn(host)}{read}); version facts from `model-versions/get`."
            )
        )
    return blocks


def warnings(details: DeployDetails) -> list[str]:
    model = details.get("model") or {}
    out = []
    status = model.get("status")
    if status and status != "READY":
        out.append(f"MLflow says this version is not ready (status: {escape_mrkdwn(status)}).")
    asked = str(model.get("asked_by") or "")
    aliases = model.get("aliases")
    if asked.startswith("alias ") and isinstance(aliases, list) and model.get("mlflow_host"):
        alias = asked.removeprefix("alias ")
        if alias not in aliases:
            out.append(f"The alias {_code(alias)} no longer points at this version in MLflow.")
    run = details.get("mlflow_run")
    if isinstance(run, dict) and run.get("status") not in (None, "FINISHED"):
        out.append(f"The source run is not finished (status: {escape_mrkdwn(str(run['status']))}).")
    return out


def alias_after_line(details: DeployDetails) -> str | None:
    """After a successful deploy: the alias the bridge set in MLflow, or why it could not."""
    after = details.get("alias_after")
    if not isinstance(after, dict):
        return None
    alias = _code(after.get("alias"))
    if after.get("ok"):
        return f":label: Alias {alias} set on version {after.get('version')} in MLflow."
    why = escape_mrkdwn(str(after.get("error") or "unknown error"))[:300]
    return f":warning: Could not set alias {alias} in MLflow: {why}"


def _number(value: Any) -> str:
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError):
        return escape_mrkdwn(str(value))[:40]
