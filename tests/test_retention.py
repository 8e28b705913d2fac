"""Retention: the tables that only grow are pruned by age, in batches, by the leader (issue 14)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from bot import db
from bot.db import make_engine, migrate
from bot.model import ACCEPTED, SUCCEEDED, TRIGGERED, NewRequest
from bot.scheduler import Housekeeping, HousekeepingTiming
from bot.settings import SettingsError, load_settings
from bot.store import Store
from tests.doubles.github_api import app_key_pair

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def make(store: Store, key: str, status: str) -> str:
    req, _ = store.create_request(
        NewRequest(
            kind="evaluate",
            repo="acme/ml-models",
            trigger="label",
            channel_id="C1",
            user_id="U1",
            idempotency_key=key,
            pr_number=1,
            status=status,
        ),
        audit_action="requested",
    )
    store.upsert_run(
        run_id=f"run-{key}",
        request_id=req.id,
        repo="acme/ml-models",
        name="ci",
        status="completed",
        conclusion="success",
        attempt=1,
        html_url=None,
        head_sha=None,
        started_at=None,
    )
    store.add_approval(req.id, "U2")
    return req.id


def test_finished_requests_go_with_their_runs_and_approvals_in_batches(engine: Engine) -> None:
    """Old finished requests are deleted, with their runs and approvals, a batch at a time;
    open ones and recently changed ones stay, and so does the audit trail."""
    clock = Clock()
    store = Store(engine, clock=clock)
    old = [make(store, f"old-{i}", SUCCEEDED) for i in range(5)]
    still_open = make(store, "open", TRIGGERED)
    touched = make(store, "touched", ACCEPTED)
    clock.now += 100 * DAY
    # Finished (and last changed) just now: younger than the retention, kept.
    store.update(touched, status=SUCCEEDED)
    recent = make(store, "recent", SUCCEEDED)
    clock.now += DAY

    assert store.prune_requests(90 * DAY, batch=2) == 5
    left = {r.id for r in store.find(limit=100)}
    assert left == {still_open, touched, recent}
    assert not any(store.runs_of(i) for i in old) and all(store.runs_of(i) for i in left)
    assert not any(store.approvers_of(i) for i in old)
    assert count(engine, db.audit) == 8  # the audit trail is not pruned with requests
    assert store.prune_requests(90 * DAY) == 0


def test_a_batch_limit_leaves_the_rest_for_the_next_run(engine: Engine) -> None:
    clock = Clock()
    store = Store(engine, clock=clock)
    for i in range(5):
        make(store, f"old-{i}", SUCCEEDED)
    clock.now += 100 * DAY
    assert store.prune_requests(90 * DAY, batch=2, max_batches=1) == 2
    assert store.prune_requests(90 * DAY, batch=2, max_batches=1) == 2
    assert store.prune_requests(90 * DAY, batch=2, max_batches=5) == 1


def test_sent_keys_deliveries_and_audit_by_age(engine: Engine) -> None:
    clock = Clock()
    store = Store(engine, clock=clock)
    store.first_time("reply:old")
    store.record_delivery("d-old", "workflow_run", "completed", "{}")
    store.finish_delivery("d-old")
    store.record_delivery("d-pending", "workflow_run", "completed", "{}")
    store.audit(actor="U1", action="approve", outcome="approved")
    clock.now += 40 * DAY
    store.first_time("reply:new")
    store.record_delivery("d-new", "workflow_run", "completed", "{}")
    store.finish_delivery("d-new")
    store.audit(actor="U1", action="approve", outcome="approved")

    assert store.prune_sent(30 * DAY, batch=1) == 1
    assert not store.first_time("reply:new") and store.first_time("reply:old")
    # A delivery never processed is kept whatever its age (it is still to be done).
    assert store.prune_deliveries(7 * DAY, batch=1) == 1
    with engine.connect() as conn:
        ids = set(conn.execute(select(db.deliveries.c.id)).scalars())
    assert ids == {"d-pending", "d-new"}
    assert store.prune_audit(30 * DAY) == 1 and count(engine, db.audit) == 1


def housekeeping(store: Store, engine: Engine, **timing: Any) -> Housekeeping:
    return Housekeeping(
        engine=engine,
        store=store,
        jobs=None,  # type: ignore[arg-type]  # prune() does not submit work
        liveness=None,  # type: ignore[arg-type]
        timing=HousekeepingTiming(
            sweep_seconds=15,
            leader_check_seconds=5,
            stale_after_seconds=30,
            takeover_seconds=2,
            **timing,
        ),
        github_mode="webhook",
    )


def test_housekeeping_prunes_by_the_settings_and_keeps_the_audit_by_default(
    engine: Engine,
) -> None:
    clock = Clock()
    store = Store(engine, clock=clock)
    make(store, "old", SUCCEEDED)
    store.first_time("reply:old")
    clock.now += 60 * DAY

    housekeeping(store, engine, keep_requests_days=90).prune()
    assert count(engine, db.requests) == 1 and count(engine, db.sent) == 0

    housekeeping(store, engine, keep_requests_days=0).prune()  # 0: kept forever
    assert count(engine, db.requests) == 1

    housekeeping(store, engine, keep_requests_days=30).prune()
    assert count(engine, db.requests) == 0 and count(engine, db.runs) == 0
    assert count(engine, db.audit) == 1  # forever unless CHATOPS_KEEP_AUDIT_DAYS is set
    housekeeping(store, engine, keep_audit_days=30).prune()
    assert count(engine, db.audit) == 0


PEM = app_key_pair()[0]
GOOD = {
    "SLACK_BOT_TOKEN": "xoxb-1",
    "SLACK_SIGNING_SECRET": "s",
    "GITHUB_APP_ID": "1",
    "GITHUB_APP_PRIVATE_KEY": PEM,
}


def test_retention_settings_have_safe_defaults_and_are_checked() -> None:
    s = load_settings(GOOD)
    assert (s.keep_requests_days, s.keep_deliveries_days, s.keep_sent_days) == (90, 7, 30)
    assert s.keep_audit_days == 0  # the audit trail is kept forever unless asked
    timing = HousekeepingTiming.from_settings(
        load_settings({**GOOD, "CHATOPS_KEEP_REQUESTS_DAYS": "0", "CHATOPS_KEEP_AUDIT_DAYS": "400"})
    )
    assert (timing.keep_requests_days, timing.keep_audit_days) == (0, 400)
    with pytest.raises(SettingsError) as err:
        load_settings({**GOOD, "CHATOPS_KEEP_SENT_DAYS": "3"})
    # Side-effect keys forgotten before deliveries would let a redelivery reply again.
    assert "CHATOPS_KEEP_SENT_DAYS must be at least CHATOPS_KEEP_DELIVERIES_DAYS" in str(
        err.value.problems
    )
    with pytest.raises(SettingsError):
        load_settings({**GOOD, "CHATOPS_KEEP_DELIVERIES_DAYS": "0"})
