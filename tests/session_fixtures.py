"""Session-enabled entities of a test's own in the in-process emulator."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from claimcheck_bus.emulator.config import (
    EntityOptions,
    QueueConfig,
    SubscriptionConfig,
    TopicConfig,
)

SESSIONS = EntityOptions(lock_duration=timedelta(seconds=5), requires_session=True)


def _in_process(servicebus: Any) -> Any:
    if not hasattr(servicebus, "call"):
        pytest.skip("session entities of a test's own need the in-process emulator")
    return servicebus


@pytest.fixture
def session_queue(servicebus: Any) -> str:
    """A session-enabled queue for this test alone (lock 5 s)."""
    name = f"sq-{uuid.uuid4().hex[:12]}"
    _in_process(servicebus).call(lambda broker: broker.add_queue(QueueConfig(name, SESSIONS)))
    return name


@pytest.fixture
def session_topic(servicebus: Any) -> str:
    """A topic whose subscription ``ordered`` requires sessions, for this test alone."""
    name = f"st-{uuid.uuid4().hex[:12]}"
    topic = TopicConfig(name, EntityOptions(), (SubscriptionConfig("ordered", SESSIONS, ()),))
    _in_process(servicebus).call(lambda broker: broker.add_topic(topic))
    return name
