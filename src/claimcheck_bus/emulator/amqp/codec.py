"""AMQP 1.0 type system encoding and decoding (OASIS AMQP 1.0 part 1).

Encoding appends to a caller's bytearray (no intermediate concatenation, so large values cost one
copy); decoding reads from a bytes-like buffer at an offset and returns the value and the next
offset. Every length and count read from the wire is checked against the bytes actually present,
so hostile input raises `DecodeError` instead of allocating or recursing without bound.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from .types import (
    Array,
    Byte,
    Char,
    Described,
    Float32,
    Int,
    Long,
    RawDecimal,
    Short,
    Symbol,
    Timestamp,
    UByte,
    UInt,
    ULong,
    UShort,
)

Buffer = bytes | bytearray | memoryview

MAX_DEPTH = 32

_B = struct.Struct(">B")
_b = struct.Struct(">b")
_H = struct.Struct(">H")
_h = struct.Struct(">h")
_I = struct.Struct(">I")
_i = struct.Struct(">i")
_Q = struct.Struct(">Q")
_q = struct.Struct(">q")
_f = struct.Struct(">f")
_d = struct.Struct(">d")
_II = struct.Struct(">II")
_BB = struct.Struct(">BB")


class DecodeError(ValueError):
    """The bytes are not a valid AMQP encoding (truncated, oversized or unknown constructor)."""


class EncodeError(ValueError):
    """The value cannot be represented in AMQP (out of range, unsupported type)."""


# ----------------------------------------------------------------------------------- encoding


def encode(value: object, out: bytearray | None = None) -> bytearray:
    """Append the AMQP encoding of `value` to `out` (a new bytearray if None) and return it."""
    if out is None:
        out = bytearray()
    _encode(value, out)
    return out


def encoded(value: object) -> bytes:
    """The AMQP encoding of `value` as bytes."""
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _encode(value: object, out: bytearray) -> None:
    handler = _ENCODERS.get(type(value))
    if handler is not None:
        handler(value, out)
        return
    # Subclasses of built-ins not listed (e.g. enum.IntEnum) fall back by isinstance.
    for kind, fallback in _FALLBACKS:
        if isinstance(value, kind):
            fallback(value, out)
            return
    raise EncodeError(f"cannot encode {type(value).__name__} as AMQP")


def _pack(st: struct.Struct, code: int, value: object, out: bytearray) -> None:
    out.append(code)
    try:
        out += st.pack(value)
    except struct.error as exc:
        raise EncodeError(f"{value!r} out of range for constructor 0x{code:02x}") from exc


def _enc_null(_: object, out: bytearray) -> None:
    out.append(0x40)


def _enc_bool(value: Any, out: bytearray) -> None:
    out.append(0x41 if value else 0x42)


def _enc_ubyte(value: Any, out: bytearray) -> None:
    _pack(_B, 0x50, value, out)


def _enc_ushort(value: Any, out: bytearray) -> None:
    _pack(_H, 0x60, value, out)


def _enc_uint(value: Any, out: bytearray) -> None:
    if value == 0:
        out.append(0x43)
    elif 0 < value <= 255:
        out += _BB.pack(0x52, value)
    else:
        _pack(_I, 0x70, value, out)


def _enc_ulong(value: Any, out: bytearray) -> None:
    if value == 0:
        out.append(0x44)
    elif 0 < value <= 255:
        out += _BB.pack(0x53, value)
    else:
        _pack(_Q, 0x80, value, out)


def _enc_byte(value: Any, out: bytearray) -> None:
    _pack(_b, 0x51, value, out)


def _enc_short(value: Any, out: bytearray) -> None:
    _pack(_h, 0x61, value, out)


def _enc_int(value: Any, out: bytearray) -> None:
    if -128 <= value <= 127:
        out.append(0x54)
        out += _b.pack(value)
    else:
        _pack(_i, 0x71, value, out)


def _enc_long(value: Any, out: bytearray) -> None:
    if -128 <= value <= 127:
        out.append(0x55)
        out += _b.pack(value)
    else:
        _pack(_q, 0x81, value, out)


def _enc_float(value: Any, out: bytearray) -> None:
    _pack(_f, 0x72, value, out)


def _enc_double(value: Any, out: bytearray) -> None:
    _pack(_d, 0x82, value, out)


def _enc_timestamp(value: Any, out: bytearray) -> None:
    _pack(_q, 0x83, value, out)


def _enc_datetime(value: Any, out: bytearray) -> None:
    _pack(_q, 0x83, Timestamp.from_datetime(value), out)


def _enc_uuid(value: Any, out: bytearray) -> None:
    out.append(0x98)
    out += value.bytes


def _enc_char(value: Any, out: bytearray) -> None:
    if len(value) != 1:
        raise EncodeError("an AMQP char is exactly one code point")
    _pack(_I, 0x73, ord(value), out)


def _enc_variable(small: int, large: int, data: Buffer, out: bytearray) -> None:
    size = len(data)
    if size <= 255:
        out += _BB.pack(small, size)
    elif size <= 0xFFFFFFFF:
        out.append(large)
        out += _I.pack(size)
    else:
        raise EncodeError("variable-width value longer than 2**32 - 1 bytes")
    out += data


def _enc_binary(value: Any, out: bytearray) -> None:
    _enc_variable(0xA0, 0xB0, value, out)


def _enc_string(value: Any, out: bytearray) -> None:
    _enc_variable(0xA1, 0xB1, value.encode("utf-8"), out)


def _enc_symbol(value: Any, out: bytearray) -> None:
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"symbol {value!r} is not ASCII") from exc
    _enc_variable(0xA3, 0xB3, data, out)


def _compound_header(out: bytearray, code32: int) -> int:
    out.append(code32)
    start = len(out)
    out += b"\x00\x00\x00\x00\x00\x00\x00\x00"
    return start


def _finish_compound(out: bytearray, start: int, count: int, code8: int) -> None:
    """Patch size and count in place; shrink to the 1-byte form when it fits (the tail is tiny)."""
    size = len(out) - start - 4
    if size > 0xFFFFFFFF:
        raise EncodeError("compound value longer than 2**32 - 1 bytes")
    if count <= 255 and size - 3 <= 255:
        # 8-byte size+count becomes 2 bytes; size shrinks by the 3 bytes of the count field.
        out[start - 1 : start + 8] = _B.pack(code8) + _BB.pack(size - 3, count)
    else:
        _II.pack_into(out, start, size, count)


def _enc_list(value: Any, out: bytearray) -> None:
    if not value:
        out.append(0x45)
        return
    start = _compound_header(out, 0xD0)
    for item in value:
        _encode(item, out)
    _finish_compound(out, start, len(value), 0xC0)


def _enc_map(value: Any, out: bytearray) -> None:
    start = _compound_header(out, 0xD1)
    for key, item in value.items():
        _encode(key, out)
        _encode(item, out)
    _finish_compound(out, start, 2 * len(value), 0xC1)


def _enc_described(value: Any, out: bytearray) -> None:
    out.append(0x00)
    _encode(value.descriptor, out)
    _encode(value.value, out)


def _enc_raw_decimal(value: Any, out: bytearray) -> None:
    widths = {0x74: 4, 0x84: 8, 0x94: 16}
    if widths.get(value.code) != len(value.raw):
        raise EncodeError("decimal raw bytes do not match the constructor width")
    out.append(value.code)
    out += value.raw


def _enc_decimal(value: Any, out: bytearray) -> None:
    raise EncodeError("encode decimals as RawDecimal; the emulator does not do decimal arithmetic")


# Element writers for arrays: the body of one element in a fixed constructor (no constructor).
def _elem_fixed(st: struct.Struct) -> Callable[[Any, bytearray], None]:
    def write(value: Any, out: bytearray) -> None:
        try:
            out += st.pack(value)
        except struct.error as exc:
            raise EncodeError(f"{value!r} out of range for array element") from exc

    return write


def _elem_var(width: struct.Struct, encoding: str | None) -> Callable[[Any, bytearray], None]:
    def write(value: Any, out: bytearray) -> None:
        data = value.encode(encoding) if encoding is not None else value
        out += width.pack(len(data))
        out += data

    return write


def _elem_compound(width: struct.Struct, is_map: bool) -> Callable[[Any, bytearray], None]:
    def write(value: Any, out: bytearray) -> None:
        start = len(out)
        out += width.pack(0) * 2
        items: list[object] = []
        if is_map:
            for key, item in value.items():
                items.extend((key, item))
        else:
            items = list(value)
        for item in items:
            _encode(item, out)
        size = len(out) - start - width.size
        if width is _B and (size > 255 or len(items) > 255):
            raise EncodeError("array element too large for the 8-bit compound form")
        width.pack_into(out, start, size)
        width.pack_into(out, start + width.size, len(items))

    return write


_ELEMENT_WRITERS: dict[int, Callable[[Any, bytearray], None]] = {
    0x40: lambda v, out: None,
    0x56: lambda v, out: out.append(1 if v else 0),
    0x50: _elem_fixed(_B),
    0x60: _elem_fixed(_H),
    0x70: _elem_fixed(_I),
    0x52: _elem_fixed(_B),
    0x80: _elem_fixed(_Q),
    0x53: _elem_fixed(_B),
    0x51: _elem_fixed(_b),
    0x61: _elem_fixed(_h),
    0x71: _elem_fixed(_i),
    0x54: _elem_fixed(_b),
    0x81: _elem_fixed(_q),
    0x55: _elem_fixed(_b),
    0x72: _elem_fixed(_f),
    0x82: _elem_fixed(_d),
    0x73: lambda v, out: out.extend(_I.pack(ord(v))),
    0x83: lambda v, out: out.extend(
        _q.pack(Timestamp.from_datetime(v) if isinstance(v, datetime) else v)
    ),
    0x98: lambda v, out: out.extend(v.bytes),
    0xA0: _elem_var(_B, None),
    0xA1: _elem_var(_B, "utf-8"),
    0xA3: _elem_var(_B, "ascii"),
    0xB0: _elem_var(_I, None),
    0xB1: _elem_var(_I, "utf-8"),
    0xB3: _elem_var(_I, "ascii"),
    0xC0: _elem_compound(_B, False),
    0xC1: _elem_compound(_B, True),
    0xD0: _elem_compound(_I, False),
    0xD1: _elem_compound(_I, True),
    0x74: lambda v, out: out.extend(v.raw),
    0x84: lambda v, out: out.extend(v.raw),
    0x94: lambda v, out: out.extend(v.raw),
}


def _enc_array(value: Any, out: bytearray) -> None:
    writer = _ELEMENT_WRITERS.get(value.code)
    if writer is None:
        raise EncodeError(f"unsupported array element constructor 0x{value.code:02x}")
    start = _compound_header(out, 0xF0)
    if value.descriptor is not None:
        out.append(0x00)
        _encode(value.descriptor, out)
    out.append(value.code)
    for item in value.items:
        writer(item.value if isinstance(item, Described) else item, out)
    _finish_compound(out, start, len(value.items), 0xE0)


_ENCODERS: dict[type, Callable[[Any, bytearray], None]] = {
    type(None): _enc_null,
    bool: _enc_bool,
    UByte: _enc_ubyte,
    UShort: _enc_ushort,
    UInt: _enc_uint,
    ULong: _enc_ulong,
    Byte: _enc_byte,
    Short: _enc_short,
    Int: _enc_int,
    Long: _enc_long,
    int: _enc_long,
    Float32: _enc_float,
    float: _enc_double,
    Timestamp: _enc_timestamp,
    datetime: _enc_datetime,
    uuid.UUID: _enc_uuid,
    Char: _enc_char,
    bytes: _enc_binary,
    bytearray: _enc_binary,
    memoryview: _enc_binary,
    str: _enc_string,
    Symbol: _enc_symbol,
    list: _enc_list,
    tuple: _enc_list,
    dict: _enc_map,
    Described: _enc_described,
    Array: _enc_array,
    RawDecimal: _enc_raw_decimal,
    Decimal: _enc_decimal,
}

_FALLBACKS: tuple[tuple[type, Callable[[Any, bytearray], None]], ...] = (
    (bool, _enc_bool),
    (int, _enc_long),
    (float, _enc_double),
    (str, _enc_string),
    (bytes, _enc_binary),
    (datetime, _enc_datetime),
    (Mapping, _enc_map),
    (Sequence, _enc_list),
)

# ----------------------------------------------------------------------------------- decoding

Decoder = Callable[[Buffer, int, int], tuple[object, int]]


def decode(buf: Buffer, pos: int = 0) -> tuple[object, int]:
    """Decode one value at `pos`; returns (value, offset just past it)."""
    try:
        return _decode(buf, pos, 0)
    except (IndexError, struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"malformed AMQP value at offset {pos}: {exc}") from exc


def decode_all(buf: Buffer) -> object:
    """Decode exactly one value occupying the whole buffer."""
    value, end = decode(buf, 0)
    if end != len(buf):
        raise DecodeError(f"{len(buf) - end} trailing bytes after the AMQP value")
    return value


def _decode(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
    if pos >= len(buf):
        raise DecodeError("truncated AMQP value")
    code = buf[pos]
    decoder = _DECODERS[code]
    if decoder is None:
        raise DecodeError(f"unknown AMQP constructor 0x{code:02x} at offset {pos}")
    return decoder(buf, pos + 1, depth)


def _need(buf: Buffer, pos: int, size: int) -> int:
    end = pos + size
    if end > len(buf):
        raise DecodeError("truncated AMQP value")
    return end


def _fixed(st: struct.Struct, wrap: Callable[[Any], object]) -> Decoder:
    size = st.size

    def dec(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
        end = _need(buf, pos, size)
        return wrap(st.unpack_from(buf, pos)[0]), end

    return dec


def _constant(value: object) -> Decoder:
    def dec(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
        return value, pos

    return dec


def _variable(width: struct.Struct, convert: Callable[[Buffer], object]) -> Decoder:
    def dec(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
        start = _need(buf, pos, width.size)
        (size,) = width.unpack_from(buf, pos)
        end = _need(buf, start, size)
        return convert(buf[start:end]), end

    return dec


def _dec_uuid(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
    end = _need(buf, pos, 16)
    return uuid.UUID(bytes=bytes(buf[pos:end])), end


def _dec_char(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
    end = _need(buf, pos, 4)
    return Char(chr(_I.unpack_from(buf, pos)[0])), end


def _dec_decimal(code: int, size: int) -> Decoder:
    def dec(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
        end = _need(buf, pos, size)
        return RawDecimal(code, bytes(buf[pos:end])), end

    return dec


def _compound_bounds(buf: Buffer, pos: int, width: struct.Struct) -> tuple[int, int, int]:
    """(count, first element offset, end offset) of a list/map/array body."""
    head = _need(buf, pos, 2 * width.size)
    size = width.unpack_from(buf, pos)[0]
    count = width.unpack_from(buf, pos + width.size)[0]
    end = _need(buf, pos + width.size, size)
    if size < width.size:
        raise DecodeError("compound size smaller than its count field")
    return count, head, end


def _list(width: struct.Struct) -> Decoder:
    def dec(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
        if depth >= MAX_DEPTH:
            raise DecodeError("AMQP value nested too deeply")
        count, cur, end = _compound_bounds(buf, pos, width)
        if count > end - cur:
            raise DecodeError("list count exceeds its bytes")
        items: list[object] = []
        for _ in range(count):
            item, cur = _decode(buf, cur, depth + 1)
            items.append(item)
        if cur != end:
            raise DecodeError("list size does not match its elements")
        return items, end

    return dec


def _map(width: struct.Struct) -> Decoder:
    def dec(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
        if depth >= MAX_DEPTH:
            raise DecodeError("AMQP value nested too deeply")
        count, cur, end = _compound_bounds(buf, pos, width)
        if count % 2 or count > end - cur:
            raise DecodeError("bad map element count")
        result: dict[Any, object] = {}
        for _ in range(count // 2):
            key, cur = _decode(buf, cur, depth + 1)
            item, cur = _decode(buf, cur, depth + 1)
            try:
                result[key] = item
            except TypeError as exc:
                raise DecodeError("unhashable map key") from exc
        if cur != end:
            raise DecodeError("map size does not match its elements")
        return result, end

    return dec


def _array(width: struct.Struct) -> Decoder:
    def dec(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
        if depth >= MAX_DEPTH:
            raise DecodeError("AMQP value nested too deeply")
        count, cur, end = _compound_bounds(buf, pos, width)
        if count > end - cur:
            raise DecodeError("array count exceeds its bytes")
        descriptor: object = None
        if count == 0 and cur == end:
            # Some encoders (the SDK's among them) omit the constructor of an empty array.
            return Array(0x40, [], None), end
        if cur >= end:
            raise DecodeError("array without an element constructor")
        code = buf[cur]
        cur += 1
        if code == 0x00:
            descriptor, cur = _decode(buf, cur, depth + 1)
            _need(buf, cur, 1)
            code = buf[cur]
            cur += 1
        element = _DECODERS[code]
        if element is None or code in (0x00, 0xE0, 0xF0):
            raise DecodeError(f"unsupported array element constructor 0x{code:02x}")
        items: list[object] = []
        for _ in range(count):
            item, cur = element(buf, cur, depth + 1)
            if descriptor is not None:
                item = Described(descriptor, item)
            items.append(item)
        if cur != end:
            raise DecodeError("array size does not match its elements")
        return Array(code, items, descriptor), end

    return dec


def _dec_described(buf: Buffer, pos: int, depth: int) -> tuple[object, int]:
    if depth >= MAX_DEPTH:
        raise DecodeError("AMQP value nested too deeply")
    descriptor, cur = _decode(buf, pos, depth + 1)
    value, cur = _decode(buf, cur, depth + 1)
    return Described(descriptor, value), cur


def _utf8(data: Buffer) -> str:
    return str(data, "utf-8")


def _ascii(data: Buffer) -> Symbol:
    return Symbol(str(data, "ascii"))


_DECODERS: list[Decoder | None] = [None] * 256
_DECODERS[0x00] = _dec_described
_DECODERS[0x40] = _constant(None)
_DECODERS[0x41] = _constant(True)
_DECODERS[0x42] = _constant(False)
_DECODERS[0x43] = _constant(UInt(0))
_DECODERS[0x44] = _constant(ULong(0))
_DECODERS[0x45] = lambda buf, pos, depth: ([], pos)
_DECODERS[0x50] = _fixed(_B, UByte)
_DECODERS[0x51] = _fixed(_b, Byte)
_DECODERS[0x52] = _fixed(_B, UInt)
_DECODERS[0x53] = _fixed(_B, ULong)
_DECODERS[0x54] = _fixed(_b, Int)
_DECODERS[0x55] = _fixed(_b, Long)
_DECODERS[0x56] = _fixed(_B, lambda v: v != 0)
_DECODERS[0x60] = _fixed(_H, UShort)
_DECODERS[0x61] = _fixed(_h, Short)
_DECODERS[0x70] = _fixed(_I, UInt)
_DECODERS[0x71] = _fixed(_i, Int)
_DECODERS[0x72] = _fixed(_f, Float32)
_DECODERS[0x73] = _dec_char
_DECODERS[0x74] = _dec_decimal(0x74, 4)
_DECODERS[0x80] = _fixed(_Q, ULong)
_DECODERS[0x81] = _fixed(_q, Long)
_DECODERS[0x82] = _fixed(_d, float)
_DECODERS[0x83] = _fixed(_q, Timestamp)
_DECODERS[0x84] = _dec_decimal(0x84, 8)
_DECODERS[0x94] = _dec_decimal(0x94, 16)
_DECODERS[0x98] = _dec_uuid
_DECODERS[0xA0] = _variable(_B, bytes)
_DECODERS[0xA1] = _variable(_B, _utf8)
_DECODERS[0xA3] = _variable(_B, _ascii)
_DECODERS[0xB0] = _variable(_I, bytes)
_DECODERS[0xB1] = _variable(_I, _utf8)
_DECODERS[0xB3] = _variable(_I, _ascii)
_DECODERS[0xC0] = _list(_B)
_DECODERS[0xC1] = _map(_B)
_DECODERS[0xD0] = _list(_I)
_DECODERS[0xD1] = _map(_I)
_DECODERS[0xE0] = _array(_B)
_DECODERS[0xF0] = _array(_I)

# ------------------------------------------------------------------------------------ skipping

_FIXED_WIDTH: dict[int, int] = {
    0x40: 0, 0x41: 0, 0x42: 0, 0x43: 0, 0x44: 0, 0x45: 0,
    0x50: 1, 0x51: 1, 0x52: 1, 0x53: 1, 0x54: 1, 0x55: 1, 0x56: 1,
    0x60: 2, 0x61: 2,
    0x70: 4, 0x71: 4, 0x72: 4, 0x73: 4, 0x74: 4,
    0x80: 8, 0x81: 8, 0x82: 8, 0x83: 8, 0x84: 8,
    0x94: 16, 0x98: 16,
}  # fmt: skip


def skip(buf: Buffer, pos: int) -> int:
    """Offset just past the value at `pos`, without decoding it (cheap for huge binaries)."""
    try:
        return _skip(buf, pos, 0)
    except (IndexError, struct.error, OverflowError) as exc:
        raise DecodeError(f"malformed AMQP value at offset {pos}") from exc


def _skip(buf: Buffer, pos: int, depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise DecodeError("AMQP value nested too deeply")
    _need(buf, pos, 1)
    code = buf[pos]
    pos += 1
    if code == 0x00:
        pos = _skip(buf, pos, depth + 1)
        return _skip(buf, pos, depth + 1)
    width = _FIXED_WIDTH.get(code)
    if width is not None:
        return _need(buf, pos, width)
    if code >> 4 in (0xA, 0xC, 0xE):  # 1-byte size prefix
        _need(buf, pos, 1)
        return _need(buf, pos + 1, buf[pos])
    if code >> 4 in (0xB, 0xD, 0xF):  # 4-byte size prefix
        _need(buf, pos, 4)
        return _need(buf, pos + 4, _I.unpack_from(buf, pos)[0])
    raise DecodeError(f"unknown AMQP constructor 0x{code:02x}")
