"""Round trips of the emulator's AMQP codec, with the SDK's private codec as the oracle.

Our encoder -> the SDK's decoder, and the SDK's encoder -> our decoder, over generated values of
every type the SDK can encode; plus framing, sections and hostile inputs.
"""

from __future__ import annotations

import contextlib
import struct
import uuid
from typing import Any

import pytest
from azure.servicebus._pyamqp import _decode as sdk_decode
from azure.servicebus._pyamqp import _encode as sdk_encode
from azure.servicebus._pyamqp.message import Message as SdkMessage
from azure.servicebus._pyamqp.message import Properties as SdkProperties
from azure.servicebus._pyamqp.performatives import AttachFrame, TransferFrame
from azure.servicebus._pyamqp.types import TYPE, VALUE, AMQPTypes
from hypothesis import given, settings
from hypothesis import strategies as st

from claimcheck_bus.emulator.amqp import codec, framing, message, performatives
from claimcheck_bus.emulator.amqp.types import (
    Array,
    Byte,
    Described,
    Float32,
    Int,
    Long,
    Short,
    Symbol,
    Timestamp,
    UByte,
    UInt,
    ULong,
    UShort,
)

# Generated nested values are large by design; hypothesis warns about their repr size.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

# ------------------------------------------------------------------------------- strategies

_float32 = st.floats(width=32, allow_nan=False).map(Float32)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(0, 2**8 - 1).map(UByte),
    st.integers(0, 2**16 - 1).map(UShort),
    st.integers(0, 2**32 - 1).map(UInt),
    st.integers(0, 2**64 - 1).map(ULong),
    st.integers(-(2**7), 2**7 - 1).map(Byte),
    st.integers(-(2**15), 2**15 - 1).map(Short),
    st.integers(-(2**31), 2**31 - 1).map(Int),
    st.integers(-(2**63), 2**63 - 1).map(Long),
    _float32,
    st.floats(allow_nan=False),
    st.integers(-(2**63), 2**63 - 1).map(Timestamp),
    st.uuids(),
    st.binary(max_size=300),
    st.text(max_size=300),
    st.text(alphabet=st.characters(max_codepoint=127), max_size=300).map(Symbol),
)
_keys = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=127), max_size=20).map(Symbol),
    st.integers(0, 2**64 - 1).map(ULong),
)
# Arrays in the encodings the SDK emits for them (it always uses the wide element forms).
_arrays = st.one_of(
    st.lists(st.uuids(), min_size=1, max_size=20).map(lambda v: Array(0x98, v)),
    st.lists(st.integers(-(2**63), 2**63 - 1).map(Long), min_size=1).map(lambda v: Array(0x81, v)),
    st.lists(st.integers(-(2**31), 2**31 - 1).map(Int), min_size=1).map(lambda v: Array(0x71, v)),
    st.lists(st.integers(0, 2**62).map(Timestamp), min_size=1).map(lambda v: Array(0x83, v)),
    st.lists(
        st.text(alphabet=st.characters(max_codepoint=127), max_size=30).map(Symbol), min_size=1
    ).map(lambda v: Array(0xB3, v)),
    st.lists(st.text(max_size=30), min_size=1).map(lambda v: Array(0xB1, v)),
    st.lists(st.binary(max_size=30), min_size=1).map(lambda v: Array(0xB0, v)),
)


def _maps(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[Any, Any]]:
    pairs = st.lists(st.tuples(_keys, children), max_size=8, unique_by=lambda kv: _norm(kv[0]))
    return pairs.map(dict)


_values = st.recursive(
    st.one_of(_scalars, _arrays),
    lambda children: st.one_of(
        st.lists(children, max_size=8),
        _maps(children),
        # Described values with a descriptor the SDK does not treat specially (35-39 are
        # outcomes); not maps, whose described form the SDK decodes into a dict subclass that
        # keeps the descriptor as an entry.
        st.tuples(st.integers(0x100, 2**32).map(ULong), children)
        .filter(lambda t: not isinstance(t[1], dict))
        .map(lambda t: Described(*t)),
    ),
    max_leaves=20,
)


