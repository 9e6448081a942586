"""Opt-in gzip of offloaded payloads (``claim_check.compression``): what is stored and how a
reader inflates it, bounded and strict (no I/O).

``ClaimCheckSize`` and ``ClaimCheckSha256`` cover the bytes as stored (compressed), so a
reader checks them while downloading, before inflating anything.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from claimcheck_bus.errors import EventDecodeError, PayloadTooLargeError

if TYPE_CHECKING:
    from claimcheck_bus.payloads.download import PayloadSubject

GZIP = "gzip"
#: zlib's default trade-off: JSON shrinks 5-10x at a fraction of level 9's CPU.
LEVEL = 6
#: Keep the compressed form only when it saves at least this share of the bytes.
WORTHWHILE_SAVING = 0.1
#: Inflate in pieces of at most this size, so one chunk of a bomb never inflates at once.
_PIECE = 1024 * 1024


def compressed(body: bytes, compression: str) -> bytes | None:
    """``body`` gzip-compressed when ``compression`` asks for it and it pays, else ``None``."""
    if compression != GZIP:
        return None
    packed = zlib.compress(body, LEVEL, wbits=16 + zlib.MAX_WBITS)
    return packed if len(packed) <= len(body) * (1 - WORTHWHILE_SAVING) else None


def check_encoding(encoding: str | None, subject: PayloadSubject) -> None:
    """Refuse a ``ClaimCheckContentEncoding`` this reader cannot undo, before any request."""
    if encoding is not None and encoding.lower() != GZIP:
        raise subject.error(
            EventDecodeError,
            f"unknown ClaimCheckContentEncoding {encoding[:40]!r}",
            "This reader understands raw payloads and gzip.",
        )


class Inflater:
    """Inflates one gzip member fed in chunks, never beyond ``max_bytes`` of output, and
    refuses what is not exactly one complete member (truncation, trailing bytes)."""

    def __init__(self, max_bytes: int, subject: PayloadSubject) -> None:
        self._max_bytes = max_bytes
        self._subject = subject
        self._zlib = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self.produced = 0

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The inflated pieces of ``chunk`` (each at most 1 MiB)."""
        if not chunk:
            return
        if self._zlib.eof:
            raise self._invalid("bytes follow the end of the gzip stream")
        data = chunk
        while True:
            try:
                piece = self._zlib.decompress(data, _PIECE)
            except zlib.error as error:
                raise self._invalid(f"not valid gzip ({error})") from None
            self.produced += len(piece)
            if self.produced > self._max_bytes:
                raise self._subject.error(
                    PayloadTooLargeError,
                    f"payload inflates beyond the receiver's limit of {self._max_bytes} bytes",
                    "Raise claim_check.max_download_size_mb if payloads this large are expected.",
                )
            if piece:
                yield piece
            data = self._zlib.unconsumed_tail
            if self._zlib.eof:
                if data or self._zlib.unused_data:
                    raise self._invalid("bytes follow the end of the gzip stream")
                return
            # A full piece may leave output pending inside zlib even with no input left.
            if not data and len(piece) < _PIECE:
                return

    def finish(self) -> None:
        """The stream ended: it must have ended exactly at the end of the gzip member."""
        if not self._zlib.eof:
            raise self._invalid("the gzip stream is truncated")

    def _invalid(self, problem: str) -> EventDecodeError:
        return self._subject.error(EventDecodeError, f"payload is {problem}")
