"""Durable mode: a restart keeps every unsettled message, even after SIGKILL mid-write."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from broker_clock import T0, FakeClock
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus.emulator.broker import Broker, BrokerMessage, MessageMeta, MessageState
from claimcheck_bus.emulator.config import (
    EmulatorConfig,
    EntityOptions,
    QueueConfig,
    SubscriptionConfig,
    TopicConfig,
)
from claimcheck_bus.emulator.persistence import (
    JOURNAL_NAME,
    DataDirInUse,
    Persistence,
    decode_value,
    encode_value,
    read_records,
)

CONFIG = EmulatorConfig(
    queues=(
        QueueConfig(
            "Orders",
            EntityOptions(
                max_delivery_count=3,
                requires_duplicate_detection=True,
                duplicate_detection_history_time_window=timedelta(minutes=10),
            ),
        ),
    ),
    topics=(
        TopicConfig(
            "events",
            EntityOptions(),
            (
                SubscriptionConfig("a", EntityOptions(), ()),
                SubscriptionConfig("b", EntityOptions(), ()),
            ),
        ),
    ),
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


OpenBroker = Callable[..., Broker]


@pytest.fixture
def open_broker(tmp_path: Path, clock: FakeClock) -> Iterator[OpenBroker]:
    opened: list[Broker] = []

    def make(**persistence_options: object) -> Broker:
        persistence = Persistence(tmp_path / "data", **persistence_options)  # type: ignore[arg-type]
        broker = Broker(CONFIG, clock=clock, persistence=persistence)
        opened.append(broker)
        return broker

    yield make
    for broker in opened:
        broker.close()


def _snapshot(broker: Broker) -> dict[str, list[tuple[object, ...]]]:
    """Everything observable about each entity's messages, without locks."""
    paths = [
        "Orders",
        "Orders/$DeadLetterQueue",
        "events/Subscriptions/a",
        "events/Subscriptions/b",
        "events/Subscriptions/a/$DeadLetterQueue",
    ]
    return {path: [_fields(m) for m in broker.peek(path, 0, 1000)] for path in paths}


def _fields(m: BrokerMessage) -> tuple[object, ...]:
    return (
        m.sequence_number,
        m.bare,
        m.meta,
        m.enqueued_time,
        m.delivery_count,
        m.state,
        m.expires_at,
        m.scheduled_enqueue_time,
        m.dead_letter_reason,
        m.dead_letter_description,
        m.dead_letter_source,
    )


def _populate(broker: Broker, clock: FakeClock) -> None:
    props = {
        "s": "text",
        "b": b"\x00bytes",
        "i": 7,
        "f": 1.5,
        "t": True,
        "n": None,
        "u": uuid.UUID(int=5),
        "d": T0,
        "l": [1, "x"],
    }
    for i in range(6):
        broker.send(
            "Orders",
            b"order-%d" % i,
            MessageMeta(
                message_id=f"m{i}",
                subject="s",
                time_to_live=timedelta(hours=1),
                application_properties=props,
            ),
        )
    got = broker.receive("orders", 5, peek_lock=True)
    tokens = [m.lock_token for m in got]
    assert all(tokens)
    broker.complete("orders", tokens[0])  # type: ignore[arg-type]
    broker.abandon("orders", tokens[1])  # type: ignore[arg-type]
    broker.defer("orders", tokens[2])  # type: ignore[arg-type]
    broker.dead_letter("orders", tokens[3], "why", "because")  # type: ignore[arg-type]
    # tokens[4] stays locked: locks are not durable
    broker.schedule("orders", b"later", MessageMeta(), T0 + timedelta(hours=2))
    broker.send("events", b"fan", MessageMeta(correlation_id="c"))
    sub = broker.receive("events/Subscriptions/a", 1, peek_lock=True)[0]
    broker.dead_letter("events/Subscriptions/a", sub.lock_token, "r", None)  # type: ignore[arg-type]
    clock.now += timedelta(seconds=1)


