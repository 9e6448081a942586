"""The `servicebus` fixture of the pytest plugin serves the real SDK."""

from __future__ import annotations

from typing import Any

from azure.servicebus import ServiceBusClient, ServiceBusMessage


def test_servicebus_fixture_round_trip(servicebus: Any) -> None:
    with ServiceBusClient.from_connection_string(servicebus.connection_string) as client:
        with client.get_topic_sender("test-topic", keep_alive=0) as sender:
            sender.send_messages(ServiceBusMessage("fan-out"))
        for name in ("first", "second"):
            with client.get_subscription_receiver("test-topic", name, max_wait_time=5) as rx:
                got = rx.receive_messages(max_message_count=1, max_wait_time=5)
                assert [str(m) for m in got] == ["fan-out"]
                rx.complete_message(got[0])
