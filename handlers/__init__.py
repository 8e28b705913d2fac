"""Everything the bridge reacts to, in Slack and on GitHub, registered in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App

from bot.deps import Deps
from bot.model import Request
from bot.routing import Router
from handlers import (
    comments,
    deploy,
    deployment_status,
    evaluate,
    help,
    home,
    kinds,
    lifecycle,
    mentions,
    meta,
    pull_request,
    schedules,
    workflow_run,
)
from handlers.kinds import RequestKind, SlackAction, SlackView

if TYPE_CHECKING:
    from bot.scheduler import Housekeeping

# The kinds of request, one line each (help lists their commands in this order).
kinds.register(evaluate.KIND)
kinds.register(deploy.KIND)
kinds.register(deploy.MODEL_KIND)
kinds.register(schedules.KIND)

SLACK_EVENTS: tuple[str, ...] = ("app_home_opened", "app_mention")


def slash_commands() -> tuple[str, ...]:
    return tuple(str(k.command) for k in kinds.REGISTRY.commands())


def action_ids() -> tuple[str, ...]:
    return tuple(a.action_id for k in kinds.REGISTRY.all() for a in k.actions)


def __getattr__(name: str) -> tuple[str, ...]:
    # Read at use, not at import: a kind registered later (tests/test_kinds.py) is included.
    if name == "SLASH_COMMANDS":
        return slash_commands()
    if name == "ACTION_IDS":
        return action_ids()
    raise AttributeError(name)


def register_slack(app: App, deps: Deps) -> None:
    """Slash commands, buttons, modals, events. Listeners ack inline (process_before_response)."""
    for kind in kinds.REGISTRY.all():
        _register_kind(app, deps, kind)

    @app.event("app_mention")
    def _mention(body: dict[str, Any], event: dict[str, Any]) -> None:
        mentions.on_mention(deps, body, event)

    @app.event("app_home_opened")
    def _home_opened(event: dict[str, Any]) -> None:
        home.on_home_opened(deps, event)


def _register_kind(app: App, deps: Deps, kind: RequestKind) -> None:
    """A kind's slash command (help and status answered first), actions and views."""
    if kind.command:
        app.command(kind.command)(_command_listener(deps, kind))
    for action in kind.actions:
        app.action(action.action_id)(_action_listener(deps, action))
    for view in kind.views:
        app.view(view.callback_id)(_view_listener(deps, view))


def _command_listener(deps: Deps, kind: RequestKind) -> Callable[..., None]:
    def listener(ack: Ack, command: dict[str, Any]) -> None:
        help.on_command(deps, kind, command, ack)

    return listener


def _action_listener(deps: Deps, action: SlackAction) -> Callable[..., None]:
    def listener(ack: Ack, body: dict[str, Any]) -> None:
        ack()
        action.listener(deps, body)
        if action.refreshes_home:
            home.after_click(deps, body)  # clicked in the App Home: show the tab's new state

    return listener


def _view_listener(deps: Deps, spec: SlackView) -> Callable[..., None]:
    # Bolt passes listener arguments by name: the submitted view must be called `view`.
    def listener(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        spec.listener(deps, body, view, ack)
        if spec.refreshes_home:
            home.after_click(deps, body, any_surface=True)  # a modal may come from the Home tab

    return listener


def register_github(router: Router, deps: Deps) -> None:
    """Webhook events (and the same events fed in by the poller)."""
    router.add("workflow_run", lambda p: workflow_run.on_workflow_run(deps, p))
    router.add("issue_comment", lambda p: comments.on_issue_comment(deps, p), action="created")
    router.add("pull_request", lambda p: pull_request.on_synchronize(deps, p), action="synchronize")
    router.add("installation", lambda p: meta.on_installation_change(deps, p))
    router.add(
        "deployment_status",
        lambda p: deployment_status.on_deployment_status(deps, p),
        action="created",
    )
    router.add("installation_repositories", lambda p: meta.on_installation_change(deps, p))
    # Webhook only: polling cannot see it (bot/startup.py says so at start, `check` too).
    router.add(
        "deployment_protection_rule",
        lambda p: deploy.gate.on_protection_rule(deps, p),
        action="requested",
    )
    # MLflow registry deliveries, stored by bot/mlflow_intake.py under this one event name.
    router.add("mlflow", lambda p: deploy.models.on_registry_event(deps, p))


def register_jobs(deps: Deps) -> None:
    """What carries out each kind of stored request, off the request thread."""
    for kind in kinds.REGISTRY.all():
        deps.jobs.register(kind.name, _worker(deps, kind))
    # A request given up (attempts cap, or a peer down past the outage horizon) is told.
    deps.jobs.on_give_up(lambda req, what, attempts: lifecycle.give_up(deps, req, what, attempts))


def _worker(deps: Deps, kind: RequestKind) -> Callable[[Any], None]:
    return lambda req: kind.carry_out(deps, req)


def register_schedules(housekeeping: Housekeeping, deps: Deps) -> None:
    """`schedules:` of chatops.yml: one leader-only cron job each (ids `schedule:<name>`)."""
    schedules.install(housekeeping, deps)


def register_housekeeping(housekeeping: Housekeeping, deps: Deps) -> None:
    """Periodic jobs of the kinds (fixed ids; state in the database, so a restart catches up)."""
    for kind in kinds.REGISTRY.all():
        if kind.housekeeping is not None:
            kind.housekeeping(housekeeping, deps)


def stop_following(deps: Deps, req: Request, hours: int) -> bool:
    """For the poller: stop following a request whose runs went quiet (not an event)."""
    return workflow_run.stop_following(deps, req, hours)
