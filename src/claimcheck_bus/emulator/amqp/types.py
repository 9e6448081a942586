"""Python values for AMQP 1.0 types that have no exact built-in counterpart.

Decoding returns these wrappers so that re-encoding a decoded value reproduces its AMQP type
(a symbol stays a symbol, a uint stays a uint); plain built-ins encode with sensible defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Symbol(str):
    """An AMQP symbol (ASCII identifier), distinct from a UTF-8 string."""

    __slots__ = ()


class Char(str):
    """An AMQP char: one UTF-32 code point."""

    __slots__ = ()


class UByte(int):
    """An AMQP ubyte."""

    __slots__ = ()


class UShort(int):
    """An AMQP ushort."""

    __slots__ = ()


class UInt(int):
    """An AMQP uint."""

    __slots__ = ()


class ULong(int):
    """An AMQP ulong."""

    __slots__ = ()


class Byte(int):
    """An AMQP byte (signed 8-bit)."""

    __slots__ = ()


class Short(int):
    """An AMQP short."""

    __slots__ = ()


class Int(int):
    """An AMQP int (signed 32-bit)."""

    __slots__ = ()


class Long(int):
    """An AMQP long (signed 64-bit); plain Python ints encode as this too."""

    __slots__ = ()


class Float32(float):
    """An AMQP float (IEEE 754 binary32); plain Python floats encode as double."""

    __slots__ = ()


class Timestamp(int):
    """An AMQP timestamp: milliseconds since the Unix epoch, as a signed 64-bit integer."""

    __slots__ = ()

    @classmethod
    def from_datetime(cls, value: datetime) -> Timestamp:
        """Milliseconds since the epoch of an aware (or UTC-naive) datetime."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - _EPOCH
        return cls((delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000)

    def to_datetime(self) -> datetime:
        """The aware UTC datetime, clamped to the range datetime can represent."""
        try:
            return _EPOCH + timedelta(milliseconds=int(self))
        except OverflowError:
            return (
                datetime.max.replace(tzinfo=timezone.utc)
                if self > 0
                else datetime.min.replace(tzinfo=timezone.utc)
            )


@dataclass(frozen=True)
class RawDecimal:
    """A decimal32/64/128 kept as its raw IEEE 754 bytes (the emulator never computes with it)."""

    code: int
    raw: bytes


@dataclass(frozen=True)
class Described:
    """A described value: a descriptor (usually a ulong code or a symbol) and the value."""

    descriptor: object
    value: object


@dataclass(frozen=True)
class Array:
    """An AMQP array: elements of one type sharing one constructor.

    `code` is the element constructor byte (e.g. 0x98 uuid, 0x81 long, 0x83 timestamp,
    0xB3 symbol); for described elements `descriptor` is set and `code` is the inner one.
    """

    code: int
    items: Sequence[object] = field(default_factory=tuple)
    descriptor: object = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Array):
            return NotImplemented
        return (
            self.code == other.code
            and self.descriptor == other.descriptor
            and list(self.items) == list(other.items)
        )

    def __hash__(self) -> int:
        return hash((self.code, tuple(self.items)))
