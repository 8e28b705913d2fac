"""`/evaluate help`, `/deploy help` and `@chatops-bridge help`: what this person may run here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.config import Access
from bot.deps import Deps
from handlers.common import access_refusal, count_command

COMMANDS = ("evaluate", "deploy")

THREAD_HELP = (
    "*In the thread of a request*, mention me: `@chatops-bridge status` (its state and links), "
    "`@chatops-bridge rerun` (the same request again), `@chatops-bridge cancel` (by whoever "
    "asked, or an approver) or `@chatops-bridge help`."
)

SHORT_HELP = (
    "Mention me in the thread of a request: `@chatops-bridge status`, `rerun`, `cancel` or "
    "`help`. To start one, use `/evaluate <pr>` or `/deploy <run-id>` in a channel; "
    "`/evaluate help` lists what you may run there."
)


def _access(deps: Deps, command: str) -> Access:
    cmds = deps.config.commands
    return cmds.evaluate if command == "evaluate" else cmds.deploy


def _usage(deps: Deps, command: str, channel_id: str) -> str:
    if command == "evaluate":
        from handlers import evaluate

        return evaluate.usage(deps, channel_id)
    from handlers import deploy

    approvals = []
    cmd = deps.config.commands.deploy
    for env in cmd.environments:
        policy = cmd.policy_for(env)
        if policy is None:
            approvals.append(f"`{env}`: no approval")
        else:
            n = policy.required
            who = deploy.who_can_approve(policy)
            approvals.append(f"`{env}`: {n} approval{'s' if n > 1 else ''} from {who}")
    return deploy.usage(deps, channel_id) + "\nApprovals: " + "; ".join(approvals) + "."


def help_text(deps: Deps, user_id: str, channel_id: str, command: str | None = None) -> str:
    """Usage and examples of every command this user may run in this channel (the asked-for
    command first), the repository used here, and why any other command is not available."""
    order = sorted(COMMANDS, key=lambda c: c != command)
    allowed: list[str] = []
    refused: list[str] = []
    for name in order:
        refusal = access_refusal(deps, name, _access(deps, name), user_id, channel_id)
        if refusal is None:
            allowed.append(f"*`/{name}`*\n{_usage(deps, name, channel_id)}")
        else:
            refused.append(f"• `/{name}`: {refusal}")
    repo = deps.config.repository_for(channel_id)
    where = (
        f"Repository for this channel: `{repo}`."
        if repo
        else "No repository is set for this channel: name one in each command (`owner/repo`)."
    )
    parts = [f"*What you can run here* — {where}"]
    if allowed:
        parts += allowed
        parts.append(THREAD_HELP)
    else:
        parts.append("You may not run any command in this channel.")
    if refused:
        parts.append("_Not available to you here:_\n" + "\n".join(refused))
    return "\n\n".join(parts)


def answer_help_or_status(
    deps: Deps, command: str, text: str, user_id: str, channel_id: str, ack: Callable[..., Any]
) -> bool:
    """`/<command>`, `/<command> help` and `/<command> status …` are answered at once (before
    the access checks: they start nothing). Returns whether the text was one of them."""
    word = text.split(maxsplit=1)[0].lower() if text else ""
    if word in ("", "help"):
        count_command(deps, command, "help")
        ack(text=help_text(deps, user_id, channel_id, command), response_type="ephemeral")
        return True
    if word != "status":
        return False
    from handlers import status

    listing = status.evaluate_status if command == "evaluate" else status.deploy_status
    count_command(deps, command, "status")
    ack(text=listing(deps, text[len(word) :].strip(), channel_id), response_type="ephemeral")
    return True
