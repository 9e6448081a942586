"""Durable ``--data-dir`` mode: an append-only journal of every broker state change.

Records are ``<u32 length><u32 crc32><payload>``. The bare bytes of a message are written once
(a blob record) and referenced by id from the message records, so state changes stay small and
fan-out copies share one blob. Recovery replays the journal up to the first torn or corrupt
record (a process killed mid-write leaves at most one), truncates that tail, and compacts the
journal when most of it is dead.

The broker buffers the records of one operation and calls ``commit()`` once at its end, before
it returns (and so before the protocol layer acknowledges anything): one write, one fsync.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

from claimcheck_bus.emulator.broker import BrokerMessage, MessageMeta, MessageState

try:  # POSIX only; elsewhere two processes sharing a data directory is not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["DataDirInUse", "Persistence", "Recovered", "decode_value", "encode_value"]

_log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.ccb"
_MAGIC = b"CCBJRNL1"
_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
_BLOB_ID = struct.Struct("<Q")
_BLOB, _PUT, _UPDATE, _DELETE, _SEQUENCE, _DEDUP = b"B", b"P", b"U", b"D", b"S", b"I"
_SESSION_STATE = b"T"
_MAX_RECORD = 0xFFFFFFFF
_IOV_MAX = 512
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class DataDirInUse(RuntimeError):
    """Another process already serves this data directory."""


@dataclass
class Recovered:
    """What a journal replay found: live messages with their blob ids, counters, dedup ids."""

    messages: dict[str, list[tuple[BrokerMessage, int]]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # highest sequence number per entity
    dedup: dict[str, dict[str, datetime]] = field(default_factory=dict)
    # entity key -> session id -> (state, when it was set); cleared states are absent
    session_states: dict[str, dict[str, tuple[bytes, datetime]]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Value encoding (pure): JSON with tags for what JSON cannot tell apart


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def encode_value(value: object) -> Any:
    """An application property value as JSON, keeping bytes, uuids and times apart from str."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return {"$u": str(value)}
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return {"$t": _micros(aware)}
    if isinstance(value, timedelta):
        return {"$d": value // timedelta(microseconds=1)}
    if isinstance(value, (list, tuple)):
        return {"$l": [encode_value(item) for item in value]}
    if isinstance(value, dict):
        return {"$m": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    # Anything exotic only ever feeds filters; its text is the best we can keep.
    return {"$r": repr(value)}


def decode_value(value: Any) -> object:
    """Inverse of encode_value."""
    if not isinstance(value, dict):
        return value
    ((tag, inner),) = value.items()
    if tag == "$b":
        return base64.b64decode(inner)
    if tag == "$u":
        return uuid.UUID(inner)
    if tag == "$t":
        return _from_micros(inner)
    if tag == "$d":
        return timedelta(microseconds=inner)
    if tag == "$l":
        return [decode_value(item) for item in inner]
    if tag == "$m":
        return {_hashable(decode_value(k)): decode_value(v) for k, v in inner}
    return inner


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _encode_meta(meta: MessageMeta) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (
        "message_id",
        "correlation_id",
        "session_id",
        "reply_to_session_id",
        "subject",
        "to",
        "reply_to",
        "content_type",
    ):
        value = getattr(meta, name)
        if value is not None:
            out[name] = value
    if meta.time_to_live is not None:
        out["ttl"] = meta.time_to_live // timedelta(microseconds=1)
    if meta.scheduled_enqueue_time is not None:
        out["sched"] = _micros(meta.scheduled_enqueue_time)
    if meta.application_properties:
        out["props"] = {k: encode_value(v) for k, v in meta.application_properties.items()}
    if meta.delivery_annotations:
        out["da"] = base64.b64encode(meta.delivery_annotations).decode("ascii")
    return out


def _decode_meta(data: dict[str, Any]) -> MessageMeta:
    fields = dict(data)
    ttl = fields.pop("ttl", None)
    sched = fields.pop("sched", None)
    props = fields.pop("props", {})
    annotations = fields.pop("da", None)
    return MessageMeta(
        delivery_annotations=b"" if annotations is None else base64.b64decode(annotations),
        **fields,
        time_to_live=None if ttl is None else timedelta(microseconds=ttl),
        scheduled_enqueue_time=None if sched is None else _from_micros(sched),
        application_properties={k: decode_value(v) for k, v in props.items()},
    )


def _opt_micros(value: datetime | None) -> int | None:
    return None if value is None else _micros(value)


def _opt_time(value: int | None) -> datetime | None:
    return None if value is None else _from_micros(value)


def _mutable_fields(msg: BrokerMessage) -> dict[str, Any]:
    return {
        "dc": msg.delivery_count,
        "st": int(msg.state),
        "t": _micros(msg.enqueued_time),
        "x": _opt_micros(msg.expires_at),
        "sc": _opt_micros(msg.scheduled_enqueue_time),
    }


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def frame(payload_parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """One journal record: header then the payload parts (not copied)."""
    length = sum(len(part) for part in payload_parts)
    if length > _MAX_RECORD:
        raise ValueError(f"a journal record of {length} bytes exceeds the 4 GiB format limit")
    crc = 0
    for part in payload_parts:
        crc = zlib.crc32(part, crc)
    return [_HEADER.pack(length, crc), *payload_parts]


def read_records(stream: BinaryIO, start: int) -> Iterator[tuple[int, bytes]]:
    """(offset of payload, payload) for each intact record; stops at a torn or corrupt one."""
    offset = start
    stream.seek(start)
    while True:
        header = stream.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        length, crc = _HEADER.unpack(header)
        payload = stream.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc or length == 0:
            return
        yield offset + _HEADER.size, payload
        offset += _HEADER.size + length


# ---------------------------------------------------------------------------------------------


class Persistence:
    """A data directory that makes a broker durable: a restart keeps every unsettled message."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        fsync: bool = True,
        compact_min_bytes: int = 4 << 20,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / JOURNAL_NAME
        self.fsync = fsync
        self.compact_min_bytes = compact_min_bytes
        self._lock_fd: int | None = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise DataDirInUse(
                    f"{self.data_dir} is in use by another emulator process; stop it or pass "
                    "another --data-dir"
                ) from None
        self._fd: int | None = None
        self._end = 0  # journal length up to the last committed record
        self._next_blob = 1
        self._buffer: list[bytes | memoryview] = []
        self._buffered = 0
        self._counters: dict[str, int] = {}
        self._dedup: dict[str, dict[str, datetime]] = {}
        self._session_states: dict[str, dict[str, tuple[bytes, datetime]]] = {}
        self.bytes_written = 0  # for tests and stats: what commits appended
        # What the live messages need, to know when the journal is mostly dead.
        self._refs: dict[tuple[str, int], int] = {}  # (entity key, seq) -> blob id
        self._blob_users: dict[int, int] = {}
        self._blob_sizes: dict[int, int] = {}
        self._live_bytes = 0

    # -- recovery --------------------------------------------------------------------------

    def recover(self) -> Recovered:
        """Replay the journal (dropping a torn tail), compact it if mostly dead, open for append."""
        if self._fd is not None:
            raise RuntimeError("recover() runs once, before the first write")
        leftover = self.path.with_suffix(".compacting")
        if leftover.exists():
            leftover.unlink()  # a compaction that died before its atomic rename
        if not self.path.exists() or self.path.stat().st_size < len(_MAGIC):
            self._write_fresh(Recovered(), {})
            return Recovered()
        with open(self.path, "rb") as stream:
            if stream.read(len(_MAGIC)) != _MAGIC:
                raise RuntimeError(f"{self.path} is not a claimcheck-bus emulator journal")
            state, blobs, end = self._replay(stream)
            live_blobs = {blob for (_, blob, _) in state.values()}
            data: dict[int, bytes] = {}
            for blob_id in live_blobs:
                offset, length = blobs[blob_id]
                stream.seek(offset)
                data[blob_id] = stream.read(length)
        size = self.path.stat().st_size
        if end < size:
            _log.warning(
                "%s: dropping %d bytes of a torn or corrupt record at offset %d",
                self.path,
                size - end,
                end,
            )
        recovered = self._build(state, data)
        recovered.counters, recovered.dedup = self._counters, self._dedup
        recovered.session_states = self._session_states
        self._next_blob = max(blobs, default=0) + 1
        for blob_id, blob in data.items():
            self._blob_sizes[blob_id] = len(blob)
        for key, stored in recovered.messages.items():
            for msg, blob_id in stored:
                self._reference(key, msg.sequence_number, blob_id)
        self._end = end
        if self.wants_compaction():
            self._write_fresh(recovered, data)
        else:
            self._fd = os.open(self.path, os.O_WRONLY)
            os.truncate(self._fd, end)  # appends must never follow a torn record
            os.lseek(self._fd, end, os.SEEK_SET)
        return recovered

    def wants_compaction(self) -> bool:
        """True when the journal is past the threshold and more than half of it is dead."""
        live = self._live_bytes + 512 * len(self._refs)
        return self._end > self.compact_min_bytes and self._end > 2 * live

    def rewrite(
        self,
        messages: dict[str, list[tuple[BrokerMessage, int]]],
        counters: dict[str, int],
        dedup: dict[str, dict[str, datetime]],
        session_states: dict[str, dict[str, tuple[bytes, datetime]]] | None = None,
    ) -> None:
        """Compact: replace the journal by one holding exactly this state (atomic by rename)."""
        self._commit(force_sync=False)
        data = {blob_id: msg.bare for stored in messages.values() for msg, blob_id in stored}
        self._write_fresh(Recovered(messages, counters, dedup, session_states or {}), data)

    def _reference(self, key: str, seq: int, blob_id: int) -> None:
        if (key, seq) in self._refs:
            return
        self._refs[(key, seq)] = blob_id
        users = self._blob_users.get(blob_id, 0) + 1
        self._blob_users[blob_id] = users
        if users == 1:
            self._live_bytes += self._blob_sizes.get(blob_id, 0)

    def _dereference(self, key: str, seq: int) -> None:
        blob_id = self._refs.pop((key, seq), None)
        if blob_id is None:
            return
        users = self._blob_users[blob_id] - 1
        if users:
            self._blob_users[blob_id] = users
        else:
            del self._blob_users[blob_id]
            self._live_bytes -= self._blob_sizes.pop(blob_id, 0)

    def _replay(
        self, stream: BinaryIO
    ) -> tuple[
        dict[tuple[str, int], tuple[dict[str, Any], int, int]], dict[int, tuple[int, int]], int
    ]:
        # (entity key, seq) -> (message record, blob id, record order)
        state: dict[tuple[str, int], tuple[dict[str, Any], int, int]] = {}
        blobs: dict[int, tuple[int, int]] = {}  # blob id -> (offset of data, length)
        end = len(_MAGIC)
        for index, (offset, payload) in enumerate(read_records(stream, len(_MAGIC))):
            kind = payload[:1]
            if kind == _BLOB:
                (blob_id,) = _BLOB_ID.unpack_from(payload, 1)
                data_offset = 1 + _BLOB_ID.size
                blobs[blob_id] = (offset + data_offset, len(payload) - data_offset)
            else:
                record = json.loads(payload[1:])
                key, seq = record.get("k"), record.get("s")
                if kind == _PUT:
                    state[(key, seq)] = (record, record["b"], index)
                    self._count(key, seq)
                elif kind == _UPDATE:
                    if (key, seq) in state:
                        state[(key, seq)][0].update(record)
                elif kind == _DELETE:
                    state.pop((key, seq), None)
                elif kind == _SEQUENCE:
                    self._count(key, seq)
                elif kind == _DEDUP:
                    self._dedup.setdefault(key, {})[record["id"]] = _from_micros(record["t"])
                elif kind == _SESSION_STATE:
                    states = self._session_states.setdefault(key, {})
                    if record.get("v") is None:
                        states.pop(record["id"], None)
                    else:
                        value = base64.b64decode(record["v"])
                        states[record["id"]] = (value, _from_micros(record["t"]))
            end = offset + len(payload)
        return state, blobs, end

    def _count(self, key: str, seq: int) -> None:
        if seq > self._counters.get(key, 0):
            self._counters[key] = seq

    def _build(
        self,
        state: dict[tuple[str, int], tuple[dict[str, Any], int, int]],
        data: dict[int, bytes],
    ) -> Recovered:
        recovered = Recovered()
        for (key, seq), (record, blob_id, _) in sorted(state.items(), key=lambda i: i[1][2]):
            msg = BrokerMessage(
                sequence_number=seq,
                bare=data[blob_id],  # one bytes object per blob, shared by every copy
                meta=_decode_meta(record["m"]),
                enqueued_time=_from_micros(record["t"]),
                delivery_count=record["dc"],
                state=MessageState(record["st"]),
                expires_at=_opt_time(record.get("x")),
                scheduled_enqueue_time=_opt_time(record.get("sc")),
                dead_letter_reason=record.get("r"),
                dead_letter_description=record.get("d"),
                dead_letter_source=record.get("o"),
            )
            recovered.messages.setdefault(key, []).append((msg, blob_id))
        return recovered

    def _write_fresh(self, recovered: Recovered, data: dict[int, bytes]) -> None:
        """Write a journal holding exactly ``recovered``; atomic by rename."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        temp = self.path.with_suffix(".compacting")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._refs, self._blob_users, self._blob_sizes = {}, {}, {}
        self._live_bytes = 0
        try:
            self._fd = fd
            self._end = 0
            self._buffer = [_MAGIC]
            self._buffered = len(_MAGIC)
            for key, seq in recovered.counters.items():
                self.sequence(key, seq)
            for key, seen in recovered.dedup.items():
                for message_id, when in seen.items():
                    self.dedup(key, message_id, when)
            for key, states in recovered.session_states.items():
                for session_id, (state, when) in states.items():
                    self.session_state(key, session_id, state, when)
            written: set[int] = set()
            for key, stored in recovered.messages.items():
                for msg, blob_id in stored:
                    if blob_id not in written:
                        self._blob(blob_id, data[blob_id])
                        written.add(blob_id)
                    self.put(key, msg, blob_id)
            self._commit(force_sync=True)
        except BaseException:
            os.close(fd)
            self._fd = None
            temp.unlink(missing_ok=True)
            raise
        os.replace(temp, self.path)
        self._sync_dir()
        self.bytes_written = 0

    def _sync_dir(self) -> None:
        dir_fd = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- writing (called by the broker) ----------------------------------------------------

    def add_blob(self, data: bytes) -> int:
        """Journal a message's bare bytes once; returns the id message records refer to."""
        blob_id = self._next_blob
        self._next_blob += 1
        self._blob(blob_id, data)
        return blob_id

    def _blob(self, blob_id: int, data: bytes) -> None:
        self._blob_sizes[blob_id] = len(data)
        self._append([_BLOB + _BLOB_ID.pack(blob_id), memoryview(data)])

    def put(self, key: str, msg: BrokerMessage, blob_id: int) -> None:
        """A message now held by entity ``key`` (new, moved, or recovered)."""
        record: dict[str, Any] = {"k": key, "s": msg.sequence_number, "b": blob_id}
        record.update(_mutable_fields(msg))
        record["m"] = _encode_meta(msg.meta)
        if msg.dead_letter_reason is not None:
            record["r"] = msg.dead_letter_reason
        if msg.dead_letter_description is not None:
            record["d"] = msg.dead_letter_description
        if msg.dead_letter_source is not None:
            record["o"] = msg.dead_letter_source
        self._append([_PUT + _json(record)])
        self._reference(key, msg.sequence_number, blob_id)

    def update(self, key: str, msg: BrokerMessage) -> None:
        """Delivery count, state, enqueue/expiry/schedule times changed."""
        record: dict[str, Any] = {"k": key, "s": msg.sequence_number}
        record.update(_mutable_fields(msg))
        self._append([_UPDATE + _json(record)])

    def delete(self, key: str, seq: int) -> None:
        """The message left entity ``key`` (settled, expired or moved)."""
        self._append([_DELETE + _json({"k": key, "s": seq})])
        self._dereference(key, seq)

    def sequence(self, key: str, seq: int) -> None:
        """A sequence number used without a stored message (the counter must not go back)."""
        self._append([_SEQUENCE + _json({"k": key, "s": seq})])

    def dedup(self, key: str, message_id: str, when: datetime) -> None:
        """A message id entered the duplicate detection history of ``key``."""
        self._append([_DEDUP + _json({"k": key, "id": message_id, "t": _micros(when)})])

    def session_state(self, key: str, session_id: str, state: bytes | None, when: datetime) -> None:
        """A session's state was set (None: cleared)."""
        value = None if state is None else base64.b64encode(state).decode("ascii")
        record = {"k": key, "id": session_id, "v": value, "t": _micros(when)}
        self._append([_SESSION_STATE + _json(record)])

    def _append(self, payload_parts: list[bytes | memoryview]) -> None:
        if self._fd is None:
            raise RuntimeError("call recover() before writing, and not after close()")
        parts = frame(payload_parts)
        self._buffer.extend(parts)
        self._buffered += sum(len(p) for p in parts)

    def commit(self) -> None:
        """Write what the current operation buffered, in one go, and fsync if configured."""
        self._commit(force_sync=False)

    def _commit(self, *, force_sync: bool) -> None:
        if not self._buffer or self._fd is None:
            return
        parts, total = self._buffer, self._buffered
        self._buffer, self._buffered = [], 0
        try:
            _write_all(self._fd, parts, total)
            if self.fsync or force_sync:
                os.fsync(self._fd)
        except OSError:
            # Cut a half-written group off, or recovery would stop before later records.
            os.ftruncate(self._fd, self._end)
            os.lseek(self._fd, self._end, os.SEEK_SET)
            raise
        self._end += total
        self.bytes_written += total

    def sync(self) -> None:
        """Commit and fsync now (for fsync=False: group commit at the caller's pace)."""
        self._commit(force_sync=False)
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """Commit pending records and release the data directory."""
        try:
            if self._fd is not None:
                self._commit(force_sync=False)
                os.close(self._fd)
        finally:
            self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing drops the flock
                self._lock_fd = None


def _write_all(fd: int, parts: list[bytes | memoryview], total: int) -> None:
    """os.writev until everything is written (it may write less, and takes IOV_MAX parts)."""
    views = [memoryview(p) for p in parts]
    written = 0
    index = 0
    while written < total:
        n = os.writev(fd, views[index : index + _IOV_MAX])
        written += n
        while index < len(views) and n >= len(views[index]):
            n -= len(views[index])
            index += 1
        if n:
            views[index] = views[index][n:]
