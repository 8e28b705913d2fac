"""Pure parsers for command text: PR references, deploy arguments, environment locks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlparse

from bot.config_base import MLFLOW_ALIAS_RE, MODEL_NAME_RE, REPO_RE
from bot.slacktext import escape_mrkdwn


class UsageError(ValueError):
    """Bad command text; the message (Slack mrkdwn) says what was wrong and how to write it."""

    @property
    def name(self) -> str:
        """What was wrong, as a fixed name for logs (the message quotes what was typed)."""
        text = str(self)
        for fragment, name in _USAGE_ERROR_NAMES:
            if fragment in text:
                return name
        return "usage_error"


# The fixed words of each UsageError message (here and in handlers/common.resolve_repo) and
# the name logs give it. Echoed user text sits in backticks before these words.
_USAGE_ERROR_NAMES = (
    ("is not a pull request number", "pr_number_out_of_range"),
    ("is not a repository name like", "bad_repository_name"),
    ("Which pull request?", "missing_pull_request"),
    ("is not a GitHub host this bridge serves", "unknown_github_host"),
    ("That URL is not a pull request", "not_a_pull_request_url"),
    ("is not a pull request reference", "bad_pull_request_reference"),
    ("Which run?", "missing_run_id"),
    ("Too many words", "too_many_words"),
    ("That URL is not a workflow run", "not_a_run_url"),
    ("is not a run id", "bad_run_id"),
    ("is not an environment name", "bad_environment_name"),
    ("No repository given", "no_repository"),
    ("is not a registered model name", "bad_model_name"),
    ("Which version?", "missing_model_version"),
    ("is not a model version or alias", "bad_model_version"),
    ("is not a repository this bridge works on", "repository_not_allowed"),
    ("Which environment?", "missing_environment"),
    ("The reason is too long", "lock_reason_too_long"),
)


def _shown(text: str) -> str:
    """Echo what the person typed as code, escaped: `<!channel>` must never become a mention."""
    return f"`{escape_mrkdwn(text)}`"


@dataclass(frozen=True)
class PullRef:
    repo: str | None  # None: use the channel's or the global default
    number: int


_NUM = r"[1-9][0-9]{0,9}"
_SHORT = re.compile(rf"^#?(?P<n>{_NUM})$")
_QUALIFIED = re.compile(rf"^(?P<repo>[^\s#/]+/[^\s#/]+)#(?P<n>{_NUM})$")
_PATH = re.compile(rf"^/(?P<repo>[^/]+/[^/]+)/pull/(?P<n>{_NUM})(?:/[^?#]*)?$")
MAX_PR = 2**31 - 1


def _checked(repo: str | None, number: str) -> PullRef:
    n = int(number)
    if n > MAX_PR:
        raise UsageError(f"#{number} is not a pull request number.")
    if repo is not None and not REPO_RE.match(repo):
        raise UsageError(f"{_shown(repo)} is not a repository name like `owner/repo`.")
    return PullRef(repo=repo, number=n)


def parse_pull_ref(text: str, *, allowed_hosts: tuple[str, ...] = ("github.com",)) -> PullRef:
    """`42`, `#42`, `owner/repo#42` or a pull request URL → PullRef; else UsageError."""
    token = text.strip()
    # Slack wraps pasted URLs as <https://…> or <https://…|label>.
    if token.startswith("<") and token.endswith(">"):
        token = token[1:-1].split("|", 1)[0]
    if not token:
        raise UsageError("Which pull request? Give its number, `owner/repo#number` or its URL.")
    if m := _SHORT.match(token):
        return _checked(None, m["n"])
    if m := _QUALIFIED.match(token):
        return _checked(m["repo"], m["n"])
    if token.startswith(("http://", "https://")):
        if m := _PATH.match(_github_path(token, allowed_hosts)):
            return _checked(m["repo"], m["n"])
        raise UsageError("That URL is not a pull request (expected …/owner/repo/pull/42).")
    raise UsageError(f"{_shown(token[:80])} is not a pull request reference.")


def _github_path(url: str, allowed_hosts: tuple[str, ...]) -> str:
    """The path of a URL on a GitHub host this bridge serves: another host's path must not
    pick our repository."""
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    if host not in allowed_hosts:
        raise UsageError(
            f"{_shown(host)} is not a GitHub host this bridge serves ({', '.join(allowed_hosts)})."
        )
    return parsed.path


@dataclass(frozen=True)
class DeployArgs:
    run_id: str
    environment: str | None
    repo: str | None


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")


def parse_deploy_args(
    text: str, *, allowed_hosts: tuple[str, ...] = ("github.com", "www.github.com")
) -> DeployArgs:
    """`<run-id> [environment]`, where run-id may be `owner/repo@<id>` or a run URL of one of
    `allowed_hosts` (as for PR URLs: another host's path must not pick our repository)."""
    parts = text.split()
    if not parts:
        raise UsageError("Which run? Give the run id, e.g. `/deploy 9876543210 production`.")
    if len(parts) > 2:
        raise UsageError("Too many words: use `/deploy &lt;run-id&gt; [environment]`.")
    raw = parts[0]
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1].split("|", 1)[0]
    repo: str | None = None
    run_id = raw
    if raw.startswith(("http://", "https://")):
        m = re.match(r"^/([^/]+/[^/]+)/actions/runs/([0-9]+)", _github_path(raw, allowed_hosts))
        if not m:
            raise UsageError(
                "That URL is not a workflow run (expected …/owner/repo/actions/runs/123)."
            )
        repo, run_id = m[1], m[2]
    elif "@" in raw:
        repo, run_id = raw.split("@", 1)
    if repo is not None and not REPO_RE.match(repo):
        raise UsageError(f"{_shown(repo)} is not a repository name like `owner/repo`.")
    if not _RUN_ID.match(run_id):
        hint = "use letters, digits and . _ : / - (up to 200)"
        raise UsageError(f"{_shown(run_id[:80])} is not a run id: {hint}.")
    env = parts[1] if len(parts) == 2 else None
    if env is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", env):
        raise UsageError(f"{_shown(env[:80])} is not an environment name.")
    return DeployArgs(run_id=run_id, environment=env, repo=repo)