# ------------------------------------------------------------------------------- helpers


def _norm(value: Any) -> Any:
    """Our typed value in the shape the SDK's decoder produces (strings as bytes, no types)."""
    if isinstance(value, Described):
        return _norm(value.value)
    if isinstance(value, Array):
        return [_norm(v) for v in value.items]
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {_norm(k): _norm(v) for k, v in value.items()}
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


_SDK_TYPES = {
    UByte: AMQPTypes.ubyte,
    UShort: AMQPTypes.ushort,
    UInt: AMQPTypes.uint,
    ULong: AMQPTypes.ulong,
    Byte: AMQPTypes.byte,
    Short: AMQPTypes.short,
    Int: AMQPTypes.int,
    Long: AMQPTypes.long,
    Float32: AMQPTypes.float,
    float: AMQPTypes.double,
    Timestamp: AMQPTypes.timestamp,
    uuid.UUID: AMQPTypes.uuid,
    bytes: AMQPTypes.binary,
    str: AMQPTypes.string,
    Symbol: AMQPTypes.symbol,
    bool: AMQPTypes.boolean,
}
_ARRAY_TYPES = {
    0x98: AMQPTypes.uuid,
    0x81: AMQPTypes.long,
    0x71: AMQPTypes.int,
    0x83: AMQPTypes.timestamp,
    0xB3: AMQPTypes.symbol,
    0xB1: AMQPTypes.string,
    0xB0: AMQPTypes.binary,
}


def _to_sdk(value: Any) -> Any:
    """Our typed value as the SDK encoder's {TYPE, VALUE} description."""
    if value is None:
        return {TYPE: AMQPTypes.null, VALUE: None}
    if isinstance(value, Described):
        return {TYPE: AMQPTypes.described, VALUE: (_to_sdk(value.descriptor), _to_sdk(value.value))}
    if isinstance(value, Array):
        kind = _ARRAY_TYPES[value.code]
        return {TYPE: AMQPTypes.array, VALUE: [{TYPE: kind, VALUE: v} for v in value.items]}
    if isinstance(value, list):
        return {TYPE: AMQPTypes.list, VALUE: [_to_sdk(v) for v in value]}
    if isinstance(value, dict):
        return {TYPE: AMQPTypes.map, VALUE: [(_to_sdk(k), _to_sdk(v)) for k, v in value.items()]}
    return {TYPE: _SDK_TYPES[type(value)], VALUE: value}


def _sdk_decoded(data: bytes) -> Any:
    view = memoryview(data)
    rest, value = sdk_decode._DECODE_BY_CONSTRUCTOR[view[0]](view[1:])
    assert len(rest) == 0
    return value


