"""Putting dead letters and payloads in place the way the library does, over real sockets."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from azure.servicebus import ServiceBusClient, ServiceBusSubQueue

from claimcheck_bus import BusSettings, ClaimCheckBus, PublishReceipt
from claimcheck_bus.testing.polling import wait_for


def publish(
    *,
    always: bool = True,
    sas_hours: float | None = None,
    ttl: timedelta | None = None,
    event: Any = None,
    message_id: str | None = None,
    queue: str | None = None,
) -> PublishReceipt:
    """Publish one event with the environment's settings (claim-checked by default)."""
    claim_check: dict[str, Any] = {"always": always}
    if sas_hours is not None:
        claim_check["sas_expiry_hours"] = sas_hours
    with ClaimCheckBus(BusSettings(claim_check=claim_check)) as bus:
        return bus.publish(
            event if event is not None else {"OrderId": message_id or "x", "Lines": [1, 2, 3]},
            event_type="OrderCreated",
            message_id=message_id,
            time_to_live=ttl,
            queue=queue,
        )


def dead_letter_all(count: int, reason: str = "HandlerFailed", queue: str | None = None) -> None:
    """Receive ``count`` messages and dead-letter each with ``reason``."""
    with ClaimCheckBus(BusSettings()) as bus:
        done = 0
        for _ in range(10):  # bounded: a message that expired meanwhile never comes
            for event in bus.receive(dict, max_messages=count - done, max_wait=2, queue=queue):
                event.dead_letter(reason, f"{reason} for {event.message_id}")
                done += 1
            if done == count:
                return
        raise AssertionError(f"dead-lettered {done} of {count} messages")


def wait_until(moment: datetime) -> None:
    """Poll the clock until ``moment`` has passed (a SAS or TTL expiry)."""
    wait_for(lambda: datetime.now(timezone.utc) > moment, timeout=30, what=f"{moment}")


def peek(connection_string: str, queue: str, *, dead_letter: bool = False) -> list[Any]:
    """Every message in ``queue`` (or its dead-letter queue), peeked."""
    sub_queue = ServiceBusSubQueue.DEAD_LETTER if dead_letter else None
    with ServiceBusClient.from_connection_string(connection_string) as client:
        with client.get_queue_receiver(queue, sub_queue=sub_queue) as receiver:
            return list(receiver.peek_messages(max_message_count=100))


def property_of(message: Any, name: str) -> Any:
    """An application property of a received message, decoded."""
    value = (message.application_properties or {}).get(name.encode())
    return value.decode() if isinstance(value, bytes) else value


def http_status(url: str) -> int:
    """The status of a plain GET of ``url`` (a consumer without credentials)."""
    return httpx.get(url).status_code
