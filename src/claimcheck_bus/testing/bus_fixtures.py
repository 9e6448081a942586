"""Fixtures that wire the library to the local emulator and Azurite through real settings.

``bus_settings`` builds :class:`BusSettings` the way an application does, from ``CLAIMCHECK_``
environment variables, pointing at a queue and a blob container of the test's own.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.azurite import Azurite

if TYPE_CHECKING:
    from claimcheck_bus.emulator import Emulator


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fresh_queue(servicebus: Any) -> str:
    """A queue created for this test alone in the in-process emulator (lock 5 s, 10 deliveries)."""
    from claimcheck_bus.emulator.config import EntityOptions, QueueConfig

    name = _unique("q")
    options = EntityOptions(lock_duration=timedelta(seconds=5))
    _emulator(servicebus).call(lambda broker: broker.add_queue(QueueConfig(name, options)))
    return name


@pytest.fixture
def fresh_topic(servicebus: Any) -> tuple[str, list[str]]:
    """A topic with two subscriptions (``billing``, ``archive``) created for this test alone."""
    from claimcheck_bus.emulator.config import EntityOptions, SubscriptionConfig, TopicConfig

    name = _unique("t")
    options = EntityOptions(lock_duration=timedelta(seconds=5))
    subscriptions = ["billing", "archive"]
    topic = TopicConfig(
        name, options, tuple(SubscriptionConfig(s, options, ()) for s in subscriptions)
    )
    _emulator(servicebus).call(lambda broker: broker.add_topic(topic))
    return name, subscriptions


def _emulator(servicebus: Any) -> Emulator:
    if not hasattr(servicebus, "call"):
        pytest.fail(
            "fresh entities need the in-process emulator; unset "
            "CLAIMCHECK_TEST_SERVICEBUS_CONNECTION_STRING",
            pytrace=False,
        )
    return cast("Emulator", servicebus)


@pytest.fixture
def bus_settings(
    servicebus: Any,
    azurite: Azurite,
    blob_container: str,
    fresh_queue: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> BusSettings:
    """Settings for this test's own queue and container, read from ``CLAIMCHECK_`` variables
    (with an empty configuration folder, so no file of the project leaks in)."""
    for name in list(os.environ):
        if name.startswith("CLAIMCHECK_") and not name.startswith("CLAIMCHECK_TEST_"):
            monkeypatch.delenv(name)
    variables = {
        "CLAIMCHECK_CONFIG_DIR": str(tmp_path),
        "CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING": str(servicebus.connection_string),
        "CLAIMCHECK_SERVICE_BUS__DEFAULT_QUEUE_NAME": fresh_queue,
        "CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING": azurite.connection_string,
        "CLAIMCHECK_CLAIM_CHECK__CONTAINER_NAME": blob_container,
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return BusSettings()
