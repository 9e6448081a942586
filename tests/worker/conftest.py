"""Shared pieces of the worker tests: events, a ledger projection, entities of a test's own."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from claimcheck_bus.worker import PostgresProjectionStore, ProjectionStore

# The tests import their shared kit (worker_testkit.py) from this folder.
sys.path.insert(0, str(Path(__file__).parent))

from worker_testkit import open_store

from claimcheck_bus.testing.postgres_schema import schema_of_its_own


@pytest.fixture
def make_queue(servicebus: Any) -> Callable[..., str]:
    """Create a queue of this test's own with the given lock duration and max deliveries,
    requiring sessions or not."""
    from claimcheck_bus.emulator.config import EntityOptions, QueueConfig

    def make(lock: float = 3.0, max_delivery_count: int = 10, sessions: bool = False) -> str:
        name = f"wq-{uuid.uuid4().hex[:12]}"
        options = EntityOptions(
            lock_duration=timedelta(seconds=lock),
            max_delivery_count=max_delivery_count,
            requires_session=sessions,
        )
        servicebus.call(lambda broker: broker.add_queue(QueueConfig(name, options)))
        return name

    return make


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, location) of a fresh read model: an SQLite file, or a PostgreSQL DSN whose
    ``search_path`` is a schema of this test's own."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "read.db")
    return "postgres", request.getfixturevalue("postgres_schema")


@pytest.fixture
def postgres_schema(postgres_dsn: str) -> Iterator[str]:
    """A DSN whose ``search_path`` is a schema of this test's own (dropped after it)."""
    with schema_of_its_own(postgres_dsn) as dsn:
        yield dsn


@pytest.fixture
def store(store_location: tuple[str, str]) -> Iterator[ProjectionStore]:
    """A fresh read-model store (SQLite file or PostgreSQL schema), closed after the test."""
    opened = open_store(*store_location)
    yield opened
    opened.close()


@pytest.fixture
def pipelined_store(postgres_schema: str) -> Iterator[PostgresProjectionStore]:
    """A fresh PostgreSQL store in pipeline mode, closed after the test."""
    opened = PostgresProjectionStore(postgres_schema, pipeline=True)
    yield opened
    opened.close()


@pytest.fixture
def left_in(servicebus: Any) -> Callable[[str], int]:
    """How many messages a queue still holds (active, locked or deferred), read from the
    emulator's broker: unlike a receive, it opens no link that could time out under load."""

    def count(queue: str) -> int:
        return len(servicebus.call(lambda broker: broker.peek(queue, 1, 1000)))

    return count
