"""The registry of request kinds: one `RequestKind` per kind says everything the bridge does
with requests of that kind, and every surface (help, status, mentions, App Home, the thread
root) asks here instead of switching on `req.kind`. Unknown kinds fail loudly (UnknownKind).

A kind module declares `KIND = RequestKind(...)`; `handlers/__init__.py` registers it with one
line. This module imports no kind: it is the bottom of the handlers layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.config import Access
from bot.deps import Deps
from bot.messages import Message
from bot.model import Request

if TYPE_CHECKING:
    from bot.scheduler import Housekeeping

Ack = Callable[..., Any]
Block = dict[str, Any]


@dataclass(frozen=True)
class SlackAction:
    """A Block Kit action of a kind; its listener runs after ack(). refreshes_home: the click
    changes what the clicker's App Home shows (publish it again when clicked there)."""

    action_id: str
    listener: Callable[[Deps, dict[str, Any]], None]
    refreshes_home: bool = False


@dataclass(frozen=True)
class SlackView:
    """A modal submission of a kind; its listener acks (it may answer with errors)."""

    callback_id: str
    listener: Callable[[Deps, dict[str, Any], dict[str, Any], Ack], None]
    refreshes_home: bool = False


@dataclass(frozen=True)
class RequestKind:
    """Everything about one kind of request, in one object.

    name            requests.kind, e.g. "deploy"
    carry_out       the job worker: idempotent steps of an accepted request
    root            its thread root message (or card), from the request's state
    what            the request in a few words, for status lines ("deploy of run `1` → *prod*")
    command         its slash command ("/deploy"), or None (created by other means)
    arguments       what follows the command, in a word or two, for the short help ("<pr>")
    access          the chatops.yml rules for who may run the command where
    handle_command  parse, check, store, ack (help and status are answered before it)
    usage           the help text for the command (this channel's defaults)
    status_list     `/<command> status <text>`: recent requests, as an ephemeral text
    rerun_text      the command text that asks for the same request again (None: cannot)
    may_cancel      who else, besides the requester, may cancel; cancel_who says it in words
    awaiting        requests waiting for this person's decision, as App Home blocks with buttons
    workflow        `commands.<name>.workflow`: the only workflow whose runs may speak for it
    actions, views  Block Kit listeners of the kind
    housekeeping    the kind's periodic jobs (e.g. deploy expiry)
    answers_github  a cancel must reach its worker (deploy: GitHub's protection rules hear it)
    on_succeeded    after each settle that finds the request succeeded (idempotent; may raise
                    an outage, and the event being handled is retried)
    """

    name: str
    carry_out: Callable[[Deps, Request], None]
    root: Callable[[Deps, Request], Message]
    what: Callable[[Request, str], str]
    command: str | None = None
    arguments: str = ""
    access: Callable[[Deps], Access] | None = None
    handle_command: Callable[[Deps, dict[str, Any], Ack], Request | None] | None = None
    usage: Callable[[Deps, str], str] | None = None
    status_list: Callable[[Deps, str, str], str] | None = None
    rerun_text: Callable[[Request], str | None] = lambda req: None
    may_cancel: Callable[[Deps, Request, str], bool] = lambda deps, req, user_id: False
    cancel_who: str = ""
    awaiting: Callable[[Deps, str], list[list[Block]]] | None = None
    workflow: Callable[[Deps], str | None] = lambda deps: None
    actions: tuple[SlackAction, ...] = ()
    views: tuple[SlackView, ...] = ()
    housekeeping: Callable[[Housekeeping, Deps], None] | None = None
    answers_github: bool = False
    on_succeeded: Callable[[Deps, Request], None] | None = None

    def __post_init__(self) -> None:
        parts = (self.command, self.access, self.handle_command, self.usage, self.status_list)
        if self.command is not None and not all(parts):
            raise ValueError(
                f"kind {self.name!r}: a command needs access, handle_command, usage and status_list"
            )


class UnknownKind(KeyError):
    """A request of a kind nobody registered: a bug to fix, never something to guess around."""

    def __str__(self) -> str:
        return f"no request kind {self.args[0]!r} is registered (handlers/__init__.py)"


@dataclass
class Registry:
    _kinds: dict[str, RequestKind] = field(default_factory=dict)

    def register(self, kind: RequestKind) -> RequestKind:
        if kind.name in self._kinds:
            raise ValueError(f"request kind {kind.name!r} is registered twice")
        self._kinds[kind.name] = kind
        return kind

    def unregister(self, name: str) -> None:
        self._kinds.pop(name, None)

    def get(self, name: str) -> RequestKind:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKind(name) from None

    def all(self) -> list[RequestKind]:
        """In registration order (help lists commands in this order)."""
        return list(self._kinds.values())

    def commands(self) -> list[RequestKind]:
        return [k for k in self._kinds.values() if k.command]

    def by_command(self, name: str) -> RequestKind:
        """The kind of `/name` or `name`."""
        for kind in self.commands():
            if kind.command in (name, f"/{name}"):
                return kind
        raise UnknownKind(name)


REGISTRY = Registry()
register = REGISTRY.register
get = REGISTRY.get
