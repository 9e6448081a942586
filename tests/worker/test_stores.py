"""The read-model stores behind ``ProjectionStore``, on real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
from worker_testkit import open_store

from claimcheck_bus.worker import PostgresProjectionStore, ProjectionStore


@pytest.mark.parametrize("size", [0, 1, 5])
def test_claim_batch_returns_only_new_ids(store: ProjectionStore, size: int) -> None:
    store.open()
    now = datetime.now(timezone.utc)
    ids = [f"m-{i}" for i in range(size)]
    with store.transaction() as db:
        assert store.claim_batch(db, "p", ids, now) == set(ids)
        assert store.claim_batch(db, "p", [*ids, "new"], now) == {"new"}
        assert store.claim_batch(db, "q", ids, now) == set(ids)  # another projection's inbox
    assert store.processed("p") == size + 1


def test_a_closed_store_opens_again(store_location: tuple[str, str]) -> None:
    """A worker served twice closes and reopens its store; a pool that kept counting the
    connections it closed would wait forever for one to come back."""
    kind, location = store_location
    store = (
        PostgresProjectionStore(location, max_connections=1)
        if kind == "postgres"
        else open_store(kind, location)
    )
    results: list[int] = []

    def twice() -> None:
        for _ in range(2):
            store.open()
            results.append(store.processed("p"))
            store.close()

    thread = threading.Thread(target=twice, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "reopening the store hung"
    assert results == [0, 0]
