"""Fixtures shared across the suite's folders (the plugin's own are in claimcheck_bus.testing)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest


@pytest.fixture
def long_lock_queue(servicebus: Any) -> str:
    """A queue of the test's own with a 60 s lock, for tests that hold a message while they
    rehydrate 100 MB: ``fresh_queue``'s 5 s lock can expire first on a loaded machine (the
    suite runs in parallel workers), and the lock is not what those tests are about."""
    from claimcheck_bus.emulator.config import EntityOptions, QueueConfig

    name = f"lq-{uuid.uuid4().hex[:12]}"
    options = EntityOptions(lock_duration=timedelta(seconds=60))
    servicebus.call(lambda broker: broker.add_queue(QueueConfig(name, options)))
    return name
