"""Everything the bridge reacts to, in Slack and on GitHub, registered in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App

from bot.deps import Deps
from bot.routing import Router
from handlers import (
    comments,
    deploy,
    deployment_status,
    evaluate,
    home,
    mentions,
    meta,
    pull_request,
    schedules,
    thread,
    workflow_run,
)

if TYPE_CHECKING:
    from bot.scheduler import Housekeeping

SLASH_COMMANDS = ("/evaluate", "/deploy")
ACTION_IDS: tuple[str, ...] = (deploy.ACTION_APPROVE, deploy.ACTION_REJECT)
VIEW_CALLBACKS: tuple[str, ...] = (deploy.VIEW_REJECT,)
SLACK_EVENTS: tuple[str, ...] = ("app_home_opened", "app_mention")


def register_slack(app: App, deps: Deps) -> None:
    """Slash commands, buttons, modals, events. Listeners ack inline (process_before_response)."""

    @app.command("/evaluate")
    def _evaluate(ack: Ack, command: dict[str, Any]) -> None:
        evaluate.handle_command(deps, command, ack)

    @app.event("app_mention")
    def _mention(body: dict[str, Any], event: dict[str, Any]) -> None:
        mentions.on_mention(deps, body, event)

    @app.event("app_home_opened")
    def _home_opened(event: dict[str, Any]) -> None:
        home.on_home_opened(deps, event)

    @app.command("/deploy")
    def _deploy(ack: Ack, command: dict[str, Any]) -> None:
        deploy.handle_command(deps, command, ack)

    @app.action(deploy.ACTION_APPROVE)
    def _deploy_approve(ack: Ack, body: dict[str, Any]) -> None:
        ack()
        deploy.on_approve(deps, body)
        home.after_click(deps, body)  # clicked in the App Home: show the tab's new state

    @app.action(deploy.ACTION_REJECT)
    def _deploy_reject(ack: Ack, body: dict[str, Any]) -> None:
        ack()
        deploy.on_reject_click(deps, body)

    @app.view(deploy.VIEW_REJECT)
    def _deploy_reject_reason(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        deploy.on_reject_submit(deps, body, view, ack)
        home.after_click(deps, body, any_surface=True)  # the modal may come from the Home tab


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


def register_jobs(deps: Deps) -> None:
    """What carries out each kind of stored request, off the request thread."""
    deps.jobs.register("evaluate", lambda req: evaluate.carry_out(deps, req))
    deps.jobs.register("deploy", lambda req: deploy.carry_out(deps, req))
    deps.jobs.register("schedule", lambda req: schedules.carry_out(deps, req))
    # A request given up (attempts cap, or a peer down past the outage horizon) is told.
    deps.jobs.on_give_up(lambda req, what, attempts: thread.give_up(deps, req, what, attempts))


def register_schedules(housekeeping: Housekeeping, deps: Deps) -> None:
    """`schedules:` of chatops.yml: one leader-only cron job each (ids `schedule:<name>`)."""
    schedules.install(housekeeping, deps)


def register_housekeeping(housekeeping: Housekeeping, deps: Deps) -> None:
    """Periodic jobs (fixed ids; state in the database, so a restart catches up)."""
    housekeeping.add_interval(
        deploy.EXPIRY_JOB,
        lambda: deploy.expire_due(deps),
        deploy.EXPIRY_EVERY_SECONDS,
        now=True,
    )
