"""What the worker logs about messages that were not a plain success, and the SDK chatter it
quiets: the pure decisions, then a real worker on the emulator under caplog."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from pydantic import ValidationError
from worker_testkit import (
    LedgerProjection,
    OrderCreated,
    fast_worker,
    ledger,
    running,
    send_raw,
)

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.errors import EventDecodeError
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.polling import wait_for_async
from claimcheck_bus.worker import LoggingMiddleware, MetricsMiddleware, SQLiteProjectionStore
from claimcheck_bus.worker.dispatch import Decision, Settle, decide
from claimcheck_bus.worker.middleware import Outcome
from claimcheck_bus.worker.outcome_log import (
    SDK_CHATTER,
    chatter_to_quiet,
    outcome_line,
    quiet_sdk_chatter,
)

WHERE: dict[str, Any] = {"message_id": "m-1", "entity": "orders", "delivery_count": 2}


def test_a_plain_success_logs_nothing_and_a_duplicate_only_at_debug() -> None:
    assert outcome_line(Outcome.COMPLETED, Decision(Settle.COMPLETE), None, **WHERE) is None
    level, text = outcome_line(Outcome.DUPLICATE, Decision(Settle.COMPLETE), None, **WHERE) or (
        0,
        "",
    )
    assert level == logging.DEBUG
    assert text.startswith("skipped message m-1 on orders")


def test_a_dead_letter_line_gives_the_reason_and_the_description_on_one_line() -> None:
    try:
        OrderCreated.model_validate({"OrderId": "o-1"})
    except ValidationError as invalid:
        error: Exception = invalid
    decision = decide(error, delivery_count=0)
    line = outcome_line(Outcome.DEAD_LETTERED, decision, error, **WHERE)
    assert line is not None
    level, text = line
    assert level == logging.INFO
    assert text.startswith("dead-lettered message m-1 on orders: InvalidEvent: ValidationError")
    assert "Amount" in text
    assert "\n" not in text


def test_an_abandon_line_gives_the_error_class_and_the_backoff_with_secrets_masked() -> None:
    error = RuntimeError("database refused password=hunter2;\nretry later")
    decision = decide(error, delivery_count=2, base_delay=0.5)
    line = outcome_line(Outcome.ABANDONED, decision, error, **WHERE)
    assert line == (
        logging.INFO,
        "abandoned message m-1 on orders for a retry after 2 s (delivery 2): "
        "RuntimeError: database refused password=***; retry later",
    )
    stopping = outcome_line(Outcome.ABANDONED, Decision(Settle.ABANDON), None, **WHERE)
    assert stopping == (
        logging.INFO,
        "abandoned message m-1 on orders (delivery 2): worker stopping",
    )


def test_a_failed_settlement_is_a_warning_that_says_what_happens_next() -> None:
    failure = ConnectionError("link detached sig=abc123")
    line = outcome_line(Outcome.SETTLE_FAILED, Decision(Settle.COMPLETE), failure, **WHERE)
    assert line is not None
    assert line[0] == logging.WARNING
    assert "settling message m-1 on orders failed: ConnectionError" in line[1]
    assert "abc123" not in line[1]
    assert "delivers it again" in line[1]


def test_a_long_error_is_cut_to_a_bounded_line() -> None:
    error = EventDecodeError("x" * 10_000, message_id="m-1", entity="orders")
    line = outcome_line(Outcome.DEAD_LETTERED, decide(error, delivery_count=0), error, **WHERE)
    assert line is not None
    assert len(line[1]) < 700


def test_only_sdk_loggers_nobody_configured_are_quieted() -> None:
    assert chatter_to_quiet({}) == list(SDK_CHATTER)
    assert "azure.servicebus" not in chatter_to_quiet({"azure.servicebus": logging.INFO})
    # A level on an ancestor is a choice too: `azure` at DEBUG keeps all of them.
    assert chatter_to_quiet({"azure": logging.DEBUG}) == []
    assert chatter_to_quiet({"azure.servicebus._pyamqp": logging.DEBUG}) == list(SDK_CHATTER)


@pytest.fixture
def sdk_levels() -> Iterator[None]:
    """Leaves the SDK loggers' levels as they were before the test."""
    names = [*SDK_CHATTER, "azure"]
    before = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("sdk_levels")
