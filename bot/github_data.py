"""Pure shapes of GitHub data: pull and run info from JSON, conditional answers, route labels.

No PyGithub here (bot.github is the only module importing it); everything is pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.slacktext import iso_utc


@dataclass(frozen=True)
class PullInfo:
    repo: str
    number: int
    title: str
    state: str  # open | closed
    merged: bool
    head_sha: str
    head_ref: str
    base_ref: str
    html_url: str
    author: str
    labels: tuple[str, ...]


def pull_from_payload(repo: str, data: dict[str, Any]) -> PullInfo:
    """A pull request as REST and webhooks give it (the `pull_request` object)."""
    return PullInfo(
        repo=repo,
        number=int(data["number"]),
        title=str(data.get("title") or ""),
        state=str(data.get("state") or ""),
        merged=bool(data.get("merged")),
        head_sha=str(data["head"]["sha"]),
        head_ref=str(data["head"].get("ref") or ""),
        base_ref=str(data["base"].get("ref") or ""),
        html_url=str(data.get("html_url") or ""),
        author=str((data.get("user") or {}).get("login") or ""),
        labels=tuple(str(lbl["name"]) for lbl in data.get("labels") or []),
    )


@dataclass(frozen=True)
class RunInfo:
    """The fields of a workflow run the bridge uses (same for webhook and REST)."""

    id: int
    repo: str
    name: str
    display_title: str
    status: str
    conclusion: str | None
    head_sha: str
    head_branch: str | None
    event: str
    html_url: str
    run_attempt: int
    created_at: float | None
    run_started_at: float | None
    updated_at: float | None
    pull_numbers: tuple[int, ...]
    path: str | None = None
    actor: str | None = None  # who triggered the run (triggering_actor, else actor)


def parse_time(value: Any) -> float | None:
    """GitHub's ISO 8601 times ("2024-01-01T00:00:00Z") as UNIX seconds; None if not a time."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None  # not a time: treat as unknown rather than fail the whole event
    return None


def _count(value: Any) -> int | None:
    """A positive integer from JSON (ids, numbers, attempts), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and 0 < len(value) <= 20:
        return int(value)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# The bridge's clock (action_started_at) and GitHub's (created_at) are compared. NTP-synced
# hosts agree within a second; 30 s also tolerates a drifting container clock, and the only
# runs it lets in are ones created in the 30 s before our own dispatch, which still need the
# dispatch event, the request id in their title and the configured workflow.
CLOCK_SKEW = 30.0


def dispatch_runs_query(since: float) -> dict[str, Any]:
    """List-runs filter for repository_dispatch runs created after `since` (minus clock skew)."""
    return {
        "event": "repository_dispatch",
        "created": ">=" + iso_utc(since - CLOCK_SKEW),
        "per_page": 100,
    }


def run_from_payload(repo: str, run: dict[str, Any]) -> RunInfo:
    """A RunInfo from the REST or webhook JSON of a workflow run (they share the shape).

    Pure; ValueError when the run has no usable id. Other odd fields become unknowns.
    """
    run_id = _count(run.get("id"))
    if run_id is None:
        raise ValueError("workflow run without a valid id")
    pulls = [p for p in run.get("pull_requests") or [] if isinstance(p, dict)]
    return RunInfo(
        id=run_id,
        repo=repo,
        name=str(run.get("name") or ""),
        display_title=str(run.get("display_title") or ""),
        status=str(run.get("status") or ""),
        conclusion=_text(run.get("conclusion")),
        head_sha=str(run.get("head_sha") or ""),
        head_branch=_text(run.get("head_branch")),
        event=str(run.get("event") or ""),
        html_url=str(run.get("html_url") or ""),
        run_attempt=_count(run.get("run_attempt")) or 1,
        created_at=parse_time(run.get("created_at")),
        run_started_at=parse_time(run.get("run_started_at")),
        updated_at=parse_time(run.get("updated_at")),
        pull_numbers=tuple(n for p in pulls if (n := _count(p.get("number"))) is not None),
        path=_text(run.get("path")),
        actor=_login(run.get("triggering_actor")) or _login(run.get("actor")),
    )


def _login(user: Any) -> str | None:
    return _text(user.get("login")) if isinstance(user, dict) else None


def protection_rule_run_id(api_base: str, repo: str, callback_url: Any) -> int | None:
    """The run id of a deployment_protection_rule's `deployment_callback_url`, only when the
    URL is exactly GitHub's own callback operation for that repository
    (`{api}/repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule`); else None.

    Pure. The bridge never POSTs to a URL taken from a payload: it builds the call from the
    repository and this run id (bot/github.py answer_gate).
    """
    if not isinstance(callback_url, str):
        return None
    prefix = f"{api_base.rstrip('/')}/repos/"
    if not callback_url.lower().startswith(prefix.lower()) or "?" in callback_url:
        return None
    rest = callback_url[len(prefix) :]
    owner_name, sep, tail = rest.partition("/actions/runs/")
    if not sep or owner_name.lower() != repo.lower():
        return None
    run, sep, end = tail.partition("/")
    if sep != "/" or end != "deployment_protection_rule" or not run.isdigit() or len(run) > 20:
        return None
    return int(run) if int(run) > 0 else None


@dataclass(frozen=True)
class Conditional:
    """The answer to a conditional GET: not_modified, or data with its new ETag."""

    not_modified: bool
    etag: str | None
    data: Any


_AFTER_NAME = {"labels": "{name}", "collaborators": "{login}"}


def route_of(path: str) -> str:
    """A REST path with its variable parts named, as a metrics label of bounded cardinality.

    /repos/acme/ml/issues/42/labels/evaluate -> /repos/{owner}/{repo}/issues/{n}/labels/{name}
    """
    parts = path.split("?", 1)[0].strip("/").split("/")
    out: list[str] = []
    for i, part in enumerate(parts):
        if i in (1, 2) and parts[0] == "repos":
            out.append("{owner}" if i == 1 else "{repo}")
        elif re.fullmatch(r"\d+", part):
            out.append("{n}")
        elif i > 3 and parts[i - 1] in _AFTER_NAME:
            out.append(_AFTER_NAME[parts[i - 1]])
        else:
            out.append(part)
    return "/" + "/".join(out)
