"""The ``servicebus`` pytest fixture: a Service Bus endpoint for the whole test session.

By default an in-process emulator (the default entities plus a few for tests) on a free port.
``CLAIMCHECK_TEST_SERVICEBUS_CONFIG`` names a Config.json to load instead;
``CLAIMCHECK_TEST_SERVICEBUS_CONNECTION_STRING`` points the fixture at an existing endpoint
(a real namespace, or the official emulator) and no emulator is started.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from claimcheck_bus.emulator import Emulator, EmulatorConfig, load_config
from claimcheck_bus.emulator.config import (
    EntityOptions,
    QueueConfig,
    SubscriptionConfig,
    TopicConfig,
)

CONFIG_ENV = "CLAIMCHECK_TEST_SERVICEBUS_CONFIG"
CONNECTION_STRING_ENV = "CLAIMCHECK_TEST_SERVICEBUS_CONNECTION_STRING"


@dataclass(frozen=True)
class ExternalServiceBus:
    """A Service Bus endpoint the fixture did not start: only its connection string is known."""

    connection_string: str = field(repr=False)


def default_test_config() -> EmulatorConfig:
    """The default entities plus a short-lock queue and a topic with two subscriptions."""
    base = EmulatorConfig.default()
    fast = EntityOptions(lock_duration=timedelta(seconds=5))
    return EmulatorConfig(
        queues=(*base.queues, QueueConfig("test-queue", fast)),
        topics=(
            *base.topics,
            TopicConfig(
                "test-topic",
                EntityOptions(),
                (SubscriptionConfig("first", fast, ()), SubscriptionConfig("second", fast, ())),
            ),
        ),
    )


@pytest.fixture(scope="session")
def servicebus() -> Iterator[Emulator | ExternalServiceBus]:
    """A running Service Bus endpoint; use its ``connection_string`` with the SDK."""
    external = os.environ.get(CONNECTION_STRING_ENV)
    if external:
        yield ExternalServiceBus(external)
        return
    config_path = os.environ.get(CONFIG_ENV)
    config = load_config(config_path) if config_path else default_test_config()
    with Emulator(config) as emulator:
        yield emulator