def test_quieting_is_undone_by_the_last_worker_and_never_overrides_a_users_level() -> None:
    servicebus, identity = (
        logging.getLogger("azure.servicebus"),
        logging.getLogger("azure.identity"),
    )
    servicebus.setLevel(logging.NOTSET)
    identity.setLevel(logging.DEBUG)  # the user's
    first = quiet_sdk_chatter()
    second = quiet_sdk_chatter()  # a second worker in the same process
    assert servicebus.level == logging.WARNING
    assert identity.level == logging.DEBUG
    first()
    assert servicebus.level == logging.WARNING  # the second worker still serves
    second()
    second()  # a second call does nothing
    assert servicebus.level == logging.NOTSET
    assert identity.level == logging.DEBUG


# -- a real worker, the emulator and caplog ---------------------------------------------------


def about(caplog: pytest.LogCaptureFixture, message_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.INFO and f"message {message_id} " in r.getMessage()
    ]


@pytest.mark.usefixtures("sdk_levels")
async def test_a_worker_at_info_logs_one_line_per_message_that_was_not_a_plain_success(
    bus_settings: BusSettings,
    fresh_queue: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in SDK_CHATTER:
        logging.getLogger(name).setLevel(logging.NOTSET)  # nobody configured them
    caplog.set_level(logging.INFO)
    store = SQLiteProjectionStore(tmp_path / "read.db")
    metrics = MetricsMiddleware(use_otel=False)
    failed_once: list[str] = []

    def flaky(event: OrderCreated) -> None:
        if event.OrderId == "flaky" and not failed_once:
            failed_once.append(event.OrderId)
            raise RuntimeError("ledger backend refused password=hunter2")

    worker = fast_worker(bus_settings)
    worker.add_projection(LedgerProjection(), store=store, queue=fresh_queue)
    worker.add_handler(OrderCreated, flaky, queue=fresh_queue)
    worker.use(metrics)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish(OrderCreated(OrderId="good", Amount=1), message_id="good")
        await bus.publish(OrderCreated(OrderId="flaky", Amount=2), message_id="flaky")
    await send_raw(
        bus_settings,
        fresh_queue,
        ServiceBusMessage(b"{not json", message_id="poison", subject="OrderCreated"),
    )
    caplog.clear()  # the sends above chattered: nobody had quieted the SDK yet
    async with running(worker):
        await wait_for_async(
            lambda: _value(
                metrics.outcomes["completed"] >= 2 and metrics.outcomes["dead_lettered"] >= 1
            ),
            timeout=20,
            what="good and flaky completed, poison dead-lettered",
        )
        assert logging.getLogger("azure.servicebus").level == logging.WARNING
    poison = about(caplog, "poison")
    assert [(r.name, r.levelname) for r in poison] == [("claimcheck_bus.worker", "INFO")]
    assert (
        poison[0]
        .getMessage()
        .startswith(f"dead-lettered message poison on {fresh_queue}: UndecodableEvent: ")
    )
    flaky_lines = [r.getMessage() for r in about(caplog, "flaky")]
    assert len(flaky_lines) == 1
    assert flaky_lines[0].startswith(
        f"abandoned message flaky on {fresh_queue} for a retry after 0.02 s (delivery 0): "
        "RuntimeError: ledger backend refused password=***"
    )
    assert about(caplog, "good") == []
    assert "hunter2" not in caplog.text
    chatter = [r for r in caplog.records if r.name.startswith("azure") and r.levelno < 30]
    assert chatter == []
    assert logging.getLogger("azure.servicebus").level == logging.NOTSET  # given back
    assert sorted(row[0] for row in ledger(store)) == ["flaky", "good"]
    store.close()


@pytest.mark.usefixtures("sdk_levels")
async def test_sdk_chatter_stays_where_the_user_asked_for_it_and_the_access_log_has_all(
    bus_settings: BusSettings,
    fresh_queue: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="azure.servicebus")  # the user's choice
    store = SQLiteProjectionStore(tmp_path / "read.db")
    metrics = MetricsMiddleware(use_otel=False)
    worker = fast_worker(bus_settings)
    worker.add_projection(LedgerProjection(), store=store, queue=fresh_queue)
    worker.use(metrics)
    worker.use(LoggingMiddleware)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish(OrderCreated(OrderId="good", Amount=1), message_id="good")
        async with running(worker):
            await wait_for_async(
                lambda: _value(metrics.outcomes["completed"] >= 1), timeout=20, what="completed"
            )
    assert any(r.name.startswith("azure.servicebus") for r in caplog.records)
    access = [
        r
        for r in caplog.records
        if r.name == "claimcheck_bus.worker.settlements" and "good" in r.getMessage()
    ]
    assert [r.levelname for r in access] == ["INFO"]
    assert f"on {fresh_queue} (delivery 0): completed in" in access[0].getMessage()
    store.close()


async def _value(value: Any) -> Any:
    return value
