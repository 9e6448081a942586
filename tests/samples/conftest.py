"""The samples live at the repository root (not in src/): make ``import samples`` work. And
the demo's ``orders`` queue, for a test of its own."""

import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from claimcheck_bus.emulator import load_config
from claimcheck_bus.emulator.config import QueueConfig

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def make_orders_queue(servicebus: Any) -> Callable[..., str]:
    """Create a queue of the test's own set up as the demo's ``orders`` queue in
    samples/Config.json (sessions required, duplicate detection unless told otherwise), with a
    5 s lock."""

    def make(duplicate_detection: bool = True) -> str:
        demo = load_config(str(ROOT / "samples" / "Config.json"))
        options = next(q.options for q in demo.queues if q.name == "orders")
        assert options.requires_session, "the demo's orders queue must require sessions"
        options = replace(
            options,
            lock_duration=timedelta(seconds=5),
            requires_duplicate_detection=options.requires_duplicate_detection
            and duplicate_detection,
        )
        queue = QueueConfig(f"orders-{uuid.uuid4().hex[:12]}", options)
        servicebus.call(lambda broker: broker.add_queue(queue))
        return queue.name

    return make


@pytest.fixture
def orders_queue(make_orders_queue: Callable[..., str]) -> str:
    """A queue of the test's own set up as the demo's ``orders`` queue."""
    return make_orders_queue()
