"""AMQP 1.0 composite types: performatives, SASL frames, link terminus, errors, outcomes.

Each composite is a dataclass whose fields follow the spec's order. `to_described()` converts the
Python values to the field's AMQP type (handles are uint, settle modes ubyte, ...) and trims
trailing nulls; `from_described()` maps a decoded described list back, padding omitted fields
with their defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from .types import Array, Described, Symbol, UByte, UInt, ULong, UShort

Convert = Callable[[Any], object]


def _symbols(value: Any) -> object:
    """A symbol or array of symbols ("multiple" fields) from str / list of str."""
    if isinstance(value, str):
        return Symbol(value)
    return Array(0xA3, [Symbol(v) for v in value])


def _fields(value: Any) -> object:
    """A fields map: symbol keys, values as given."""
    return {Symbol(k) if isinstance(k, str) else k: v for k, v in value.items()}


def _composite(value: Any) -> object:
    return value.to_described() if isinstance(value, Composite) else value


_IDENTITY: Convert = lambda v: v  # noqa: E731
_T = TypeVar("_T", bound="Composite")


class Composite:
    """Base of the described-list types; subclasses are dataclasses with CODE and CONVERT."""

    CODE: ClassVar[int]
    # Per field, the converter to its AMQP type when encoding (same order as the dataclass).
    CONVERT: ClassVar[tuple[Convert, ...]]

    def to_described(self) -> Described:
        """This composite as a described list ready for `codec.encode`."""
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        while values and values[-1] is None:
            values.pop()
        body = [
            None if value is None else convert(value)
            for value, convert in zip(values, self.CONVERT, strict=False)
        ]
        return Described(ULong(self.CODE), body)

    @classmethod
    def from_list(cls: type[_T], values: list[Any]) -> _T:
        """Build from a decoded field list; omitted or null fields take their defaults."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        kwargs = {
            name: value for name, value in zip(names, values, strict=False) if value is not None
        }
        return cls(**kwargs)


@dataclasses.dataclass
class AmqpError(Composite):
    """amqp:error:list."""

    CODE = 0x1D
    condition: str = ""
    description: str | None = None
    info: Mapping[Any, Any] | None = None
    CONVERT = (Symbol, str, _fields)

    def to_described(self) -> Described:
        """All three fields, nulls included: the SDK indexes error[2] without a length check."""
        return Described(
            ULong(self.CODE),
            [
                Symbol(self.condition),
                None if self.description is None else str(self.description),
                None if self.info is None else _fields(self.info),
            ],
        )


@dataclasses.dataclass
class Open(Composite):
    """amqp:open:list."""

    CODE = 0x10
    container_id: str = ""
    hostname: str | None = None
    max_frame_size: int = 0xFFFFFFFF
    channel_max: int = 0xFFFF
    idle_time_out: int | None = None
    outgoing_locales: Any = None
    incoming_locales: Any = None
    offered_capabilities: Any = None
    desired_capabilities: Any = None
    properties: Mapping[Any, Any] | None = None
    CONVERT = (str, str, UInt, UShort, UInt, _symbols, _symbols, _symbols, _symbols, _fields)


@dataclasses.dataclass
class Begin(Composite):
    """amqp:begin:list."""

    CODE = 0x11
    remote_channel: int | None = None
    next_outgoing_id: int = 0
    incoming_window: int = 0
    outgoing_window: int = 0
    handle_max: int = 0xFFFFFFFF
    offered_capabilities: Any = None
    desired_capabilities: Any = None
    properties: Mapping[Any, Any] | None = None
    CONVERT = (UShort, UInt, UInt, UInt, UInt, _symbols, _symbols, _fields)


@dataclasses.dataclass
class Source(Composite):
    """amqp:source:list (the terminus a receiver reads from)."""

    CODE = 0x28
    address: str | None = None
    durable: int | None = None
    expiry_policy: str | None = None
    timeout: int | None = None
    dynamic: bool | None = None
    dynamic_node_properties: Mapping[Any, Any] | None = None
    distribution_mode: str | None = None
    filter: Mapping[Any, Any] | None = None
    default_outcome: Any = None
    outcomes: Any = None
    capabilities: Any = None
    CONVERT = (
        str, UInt, Symbol, UInt, bool, _fields, Symbol, _fields, _composite, _symbols, _symbols
    )  # fmt: skip


@dataclasses.dataclass
class Target(Composite):
    """amqp:target:list (the terminus a sender writes to)."""

    CODE = 0x29
    address: str | None = None
    durable: int | None = None
    expiry_policy: str | None = None
    timeout: int | None = None
    dynamic: bool | None = None
    dynamic_node_properties: Mapping[Any, Any] | None = None
    capabilities: Any = None
    CONVERT = (str, UInt, Symbol, UInt, bool, _fields, _symbols)


@dataclasses.dataclass
class Attach(Composite):
    """amqp:attach:list. role False = sender, True = receiver."""

    CODE = 0x12
    name: str = ""
    handle: int = 0
    role: bool = False
    snd_settle_mode: int = 2
    rcv_settle_mode: int = 0
    source: Any = None
    target: Any = None
    unsettled: Mapping[Any, Any] | None = None
    incomplete_unsettled: bool = False
    initial_delivery_count: int | None = None
    max_message_size: int | None = None
    offered_capabilities: Any = None
    desired_capabilities: Any = None
    properties: Mapping[Any, Any] | None = None
    CONVERT = (
        str, UInt, bool, UByte, UByte, _composite, _composite, _IDENTITY, bool, UInt, ULong,
        _symbols, _symbols, _fields,
    )  # fmt: skip


