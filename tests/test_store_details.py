"""Request details merged by the database in one UPDATE (bot/store/requests.py merge_details)."""

from __future__ import annotations

import threading
import time

from bot.db import make_engine, migrate
from bot.model import NewRequest
from bot.store import Store


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
    """Many deliveries of a run nobody stored yet: exactly one inserts it (previous record
    None); the others find it stored (the insert that lost the race changes nothing)."""
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
    assert sum(1 for prev, _ in results if prev is None) == 1
    assert [r.run_id for r in store.runs_of(rid)] == ["777"]
