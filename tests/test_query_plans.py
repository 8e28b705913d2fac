"""Every query on the ack, intake, reply and poll paths is served by an index (issue 14).

The statements are the ones the Store really sends: each hot Store call runs against a migrated
database while a listener records its SQL and parameters; then the database's own planner is
asked how it would run each one (SQLite `EXPLAIN QUERY PLAN`; PostgreSQL `EXPLAIN (FORMAT JSON)`
with sequential scans disabled, so an index that exists is used and a missing one shows as a
Seq Scan). A full scan of a table that grows with history fails the test; so does a statement
that answers through a different index than the one made for it (a prefix search of the wrong
index reads a repository's or a channel's whole history). The second test drops each index in
turn and checks that the first test's check then fails: no index is there for nothing, and the
check is not one that cannot fail.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from bot import db
from bot.db import DELIVERIES_OPEN_INDEX, make_engine, metadata, migrate
from bot.model import (
    ACCEPTED,
    DUPLICATE,
    FAILED,
    PENDING_APPROVAL,
    SUCCEEDED,
    TRIGGERED,
    WAITING_FOR_RUNS,
    NewRequest,
)
from bot.store import Store
from bot.store.base import _Compiled

# Tables whose rows pile up with use (requests, their runs, approvals and audit rows, every
# webhook delivery and side-effect key). processes, poll_state and schedule_state stay small.
GROWING = {"requests", "runs", "approvals", "audit", "deliveries", "sent"}
ALIASES = {"other": "requests"}  # new_requests._OTHER
MATCHABLE = (ACCEPTED, *WAITING_FOR_RUNS)  # handlers/workflow_run.py
# Values that occur in the seeded history (request 21 of seed_history), so the planner weighs
# real frequencies rather than values it has never seen.
REPO, PR, SHA, CHANNEL, USER = "acme/repo-1", 21, f"{21:040x}", "C00000021", "U00000021"
ROOT_TS = "1600000021.000100"

# The index each statement must answer through, where another index could also answer it
# (more slowly: by reading a whole repository's or channel's history).
EXPECTED: dict[str, str | tuple[str, ...]] = {
    "ack: mention in a thread": "ix_requests_thread_created",
    "ack: /evaluate status of a PR in a channel": "ix_requests_pr_created",
    "reply: PR run matched by PR number": "ix_requests_pr_created",
    "reply: new commits on a PR": "ix_requests_pr_created",
    "reply: metrics comment on a PR": "ix_requests_pr_created",
    "reply: fork PR run matched by head SHA": "ix_requests_repo_sha",
    "deploy: evaluations of the run's head SHA": "ix_requests_repo_sha",
    "ack: /evaluate status in a channel": "ix_requests_channel",
    # With its rarer filters (kind, environment) PostgreSQL may rightly read the channel's
    # rows through the thread index and sort them: either way by channel, never a full scan.
    "ack: /deploy status of an environment in a channel": (
        "ix_requests_channel",
        "ix_requests_thread_created",
    ),
    "reply: deployment_status of an environment": "ix_requests_repo_env",
    "poll: recently finished evaluations": "ix_requests_status_created",
    "reply: a comment on a pending deploy's repository": "ix_requests_status_created",
    "healthz: newest delivery": "ix_deliveries_received",
    "prune: processed deliveries": "ix_deliveries_received",
    "prune: side-effect keys": "ix_sent_at",
    "prune: finished requests": "ix_requests_status_created",
}


def _index_tables() -> dict[str, tuple[str, bool]]:
    """index name -> (table, partial?)"""
    out: dict[str, tuple[str, bool]] = {}
    for table in metadata.tables.values():
        for ix in table.indexes:
            partial = bool(ix.dialect_options["sqlite"].get("where") is not None)
            out[str(ix.name)] = (table.name, partial)
    # Made in plain SQL by the v5 migration, not declared in the metadata.
    out["ix_deliveries_open"] = ("deliveries", " WHERE " in DELIVERIES_OPEN_INDEX)
    return out


INDEXES = _index_tables()


class Recorder:
    def __init__(self, engine: Engine) -> None:
        self.label = ""
        self.statements: list[tuple[str, str, Any]] = []
        self.seen: set[str] = set()  # labels that sent any statement
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        head = statement.lstrip()[:6].upper()
        if self.label:
            self.seen.add(self.label)
        if self.label and head in ("SELECT", "UPDATE", "DELETE", "INSERT"):
            if head == "INSERT" and " SELECT " not in statement:
                return  # INSERT ... VALUES reads nothing
            self.statements.append((self.label, statement, parameters))

    def watch(self, store: Store) -> None:
        """Also record the store's lean statements (StoreBase._run: reads and writes on the
        DBAPI connection, past SQLAlchemy's events), as the dialect's SQL and the driver's
        parameters they run as."""
        lean = store._run

        def recording(raw: Any, statement: Any, values: dict[str, Any], *, write: bool) -> Any:
            if self.label:
                self.seen.add(self.label)
                keys = tuple(values) if write else None
                compiled = _Compiled(statement, store.engine, keys)
                sql = compiled.sql
                if not (sql.lstrip()[:6].upper() == "INSERT" and " SELECT " not in sql):
                    self.statements.append((self.label, sql, compiled.parameters(values)))
            return lean(raw, statement, values, write=write)

        store._run = recording  # type: ignore[method-assign]

    @contextlib.contextmanager
    def as_(self, label: str) -> Iterator[None]:
        self.label = label
        try:
            yield
        finally:
            self.label = ""


def hot_calls(store: Store) -> list[tuple[str, Callable[[], Any]]]:
    """(label, call) of every Store call on a hot path, with realistic arguments."""
    now = store.clock()

    def new(key: str, **kw: Any) -> NewRequest:
        base: dict[str, Any] = {
            "kind": "evaluate",
            "repo": REPO,
            "trigger": "label",
            "channel_id": CHANNEL,
            "user_id": USER,
            "idempotency_key": key,
            "pr_number": PR,
        }
        return NewRequest(**{**base, **kw})

    req, _ = store.create_request(new("seed-1"), audit_action="requested")
    dep, _ = store.create_request(
        new("seed-2", kind="deploy", trigger="dispatch", pr_number=None, environment="env-1"),
    )
    store.record_delivery("d-seed", "workflow_run", "completed", "{}")
    return [
        # -- ack: the command's checks and its durable insert, status listings, mentions
        (
            "ack: rate-limited insert",
            lambda: store.create_request(new("k-1"), audit_action="requested", per_minute=10),
        ),
        ("ack: repeat by idempotency key", lambda: store.request_by_key("seed-1")),
        ("ack: rate limit count", lambda: store.count_recent(USER, now - 60)),
        ("ack: mention in a thread", lambda: store.request_by_thread(CHANNEL, ROOT_TS)),
        ("ack: home tab of a user", lambda: store.find(user_id=USER, limit=20)),
        (
            "ack: /evaluate status in a channel",
            lambda: store.find(kind="evaluate", channel_id=CHANNEL, limit=20),
        ),
        (
            "ack: /deploy status of an environment in a channel",
            lambda: store.find(kind="deploy", environment="env-1", channel_id=CHANNEL, limit=20),
        ),
        (
            "ack: /evaluate status of a PR in a channel",
            lambda: store.find(kind="evaluate", repo=REPO, pr_number=PR, channel_id=CHANNEL),
        ),
        # -- intake: webhook deliveries
        ("intake: claim", lambda: store.claim_delivery("d-seed")),
        ("intake: retry state", lambda: store.delivery_retry_state("d-seed")),
        ("intake: release", lambda: store.release_delivery("d-seed", 1.0, failures=1)),
        ("intake: finish", lambda: store.finish_delivery("d-seed")),
        ("intake: give up", lambda: store.fail_delivery("d-seed", "bug")),
        # -- reply: a relayed event finds its request, records the run, replies once
        ("reply: request by id", lambda: store.get(req.id)),
        ("reply: run linked before", lambda: store.run_owner("9001")),
        ("reply: run linked before, with its request", lambda: store.linked_request("9001")),
        (
            "reply: PR run matched by PR number",
            lambda: store.find(
                repo=REPO, pr_number=PR, kind="evaluate", statuses=MATCHABLE, limit=5
            ),
        ),
        (
            "reply: fork PR run matched by head SHA",
            lambda: store.find(
                repo=REPO, head_sha=SHA, kind="evaluate", statuses=MATCHABLE, limit=5
            ),
        ),
        (
            "reply: run upsert",
            lambda: store.upsert_run(
                run_id="9001",
                request_id=req.id,
                repo=REPO,
                name="ci",
                status="in_progress",
                conclusion=None,
                attempt=1,
                html_url=None,
                head_sha=SHA,
                started_at=now,
            ),
        ),
        ("reply: runs of a request", lambda: store.runs_of(req.id)),
        ("reply: reply key", lambda: store.first_time(f"reply:{req.id}:x")),
        ("reply: reply key given back", lambda: store.forget(f"reply:{req.id}:x")),
        (
            "reply: status change",
            lambda: store.update(req.id, only_if_status=(ACCEPTED,), status=TRIGGERED),
        ),
        ("reply: details merge", lambda: store.merge_details(req.id, {"x": 1})),
        (
            "reply: status and details in one transaction",
            lambda: store.update_and_merge(
                req.id, {"x": 2}, only_if_status=(ACCEPTED, TRIGGERED), status=TRIGGERED
            ),
        ),
        ("reply: claim a request", lambda: store.claim(req.id)),
        ("reply: release a request", lambda: store.release(req.id, retry_in=1.0)),
        ("reply: one evaluation per head SHA", lambda: store.take_head(req, SHA)),
        (
            "reply: new commits on a PR",
            lambda: store.find(
                repo=REPO, pr_number=PR, kind="evaluate", statuses=WAITING_FOR_RUNS, limit=5
            ),
        ),
        (
            "reply: duplicates waiting for the holder",
            lambda: store.find(
                repo=REPO,
                pr_number=PR,
                kind="evaluate",
                statuses=(DUPLICATE,),
                since=now - 3600,
                limit=200,
            ),
        ),
        (
            "reply: metrics comment on a PR",
            lambda: store.find(repo=REPO, pr_number=PR, kind="evaluate", since=now - 60, limit=10),
        ),
        (
            "reply: a comment on a pending deploy's repository",
            lambda: store.find(repo=REPO, kind="deploy", statuses=(PENDING_APPROVAL,), limit=20),
        ),
        (
            "reply: deployment_status of an environment",
            lambda: store.find(
                repo=REPO,
                kind="deploy",
                environment="env-1",
                statuses=(*WAITING_FOR_RUNS, SUCCEEDED, FAILED),
                limit=10,
            ),
        ),
        (
            "deploy: evaluations of the run's head SHA",
            lambda: store.find(repo=REPO, head_sha=SHA, kind="evaluate", limit=20),
        ),
        ("deploy: approval", lambda: store.add_approval(dep.id, "U0APPROVER")),
        ("deploy: approvers", lambda: store.approvers_of(dep.id)),
        # -- poll mode
        (
            "poll: requests waiting for runs",
            lambda: store.find(statuses=WAITING_FOR_RUNS, limit=50),
        ),
        (
            "poll: recently finished evaluations",
            lambda: store.find(
                kind="evaluate", statuses=(SUCCEEDED, FAILED), since=now - 86400, limit=200
            ),
        ),
        ("poll: ETag", lambda: store.etag("runs:acme")),
        ("poll: ETag stored", lambda: store.set_etag("runs:acme", '"x"')),
        ("poll: schedule fire", lambda: store.last_fire("nightly")),
        # -- every few seconds on every process: sweeps, takeover, health, metrics
        ("sweep: requests to carry out", lambda: store.to_carry_out(older_than=30)),
        ("sweep: pending deliveries", lambda: store.pending_deliveries(older_than=30)),
        ("takeover: orphaned units", lambda: store.orphaned()),
        ("healthz: units waiting on a peer", lambda: store.waiting()),
        ("healthz: newest delivery", lambda: store.last_delivery_at()),
        ("metrics: pending approvals", lambda: store.count_by_status((PENDING_APPROVAL,))),
        ("expiry: approvals past their time", lambda: store.expired_approvals(now)),
        (
            "approvals waiting (home, App Home)",
            lambda: store.find(kind="deploy", statuses=(PENDING_APPROVAL,), limit=50),
        ),
        # -- retention: each batch is selected through an index
        ("prune: finished requests", lambda: store.prune_requests(86400)),
        ("prune: processed deliveries", lambda: store.prune_deliveries(86400)),
        ("prune: side-effect keys", lambda: store.prune_sent(86400)),
        ("prune: audit rows", lambda: store.prune_audit(86400)),
    ]


def sqlite_problems(conn: Any, statement: str, params: Any) -> tuple[list[str], set[str], str]:
    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
    lines = [str(r[-1]) for r in rows]
    problems, used = [], set()
    for line in lines:
        used.update(re.findall(r"USING (?:COVERING )?INDEX (\w+)", line))
        m = re.match(r"SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", line)
        if not m:
            continue
        table = ALIASES.get(m.group(1), m.group(1))
        index = m.group(2)
        if table in GROWING and not (index and INDEXES.get(index, ("", False))[1]):
            problems.append(f"full scan: {line}")
    return problems, used, "\n".join(lines)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def postgres_problems(conn: Any, statement: str, params: Any) -> tuple[list[str], set[str], str]:
    raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params).scalar()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    problems, used = [], set()
    for node in _nodes(plan):
        kind, index = node["Node Type"], node.get("Index Name")
        if index:
            used.add(index)
        if kind == "Seq Scan" and node.get("Relation Name") in GROWING:
            problems.append(f"full scan: Seq Scan on {node['Relation Name']}")
        if index and "Index Cond" not in node and index in INDEXES:
            table, partial = INDEXES[index]
            if table in GROWING and not partial:
                problems.append(f"full scan: {kind} of {index} without a condition")
    return problems, used, json.dumps(plan, indent=1)


def seed_history(engine: Engine, n: int = 6000) -> None:
    """A history for the planner to weigh: n finished requests over 20 repositories, 600 PRs,
    40 channels, with runs, sent keys and processed deliveries. PostgreSQL gets statistics
    (ANALYZE, as autovacuum does in production); SQLite plans by its rules, as it does in
    production, where nothing runs ANALYZE."""
    t0 = 1_600_000_000.0
    rows, runs, sent, deliveries = [], [], [], []
    for i in range(n):
        deploy = i % 5 == 0
        rows.append(
            {
                "id": f"h{i:011d}",
                "kind": "deploy" if deploy else "evaluate",
                "idempotency_key": f"hist-{i}",
                "repo": f"acme/repo-{i % 20}",
                "pr_number": None if deploy else i % 600,
                "head_sha": f"{i:040x}",
                "environment": f"env-{i % 3}" if deploy else None,
                "trigger": "dispatch" if deploy else "label",
                "channel_id": f"C{i % 40:08d}",
                "user_id": f"U{i % 300:08d}",
                "root_ts": f"{1_600_000_000 + i}.000100",
                "status": (SUCCEEDED, FAILED, "error", "cancelled")[i % 4],
                "details": "{}",
                "created_at": t0 + i,
                "updated_at": t0 + i + 60,
                "finished_at": t0 + i + 60,
                "lease_until": 0.0,
                "attempts": 1,
                "failures": 0,
            }
        )
        runs.append(
            {
                "run_id": str(10_000_000 + i),
                "request_id": f"h{i:011d}",
                "repo": f"acme/repo-{i % 20}",
                "status": "completed",
                "attempt": 1,
                "updated_at": t0 + i,
            }
        )
        sent.append({"key": f"reply:h{i:011d}:done", "at": t0 + i})
        deliveries.append(
            {
                "id": f"hist-delivery-{i}",
                "event": "workflow_run",
                "received_at": t0 + i,
                "processed_at": t0 + i + 1,
                "lease_until": 0.0,
                "attempts": 1,
                "failures": 0,
            }
        )
    with engine.begin() as conn:
        conn.execute(db.requests.insert(), rows)
        conn.execute(db.runs.insert(), runs)
        conn.execute(db.sent.insert(), sent)
        conn.execute(db.deliveries.insert(), deliveries)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()


def plan_problems(engine: Engine) -> dict[str, list[str]]:
    """label -> what is wrong with its statements' plans (empty lists when all is well)."""
    store = Store(engine, clock=lambda: 1_700_000_000.0)
    store.process_id = "test-process"
    store.register_process("test-process", "host", 1)
    calls = hot_calls(store)
    recorder = Recorder(engine)
    recorder.watch(store)
    try:
        for label, call in calls:
            with recorder.as_(label):
                call()
    finally:
        event.remove(engine, "before_cursor_execute", recorder._record)
    assert recorder.seen == {label for label, _ in calls}, "some hot calls sent no statement"
    out: dict[str, list[str]] = {label: [] for label, _ in calls}
    used_by: dict[str, set[str]] = {label: set() for label, _ in calls}
    with engine.connect() as conn:
        pg = conn.dialect.name == "postgresql"
        if pg:
            conn.exec_driver_sql("SET enable_seqscan = off")
        for label, statement, params in recorder.statements:
            check = postgres_problems if pg else sqlite_problems
            problems, used, shown = check(conn, statement, params)
            used_by[label] |= used
            out[label] += [
                f"{p}\n    in: {statement[:300]}\n    plan: {shown[:1500]}" for p in problems
            ]
        conn.rollback()
    for label, index in EXPECTED.items():
        allowed = {index} if isinstance(index, str) else set(index)
        if not allowed & used_by[label]:
            wanted = " or ".join(sorted(allowed))
            out[label].append(f"does not use {wanted} (uses {sorted(used_by[label]) or 'none'})")
    return out


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    seed_history(engine)
    yield engine
    engine.dispose()


def test_every_hot_statement_is_served_by_an_index(engine: Engine) -> None:
    problems = {label: p for label, p in plan_problems(engine).items() if p}
    assert not problems, "\n".join(
        f"{label}:\n  " + "\n  ".join(p) for label, p in problems.items()
    )


# Indexes a hot statement needs (the primary keys and unique keys are not droppable).
NEEDED = sorted(
    name
    for name, (table, _) in INDEXES.items()
    if table in GROWING and name not in ("ix_audit_at",)  # the audit export's, not a hot path
)


@pytest.mark.parametrize("index", NEEDED)
def test_dropping_an_index_fails_the_plan_check(engine: Engine, index: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {index}"))
    problems = {label: p for label, p in plan_problems(engine).items() if p}
    assert problems, f"no hot statement needed {index}"