@dataclasses.dataclass
class Flow(Composite):
    """amqp:flow:list."""

    CODE = 0x13
    next_incoming_id: int | None = None
    incoming_window: int = 0
    next_outgoing_id: int = 0
    outgoing_window: int = 0
    handle: int | None = None
    delivery_count: int | None = None
    link_credit: int | None = None
    available: int | None = None
    drain: bool = False
    echo: bool = False
    properties: Mapping[Any, Any] | None = None
    CONVERT = (UInt, UInt, UInt, UInt, UInt, UInt, UInt, UInt, bool, bool, _fields)


@dataclasses.dataclass
class Transfer(Composite):
    """amqp:transfer:list; the payload follows the performative in the frame body."""

    CODE = 0x14
    handle: int = 0
    delivery_id: int | None = None
    delivery_tag: bytes | None = None
    message_format: int | None = None
    settled: bool | None = None
    more: bool = False
    rcv_settle_mode: int | None = None
    state: Any = None
    # None (= false) rather than False so these trailing fields stay off the wire.
    resume: bool | None = None
    aborted: bool | None = None
    batchable: bool | None = None
    CONVERT = (UInt, UInt, bytes, UInt, bool, bool, UByte, _composite, bool, bool, bool)


@dataclasses.dataclass
class Disposition(Composite):
    """amqp:disposition:list."""

    CODE = 0x15
    role: bool = False
    first: int = 0
    last: int | None = None
    settled: bool = False
    state: Any = None
    batchable: bool = False
    CONVERT = (bool, UInt, UInt, bool, _composite, bool)


@dataclasses.dataclass
class Detach(Composite):
    """amqp:detach:list."""

    CODE = 0x16
    handle: int = 0
    closed: bool = False
    error: AmqpError | None = None
    CONVERT = (UInt, bool, _composite)


@dataclasses.dataclass
class End(Composite):
    """amqp:end:list."""

    CODE = 0x17
    error: AmqpError | None = None
    CONVERT = (_composite,)


@dataclasses.dataclass
class Close(Composite):
    """amqp:close:list."""

    CODE = 0x18
    error: AmqpError | None = None
    CONVERT = (_composite,)


@dataclasses.dataclass
class Received(Composite):
    """amqp:received:list (delivery state)."""

    CODE = 0x23
    section_number: int = 0
    section_offset: int = 0
    CONVERT = (UInt, ULong)


@dataclasses.dataclass
class Accepted(Composite):
    """amqp:accepted:list (outcome)."""

    CODE = 0x24
    CONVERT = ()


@dataclasses.dataclass
class Rejected(Composite):
    """amqp:rejected:list (outcome)."""

    CODE = 0x25
    error: AmqpError | None = None
    CONVERT = (_composite,)


@dataclasses.dataclass
class Released(Composite):
    """amqp:released:list (outcome)."""

    CODE = 0x26
    CONVERT = ()


@dataclasses.dataclass
class Modified(Composite):
    """amqp:modified:list (outcome)."""

    CODE = 0x27
    delivery_failed: bool | None = None
    undeliverable_here: bool | None = None
    message_annotations: Mapping[Any, Any] | None = None
    CONVERT = (bool, bool, _fields)


@dataclasses.dataclass
class SaslMechanisms(Composite):
    """amqp:sasl-mechanisms:list."""

    CODE = 0x40
    sasl_server_mechanisms: Any = None
    CONVERT = (_symbols,)


@dataclasses.dataclass
class SaslInit(Composite):
    """amqp:sasl-init:list."""

    CODE = 0x41
    mechanism: str = ""
    initial_response: bytes | None = None
    hostname: str | None = None
    CONVERT = (Symbol, bytes, str)


@dataclasses.dataclass
class SaslOutcome(Composite):
    """amqp:sasl-outcome:list. code 0 = ok, 1 = auth failed."""

    CODE = 0x44
    code: int = 0
    additional_data: bytes | None = None
    CONVERT = (UByte, bytes)


_BY_CODE: dict[int, type[Composite]] = {
    cls.CODE: cls
    for cls in (
        AmqpError, Open, Begin, Source, Target, Attach, Flow, Transfer, Disposition, Detach,
        End, Close, Received, Accepted, Rejected, Released, Modified, SaslMechanisms, SaslInit,
        SaslOutcome,
    )
}  # fmt: skip

# Fields that hold nested composites, converted eagerly on decode.
_NESTED = {
    "source", "target", "state", "error", "default_outcome",
}  # fmt: skip


class ProtocolError(ValueError):
    """A frame decoded fine as AMQP values but is not a valid performative."""


def from_described(value: object) -> Composite:
    """The composite for a decoded described list (descriptor must be a known ulong code)."""
    if not isinstance(value, Described) or not isinstance(value.descriptor, int):
        raise ProtocolError(f"expected a described composite, got {type(value).__name__}")
    cls = _BY_CODE.get(int(value.descriptor))
    if cls is None:
        raise ProtocolError(f"unknown composite descriptor 0x{int(value.descriptor):x}")
    body = value.value
    if not isinstance(body, list):
        raise ProtocolError(f"{cls.__name__} body is not a list")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if len(body) > len(names):
        raise ProtocolError(f"{cls.__name__} has {len(body)} fields, at most {len(names)} allowed")
    fields = list(body)
    for index, name in enumerate(names[: len(fields)]):
        if name in _NESTED and isinstance(fields[index], Described):
            fields[index] = from_described(fields[index])
    try:
        return cls.from_list(fields)
    except TypeError as exc:
        raise ProtocolError(str(exc)) from exc


def composite_or_none(value: object) -> Composite | None:
    """Like `from_described` for optional nested values; unknown ones become None."""
    if isinstance(value, Composite):
        return value
    if value is None:
        return None
    try:
        return from_described(value)
    except ProtocolError:
        return None