LOCK_WORDS = ("lock", "unlock", "locks")
MAX_LOCK_REASON = 300


@dataclass(frozen=True)
class LockArgs:
    action: str  # lock | unlock | locks
    environment: str | None  # None only for `locks`
    repo: str | None  # None: the channel's repository
    reason: str  # what was typed after the environment, whitespace collapsed ("" if none)


def is_lock_command(text: str) -> bool:
    words = text.split(maxsplit=1)
    return bool(words) and words[0].lower() in LOCK_WORDS


def parse_lock_args(text: str) -> LockArgs:
    """`lock [owner/repo] <environment> [reason…]`, `unlock [owner/repo] <environment>` or
    `locks`. A word with a `/` is a repository (environment names cannot hold one)."""
    words = text.split()
    if not words or words[0].lower() not in LOCK_WORDS:
        raise ValueError("not a lock command")  # the caller checks is_lock_command first
    action, rest = words[0].lower(), words[1:]
    if action == "locks":
        if rest:
            raise UsageError("Too many words: use `/deploy locks`.")
        return LockArgs(action, None, None, "")
    repo: str | None = None
    if rest and "/" in rest[0]:
        repo = rest.pop(0)
        if not REPO_RE.match(repo):
            raise UsageError(f"{_shown(repo[:80])} is not a repository name like `owner/repo`.")
    if not rest:
        example = "lock production release freeze" if action == "lock" else "unlock production"
        raise UsageError(f"Which environment? Name it, e.g. `/deploy {example}`.")
    env = rest.pop(0)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", env):
        raise UsageError(f"{_shown(env[:80])} is not an environment name.")
    if action == "unlock" and rest:
        raise UsageError("Too many words: use `/deploy unlock [owner/repo] <environment>`.")
    reason = " ".join(rest)
    if len(reason) > MAX_LOCK_REASON:
        raise UsageError(
            f"The reason is too long ({len(reason)} characters; at most {MAX_LOCK_REASON})."
        )
    return LockArgs(action, env, repo, reason)


MODEL_PREFIX = "model:"


@dataclass(frozen=True)
class ModelArgs:
    """`/deploy model:<name>@<version|alias> [environment]`: exactly one of version, alias."""

    name: str
    version: str | None
    alias: str | None
    environment: str | None


def is_model_ref(text: str) -> bool:
    """Whether /deploy's text names a registered model version rather than a run."""
    return text.strip().lower().startswith(MODEL_PREFIX)


def parse_model_args(text: str) -> ModelArgs:
    """`model:churn-model@7 [environment]` or `model:churn-model@candidate` → ModelArgs."""
    parts = text.split()
    if len(parts) > 2:
        raise UsageError(
            "Too many words: use `/deploy model:&lt;name&gt;@&lt;version&gt; [environment]`."
        )
    ref = parts[0][len(MODEL_PREFIX) :] if parts else ""
    name, at, which = ref.partition("@")
    if not MODEL_NAME_RE.match(name):
        raise UsageError(
            f"{_shown(name[:80]) if name else 'That'} is not a registered model name "
            "(letters, digits and . _ -)."
        )
    if not at or not which:
        raise UsageError(
            "Which version? Name it after `@`: `model:churn-model@7`, or an alias: "
            "`model:churn-model@candidate`."
        )
    version = alias = None
    if re.fullmatch(r"[1-9][0-9]{0,9}", which):
        version = which
    elif MLFLOW_ALIAS_RE.match(which):
        alias = which
    else:
        raise UsageError(f"{_shown(which[:80])} is not a model version or alias.")
    env = parts[1] if len(parts) == 2 else None
    if env is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", env):
        raise UsageError(f"{_shown(env[:80])} is not an environment name.")
    return ModelArgs(name=name, version=version, alias=alias, environment=env)
