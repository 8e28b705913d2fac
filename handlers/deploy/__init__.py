"""`/deploy <run-id> [environment]`: an approval card in Slack, then `repository_dispatch`.

Life of a deploy request (statuses from bot/store/)::

    /deploy ──▶ pending_approval ──(enough approvals)──▶ approved ──(dispatch)──▶ triggered ─▶ …
        │             ├──(Reject + modal)──▶ rejected
        │             └──(deadline passed)──▶ expired
        └─ no policy for the environment ──▶ approved

Every decision is one conditional UPDATE from `pending_approval`, so concurrent clicks, the
expiry job and a click after a restart agree on exactly one outcome. The card's buttons carry
only the request id; everything else is read from the database at click time.

One module per job: `command` (parse, checks, store), `policy` (who may approve), `worker`
(facts, card, dispatch), `clicks` (buttons and the reject modal), `card` (Block Kit, pure),
`expiry`, `locks` (environment locks). KIND below is what the registry knows of deploys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.deps import Deps
from handlers.deploy import (
    card,
    clicks,
    command,
    expiry,
    gate,
    locks,
    model_worker,
    models,
    policy,
    worker,
)
from handlers.deploy.card import deployment_line, warnings_for
from handlers.kinds import RequestKind, SlackAction, SlackView

if TYPE_CHECKING:
    from bot.scheduler import Housekeeping

__all__ = ["KIND", "MODEL_KIND", "deployment_line", "gate", "warnings_for"]


def _housekeeping(hk: Housekeeping, deps: Deps) -> None:
    """Pending approvals expire; expired environment locks are removed and announced."""
    expiry.install(hk, deps)
    locks.install(hk, deps)


KIND = RequestKind(
    name="deploy",
    command="/deploy",
    arguments="<run-id>",
    access=command.access,
    handle_command=command.handle_command,
    usage=command.help_usage,
    status_list=command.deploy_status,
    carry_out=worker.carry_out,
    root=card.card,
    what=command.what,
    rerun_text=command.rerun_text,
    may_cancel=policy.may_cancel,
    cancel_who=" or an approver",
    awaiting=clicks.awaiting,
    workflow=lambda deps: deps.config.commands.deploy.workflow,
    actions=(
        # Clicked in the App Home too: the tab shows its new state after an approval.
        SlackAction(card.ACTION_APPROVE, clicks.on_approve, refreshes_home=True),
        SlackAction(card.ACTION_REJECT, clicks.on_reject_click),
    ),
    # The modal may come from the Home tab.
    views=(SlackView(card.VIEW_REJECT, clicks.on_reject_submit, refreshes_home=True),),
    housekeeping=_housekeeping,
    answers_github=True,
)

# A registered model version (MLflow): asked by the registry's signed webhook (router event
# `mlflow`, handlers/__init__.py) or by hand with `/deploy model:<name>@<version|alias>`. The
# same card, clicks, expiry and App Home as above (they take both kinds: facts.DEPLOY_KINDS).
MODEL_KIND = RequestKind(
    name="model_deploy",
    carry_out=model_worker.carry_out,
    root=card.card,
    what=models.what,
    may_cancel=policy.may_cancel,
    cancel_who=" or an approver",
    workflow=lambda deps: deps.config.commands.deploy.workflow,
    on_succeeded=model_worker.after_success,
)
