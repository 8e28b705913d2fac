"""`pull_request` events: warn a waiting thread when new commits change the head."""

from __future__ import annotations

from typing import Any

from bot import slacktext
from bot.deps import Deps
from bot.model import WAITING_FOR_RUNS
from handlers.lifecycle import reply_once


def on_synchronize(deps: Deps, payload: dict[str, Any]) -> None:
    pr = payload.get("pull_request") or {}
    repo = str((payload.get("repository") or {}).get("full_name") or "")
    after = str(payload.get("after") or (pr.get("head") or {}).get("sha") or "")
    if not repo or not after or "number" not in pr:
        return
    for req in deps.store.find(
        repo=repo, pr_number=int(pr["number"]), kind="evaluate", statuses=WAITING_FOR_RUNS, limit=5
    ):
        if req.head_sha and req.head_sha != after:
            text = (
                f":information_source: New commits were pushed: this evaluation is for "
                f"`{req.head_sha[:7]}`, the head is now `{after[:7]}`. "
                "Run `/evaluate` again for the new head."
            )
            reply_once(
                deps,
                req,
                f"sync:{req.id}:{after}",
                {"text": "New commits pushed", "blocks": [slacktext.section(text)]},
            )
