"""Issue 17 over a real socket with the Python SDK: what Service Bus does that clients we did not
write (JavaScript, .NET-style senders, Microsoft's samples) rely on."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from azure.core.credentials import AzureSasCredential
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.amqp import AmqpAnnotatedMessage, AmqpMessageProperties
from azure.servicebus.exceptions import MessageSizeExceededError, ServiceBusAuthenticationError

from claimcheck_bus.emulator import Emulator
from claimcheck_bus.emulator.amqp import codec, message
from claimcheck_bus.emulator.config import EntityOptions, QueueConfig, parse_config
from claimcheck_bus.emulator.server import DEFAULT_KEY, DEFAULT_KEY_NAME, batch_size


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def client(emulator: Emulator) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(emulator.connection_string) as sb:
        yield sb


@pytest.fixture
def queue(emulator: Emulator) -> str:
    name = f"q-{uuid.uuid4().hex[:10]}"
    options = EntityOptions(max_delivery_count=3)
    emulator.call(lambda broker: broker.add_queue(QueueConfig(name, options)))
    return name


def receive_one(client: ServiceBusClient, queue: str) -> object:
    with client.get_queue_receiver(queue, max_wait_time=5) as receiver:
        got = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert len(got) == 1
        receiver.complete_message(got[0])
        return got[0]


def test_a_message_sent_without_an_id_gets_one_from_the_service(
    emulator: Emulator, client: ServiceBusClient, queue: str
) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(AmqpAnnotatedMessage(data_body=b"no id"))
        sender.send_messages(AmqpAnnotatedMessage(data_body=b"no properties either"))
    with client.get_queue_receiver(queue, max_wait_time=5) as receiver:
        got = receiver.receive_messages(max_message_count=2, max_wait_time=5)
        if len(got) < 2:
            got += receiver.receive_messages(max_message_count=1, max_wait_time=5)
        ids = [m.message_id for m in got]
        for m in got:
            receiver.complete_message(m)
    assert len(ids) == 2
    assert all(isinstance(i, str) and len(i) == 32 for i in ids)
    assert ids[0] != ids[1]


def test_an_id_the_sender_chose_is_kept(client: ServiceBusClient, queue: str) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage(b"x", message_id="mine-1"))
    assert receive_one(client, queue).message_id == "mine-1"  # type: ignore[attr-defined]


def test_delivery_annotations_pass_through_and_peek_lock_adds_the_lock_token(
    client: ServiceBusClient, queue: str
) -> None:
    sent = AmqpAnnotatedMessage(
        data_body=b"annotated",
        delivery_annotations={"x-custom": "from-sender"},
        properties=AmqpMessageProperties(message_id="annotated-1"),
    )
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(sent)
    with client.get_queue_receiver(queue, max_wait_time=5) as receiver:
        (msg,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        annotations = msg.raw_amqp_message.delivery_annotations or {}
        lock_token = msg.lock_token
        receiver.complete_message(msg)
    values = {(k.decode() if isinstance(k, bytes) else k): v for k, v in annotations.items()}
    assert values["x-custom"] in ("from-sender", b"from-sender")
    assert uuid.UUID(str(values["x-opt-lock-token"])) == uuid.UUID(str(lock_token))


def test_a_boolean_property_is_stored_and_returned_as_service_bus_encodes_it(
    emulator: Emulator, client: ServiceBusClient, queue: str
) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(
            ServiceBusMessage(b"x", application_properties={"IsClaimCheck": True, "No": False})
        )
    (stored,) = emulator.call(lambda broker: broker.peek(queue, 0, 1))
    sections = message.split_sections(stored.bare)
    app = next(s for s in sections if s.code == message.APPLICATION_PROPERTIES)
    raw = stored.bare[app.value_start : app.end]
    # Microsoft.Azure.Amqp writes true/false as 0x41/0x42; 0x56 0x01 would reach rhea as 1.
    assert codec.encoded("IsClaimCheck") + b"\x41" in raw
    assert codec.encoded("No") + b"\x42" in raw
    assert b"\x56" not in raw
    props = receive_one(client, queue).application_properties  # type: ignore[attr-defined]
    assert props[b"IsClaimCheck"] is True
    assert props[b"No"] is False


def _sample_token(uri: str, key_name: str, key: str, ttl: int) -> str:
    """How Microsoft's AzureSasCredential sample builds a token: the URI is neither encoded
    before signing nor in the token."""
    expiry = str(int(time.time() + ttl))
    digest = hmac.new(key.encode(), (uri + "\n" + expiry).encode(), hashlib.sha256).digest()
    signature = quote(base64.b64encode(digest))
    return f"SharedAccessSignature sr={uri}&sig={signature}&se={expiry}&skn={key_name}"


def test_a_sas_token_signed_over_the_unencoded_uri_is_accepted(
    emulator: Emulator, queue: str
) -> None:
    namespace = f"127.0.0.1:{emulator.port}"
    token = _sample_token(f"sb://{namespace}/{queue}", DEFAULT_KEY_NAME, DEFAULT_KEY, 300)
    with ServiceBusClient(namespace, AzureSasCredential(token), use_tls=False, retry_total=0) as sb:
        with sb.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage(b"signed like the sample", message_id="s-1"))
        assert receive_one(sb, queue).message_id == "s-1"  # type: ignore[attr-defined]


def test_sql_filters_and_actions_from_config_json_route_over_a_socket(
    emulator: Emulator, client: ServiceBusClient
) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    document = {
        "UserConfig": {
            "Namespaces": [
                {
                    "Name": "ns",
                    "Topics": [
                        {
                            "Name": topic,
                            "Subscriptions": [
                                {
                                    "Name": "big-eu",
                                    "Rules": [
                                        {
                                            "Name": "big-eu",
                                            "Properties": {
                                                "FilterType": "Sql",
                                                "SqlFilter": {
                                                    "SqlExpression": "amount >= 100 AND "
                                                    "region IN ('EU', 'UK') AND "
                                                    "sys.Label LIKE 'Order%'"
                                                },
                                                "Action": {
                                                    "SqlExpression": "SET sys.To = 'eu-desk'; "
                                                    "SET priority = amount / 100; REMOVE secret"
                                                },
                                            },
                                        }
                                    ],
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    }
    (topic_config,) = parse_config(document).topics
    emulator.call(lambda broker: broker.add_topic(topic_config))
    with client.get_topic_sender(topic) as sender:
        sender.send_messages(
            [
                ServiceBusMessage(
                    b"small", subject="OrderPlaced",
                    application_properties={"amount": 50, "region": "EU"},
                ),
                ServiceBusMessage(
                    b"us", subject="OrderPlaced",
                    application_properties={"amount": 500, "region": "US"},
                ),
                ServiceBusMessage(
                    b"big", subject="OrderPlaced",
                    application_properties={"amount": 250, "region": "UK", "secret": "x"},
                ),
            ]
        )  # fmt: skip
    with client.get_subscription_receiver(topic, "big-eu", max_wait_time=5) as receiver:
        got = receiver.receive_messages(max_message_count=3, max_wait_time=5)
        assert [str(m) for m in got] == ["big"]
        receiver.complete_message(got[0])
        assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
    (msg,) = got
    assert msg.to == "eu-desk"
    assert msg.application_properties == {b"amount": 250, b"region": b"UK", b"priority": 2}


def test_a_refused_token_is_an_authentication_error_that_keeps_the_description(
    emulator: Emulator,
) -> None:
    wrong = emulator.connection_string.replace(DEFAULT_KEY, "not-the-key")
    with ServiceBusClient.from_connection_string(wrong, retry_total=0) as sb:
        with pytest.raises(ServiceBusAuthenticationError) as refused:
            with sb.get_queue_sender("orders") as sender:
                sender.send_messages(ServiceBusMessage(b"x"))
    # The SDK keeps the put-token description only when the response has no error-condition
    # (as Service Bus sends it); it retries this error by design, hence retry_total=0 here.
    inner = str(refused.value.inner_exception)
    assert "Status code: 401" in inner
    assert "invalid signature" in inner


def test_a_batch_the_sdk_filled_to_the_limit_is_accepted(
    emulator: Emulator, client: ServiceBusClient, queue: str
) -> None:
    # The SDK copies the first message's id into the batch envelope without counting it, so a
    # batch filled to within a few bytes of the limit is larger than the limit on the wire.
    with client.get_queue_sender(queue) as sender:
        batch = sender.create_message_batch()
        batch.add_message(ServiceBusMessage(b"first", message_id="i" * 128))
        count, body = 1, 1000
        while body > 0 and batch.max_size_in_bytes - batch.size_in_bytes > 60:
            try:
                batch.add_message(ServiceBusMessage(b"y" * body, message_id=f"b-{count}"))
                count += 1
            except MessageSizeExceededError:
                body -= 7
        assert batch.max_size_in_bytes - batch.size_in_bytes <= 60 < 128
        sender.send_messages(batch)
        with pytest.raises(MessageSizeExceededError):
            sender.send_messages([ServiceBusMessage(b"z" * 1000) for _ in range(300)])
    stored = emulator.call(lambda broker: broker.peek(queue, 0, 1000))
    assert len(stored) == count


def test_batch_size_counts_the_data_sections_not_the_envelope() -> None:
    envelope = bytes(codec.encode(message.Properties(message_id="m").to_described()))
    inner = [b"\x00\x53\x75\xa0\x02hi", b"\x00\x53\x75\xb0\x00\x00\x00\x03abc"]
    assert batch_size(envelope + b"".join(inner)) == sum(len(part) for part in inner)
