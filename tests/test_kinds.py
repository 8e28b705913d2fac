"""The request-kind registry (issue 11): a new kind is one module plus one registration call.

`rollback` below is a toy kind declared in this file alone. Registered with `kinds.register`
(the one line handlers/__init__.py has per kind), it gets its slash command, help, status,
a thread root, `@chatops-bridge status | rerun | cancel` in its thread and its job worker
through the real ASGI app — no other file knows it. A kind nobody registered fails loudly.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot import messages, slacktext
from bot.config import Access
from bot.deps import Deps
from bot.model import ACCEPTED, CANCELLED, TRIGGERED, NewRequest, Request
from handlers import help, kinds, lifecycle, status
from handlers.common import accept, admitted, resolve_repo
from handlers.kinds import RequestKind, UnknownKind
from handlers.status import LIMIT, status_list
from tests.conftest import CHANNEL, REPO, USER, Harness

# -- the toy kind: `/rollback <release>` dispatches `rollback` and follows it in a thread ------

USAGE = "*Usage:* `/rollback <release>` — for example `/rollback v1.2.3`."


def _usage(deps: Deps, channel_id: str) -> str:
    return USAGE


def _handle(deps: Deps, command: dict[str, Any], ack: Callable[..., Any]) -> Request | None:
    inv = admitted(deps, "rollback", Access(), command, ack)
    if inv is None:
        return None
    new = NewRequest(
        kind="rollback",
        repo=resolve_repo(deps, None, inv.channel_id),
        trigger="dispatch",
        event_type="rollback",
        run_ref=inv.text,
        channel_id=inv.channel_id,
        user_id=inv.user_id,
        idempotency_key=inv.idempotency_key,
    )
    said = f"Rolling back to `{inv.text}`… (request `{{}}`)."
    return accept(deps, "rollback", new, ack, lambda req: said.format(req.id))


def _carry_out(deps: Deps, req: Request) -> None:
    req = lifecycle.ensure_root(deps, req)
    lifecycle.dispatch_once(deps, req, "rollback", {"request_id": req.id, "to": req.run_ref})
    deps.store.update(req.id, only_if_status=(ACCEPTED,), status=TRIGGERED)
    lifecycle.settle(deps, req)


def _what(req: Request, web_base: str) -> str:
    return f"rollback to `{req.run_ref}`"


def _root(deps: Deps, req: Request) -> messages.Message:
    text = f":rewind: Rollback of `{req.repo}` to `{req.run_ref}`: {req.status}"
    return {"text": text, "blocks": [slacktext.section(text)]}


def _status_list(deps: Deps, text: str, channel_id: str) -> str:
    reqs = deps.store.find(kind="rollback", channel_id=channel_id, limit=LIMIT)
    return status_list("Latest rollbacks", reqs, empty="None yet.", web_base=deps.web_base)


ROLLBACK = RequestKind(
    name="rollback",
    command="/rollback",
    arguments="<release>",
    access=lambda deps: Access(),
    handle_command=_handle,
    usage=_usage,
    status_list=_status_list,
    carry_out=_carry_out,
    root=_root,
    what=_what,
    rerun_text=lambda req: req.run_ref,
)


@pytest.fixture
def rollback() -> Iterator[RequestKind]:
    kinds.register(ROLLBACK)  # the one registration call
    yield ROLLBACK
    kinds.REGISTRY.unregister(ROLLBACK.name)


# -- helpers ----------------------------------------------------------------------------------


def _mention(h: Harness, text: str, thread_ts: str, *, user: str = USER) -> None:
    body = json.dumps(
        {
            "token": "unused",
            "team_id": "T0001",
            "api_app_id": "A0001",
            "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:10]}",
            "event_time": int(time.time()),
            "event": {
                "type": "app_mention",
                "user": user,
                "text": f"<@UBOTBRIDGE> {text}",
                "ts": f"{time.time():.6f}",
                "channel": CHANNEL,
                "thread_ts": thread_ts,
            },
        }
    )
    assert h.slack_post(body, "application/json").status_code == 200


def _start(h: Harness, release: str = "v1.2.3") -> Request:
    resp = h.slash("/rollback", release)
    assert resp.status_code == 200, resp.text
    rid = resp.json()["text"].split("request `")[1][:12]
    h.wait_until(lambda: (r := h.store.get(rid)) and r.status == TRIGGERED, what="triggered")
    h.settle()
    req = h.store.get(rid)
    assert req is not None
    return req


# -- the tests --------------------------------------------------------------------------------


def test_a_registered_kind_gets_help_and_status(
    rollback: RequestKind, make_harness: Callable[..., Harness]
) -> None:
    """`/rollback help` shows its usage; `/evaluate help` lists it too; `/rollback status`
    lists its requests with the kind's own words."""
    h = make_harness()
    own = h.slash("/rollback", "help").json()
    assert own["response_type"] == "ephemeral" and USAGE in own["text"]
    assert "*`/rollback`*" in h.slash("/evaluate", "help").json()["text"]
    _start(h)
    listing = h.slash("/rollback", "status").json()["text"]
    assert "Latest rollbacks" in listing and "rollback to `v1.2.3`" in listing