def test_restart_keeps_every_unsettled_message(open_broker, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    first = open_broker()
    _populate(first, clock)
    before = _snapshot(first)
    first.close()

    second = open_broker()
    after = _snapshot(second)
    assert after == before
    orders = {m.sequence_number: m for m in second.peek("orders", 0, 100)}
    assert set(orders) == {2, 3, 5, 6, 7}  # 1 completed, 4 dead-lettered
    assert orders[2].delivery_count == 1
    assert orders[3].state is MessageState.DEFERRED
    assert orders[7].state is MessageState.SCHEDULED
    assert orders[2].meta.application_properties["b"] == b"\x00bytes"
    # The message locked before the restart is receivable again.
    assert [m.sequence_number for m in second.receive("orders", 10, peek_lock=True)] == [2, 5, 6]
    # Counters never go backwards, and dedup history survives.
    assert second.send("orders", b"new", MessageMeta(message_id="fresh")) == [8]
    assert second.send("orders", b"dup", MessageMeta(message_id="m0")) == []
    assert second.send("events", b"x", MessageMeta()) == [2]
    # Deferred, scheduled and DLQ behaviour continues after the restart.
    (deferred,) = second.receive_deferred("orders", [3], peek_lock=False)
    assert deferred.bare == b"order-2"
    dead = second.receive("orders/$DeadLetterQueue", 10, peek_lock=False)
    assert [(m.dead_letter_reason, m.dead_letter_description) for m in dead] == [("why", "because")]
    clock.now = T0 + timedelta(hours=2)
    second.tick()
    assert [m.bare for m in second.receive("orders", 10, peek_lock=False)] == [b"later", b"new"]


def test_topic_counter_survives_when_no_subscription_kept_a_message(
    tmp_path: Path, clock: FakeClock
) -> None:
    config = EmulatorConfig(topics=(TopicConfig("t", EntityOptions(), ()),))
    broker = Broker(config, clock=clock, persistence=Persistence(tmp_path))
    assert broker.send("t", b"x", MessageMeta()) == [1]
    assert broker.send("t", b"x", MessageMeta()) == [2]
    broker.close()
    broker = Broker(config, clock=clock, persistence=Persistence(tmp_path))
    assert broker.send("t", b"x", MessageMeta()) == [3]
    broker.close()


def test_completed_messages_stay_gone_and_sequence_continues(open_broker) -> None:  # type: ignore[no-untyped-def]
    first = open_broker()
    for _ in range(3):
        first.send("orders", b"x", MessageMeta())
    assert len(first.receive("orders", 3, peek_lock=False)) == 3
    first.close()
    second = open_broker()
    assert second.peek("orders", 0, 10) == []
    assert second.send("orders", b"y", MessageMeta()) == [4]


def test_bare_bytes_are_written_once(open_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broker = open_broker()
    journal = broker._journal
    body = os.urandom(1 << 20)
    broker.send("events", body, MessageMeta())  # two subscriptions, one blob
    after_send = journal.bytes_written
    assert (1 << 20) < after_send < (1 << 20) + 4096
    for _ in range(2):
        (msg,) = broker.receive("events/Subscriptions/a", 1, peek_lock=True)
        broker.abandon("events/Subscriptions/a", msg.lock_token)
    (msg,) = broker.receive("events/Subscriptions/a", 1, peek_lock=True)
    broker.dead_letter("events/Subscriptions/a", msg.lock_token, "r", "d")
    assert journal.bytes_written - after_send < 4096  # state changes and the move only
    broker.close()
    again = open_broker()
    (a,) = again.peek("events/Subscriptions/a/$DeadLetterQueue", 0, 10)
    (b,) = again.peek("events/Subscriptions/b", 0, 10)
    assert a.bare == body
    assert a.bare is b.bare  # one object after recovery too


def test_data_dir_is_exclusive(open_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    open_broker()
    with pytest.raises(DataDirInUse):
        Persistence(tmp_path / "data")


def test_every_torn_tail_recovers_a_prefix(tmp_path: Path, clock: FakeClock) -> None:
    """Simulate a kill at every byte of the last records: recovery keeps what was complete."""
    source = tmp_path / "source"
    broker = Broker(CONFIG, clock=clock, persistence=Persistence(source))
    states: list[tuple[int, dict[str, list[tuple[object, ...]]]]] = []
    journal_path = source / JOURNAL_NAME
    for i in range(4):
        broker.send("orders", b"m%d" % i * 50, MessageMeta(message_id=str(i)))
        states.append((journal_path.stat().st_size, _snapshot(broker)))
    (msg,) = broker.receive("orders", 1, peek_lock=True)
    broker.abandon("orders", msg.lock_token)  # type: ignore[arg-type]
    states.append((journal_path.stat().st_size, _snapshot(broker)))
    broker.close()
    data = journal_path.read_bytes()
    start = states[1][0]  # cut anywhere in the last three operations
    for cut in range(start, len(data) + 1, 7):
        target = tmp_path / f"cut{cut}"
        target.mkdir()
        (target / JOURNAL_NAME).write_bytes(data[:cut])
        recovered = Broker(CONFIG, clock=clock, persistence=Persistence(target))
        expected = max((s for s in states if s[0] <= cut), key=lambda s: s[0])[1]
        assert _snapshot(recovered) == expected, cut
        # The torn tail was cut off, so new records are readable after a second restart.
        recovered.send("orders", b"after", MessageMeta(message_id=f"after{cut}"))
        recovered.close()
        again = Broker(CONFIG, clock=clock, persistence=Persistence(target))
        assert again.peek("orders", 0, 100)[-1].bare == b"after"
        again.close()


def test_corrupt_record_stops_replay(tmp_path: Path, clock: FakeClock) -> None:
    broker = Broker(CONFIG, clock=clock, persistence=Persistence(tmp_path))
    broker.send("orders", b"first", MessageMeta())
    size = (tmp_path / JOURNAL_NAME).stat().st_size
    broker.send("orders", b"second", MessageMeta())
    broker.close()
    with open(tmp_path / JOURNAL_NAME, "r+b") as f:
        f.seek(size + 12)
        f.write(b"\xff")
    broker = Broker(CONFIG, clock=clock, persistence=Persistence(tmp_path))
    assert [m.bare for m in broker.peek("orders", 0, 10)] == [b"first"]
    broker.close()


def test_compaction_on_start(tmp_path: Path, clock: FakeClock) -> None:
    broker = Broker(CONFIG, clock=clock, persistence=Persistence(tmp_path, fsync=False))
    body = bytes(10_000)
    for _ in range(300):
        broker.send("orders", body, MessageMeta())
    for _ in range(290):
        (msg,) = broker.receive("orders", 1, peek_lock=True)
        broker.complete("orders", msg.lock_token)  # type: ignore[arg-type]
    broker.send("events", b"fan", MessageMeta())
    before = _snapshot(broker)
    broker.close()
    grown = (tmp_path / JOURNAL_NAME).stat().st_size
    (tmp_path / "journal.compacting").write_bytes(b"leftover of a killed compaction")

    broker = Broker(CONFIG, clock=clock, persistence=Persistence(tmp_path, compact_min_bytes=0))
    assert _snapshot(broker) == before
    compacted = (tmp_path / JOURNAL_NAME).stat().st_size
    assert compacted < grown / 10
    assert not (tmp_path / "journal.compacting").exists()
    assert broker.send("orders", b"x", MessageMeta()) == [301]
    broker.close()
    broker = Broker(CONFIG, clock=clock, persistence=Persistence(tmp_path))
    assert len(broker.peek("orders", 0, 100)) == 11
    broker.close()


def test_compaction_while_running_bounds_the_journal(tmp_path: Path, clock: FakeClock) -> None:
    persistence = Persistence(tmp_path, fsync=False, compact_min_bytes=200_000)
    broker = Broker(CONFIG, clock=clock, persistence=persistence)
    body = bytes(10_000)
    for i in range(3):
        broker.send("orders", b"keep-%d" % i, MessageMeta())
    for msg in broker.receive("orders", 3, peek_lock=True):
        broker.defer("orders", msg.lock_token)  # type: ignore[arg-type]
    largest = 0
    for i in range(500):
        broker.send("orders", body, MessageMeta())
        broker.send("events", body, MessageMeta())
        (msg,) = broker.receive("orders", 1, peek_lock=True)
        broker.complete("orders", msg.lock_token)  # type: ignore[arg-type]
        broker.receive("events/Subscriptions/a", 1, peek_lock=False)
        if i % 10:  # subscription b lags behind, keeping some of the topic's messages
            broker.receive("events/Subscriptions/b", 1, peek_lock=False)
        largest = max(largest, (tmp_path / JOURNAL_NAME).stat().st_size)
    live = sum(len(m.bare) for m in broker.peek("events/Subscriptions/b", 0, 1000))
    assert live == 50 * len(body)
    # ~10 MB went through the journal; it never held much more than twice what was live.
    assert largest < 2 * live + 400_000
    before = _snapshot(broker)
    broker.close()
    broker = Broker(CONFIG, clock=clock, persistence=Persistence(tmp_path))
    assert _snapshot(broker) == before
    assert [m.bare for m in broker.peek("orders", 0, 3)] == [b"keep-0", b"keep-1", b"keep-2"]
    assert broker.send("orders", b"x", MessageMeta()) == [504]
    assert broker.send("events", b"x", MessageMeta()) == [501]
    broker.close()


def test_records_are_length_prefixed_with_crc(tmp_path: Path, clock: FakeClock) -> None:
    broker = Broker(CONFIG, clock=clock, persistence=Persistence(tmp_path))
    broker.send("orders", b"x", MessageMeta())
    broker.close()
    with open(tmp_path / JOURNAL_NAME, "rb") as f:
        kinds = [payload[:1] for _, payload in read_records(f, 8)]
    assert kinds == [b"B", b"P"]


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text()
        | st.binary()
        | st.uuids()
        | st.datetimes(timezones=st.just(timezone.utc)),
        lambda c: st.lists(c, max_size=3),
        max_leaves=8,
    )
)
def test_property_values_round_trip(value: object) -> None:
    assert decode_value(encode_value(value)) == value


# ---------------------------------------------------------------------------------------------
# a real process, SIGKILLed while writing

_CHILD = textwrap.dedent(
    """
    import sys
    from claimcheck_bus.emulator.broker import Broker, MessageMeta
    from claimcheck_bus.emulator.config import EmulatorConfig
    from claimcheck_bus.emulator.persistence import Persistence

    persistence = Persistence(sys.argv[1], compact_min_bytes=int(sys.argv[2]))
    broker = Broker(EmulatorConfig.default(), persistence=persistence)
    body = bytes(range(256)) * 200
    i = 0
    while True:
        broker.send("orders", body + str(i).encode(), MessageMeta(message_id=str(i)))
        print("S", i, flush=True)
        if i % 2:
            (msg,) = broker.receive("orders", 1, peek_lock=True)
            broker.complete("orders", msg.lock_token)
            print("C", msg.meta.message_id, flush=True)
        i += 1
    """
)


def test_sigkill_while_writing_then_recovery(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    child = subprocess.Popen(
        # A small compaction threshold, so the kill may also land inside a compaction.
        [sys.executable, "-c", _CHILD, str(data_dir), "300000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sent: set[str] = set()
    completed: set[str] = set()
    buffer = b""
    deadline = time.monotonic() + 30
    selector = selectors.DefaultSelector()
    assert child.stdout is not None
    selector.register(child.stdout, selectors.EVENT_READ)
    try:
        while len(sent) < 300:
            assert time.monotonic() < deadline, f"child too slow: {len(sent)} sent"
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(child.stdout.fileno(), 65536)
            assert chunk, child.stderr.read() if child.stderr else "child exited"
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                kind, ident = line.decode().split()
                (sent if kind == "S" else completed).add(ident)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        selector.close()
    # Drain what the child acknowledged before it died.
    rest = buffer + child.stdout.read()
    for line in rest.split(b"\n"):
        if line.strip():
            kind, ident = line.decode().split()
            (sent if kind == "S" else completed).add(ident)

    broker = Broker(EmulatorConfig.default(), persistence=Persistence(data_dir))
    try:
        recovered = broker.peek("orders", 0, 100_000)
        ids = {m.meta.message_id for m in recovered}
        # Everything acknowledged as sent and not acknowledged as completed is there, except
        # perhaps the one whose completion was in flight (the child completes oldest first) ...
        pending = sent - completed
        assert pending - ids <= {min(pending, key=int)}
        # ... nothing acknowledged as completed came back ...
        assert not ids & completed
        # ... and at most the one in-flight send beyond what was acknowledged.
        highest = max(int(i) for i in sent)
        assert ids <= {str(i) for i in range(highest + 2)}
        seqs = [m.sequence_number for m in recovered]
        assert seqs == sorted(set(seqs))
        for msg in recovered:
            assert msg.bare.endswith(msg.meta.message_id.encode())  # type: ignore[union-attr]
        (new,) = broker.send("orders", b"after", MessageMeta())
        assert new > highest
    finally:
        broker.close()


def test_messages_expire_while_down_and_scheduled_ones_activate(
    tmp_path: Path, clock: FakeClock
) -> None:
    config = EmulatorConfig(
        queues=(QueueConfig("q", EntityOptions(dead_lettering_on_message_expiration=True)),)
    )
    broker = Broker(config, clock=clock, persistence=Persistence(tmp_path))
    broker.send("q", b"short", MessageMeta(time_to_live=timedelta(seconds=5)))
    broker.schedule("q", b"due", MessageMeta(), T0 + timedelta(seconds=5))
    broker.close()
    clock.now += timedelta(minutes=1)
    broker = Broker(config, clock=clock, persistence=Persistence(tmp_path))
    assert broker.tick() is None
    assert [m.bare for m in broker.receive("q", 10, peek_lock=False)] == [b"due"]
    (dead,) = broker.receive("q/$DeadLetterQueue", 10, peek_lock=False)
    assert dead.dead_letter_reason == "TTLExpiredException"
    broker.close()


def test_a_rewritten_copy_and_delivery_annotations_survive_a_restart(open_broker) -> None:  # type: ignore[no-untyped-def]
    first = open_broker()
    first.send("orders", b"old-bytes", MessageMeta(message_id="m", delivery_annotations=b"\x00da"))
    (msg,) = first.receive("orders", 1, peek_lock=True)

    def rewrite(bare: bytes, meta: MessageMeta) -> tuple[bytes, MessageMeta]:
        return b"new-bytes", replace(meta, application_properties={"retry": "yes"})

    first.abandon("orders", msg.lock_token, rewrite)
    first.close()

    second = open_broker()
    (after,) = second.peek("orders", 0, 10)
    assert after.bare == b"new-bytes"
    assert after.delivery_count == 1
    assert after.meta.application_properties == {"retry": "yes"}
    assert after.meta.delivery_annotations == b"\x00da"
