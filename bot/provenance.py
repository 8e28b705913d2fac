"""Where metrics come from: who may supply them and which commit they are for. Pure functions.

A metrics comment is evidence an approver acts on, and anyone who can comment on a pull request
can write one. So a comment's metrics count only when its author is trusted by the operator
(`metrics:` in chatops.yml), and they are tied to a commit, so that a card shows metrics for
the commit it deploys and says whose they are.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bot.config import MetricsTrust

# GitHub's author_association values, strongest first. MANNEQUIN (an imported placeholder
# account) and anything unknown rank below NONE.
ASSOCIATIONS = (
    "OWNER",
    "MEMBER",
    "COLLABORATOR",
    "CONTRIBUTOR",
    "FIRST_TIME_CONTRIBUTOR",
    "FIRST_TIMER",
    "NONE",
)

_DATA = re.compile(r"<!--\s*chatops:data\s+(\{.*?\})\s*-->", re.DOTALL)
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
# The chatops:data comment is small; a longer one is not looked at (bounded work).
_MAX_DATA_CHARS = 10_000


def author_of(comment: dict[str, Any]) -> dict[str, Any]:
    """The comment's `user` object ({} when missing or malformed)."""
    user = comment.get("user")
    return user if isinstance(user, dict) else {}


def trusted_as(trust: MetricsTrust, comment: dict[str, Any]) -> str | None:
    """Why this comment's author may supply metrics ("bot", "listed in trusted_authors",
    "association OWNER"), or None when the author is not trusted.

    GitHub Apps (the bridge's own App and the workflow's github-actions[bot]) are "Bot" users:
    only an App installed on the repository can comment there as one.
    """
    user = author_of(comment)
    login = str(user.get("login") or "")
    if user.get("type") == "Bot":
        return "bot"
    if login and login.lower() in {a.lower() for a in trust.trusted_authors}:
        return "listed in metrics.trusted_authors"
    floor = trust.author_association
    association = str(comment.get("author_association") or "NONE").upper()
    known = association in ASSOCIATIONS
    if floor and known and ASSOCIATIONS.index(association) <= ASSOCIATIONS.index(floor):
        return f"author association {association}"
    return None


def commit_of(body: str) -> str | None:
    """The commit a metrics comment says it is about: `head_sha` of its
    `<!-- chatops:data {...} -->` (as the example workflows write it), or None."""
    start = body.find("chatops:data")
    if start < 0:
        return None
    m = _DATA.search(body, max(start - 10, 0), start + _MAX_DATA_CHARS)
    if m is None:
        return None
    try:
        data = json.loads(m.group(1))
    except ValueError:
        return None
    sha = data.get("head_sha") if isinstance(data, dict) else None
    return sha.lower() if isinstance(sha, str) and _SHA.match(sha.lower()) else None


def same_commit(a: str | None, b: str | None) -> bool:
    """Whether two commit ids name the same commit (one may be abbreviated, ≥ 7 characters)."""
    if not a or not b or min(len(a), len(b)) < 7:
        return False
    a, b = a.lower(), b.lower()
    return a.startswith(b) or b.startswith(a)


def newest(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest metrics entry: by the comment's creation time, then its id."""
    if not entries:
        return None
    return max(entries, key=lambda e: (str(e.get("created_at") or ""), int(e.get("id") or 0)))