def test_a_registered_kind_is_in_the_short_and_the_thread_help(
    make_harness: Callable[..., Harness], slack: Any
) -> None:
    """The help a mention gets outside a request's thread names the kind's command and its
    arguments, and the thread help says who else may cancel it — from the kind alone."""
    toy = dataclasses.replace(
        ROLLBACK, cancel_who=" or a release manager", may_cancel=lambda d, r, u: False
    )
    kinds.register(toy)
    try:
        h = make_harness()
        _mention(h, "status", "1699999999.000100")  # a thread, but no request's
        short = slack.wait_for("chat.postEphemeral")[-1].params["text"]
        assert "`/evaluate <pr>`, `/deploy <run-id>` or `/rollback <release>`" in short
        thread = h.slash("/rollback", "help").json()["text"]
        assert (
            "(by whoever asked, or an approver of a deploy or model deploy, "
            "or a release manager of a " in thread
        )
    finally:
        kinds.REGISTRY.unregister(toy.name)
    assert "/rollback" not in help.short_help() and "release manager" not in help.thread_help()


def test_a_registered_kind_is_carried_out_with_its_root_message(
    rollback: RequestKind, make_harness: Callable[..., Harness], slack: Any, github: Any
) -> None:
    """The job worker of the kind runs; its root message is the kind's, edited to the state."""
    h = make_harness()
    req = _start(h)
    assert req.kind == "rollback" and req.root_ts and req.repo == REPO
    root = next(c for c in slack.calls_to("chat.postMessage") if not c.params.get("thread_ts"))
    assert "Rollback of" in str(root.params.get("text"))
    assert [d["client_payload"]["request_id"] for d in github.dispatches] == [req.id]


def test_status_rerun_and_cancel_in_the_thread_of_a_registered_kind(
    rollback: RequestKind, make_harness: Callable[..., Harness], slack: Any, github: Any
) -> None:
    """`@chatops-bridge status`, `rerun` (the kind's command again, a new request) and `cancel`
    (the requester may) work in the thread of the toy kind."""
    h = make_harness()
    req = _start(h)
    assert req.root_ts
    _mention(h, "status", req.root_ts)
    h.wait_until(
        lambda: any(
            "rollback to `v1.2.3`" in json.dumps(r)
            for r in slack.thread_replies(CHANNEL, str(req.root_ts))
        ),
        what="the status reply",
    )
    _mention(h, "rerun", req.root_ts)
    again = h.wait_until(
        lambda: [r for r in h.store.find(kind="rollback", limit=10) if r.id != req.id],
        what="the rerun request",
    )[0]
    assert again.run_ref == "v1.2.3"
    h.wait_until(lambda: (r := h.store.get(again.id)) and r.status == TRIGGERED, what="rerun")
    h.settle()
    _mention(h, "cancel", req.root_ts)
    h.wait_until(lambda: (r := h.store.get(req.id)) and r.status == CANCELLED, what="cancel")


def test_a_stranger_may_not_cancel_a_kind_without_may_cancel(
    rollback: RequestKind, make_harness: Callable[..., Harness], slack: Any
) -> None:
    h = make_harness()
    req = _start(h)
    _mention(h, "cancel", str(req.root_ts), user="U0STRANGER1")
    h.wait_until(
        lambda: any(
            "Only <@" in str(c.params.get("text")) for c in slack.calls_to("chat.postEphemeral")
        ),
        what="the refusal",
    )
    current = h.store.get(req.id)
    assert current is not None and current.status != CANCELLED


def test_an_unregistered_kind_fails_loudly(harness: Harness) -> None:
    """A stored request of a kind nobody registered: every surface raises, naming the kind."""
    req, _ = harness.store.create_request(
        NewRequest(
            kind="rollback",
            repo=REPO,
            trigger="dispatch",
            channel_id=CHANNEL,
            user_id=USER,
            idempotency_key="unregistered-kind",
        )
    )
    deps = harness.bridge.deps
    with pytest.raises(UnknownKind, match="rollback"):
        kinds.get("rollback")
    with pytest.raises(UnknownKind, match="rollback"):
        lifecycle.root_message(deps, req)
    with pytest.raises(UnknownKind, match="rollback"):
        status.request_line(req)
    with pytest.raises(UnknownKind, match="rollback"):
        kinds.REGISTRY.by_command("/rollback")


def test_a_kind_with_a_command_must_say_how_to_run_it() -> None:
    with pytest.raises(ValueError, match="rollback"):
        RequestKind(
            name="rollback", command="/rollback", carry_out=_carry_out, root=_root, what=_what
        )
