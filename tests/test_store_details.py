"""Request details merged by the database in one UPDATE (bot/store/requests.py merge_details)."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from bot.db import make_engine, migrate
from bot.model import NewRequest
from bot.store import AuditLine, Store


def _store_with_request(database_url: str, details: dict[str, object]) -> tuple[Store, str]:
    engine = make_engine(database_url)
    migrate(engine)
    store = Store(engine, clock=time.time)
    req, _ = store.create_request(
        NewRequest(
            kind="evaluate",
            repo="acme/ml-models",
            trigger="label",
            channel_id="C1",
            user_id="U1",
            idempotency_key="slack:details-test",
            details=details,
        )
    )
    return store, req.id


def test_merge_replaces_each_given_key_whole_and_keeps_the_others(database_url: str) -> None:
    """A shallow merge: a nested object given is stored as given (not merged into the old
    one), null is stored (not a deletion), keys not given stay."""
    store, rid = _store_with_request(
        database_url, {"runs_summary": {"a": 1, "b": 2}, "root_hash": "x", "kept": [1, 2]}
    )
    store.merge_details(rid, {"runs_summary": {"c": 3}, "root_hash": None, "new": 'é ✓ "q"'})
    req = store.get(rid)
    assert req is not None
    assert req.details == {
        "runs_summary": {"c": 3},
        "root_hash": None,
        "kept": [1, 2],
        "new": 'é ✓ "q"',
    }


def test_merge_into_empty_details_and_with_nul_characters(database_url: str) -> None:
    store, rid = _store_with_request(database_url, {})
    store.merge_details(rid, {"a": 1})
    store.merge_details(rid, {"text": "nul\x00inside"})  # the read-merge-write fallback
    store.merge_details(rid, {"odd key": True})  # not a plain word: the fallback too
    req = store.get(rid)
    assert req is not None
    assert req.details == {"a": 1, "text": "nul\x00inside", "odd key": True}


def test_concurrent_merges_of_different_keys_lose_none(database_url: str) -> None:
    store, rid = _store_with_request(database_url, {"start": 0})
    errors: list[BaseException] = []

    def merge(n: int) -> None:
        try:
            for i in range(5):
                store.merge_details(rid, {f"k{n}_{i}": n * 10 + i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=merge, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    req = store.get(rid)
    assert req is not None
    merged = {f"k{n}_{i}": n * 10 + i for n in range(6) for i in range(5)}
    assert req.details == {"start": 0} | merged


def test_concurrent_first_deliveries_of_one_run_store_it_once(database_url: str) -> None:
    """Many deliveries of a run nobody stored yet: exactly one inserts it (created);
    the others find it stored (the insert that lost the race changes nothing)."""
    store, rid = _store_with_request(database_url, {})
    results: list[tuple[object, bool]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def deliver() -> None:
        try:
            barrier.wait()
            results.append(
                store.upsert_run(
                    run_id="777",
                    request_id=rid,
                    repo="acme/ml-models",
                    name="eval",
                    status="in_progress",
                    conclusion=None,
                    attempt=1,
                    html_url=None,
                    head_sha=None,
                    started_at=None,
                )
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(1 for created, _ in results if created) == 1
    assert [r.run_id for r in store.runs_of(rid)] == ["777"]


def test_update_and_merge_is_one_transaction_that_returns_the_committed_request(
    database_url: str,
) -> None:
    """settle's write: the status change (when allowed) and the details merge commit together,
    and the request handed back is what a read after the commit returns. On SQLite that is one
    transaction; on PostgreSQL one statement in autocommit (a transaction of its own, one
    round trip instead of BEGIN, the status read, two UPDATEs and COMMIT)."""
    store, rid = _store_with_request(database_url, {"kept": 1})
    dialect = store.engine.dialect
    commits, statements = _counting(store)
    changed, req = store.update_and_merge(
        rid, {"runs_summary": "ci: running"}, only_if_status=("accepted",), status="triggered"
    )
    if dialect.name == "postgresql":
        assert changed and len(statements) == 1 and not commits
    else:
        assert changed and len(commits) == 1
    assert req == store.get(rid)
    assert req is not None and req.status == "triggered"
    assert req.details == {"kept": 1, "runs_summary": "ci: running"}

    # The status condition does not hold: nothing changes but the details.
    changed, req = store.update_and_merge(
        rid, {"runs_summary": "ci: done"}, only_if_status=("accepted",), status="triggered"
    )
    assert not changed
    assert req == store.get(rid)
    assert req is not None and req.status == "triggered"
    assert req.details["runs_summary"] == "ci: done"

    # Keys that are not plain words take merge_details' read-merge-write path, same outcome.
    changed, req = store.update_and_merge(
        rid, {"odd key": True}, only_if_status=("triggered",), status="succeeded"
    )
    assert changed and req == store.get(rid)
    assert req is not None and req.details["odd key"] is True and req.status == "succeeded"
    assert store.update_and_merge("nope", {"x": 1}, only_if_status=("accepted",))[1] is None


def test_a_run_linked_before_is_found_with_its_request_in_one_read(database_url: str) -> None:
    store, rid = _store_with_request(database_url, {})
    assert store.linked_request("555") == (False, None)
    run = {
        "request_id": rid,
        "repo": "acme/ml-models",
        "name": "eval",
        "status": "queued",
        "conclusion": None,
        "attempt": 1,
        "html_url": None,
        "head_sha": None,
        "started_at": None,
    }
    assert store.upsert_run(run_id="555", **run) == (True, True)
    linked, req = store.linked_request("555")
    assert linked and req == store.get(rid)
    # The same view again is stored (a redelivery); an older one is not.
    assert store.upsert_run(run_id="555", **run) == (False, True)
    assert store.upsert_run(run_id="555", **{**run, "status": "completed"}) == (False, True)
    assert store.upsert_run(run_id="555", **run) == (False, False)
    # A link whose request is gone still counts as linked: the run is nobody else's.
    store.upsert_run(run_id="556", **{**run, "request_id": "gone"})
    assert store.linked_request("556") == (True, None)


def test_a_status_change_waits_for_a_concurrent_one_and_logs_the_status_it_changed_from(
    database_url: str, caplog: Any
) -> None:
    """PostgreSQL runs a request's change as one statement (bot/store/requests.py _pg_change):
    its CTE locks the row and reads the status the change is made from. A writer holding the
    row makes it wait; it then changes the row that writer committed, and the log's "from" is
    that row's status, not the one in the statement's snapshot (without FOR UPDATE it would
    say "triggered" here)."""
    import logging

    from sqlalchemy import create_engine, text

    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite's writer queue runs one write at a time")
    store, rid = _store_with_request(database_url, {"kept": 1})
    assert store.update(rid, only_if_status=("accepted",), status="triggered")
    other = create_engine(database_url)
    results: list[Any] = []
    try:
        with other.connect() as conn:
            conn.execute(text("SELECT 1 FROM requests WHERE id = :i FOR UPDATE"), {"i": rid})
            caplog.set_level(logging.INFO, logger="bot.store")

            def settle() -> None:
                results.append(
                    store.update_and_merge(
                        rid,
                        {"runs_summary": "ci: done"},
                        only_if_status=("triggered", "running"),
                        status="succeeded",
                        finished_at=time.time(),
                    )
                )

            thread = threading.Thread(target=settle)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # waiting for the row
            conn.execute(text("UPDATE requests SET status = 'running' WHERE id = :i"), {"i": rid})
            conn.commit()
            thread.join(10)
    finally:
        other.dispose()
    [(changed, req)] = results
    assert changed and req is not None and req.status == "succeeded"
    assert req.details == {"kept": 1, "runs_summary": "ci: done"}
    moves = [
        (getattr(r, "from", None), getattr(r, "to", None))
        for r in caplog.records
        if r.getMessage() == "request status changed"
    ]
    assert moves == [("running", "succeeded")]


def test_a_conditional_status_change_logs_where_it_came_from_or_nothing(
    database_url: str, caplog: Any
) -> None:
    """`update` from one of several statuses (one statement on PostgreSQL, the status read in
    the same transaction on SQLite): the log's "from" is the status it changed from; a change
    whose condition does not hold changes nothing and logs nothing."""
    import logging

    store, rid = _store_with_request(database_url, {})
    caplog.set_level(logging.INFO, logger="bot.store")
    assert store.update(rid, only_if_status=("accepted", "approved"), status="triggered")
    assert not store.update(rid, only_if_status=("accepted", "approved"), status="triggered")
    assert store.update(rid, error="kept", only_if_status=("triggered", "running"))
    req = store.get(rid)
    assert req is not None and req.status == "triggered" and req.error == "kept"
    moves = [
        (getattr(r, "from", None), getattr(r, "to", None))
        for r in caplog.records
        if r.getMessage() == "request status changed"
    ]
    assert moves == [("accepted", "triggered")]


def test_only_columns_of_requests_enter_a_change_statement() -> None:
    """`_pg_change` writes column names into its SQL text (values are bound): a name that is
    not a column of `requests` is refused before any text is built."""
    from bot.store.requests import _pg_change

    with pytest.raises(ValueError, match="not columns of requests"):
        _pg_change(("status", "status = 'x'; --"), 2, False)
    assert "status = :status" in str(_pg_change(("status", "updated_at"), 2, False))


def _counting(store: Store) -> tuple[list[int], list[str]]:
    """Commits (every one goes through the dialect's do_commit) and statements (every one the
    store runs on a pooled connection) from now on."""
    commits: list[int] = []
    statements: list[str] = []
    dialect = store.engine.dialect
    do_commit, run = dialect.do_commit, store._run

    def counted(dbapi_connection: object) -> None:
        commits.append(1)
        do_commit(dbapi_connection)

    def counted_run(raw: Any, statement: Any, values: Any, *, write: bool) -> Any:
        statements.append(str(statement))
        return run(raw, statement, values, write=write)

    dialect.do_commit = counted  # type: ignore[method-assign]
    store._run = counted_run  # type: ignore[method-assign]
    return commits, statements


@pytest.mark.parametrize("merged", [False, True])
def test_a_status_changes_audit_line_is_written_only_with_the_change(
    database_url: str, merged: bool
) -> None:
    """update(audit=…) / update_and_merge(audit=…): the audit row is written when the
    conditional change is made, and not when it is not; on SQLite in the change's own
    transaction (one commit for both), on PostgreSQL by the change's own statement in
    autocommit (one statement, no BEGIN or COMMIT)."""
    store, rid = _store_with_request(database_url, {})
    line = AuditLine("bridge", "evaluate.triggered", "ok", "label")

    def change(to: str) -> bool:
        if merged:
            return store.update_and_merge(
                rid, {"runs_summary": to}, only_if_status=("accepted",), status=to, audit=line
            )[0]
        return store.update(rid, only_if_status=("accepted",), status=to, audit=line)

    commits, statements = _counting(store)
    assert change("triggered")
    rows = store.audit_rows(request_id=rid)
    assert [(r["actor"], r["action"], r["outcome"], r["detail"]) for r in rows] == [
        ("bridge", "evaluate.triggered", "ok", "label")
    ]
    audit_inserts = [s for s in statements if "INSERT INTO audit" in s]
    assert len(audit_inserts) == 1
    if store.engine.dialect.name == "postgresql":
        assert (len(statements), len(commits)) == (1, 0)
    else:
        assert len(commits) == 1
    # The condition no longer holds: no change, no second audit row.
    assert not change("cancelled")
    assert len(store.audit_rows(request_id=rid)) == 1


@pytest.mark.parametrize("merged", [False, True])
def test_a_status_change_whose_audit_line_cannot_be_written_is_not_made(
    database_url: str, merged: bool
) -> None:
    """A decision and its trail commit together or not at all: when the audit row is refused
    (here a NULL actor, which the table does not take), the status stays as it was. On
    PostgreSQL that takes the change and the row in one statement; with the audit insert as a
    statement of its own after the change, the request would be left `triggered` with no
    row saying who or why."""
    store, rid = _store_with_request(database_url, {})
    broken = AuditLine(None, "evaluate.triggered", "ok", "label")  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        if merged:
            store.update_and_merge(
                rid,
                {"runs_summary": "x"},
                only_if_status=("accepted",),
                status="triggered",
                audit=broken,
            )
        else:
            store.update(rid, only_if_status=("accepted",), status="triggered", audit=broken)
    req = store.get(rid)
    assert req is not None and req.status == "accepted"
    assert "runs_summary" not in req.details
    assert store.audit_rows(request_id=rid) == []


@pytest.mark.parametrize("facts", [{"pr_title": "Faster eval"}, {"odd key": "x"}, None])
def test_taking_the_head_stores_the_facts_with_it_and_returns_the_request(
    database_url: str, facts: dict[str, str] | None
) -> None:
    """take_head(req, sha, facts): the SHA and the PR's facts in one transaction, the request
    handed back as committed; a second request for the same SHA is told who holds it and
    gets neither. Keys the one-statement merge cannot take are merged right after."""
    store, rid = _store_with_request(database_url, {"kept": 1})
    req = store.get(rid)
    assert req is not None and req.pr_number is None
    req = dataclasses.replace(req, pr_number=7)
    store.update(rid, pr_number=7)
    commits, _ = _counting(store)
    holder, current = store.take_head(req, "a" * 40, facts)
    assert holder is None and current == store.get(rid)
    assert current is not None and current.head_sha == "a" * 40
    assert current.details == {"kept": 1, **(facts or {})}
    if store.engine.dialect.name != "postgresql" and facts and "pr_title" in facts:
        assert len(commits) == 1
    other, _ = store.create_request(
        NewRequest(
            kind="evaluate",
            repo="acme/ml-models",
            pr_number=7,
            trigger="label",
            channel_id="C1",
            user_id="U2",
            idempotency_key="slack:details-test-2",
        )
    )
    holder, current = store.take_head(other, "a" * 40, {"pr_title": "again"})
    assert current is None and holder is not None and holder.id == rid
    assert (store.get(other.id) or other).details.get("pr_title") is None
