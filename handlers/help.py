"""`/evaluate help`, `/deploy help` and `@chatops-bridge help`: what this person may run here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.deps import Deps
from handlers import kinds
from handlers.common import access_refusal, count_command

Ack = Callable[..., Any]


def _either(words: list[str]) -> str:
    """ "a", "a or b", "a, b or c"."""
    return " or ".join(filter(None, [", ".join(words[:-1]), *words[-1:]]))


def thread_help() -> str:
    """What a mention does in a request's thread; who may cancel, from the registered kinds."""
    by_who: dict[str, list[str]] = {}  # kinds with the same rule are named together
    for k in kinds.REGISTRY.all():
        if k.cancel_who:
            by_who.setdefault(k.cancel_who.strip().removeprefix("or "), []).append(
                k.name.replace("_", " ")
            )
    others = "".join(f", or {who} of a {' or '.join(names)}" for who, names in by_who.items())
    return (
        "*In the thread of a request*, mention me: `@chatops-bridge status` (its state and "
        "links), `@chatops-bridge rerun` (the same request again), `@chatops-bridge cancel` "
        f"(by whoever asked{others}) or `@chatops-bridge help`."
    )


def short_help() -> str:
    """The answer to a mention outside a request's thread: the registered commands."""
    said = (
        "Mention me in the thread of a request: `@chatops-bridge status`, `rerun`, `cancel` or "
        "`help`."
    )
    commands = kinds.REGISTRY.commands()
    if not commands:
        return said
    starts = _either([f"`{' '.join(filter(None, (k.command, k.arguments)))}`" for k in commands])
    return (
        f"{said} To start one, use {starts} in a channel; `{commands[0].command} help` lists "
        "what you may run there."
    )


def help_text(deps: Deps, user_id: str, channel_id: str, command: str | None = None) -> str:
    """Usage and examples of every command this user may run in this channel (the asked-for
    command first), the repository used here, and why any other command is not available."""
    order = sorted(kinds.REGISTRY.commands(), key=lambda k: k.name != command)
    allowed: list[str] = []
    refused: list[str] = []
    for kind in order:
        assert kind.access and kind.usage  # RequestKind checks it for kinds with a command
        name = kind.name
        refusal = access_refusal(deps, name, kind.access(deps), user_id, channel_id)
        if refusal is None:
            allowed.append(f"*`/{name}`*\n{kind.usage(deps, channel_id)}")
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
        parts.append(thread_help())
    else:
        parts.append("You may not run any command in this channel.")
    if refused:
        parts.append("_Not available to you here:_\n" + "\n".join(refused))
    return "\n\n".join(parts)


def answer_help_or_status(
    deps: Deps, command: str, text: str, user_id: str, channel_id: str, ack: Ack
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
    listing = kinds.REGISTRY.by_command(command).status_list
    assert listing is not None  # RequestKind checks it for kinds with a command
    count_command(deps, command, "status")
    ack(text=listing(deps, text[len(word) :].strip(), channel_id), response_type="ephemeral")
    return True


def on_command(deps: Deps, kind: kinds.RequestKind, command: dict[str, Any], ack: Ack) -> None:
    """A kind's slash command: help and status answered here, the rest by the kind."""
    text = str(command.get("text") or "").strip()
    user_id = str(command.get("user_id") or "")
    channel_id = str(command.get("channel_id") or "")
    if answer_help_or_status(deps, kind.name, text, user_id, channel_id, ack):
        return
    assert kind.handle_command is not None
    kind.handle_command(deps, command, ack)
