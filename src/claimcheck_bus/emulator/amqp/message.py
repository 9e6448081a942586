"""AMQP 1.0 message sections (part 3.2): split, parse and assemble without touching the body.

The body (data / amqp-value / amqp-sequence) is never decoded: sections are located by skipping,
and the bare message (properties, application-properties, body) is kept as one byte string that
is passed back to receivers unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import codec
from .codec import DecodeError
from .types import Described, Long, Symbol, Timestamp, UByte, UInt, ULong

HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78

BATCH_FORMAT = 0x80013700

_BARE = (PROPERTIES, APPLICATION_PROPERTIES, DATA, AMQP_SEQUENCE, AMQP_VALUE)
_SYMBOLIC = {
    "amqp:header:list": HEADER,
    "amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
    "amqp:message-annotations:map": MESSAGE_ANNOTATIONS,
    "amqp:properties:list": PROPERTIES,
    "amqp:application-properties:map": APPLICATION_PROPERTIES,
    "amqp:data:binary": DATA,
    "amqp:amqp-sequence:list": AMQP_SEQUENCE,
    "amqp:amqp-value:*": AMQP_VALUE,
    "amqp:footer:map": FOOTER,
}


@dataclass(frozen=True)
class Section:
    """Where one section sits in a message buffer: [start, end), its value at value_start."""

    code: int
    start: int
    value_start: int
    end: int


def split_sections(buf: codec.Buffer) -> list[Section]:
    """Locate every section of an encoded message, decoding only the descriptors."""
    sections: list[Section] = []
    pos = 0
    size = len(buf)
    while pos < size:
        if buf[pos] != 0x00:
            raise DecodeError(f"message section at offset {pos} is not a described value")
        descriptor, value_start = codec.decode(buf, pos + 1)
        if isinstance(descriptor, str):
            code = _SYMBOLIC.get(str(descriptor), -1)
        elif isinstance(descriptor, int):
            code = int(descriptor)
        else:
            code = -1
        if not HEADER <= code <= FOOTER:
            raise DecodeError(f"unknown message section descriptor {descriptor!r}")
        end = codec.skip(buf, value_start)
        sections.append(Section(code, pos, value_start, end))
        pos = end
    return sections


@dataclass
class Properties:
    """The properties section (message-id and correlation-id keep their AMQP type)."""

    message_id: object = None
    user_id: bytes | None = None
    to: str | None = None
    subject: str | None = None
    reply_to: str | None = None
    correlation_id: object = None
    content_type: str | None = None
    content_encoding: str | None = None
    absolute_expiry_time: int | None = None
    creation_time: int | None = None
    group_id: str | None = None
    group_sequence: int | None = None
    reply_to_group_id: str | None = None

    def to_described(self) -> Described:
        """The section as a described list (trailing nulls trimmed)."""
        values: list[object] = [
            self.message_id,
            self.user_id,
            self.to,
            self.subject,
            self.reply_to,
            self.correlation_id,
            None if self.content_type is None else Symbol(self.content_type),
            None if self.content_encoding is None else Symbol(self.content_encoding),
            None if self.absolute_expiry_time is None else Timestamp(self.absolute_expiry_time),
            None if self.creation_time is None else Timestamp(self.creation_time),
            self.group_id,
            None if self.group_sequence is None else UInt(self.group_sequence),
            self.reply_to_group_id,
        ]
        while values and values[-1] is None:
            values.pop()
        return Described(ULong(PROPERTIES), values)


@dataclass
class Header:
    """The header section."""

    durable: bool | None = None
    priority: int | None = None
    ttl: int | None = None  # milliseconds
    first_acquirer: bool | None = None
    delivery_count: int | None = None

    def to_described(self) -> Described:
        """The section as a described list (trailing nulls trimmed)."""
        values: list[object] = [
            self.durable,
            None if self.priority is None else UByte(self.priority),
            None if self.ttl is None else UInt(self.ttl),
            self.first_acquirer,
            None if self.delivery_count is None else UInt(self.delivery_count),
        ]
        while values and values[-1] is None:
            values.pop()
        return Described(ULong(HEADER), values)


@dataclass
class ParsedMessage:
    """What a receiver of a transfer needs: the annotated parts decoded, the bare part as bytes."""

    header: Header | None = None
    message_annotations: dict[Any, object] = field(default_factory=dict)
    properties: Properties | None = None
    application_properties: dict[Any, object] = field(default_factory=dict)
    body: object = None  # only decoded for amqp-value bodies (management requests)
    bare: bytes = b""
    delivery_annotations: bytes = b""  # the whole encoded section, as the sender wrote it


def _list_fields(value: object, size: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > size:
        raise DecodeError(f"malformed {what} section")
    return value + [None] * (size - len(value))


def _map(value: object, what: str) -> dict[Any, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError(f"malformed {what} section")
    return value


def parse_message(buf: codec.Buffer, *, decode_value: bool = False) -> ParsedMessage:
    """Parse an encoded message; `decode_value` also decodes an amqp-value body."""
    result = ParsedMessage()
    bare_start: int | None = None
    bare_end = 0
    for section in split_sections(buf):
        code = section.code
        if code in _BARE:
            if bare_start is None:
                bare_start = section.start
            bare_end = section.end
        if code == DELIVERY_ANNOTATIONS:
            result.delivery_annotations = bytes(buf[section.start : section.end])
            continue
        if code in (DATA, AMQP_SEQUENCE, FOOTER):
            continue
        if code == AMQP_VALUE:
            if decode_value:
                result.body = codec.decode(buf, section.value_start)[0]
            continue
        value = codec.decode(buf, section.value_start)[0]
        if code == HEADER:
            result.header = Header(*_list_fields(value, 5, "header"))
        elif code == MESSAGE_ANNOTATIONS:
            result.message_annotations = _map(value, "message-annotations")
        elif code == PROPERTIES:
            result.properties = Properties(*_list_fields(value, 13, "properties"))
        elif code == APPLICATION_PROPERTIES:
            result.application_properties = _map(value, "application-properties")
    if bare_start is not None:
        result.bare = bytes(buf[bare_start:bare_end])
    return result


def as_service_bus_stores(parsed: ParsedMessage, new_message_id: Callable[[], str]) -> None:
    """Rewrite a received bare message as Service Bus hands it out again, in place.

    Service Bus decodes what it receives into its own message and encodes it again on delivery
    with Microsoft.Azure.Amqp, which writes a boolean as 0x41/0x42 (never 0x56 0x01: rhea, the
    JS SDK's AMQP stack, reads that as the number 1). It also gives a message sent without a
    message-id one of its own. Only those two things change; everything else passes through.
    """
    props = parsed.properties
    app = parsed.application_properties
    needs_id = props is None or props.message_id is None
    has_bool = any(isinstance(value, bool) for value in app.values())
    if not needs_id and not has_bool:
        return
    out = bytearray()
    for section in split_sections(parsed.bare):
        if section.code == PROPERTIES and needs_id:
            continue
        if section.code == APPLICATION_PROPERTIES and has_bool:
            codec.encode(Described(ULong(APPLICATION_PROPERTIES), dict(app)), out)
            continue
        out += parsed.bare[section.start : section.end]
    if needs_id:
        props = props if props is not None else Properties()
        props.message_id = new_message_id()
        parsed.properties = props
        out[0:0] = codec.encode(props.to_described())
    parsed.bare = bytes(out)


def batch_payloads(buf: codec.Buffer) -> list[memoryview]:
    """The inner messages of a batch (message-format 0x80013700): one per data section."""
    view = memoryview(buf)
    inner: list[memoryview] = []
    for section in split_sections(view):
        if section.code != DATA:
            continue
        # The value is a binary: skip its constructor and length prefix.
        constructor = view[section.value_start]
        prefix = 2 if constructor == 0xA0 else 5
        if constructor not in (0xA0, 0xB0):
            raise DecodeError("batch data section is not a binary")
        inner.append(view[section.value_start + prefix : section.end])
    return inner


def with_application_properties(bare: bytes, extra: Mapping[str, object]) -> bytes:
    """The bare message with `extra` merged into its application-properties section."""
    if not extra:
        return bare
    sections = split_sections(bare)
    existing: dict[Any, object] = {}
    insert_at = 0
    cut_start = cut_end = None
    for section in sections:
        if section.code == PROPERTIES:
            insert_at = section.end
        elif section.code == APPLICATION_PROPERTIES:
            existing = _map(codec.decode(bare, section.value_start)[0], "application-properties")
            cut_start, cut_end = section.start, section.end
    merged = dict(existing)
    merged.update(extra)
    encoded = codec.encode(Described(ULong(APPLICATION_PROPERTIES), merged))
    if cut_start is not None and cut_end is not None:
        return bare[:cut_start] + bytes(encoded) + bare[cut_end:]
    return bare[:insert_at] + bytes(encoded) + bare[insert_at:]


def _typed(value: object) -> object:
    """A value computed by a rule action as Service Bus encodes it (integers are longs)."""
    if isinstance(value, bool) or value is None or isinstance(value, (float, str, datetime)):
        return value
    if isinstance(value, int):
        return Long(value)
    return str(value)


def with_changes(bare: bytes, system: Mapping[str, object], user: Mapping[str, object]) -> bytes:
    """The bare message after a rule action: properties fields (by Properties attribute name)
    and application properties set, or removed where the value is None."""
    out = bytearray()
    props: Properties | None = None
    app: dict[Any, object] = {}
    rest = bytearray()
    for section in split_sections(bare):
        if section.code == PROPERTIES:
            fields = codec.decode(bare, section.value_start)[0]
            props = Properties(*_list_fields(fields, 13, "properties"))
        elif section.code == APPLICATION_PROPERTIES:
            app = _map(codec.decode(bare, section.value_start)[0], "application-properties")
        else:
            rest += bare[section.start : section.end]
    if system:
        props = props if props is not None else Properties()
        for name, item in system.items():
            setattr(props, name, None if item is None else str(item))
    for name, item in user.items():
        if item is None:
            app.pop(name, None)
        else:
            app[name] = _typed(item)
    if props is not None:
        codec.encode(props.to_described(), out)
    if app:
        codec.encode(Described(ULong(APPLICATION_PROPERTIES), app), out)
    return bytes(out + rest)


def assemble(
    header: Header | None,
    message_annotations: Mapping[Any, object] | None,
    bare: bytes,
    delivery_annotations: Mapping[Any, object] | None = None,
) -> bytearray:
    """Header, delivery and message annotations, then the bare message, in one buffer."""
    out = bytearray()
    if header is not None:
        codec.encode(header.to_described(), out)
    if delivery_annotations:
        codec.encode(Described(ULong(DELIVERY_ANNOTATIONS), dict(delivery_annotations)), out)
    if message_annotations:
        codec.encode(Described(ULong(MESSAGE_ANNOTATIONS), dict(message_annotations)), out)
    out += bare
    return out


def build_message(
    *,
    properties: Properties | None = None,
    application_properties: Mapping[str, object] | None = None,
    value: object = None,
) -> bytearray:
    """A small message with an amqp-value body (management and CBS responses)."""
    out = bytearray()
    if properties is not None:
        codec.encode(properties.to_described(), out)
    if application_properties:
        codec.encode(Described(ULong(APPLICATION_PROPERTIES), dict(application_properties)), out)
    codec.encode(Described(ULong(AMQP_VALUE), value), out)
    return out


def annotations_map(section: bytes) -> dict[Any, object]:
    """The map of an encoded annotations section (b"" -> {})."""
    if not section:
        return {}
    sections = split_sections(section)
    if len(sections) != 1:
        raise DecodeError("expected exactly one annotations section")
    return _map(codec.decode(section, sections[0].value_start)[0], "annotations")


def id_to_str(value: object) -> str | None:
    """A message-id / correlation-id of any AMQP id type as the string Service Bus compares."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)
