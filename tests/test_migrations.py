"""Schema migrations: a database made by an older release upgrades in place and keeps its rows."""

from __future__ import annotations

import time

from sqlalchemy import inspect, select, text

from bot import db
from bot.db import make_engine, migrate

LATEST = max(v for v, _ in db.MIGRATIONS)


def test_a_version_1_database_upgrades_and_keeps_its_rows(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        # What release 1 left behind: its tables without the thread index, and one request.
        with engine.begin() as conn:
            db.schema_migrations.create(conn, checkfirst=True)
            db._v1(conn)
            conn.execute(text("DROP INDEX IF EXISTS ix_requests_thread"))
            conn.execute(db.schema_migrations.insert().values(version=1, applied_at=time.time()))
            conn.execute(
                db.requests.insert().values(
                    id="0123456789ab",
                    idempotency_key="slack:1.a",
                    kind="evaluate",
                    repo="acme/ml-models",
                    pr_number=42,
                    trigger="label",
                    channel_id="C0ML",
                    user_id="U0ALICE",
                    root_ts="1700000000.000100",
                    status="triggered",
                    details="{}",
                    created_at=1.0,
                    updated_at=1.0,
                )
            )
        assert "ix_requests_thread" not in _indexes(engine)

        assert migrate(engine) == LATEST
        assert migrate(engine) == LATEST  # a second replica starting later changes nothing

        # v2's thread index, since v5 with created_at (ix_requests_thread_created).
        assert "ix_requests_thread_created" in _indexes(engine)
        with engine.connect() as conn:
            versions = sorted(r[0] for r in conn.execute(select(db.schema_migrations.c.version)))
            ids = [r[0] for r in conn.execute(select(db.requests.c.id))]
        assert versions == [v for v, _ in db.MIGRATIONS]
        assert ids == ["0123456789ab"]
    finally:
        engine.dispose()


def _indexes(engine: object, table: str = "requests") -> set[str]:
    return {ix["name"] or "" for ix in inspect(engine).get_indexes(table)}


def test_a_version_3_database_gains_the_history_indexes(database_url: str) -> None:
    """Issue 14's v5: indexes for the lookups that must not grow with history; the ones they
    replace are dropped; rows are kept."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            db.schema_migrations.create(conn, checkfirst=True)
            db._v1(conn)
            db._v3(conn)
            for name in db._V5_INDEXES:
                conn.execute(text(f"DROP INDEX {name}"))
            for ddl in (
                "CREATE INDEX ix_requests_status ON requests (status)",
                "CREATE INDEX ix_requests_repo_pr ON requests (repo, pr_number)",
                "CREATE INDEX ix_requests_thread ON requests (channel_id, root_ts)",
                "CREATE INDEX ix_deliveries_pending ON deliveries (processed_at, received_at)",
            ):
                conn.execute(text(ddl))
            for version in (1, 2, 3):
                conn.execute(
                    db.schema_migrations.insert().values(version=version, applied_at=time.time())
                )
            conn.execute(text("INSERT INTO sent (key, at) VALUES ('reply:x', 1.0)"))
        assert migrate(engine) == LATEST
        found = _indexes(engine) | _indexes(engine, "deliveries") | _indexes(engine, "sent")
        assert found >= db._V5_INDEXES | {"ix_deliveries_open"}  # the last one in plain SQL
        assert not {"ix_requests_status", "ix_requests_repo_pr", "ix_requests_thread"} & found
        assert "ix_deliveries_pending" not in found
        with engine.connect() as conn:
            assert conn.execute(text("SELECT key FROM sent")).scalars().all() == ["reply:x"]
    finally:
        engine.dispose()


def test_a_version_2_database_gains_holders_and_heartbeats(database_url: str) -> None:
    """Issue 15's v3: `processes`, and holder/failures/waiting columns on requests and
    deliveries (rows kept; failures start at 0)."""
    engine = make_engine(database_url)
    new = {"holder", "failures", "waiting_since", "waiting_on"}
    try:
        with engine.begin() as conn:
            db.schema_migrations.create(conn, checkfirst=True)
            db._v1(conn)
            for table in ("requests", "deliveries"):
                for col in sorted(
                    new | ({"failed_at", "error"} if table == "deliveries" else set())
                ):
                    conn.execute(text(f'ALTER TABLE {table} DROP COLUMN "{col}"'))
            for version in (1, 2):
                conn.execute(
                    db.schema_migrations.insert().values(version=version, applied_at=time.time())
                )
            conn.execute(
                text(
                    "INSERT INTO deliveries (id, event, received_at, lease_until, attempts) "
                    "VALUES ('d-1', 'workflow_run', 1.0, 0.0, 0)"
                )
            )
        assert "processes" not in inspect(engine).get_table_names()
        assert migrate(engine) == LATEST
        assert "processes" in inspect(engine).get_table_names()
        for table in ("requests", "deliveries"):
            assert new <= {c["name"] for c in inspect(engine).get_columns(table)}
        with engine.connect() as conn:
            row = conn.execute(text("SELECT failures, holder FROM deliveries")).one()
        assert tuple(row) == (0, None)
    finally:
        engine.dispose()


def test_a_version_3_database_gains_environment_locks(database_url: str) -> None:
    """Issue 12's v4: the `env_locks` table, one row per repository + environment."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            db.schema_migrations.create(conn, checkfirst=True)
            db._v1(conn)
            db._v3(conn)
            for version in (1, 2, 3):
                conn.execute(
                    db.schema_migrations.insert().values(version=version, applied_at=time.time())
                )
        assert "env_locks" not in inspect(engine).get_table_names()
        assert migrate(engine) == LATEST
        assert "env_locks" in inspect(engine).get_table_names()
        keys = inspect(engine).get_pk_constraint("env_locks")["constrained_columns"]
        assert sorted(keys) == ["environment", "repo"]
    finally:
        engine.dispose()


def test_a_version_3_database_gains_answer_due(database_url: str) -> None:
    """Issue 12's v7: requests.answer_due (a GitHub answer is due), 0 for existing rows."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            db.schema_migrations.create(conn, checkfirst=True)
            db._v1(conn)
            conn.execute(text("DROP INDEX ix_requests_answer_due"))
            conn.execute(text('ALTER TABLE requests DROP COLUMN "answer_due"'))
            for version in (1, 2, 3):
                conn.execute(
                    db.schema_migrations.insert().values(version=version, applied_at=time.time())
                )
            conn.execute(
                text(
                    "INSERT INTO requests (id, idempotency_key, kind, repo, trigger, channel_id, "
                    "user_id, status, details, created_at, updated_at, lease_until, attempts, "
                    "failures) VALUES ('0123456789ab', 'k', 'deploy', 'acme/ml', 'dispatch', "
                    "'C0ML', 'U0ALICE', 'rejected', '{}', 1.0, 1.0, 0.0, 0, 0)"
                )
            )
        assert migrate(engine) == LATEST
        with engine.connect() as conn:
            row = conn.execute(text("SELECT id, answer_due FROM requests")).one()
        assert tuple(row) == ("0123456789ab", 0)
        indexes = {i["name"] for i in inspect(engine).get_indexes("requests")}
        assert "ix_requests_answer_due" in indexes  # the sweep's OR branch (test_query_plans)
    finally:
        engine.dispose()