def _typed_equal(a: Any, b: Any) -> bool:
    """Equal values *and* equal AMQP types, recursively."""
    if isinstance(a, Array) and isinstance(b, Array):
        return (
            a.code == b.code
            and len(a.items) == len(b.items)
            and all(_typed_equal(x, y) for x, y in zip(a.items, b.items, strict=True))
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, Described):
        return _typed_equal(a.descriptor, b.descriptor) and _typed_equal(a.value, b.value)
    if isinstance(a, list):
        return len(a) == len(b) and all(_typed_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        pairs = zip(a.items(), b.items(), strict=True)
        return all(_typed_equal(ka, kb) and _typed_equal(va, vb) for (ka, va), (kb, vb) in pairs)
    return bool(a == b)


# ------------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(_values)
def test_our_encoding_decodes_in_the_sdk(value: Any) -> None:
    assert _sdk_decoded(codec.encoded(value)) == _norm(value)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_sdk_encoding_decodes_to_the_same_typed_value(value: Any) -> None:
    out = bytearray()
    sdk_encode.encode_value(out, _to_sdk(value))
    decoded = codec.decode_all(bytes(out))
    assert _typed_equal(decoded, value), (decoded, value)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_own_round_trip_keeps_types_and_skip_agrees(value: Any) -> None:
    data = codec.encoded(value)
    assert _typed_equal(codec.decode_all(data), value)
    assert codec.skip(data, 0) == len(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_escapes_as_anything_but_decode_error(data: bytes) -> None:
    with contextlib.suppress(codec.DecodeError):
        codec.decode_all(data)


def test_hostile_counts_do_not_allocate() -> None:
    # list32 claiming 2**32-1 elements in a 9-byte body.
    hostile = b"\xd0" + struct.pack(">II", 8, 0xFFFFFFFF) + b"\x40" * 4
    with pytest.raises(codec.DecodeError):
        codec.decode_all(hostile)
    deep = b"\xc0\x02\x01" * 200 + b"\x40"
    with pytest.raises(codec.DecodeError):
        codec.decode_all(deep)


def test_large_binary_encodes_in_linear_time_and_skips_without_copying() -> None:
    blob = b"x" * (8 * 1024 * 1024)
    data = codec.encode(Described(ULong(0x75), blob))
    assert codec.skip(data, 0) == len(data)
    assert message.split_sections(data)[0].end == len(data)


# ------------------------------------------------------------------------------- frames


def test_performative_round_trip_against_sdk_frames() -> None:
    attach = performatives.Attach(
        name="link-1",
        handle=3,
        role=True,
        snd_settle_mode=0,
        rcv_settle_mode=1,
        source=performatives.Source(address="amqps://h/orders"),
        target=performatives.Target(address="client"),
        initial_delivery_count=0,
        max_message_size=262144,
        properties={"com.microsoft:max-message-batch-size": ULong(262144)},
    )
    data = framing.frame(1, attach)
    header = framing.parse_header(bytes(data[:8]), 1 << 20)
    assert (header.size, header.channel) == (len(data), 1)
    frame_type, fields = sdk_decode.decode_frame(memoryview(data)[8:])
    assert frame_type == 0x12
    sdk_attach = AttachFrame(*fields)
    assert sdk_attach.name == b"link-1"
    assert sdk_attach.handle == 3
    assert sdk_attach.max_message_size == 262144
    assert sdk_attach.source[0] == b"amqps://h/orders"
    assert sdk_attach.properties == {b"com.microsoft:max-message-batch-size": 262144}
    parsed, payload = framing.parse_body(header, bytes(data[8:]))
    assert parsed == attach
    assert not payload


def test_sdk_transfer_frame_parses_with_payload() -> None:
    body = bytearray()
    sdk_encode.encode_payload(
        body,
        SdkMessage(
            data=[b"hello"],
            properties=SdkProperties(message_id="m-1", content_type="text/plain"),
            application_properties={"kind": "invoice", "n": 7},
        ),
    )
    transfer = TransferFrame(
        handle=2, delivery_id=5, delivery_tag=b"\x00\x00\x00\x01", message_format=0,
        settled=False, more=False, payload=bytes(body),
    )  # fmt: skip
    head, rest = sdk_encode.encode_frame(transfer)
    assert rest is not None
    header = framing.parse_header(head + b"\x00\x01", 1 << 20)  # the SDK appends the channel
    parsed, payload = framing.parse_body(header, rest)
    assert isinstance(parsed, performatives.Transfer)
    assert (parsed.handle, parsed.delivery_id, parsed.delivery_tag) == (2, 5, b"\x00\x00\x00\x01")
    msg = message.parse_message(payload)
    assert msg.properties is not None
    assert msg.properties.message_id == "m-1"
    assert msg.properties.content_type == "text/plain"
    assert msg.application_properties == {"kind": "invoice", "n": 7}
    assert msg.bare == bytes(body)


def test_dead_letter_properties_merge_keeps_other_sections_byte_for_byte() -> None:
    body = bytearray()
    sdk_encode.encode_payload(
        body,
        SdkMessage(
            data=[b"payload"],
            properties=SdkProperties(message_id="m-2"),
            application_properties={"a": 1},
        ),
    )
    merged = message.with_application_properties(bytes(body), {"DeadLetterReason": "why"})
    decoded = sdk_decode.decode_payload(memoryview(merged))
    assert decoded.application_properties == {b"a": 1, b"DeadLetterReason": b"why"}
    assert decoded.data == [b"payload"]
    assert decoded.properties.message_id == b"m-2"
