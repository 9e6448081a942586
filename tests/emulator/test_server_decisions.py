"""The protocol layer's pure decisions: SAS checks, addresses, outcomes, message rendering."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from azure.servicebus._pyamqp import _decode as sdk_decode
from azure.servicebus._pyamqp import _encode as sdk_encode
from azure.servicebus._pyamqp.message import Header as SdkHeader
from azure.servicebus._pyamqp.message import Message as SdkMessage
from azure.servicebus._pyamqp.message import Properties as SdkProperties
from azure.servicebus._pyamqp.utils import generate_sas_token
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus.emulator.amqp import cbs, message
from claimcheck_bus.emulator.amqp.message import Properties
from claimcheck_bus.emulator.amqp.performatives import (
    Accepted,
    AmqpError,
    Modified,
    Rejected,
    Released,
)
from claimcheck_bus.emulator.amqp.types import Int, Symbol
from claimcheck_bus.emulator.broker import BrokerMessage, MessageMeta, MessageState
from claimcheck_bus.emulator.server import (
    SettleAction,
    entity_path_of,
    frame_slices,
    meta_from_message,
    render_message,
    sender_credit,
    settle_action,
    split_management,
    transfer_room,
)

NOW = 1_800_000_000


def test_sas_token_from_the_sdk_verifies() -> None:
    token = generate_sas_token("sb://127.0.0.1:5673/orders", "Root", "secret", NOW + 60)
    check = cbs.check_token(token, key_name="Root", key="secret", now=NOW)
    assert check.ok
    assert check.audience_path == "orders"
    assert cbs.grants(check.audience_path, "Orders/$DeadLetterQueue")
    assert not cbs.grants(check.audience_path, "orders-other")


@pytest.mark.parametrize(
    ("key_name", "key", "now", "reason"),
    [
        ("Root", "wrong", NOW, "invalid signature"),
        ("Other", "secret", NOW, "unknown shared access policy"),
        ("Root", "secret", NOW + 61, "expired"),
    ],
)
def test_sas_token_rejections_say_why(key_name: str, key: str, now: int, reason: str) -> None:
    token = generate_sas_token("sb://h/orders", "Root", "secret", NOW + 60)
    check = cbs.check_token(token, key_name=key_name, key=key, now=now)
    assert not check.ok
    assert reason in check.reason


def test_namespace_wide_token_grants_every_entity() -> None:
    token = cbs.make_token("sb://127.0.0.1:1/", "Root", "k", NOW + 60)
    check = cbs.check_token(token, key_name="Root", key="k", now=NOW)
    assert check.ok
    assert cbs.grants(check.audience_path, "events/Subscriptions/all")


def test_link_addresses_map_to_entity_paths() -> None:
    assert entity_path_of("amqps://127.0.0.1:5673/orders") == "orders"
    assert entity_path_of("sb://h/events/Subscriptions/all/$DeadLetterQueue") == (
        "events/Subscriptions/all/$DeadLetterQueue"
    )
    assert entity_path_of("orders/$management") == "orders/$management"
    assert entity_path_of(None) == ""
    assert split_management("orders/$management") == ("orders", True)
    assert split_management("orders") == ("orders", False)


def test_outcomes_map_to_broker_settlements() -> None:
    assert settle_action(Accepted()) == SettleAction("complete")
    assert settle_action(Released()) == SettleAction("release")
    assert settle_action(Modified(delivery_failed=True, undeliverable_here=False)) == SettleAction(
        "abandon"
    )
    assert settle_action(Modified(delivery_failed=True, undeliverable_here=True)) == SettleAction(
        "defer"
    )
    dead = Rejected(
        error=AmqpError(
            "com.microsoft:dead-letter",
            "d",
            {"DeadLetterReason": "why", "DeadLetterErrorDescription": "details"},
        )
    )
    assert settle_action(dead) == SettleAction("dead_letter", "why", "details")
    assert settle_action(None) is None


def test_a_modified_outcome_counts_as_abandon_whatever_delivery_failed_says() -> None:
    # The JS SDK abandons with undeliverable-here false and delivery-failed unset.
    js_abandon = Modified(undeliverable_here=False, message_annotations={"retry": Int(2)})
    assert settle_action(js_abandon) == SettleAction("abandon", properties={"retry": Int(2)})
    assert settle_action(Modified()) == SettleAction("abandon")
    js_defer = Modified(undeliverable_here=True, message_annotations={Symbol("why"): "later"})
    assert settle_action(js_defer) == SettleAction("defer", properties={"why": "later"})


def test_dead_letter_info_beyond_reason_and_description_is_properties_to_modify() -> None:
    dead = Rejected(
        error=AmqpError(
            "com.microsoft:dead-letter",
            None,
            {"DeadLetterReason": "r", "DeadLetterErrorDescription": None, "Stage": "billing"},
        )
    )
    assert settle_action(dead) == SettleAction("dead_letter", "r", None, {"Stage": "billing"})


def _bare(**sections: object) -> bytes:
    return bytes(message.build_message(**sections))  # type: ignore[arg-type]


def test_a_message_without_id_is_given_one_and_nothing_else_changes() -> None:
    bare = _bare(properties=Properties(subject="s"), application_properties={"n": Int(1)})
    parsed = message.parse_message(bare)
    message.as_service_bus_stores(parsed, lambda: "assigned")
    again = message.parse_message(parsed.bare)
    assert again.properties is not None
    assert again.properties.message_id == "assigned"
    assert again.properties.subject == "s"
    assert again.application_properties == {"n": 1}
    assert parsed.bare.endswith(bare[message.split_sections(bare)[1].start :])


def test_a_message_without_properties_section_is_given_an_id() -> None:
    parsed = message.parse_message(_bare(value="body"))
    message.as_service_bus_stores(parsed, lambda: "assigned")
    assert message.parse_message(parsed.bare).properties == Properties(message_id="assigned")


def test_booleans_are_stored_as_0x41_0x42_and_a_message_with_an_id_is_untouched() -> None:
    sdk = _sdk_encoded(
        properties=SdkProperties(message_id="m"),
        application_properties={"IsClaimCheck": True, "Off": False, "n": 5},
        data=[b"x"],
    )
    assert b"\x56\x01" in sdk  # what the Python SDK writes for True
    parsed = message.parse_message(sdk)
    message.as_service_bus_stores(parsed, lambda: "unused")
    assert b"IsClaimCheck\x41" in parsed.bare
    assert b"Off\x42" in parsed.bare
    assert message.parse_message(parsed.bare).application_properties == {
        "IsClaimCheck": True,
        "Off": False,
        "n": 5,
    }
    plain = message.parse_message(
        _sdk_encoded(properties=SdkProperties(message_id="m"), data=[b"x"])
    )
    before = plain.bare
    message.as_service_bus_stores(plain, lambda: "unused")
    assert plain.bare is before


def test_locked_deliveries_carry_the_lock_token_and_the_senders_delivery_annotations() -> None:
    sent = _sdk_encoded(
        delivery_annotations={"x-custom": "v"},
        properties=SdkProperties(message_id="m"),
        data=[b"x"],
    )
    parsed = message.parse_message(sent)
    token = uuid.uuid4()
    msg = BrokerMessage(
        sequence_number=1,
        bare=parsed.bare,
        meta=meta_from_message(parsed),
        enqueued_time=datetime(2030, 1, 1, tzinfo=timezone.utc),
        lock_token=token,
        locked_until=datetime(2030, 1, 1, 0, 1, tzinfo=timezone.utc),
    )
    locked = sdk_decode.decode_payload(memoryview(bytes(render_message(msg, locked=True))))
    assert locked.delivery_annotations == {b"x-custom": b"v", b"x-opt-lock-token": token}
    peeked = sdk_decode.decode_payload(memoryview(bytes(render_message(msg, locked=False))))
    assert peeked.delivery_annotations == {b"x-custom": b"v"}


def _sdk_encoded(**kwargs: object) -> bytes:
    out = bytearray()
    sdk_encode.encode_payload(out, SdkMessage(**kwargs))  # type: ignore[arg-type]
    return bytes(out)


def test_meta_from_an_sdk_message() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    data = _sdk_encoded(
        header=SdkHeader(ttl=1500),
        message_annotations={b"x-opt-scheduled-enqueue-time": when},
        properties=SdkProperties(
            message_id=uuid.UUID(int=5),
            correlation_id="c",
            subject="s",
            to="t",
            reply_to="r",
            content_type="ct",
            group_id="g",
            reply_to_group_id="rg",
        ),
        application_properties={"region": "eu", "n": 3},
        data=[b"body"],
    )
    meta = meta_from_message(message.parse_message(data))
    assert meta == MessageMeta(
        message_id=str(uuid.UUID(int=5)),
        correlation_id="c",
        session_id="g",
        reply_to_session_id="rg",
        subject="s",
        to="t",
        reply_to="r",
        content_type="ct",
        time_to_live=timedelta(milliseconds=1500),
        scheduled_enqueue_time=when,
        application_properties={"region": "eu", "n": 3},
    )


@given(
    reason=st.one_of(st.none(), st.text(max_size=40)),
    description=st.one_of(st.none(), st.text(max_size=300)),
    delivery_count=st.integers(0, 1000),
    state=st.sampled_from(list(MessageState)),
)
def test_rendered_messages_decode_in_the_sdk(
    reason: str | None, description: str | None, delivery_count: int, state: MessageState
) -> None:
    bare = message.parse_message(
        _sdk_encoded(
            properties=SdkProperties(message_id="m"),
            application_properties={"k": "v"},
            data=[b"payload"],
        )
    ).bare
    enqueued = datetime(2030, 1, 1, tzinfo=timezone.utc)
    msg = BrokerMessage(
        sequence_number=77,
        bare=bare,
        meta=MessageMeta(message_id="m"),
        enqueued_time=enqueued,
        delivery_count=delivery_count,
        state=state,
        expires_at=enqueued + timedelta(seconds=30),
        dead_letter_reason=reason,
        dead_letter_description=description,
        dead_letter_source="orders" if reason is not None else None,
        lock_token=uuid.uuid4(),
        locked_until=enqueued + timedelta(seconds=5),
    )
    decoded = sdk_decode.decode_payload(memoryview(render_message(msg, locked=True)))
    assert decoded.header.delivery_count == delivery_count
    assert decoded.header.ttl == 30_000
    annotations = decoded.message_annotations
    assert annotations[b"x-opt-sequence-number"] == 77
    assert annotations[b"x-opt-enqueued-time"] == 1_893_456_000_000
    assert annotations[b"x-opt-locked-until"] == 1_893_456_005_000
    assert annotations.get(b"x-opt-message-state", 0) == int(state)
    app = decoded.application_properties
    assert app[b"k"] == b"v"
    if reason is None:
        assert b"DeadLetterReason" not in app
    else:
        assert app[b"DeadLetterReason"] == reason.encode()
        assert annotations[b"x-opt-deadletter-source"] == b"orders"
    if description is not None:
        assert app[b"DeadLetterErrorDescription"] == description.encode()
    assert decoded.data == [b"payload"]
    assert decoded.properties.message_id == b"m"


def test_sender_credit_follows_the_receivers_view() -> None:
    assert sender_credit(0, 10, 0) == 10
    assert sender_credit(0, 10, 4) == 6  # four sent since the receiver's flow
    assert sender_credit(None, 5, 7) == 5  # no delivery-count yet: relative to ours
    assert sender_credit(0, 3, 9) == 0  # never negative


def test_transfer_room_from_session_flow() -> None:
    assert transfer_room(0, 65536, 0) == 65536
    assert transfer_room(100, 10, 110) == 0
    assert transfer_room(100, 10, 105) == 5


@given(size=st.integers(0, 10_000), room=st.integers(1, 3000))
def test_frame_slices_cover_the_payload_once(size: int, room: int) -> None:
    slices = frame_slices(size, room)
    assert slices[0][0] == 0
    assert slices[-1][1] == size
    assert all(end - start <= room for start, end in slices)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
    assert len(slices) == max(1, -(-size // room))


def _token(resource: str, key: str, expiry: int, key_name: str = "Root") -> str:
    """A token whose `sr` is `resource` verbatim, signed over exactly that text."""
    sig = quote(cbs.sign_resource(resource, key, expiry), safe="")
    return f"SharedAccessSignature sr={resource}&sig={sig}&se={expiry}&skn={key_name}"


@pytest.mark.parametrize(
    "resource",
    [
        # Microsoft's AzureSasCredential sample: signed and sent without URL-encoding.
        "sb://127.0.0.1:5673/orders",
        # JavaScript's encodeURIComponent and .NET's WebUtility.UrlEncode: upper-case escapes.
        quote("sb://127.0.0.1:5673/orders", safe=""),
        # HttpUtility.UrlEncode (older .NET): lower-case escapes.
        "sb%3a%2f%2f127.0.0.1%3a5673%2forders",
    ],
)
def test_sas_signature_is_verified_over_the_resource_as_written(resource: str) -> None:
    check = cbs.check_token(
        _token(resource, "secret", NOW + 60), key_name="Root", key="secret", now=NOW
    )
    assert check.ok, check.reason
    assert check.audience_path == "orders"


def test_sas_signature_over_another_spelling_of_the_resource_is_refused() -> None:
    sig = quote(cbs.sign_resource("sb://h/orders", "secret", NOW + 60), safe="")
    token = f"SharedAccessSignature sr=sb%3A%2F%2Fh%2Forders&sig={sig}&se={NOW + 60}&skn=Root"
    check = cbs.check_token(token, key_name="Root", key="secret", now=NOW)
    assert not check.ok
    assert check.reason == "invalid signature"


def test_a_rule_action_rewrites_properties_and_keeps_the_body() -> None:
    sent = _sdk_encoded(
        properties=SdkProperties(message_id="m", subject="s"),
        application_properties={"keep": Int(7), "drop": "x"},
        data=[b"body"],
    )
    bare = message.parse_message(sent).bare
    changed = message.with_changes(
        bare, {"to": "Entity", "group_id": "sess"}, {"drop": None, "added": 3, "f": 0.5}
    )
    decoded = sdk_decode.decode_payload(memoryview(changed))
    assert decoded.properties.to == b"Entity"
    assert decoded.properties.subject == b"s"
    assert decoded.properties.group_id == b"sess"
    assert decoded.application_properties == {b"keep": 7, b"added": 3, b"f": 0.5}
    assert b"added\x55\x03" in changed  # an integer set by an action is an AMQP long
    assert decoded.data == [b"body"]  # type: ignore[comparison-overlap]
