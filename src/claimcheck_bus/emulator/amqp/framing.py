"""AMQP 1.0 framing: protocol headers and the 8-byte frame header (part 2.3)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import codec
from .performatives import Composite, from_described

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
FRAME_AMQP = 0
FRAME_SASL = 1
MIN_MAX_FRAME_SIZE = 512

_HEADER = struct.Struct(">IBBH")
HEADER_SIZE = _HEADER.size


class FramingError(ValueError):
    """The byte stream is not valid AMQP framing."""


@dataclass(frozen=True)
class FrameHeader:
    """The fixed frame header: total size, data offset (in 4-byte words), type, channel."""

    size: int
    doff: int
    frame_type: int
    channel: int

    @property
    def body_size(self) -> int:
        """Bytes following the 8-byte header (extended header included)."""
        return self.size - HEADER_SIZE


def parse_header(data: bytes, max_frame_size: int) -> FrameHeader:
    """Validate a frame header against the negotiated maximum frame size."""
    size, doff, frame_type, channel = _HEADER.unpack(data)
    if size < HEADER_SIZE or doff < 2 or doff * 4 > size:
        raise FramingError(f"bad frame header size={size} doff={doff}")
    if size > max_frame_size:
        raise FramingError(f"frame of {size} bytes exceeds max-frame-size {max_frame_size}")
    if frame_type not in (FRAME_AMQP, FRAME_SASL):
        raise FramingError(f"unknown frame type {frame_type}")
    return FrameHeader(size, doff, frame_type, channel)


def parse_body(header: FrameHeader, body: bytes) -> tuple[Composite | None, memoryview]:
    """The performative (None for an empty heartbeat frame) and the payload after it."""
    view = memoryview(body)[header.doff * 4 - HEADER_SIZE :]
    if not view:
        return None, view
    value, end = codec.decode(view, 0)
    return from_described(value), view[end:]


def frame(
    channel: int, performative: Composite, payload: bytes | memoryview = b"", frame_type: int = 0
) -> bytearray:
    """One complete frame: header, encoded performative, then the payload bytes."""
    out = bytearray(HEADER_SIZE)
    codec.encode(performative.to_described(), out)
    out += payload
    _HEADER.pack_into(out, 0, len(out), 2, frame_type, channel)
    return out


def performative_size(performative: Composite) -> int:
    """Encoded size of a performative, to compute how much payload fits in one frame."""
    return len(codec.encode(performative.to_described()))


HEARTBEAT = _HEADER.pack(HEADER_SIZE, 2, FRAME_AMQP, 0)
