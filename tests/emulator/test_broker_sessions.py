"""Service Bus sessions in the emulator's broker: the pure decisions, then the broker with a
fake clock (FIFO per session, one holder, lock expiry, state, durability)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from broker_clock import T0, FakeClock

from claimcheck_bus.emulator.broker import (
    DEAD_LETTER_QUEUE,
    NULL_SESSION_REASON,
    Broker,
    BrokerMessage,
    MessageMeta,
    MessageState,
    OperationNotAllowed,
    SessionCannotBeLocked,
    SessionInfo,
    SessionLock,
    SessionLockLost,
    next_available_session,
    session_lock_valid,
    sessions_to_list,
)
from claimcheck_bus.emulator.config import (
    EmulatorConfig,
    EntityOptions,
    QueueConfig,
    SubscriptionConfig,
    TopicConfig,
)
from claimcheck_bus.emulator.persistence import Persistence

LOCK = timedelta(seconds=30)


SESSION_OPTIONS = EntityOptions(lock_duration=LOCK, requires_session=True, max_delivery_count=5)
CONFIG = EmulatorConfig(
    queues=(QueueConfig("sq", SESSION_OPTIONS), QueueConfig("plain", EntityOptions())),
    topics=(
        TopicConfig(
            "t",
            EntityOptions(),
            (SubscriptionConfig("ordered", SESSION_OPTIONS), SubscriptionConfig("all")),
        ),
    ),
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> Broker:
    return Broker(CONFIG, clock=clock)


def _send(broker: Broker, session_id: str | None, body: str, path: str = "sq") -> int:
    (seq,) = broker.send(path, body.encode(), MessageMeta(session_id=session_id))
    return seq


def _bodies(messages: list[BrokerMessage]) -> list[str]:
    return [m.bare.decode() for m in messages]


def _accept(broker: Broker, session_id: str | None, path: str = "sq") -> SessionLock:
    lock = broker.accept_session(path, session_id)
    assert lock is not None
    return lock


# ---------------------------------------------------------------------------------------------
# pure decisions


def test_next_available_is_the_unlocked_session_whose_oldest_message_waited_longest() -> None:
    candidates = [("b", 7, False), ("a", 3, True), ("c", 5, False), ("d", None, False)]
    assert next_available_session(candidates) == "c"


def test_next_available_is_none_when_every_session_is_locked_or_empty() -> None:
    assert next_available_session([("a", 1, True), ("b", None, False)]) is None
    assert next_available_session([]) is None


def test_session_lock_is_valid_only_for_its_holder_before_expiry() -> None:
    token = uuid.uuid4()
    until = T0 + LOCK
    assert session_lock_valid(token, until, token, T0)
    assert session_lock_valid(token, until, None, T0)  # "anyone holds it"
    assert not session_lock_valid(token, until, uuid.uuid4(), T0)
    assert not session_lock_valid(token, until, token, until)  # expires at locked_until
    assert not session_lock_valid(None, None, None, T0)


def test_session_listing_without_cutoff_has_messages_or_state_with_one_recent_state() -> None:
    infos = [
        SessionInfo("b", 2, False, None),
        SessionInfo("a", 0, True, T0),
        SessionInfo("c", 0, False, None),
        SessionInfo("d", 0, True, T0 + timedelta(hours=1)),
    ]
    assert sessions_to_list(infos, None, 0, 100) == ["a", "b", "d"]
    assert sessions_to_list(infos, None, 1, 1) == ["b"]
    assert sessions_to_list(infos, T0, 0, 100) == ["d"]


# ---------------------------------------------------------------------------------------------
# sending


def test_a_message_without_session_id_is_refused_by_a_session_queue(broker: Broker) -> None:
    with pytest.raises(OperationNotAllowed, match="SessionId was not set") as info:
        _send(broker, None, "x")
    assert info.value.condition == "amqp:not-allowed"
    with pytest.raises(OperationNotAllowed):
        broker.check_send("sq", MessageMeta())
    broker.check_send("sq", MessageMeta(session_id="s"))  # no error
    assert broker.peek("sq", 0, 10) == []


def test_a_topic_dead_letters_the_session_subscriptions_copy_without_session_id(
    broker: Broker,
) -> None:
    broker.send("t", b"x", MessageMeta())
    assert _bodies(broker.receive("t/Subscriptions/all", 5, peek_lock=False)) == ["x"]
    (dead,) = broker.receive(f"t/Subscriptions/ordered/{DEAD_LETTER_QUEUE}", 5, peek_lock=False)
    assert dead.dead_letter_reason == NULL_SESSION_REASON


# ---------------------------------------------------------------------------------------------
# receiving


def test_receivers_must_match_the_entity(broker: Broker) -> None:
    _send(broker, "a", "x")
    with pytest.raises(OperationNotAllowed, match="non-sessionful"):
        broker.receive("sq", 1, peek_lock=True)
    with pytest.raises(OperationNotAllowed, match="does not require sessions"):
        broker.accept_session("plain", None)
    # A session entity's dead-letter queue is read without a session.
    assert broker.receive(f"sq/{DEAD_LETTER_QUEUE}", 1, peek_lock=True) == []


def test_a_session_hands_out_only_its_own_messages_in_order(broker: Broker) -> None:
    for body, session in (("a1", "a"), ("b1", "b"), ("a2", "a"), ("a3", "a")):
        _send(broker, session, body)
    lock = _accept(broker, "a")
    assert _bodies(broker.receive("sq", 10, peek_lock=True, session=lock)) == ["a1", "a2", "a3"]


def test_one_holder_per_session(broker: Broker) -> None:
    _send(broker, "a", "x")
    _accept(broker, "a")
    with pytest.raises(SessionCannotBeLocked) as info:
        broker.accept_session("sq", "a")
    assert info.value.condition == "com.microsoft:session-cannot-be-locked"
    assert broker.accept_session("sq", None) is None  # the only session is taken


def test_a_named_session_can_be_accepted_before_it_has_messages(broker: Broker) -> None:
    lock = _accept(broker, "later")
    assert broker.receive("sq", 5, peek_lock=True, session=lock) == []
    _send(broker, "later", "x")
    assert _bodies(broker.receive("sq", 5, peek_lock=True, session=lock)) == ["x"]


def test_next_available_takes_the_oldest_waiting_unlocked_session(broker: Broker) -> None:
    _send(broker, "b", "b1")
    _send(broker, "a", "a1")
    first = _accept(broker, None)
    second = _accept(broker, None)
    assert (first.session_id, second.session_id) == ("b", "a")
    assert broker.accept_session("sq", None) is None


def test_abandon_puts_the_message_back_at_the_head_of_its_session(broker: Broker) -> None:
    for i in range(3):
        _send(broker, "a", f"m{i}")
    lock = _accept(broker, "a")
    first, *_ = broker.receive("sq", 3, peek_lock=True, session=lock)
    assert first.lock_token is not None
    broker.abandon("sq", first.lock_token)
    again = broker.receive("sq", 3, peek_lock=True, session=lock)
    assert _bodies(again) == ["m0"]
    assert again[0].delivery_count == 1


def test_session_lock_expiry_releases_the_session_and_its_messages(
    broker: Broker, clock: FakeClock
) -> None:
    for i in range(3):
        _send(broker, "a", f"m{i}")
    lost: list[tuple[str, uuid.UUID]] = []
    broker.add_session_listener(lambda path, token: lost.append((path, token)))
    lock = _accept(broker, "a")
    held = broker.receive("sq", 2, peek_lock=True, session=lock)
    assert all(m.locked_until == lock.locked_until for m in held)
    clock.advance(seconds=LOCK.total_seconds())
    broker.tick()
    assert lost == [("sq", lock.token)]
    token = held[0].lock_token
    assert token is not None
    with pytest.raises(SessionLockLost):
        broker.complete("sq", token)
    with pytest.raises(SessionLockLost):
        broker.receive("sq", 1, peek_lock=True, session=lock)
    relock = _accept(broker, None)
    assert relock.session_id == "a"
    redelivered = broker.receive("sq", 5, peek_lock=True, session=relock)
    assert [(m.bare, m.delivery_count) for m in redelivered] == [
        (b"m0", 1),
        (b"m1", 1),
        (b"m2", 0),
    ]


def test_renewing_the_session_lock_keeps_it_and_its_messages(
    broker: Broker, clock: FakeClock
) -> None:
    _send(broker, "a", "x")
    lock = _accept(broker, "a")
    (msg,) = broker.receive("sq", 1, peek_lock=True, session=lock)
    clock.advance(seconds=20)
    until = broker.renew_session_lock("sq", "a", lock.token)
    assert until == clock.now + LOCK
    clock.advance(seconds=20)
    broker.tick()
    assert msg.lock_token is not None
    broker.complete("sq", msg.lock_token)
    assert broker.peek("sq", 0, 5) == []
    with pytest.raises(SessionLockLost):
        broker.renew_session_lock("sq", "a", uuid.uuid4())  # not the holder


def test_releasing_returns_unsettled_messages_counted(broker: Broker) -> None:
    _send(broker, "a", "x")
    lock = _accept(broker, "a")
    broker.receive("sq", 1, peek_lock=True, session=lock)
    broker.release_session("sq", lock)
    again = _accept(broker, None)
    (msg,) = broker.receive("sq", 1, peek_lock=True, session=again)
    assert msg.delivery_count == 1


def test_session_state_needs_the_lock_and_is_listed(broker: Broker) -> None:
    lock = _accept(broker, "a")
    assert broker.session_state("sq", "a", lock.token) is None
    broker.set_session_state("sq", "a", lock.token, b"START")
    assert broker.session_state("sq", "a", None) == b"START"
    broker.release_session("sq", lock)
    with pytest.raises(SessionLockLost):
        broker.session_state("sq", "a", None)
    assert broker.list_sessions("sq", None, 0, 100) == ["a"]
    assert broker.list_sessions("sq", T0 - timedelta(seconds=1), 0, 100) == ["a"]
    assert broker.list_sessions("sq", T0, 0, 100) == []


def test_deferral_and_peek_stay_within_the_session(broker: Broker) -> None:
    a1 = _send(broker, "a", "a1")
    _send(broker, "b", "b1")
    _send(broker, "a", "a2")
    lock = _accept(broker, "a")
    first, _ = broker.receive("sq", 2, peek_lock=True, session=lock)
    assert first.lock_token is not None
    broker.defer("sq", first.lock_token)
    assert _bodies(broker.peek("sq", 0, 10, "a")) == ["a1", "a2"]
    assert broker.peek("sq", 0, 10, "a")[0].state is MessageState.DEFERRED
    (deferred,) = broker.receive_deferred(
        "sq", [a1], peek_lock=True, session_id="a", token=lock.token
    )
    assert deferred.bare == b"a1"
    b_lock = _accept(broker, "b")
    with pytest.raises(Exception, match="No deferred message"):
        broker.receive_deferred("sq", [a1], peek_lock=True, session_id="b", token=b_lock.token)


def test_sessions_and_their_state_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    first = Broker(CONFIG, clock=clock, persistence=Persistence(tmp_path, fsync=False))
    for i in range(3):
        first.send("sq", f"m{i}".encode(), MessageMeta(session_id="a"))
    lock = first.accept_session("sq", "a")
    assert lock is not None
    first.set_session_state("sq", "a", lock.token, b"half")
    first.receive("sq", 1, peek_lock=True, session=lock)
    first.close()

    second = Broker(CONFIG, clock=clock, persistence=Persistence(tmp_path, fsync=False))
    relock = second.accept_session("sq", None)  # locks are not durable: free again
    assert relock is not None
    assert relock.session_id == "a"
    assert second.session_state("sq", "a", relock.token) == b"half"
    got = second.receive("sq", 5, peek_lock=True, session=relock)
    assert _bodies(got) == ["m0", "m1", "m2"]
    second.close()


def test_session_state_survives_journal_compaction(tmp_path: Path, clock: FakeClock) -> None:
    journal = Persistence(tmp_path, fsync=False, compact_min_bytes=1)
    first = Broker(CONFIG, clock=clock, persistence=journal)
    lock = _accept(first, "a")
    first.set_session_state("sq", "a", lock.token, b"kept")
    first.set_session_state("sq", "a", lock.token, None)
    first.set_session_state("sq", "a", lock.token, b"latest")
    for i in range(50):
        _send(first, "a", f"m{i}")
        (msg,) = first.receive("sq", 1, peek_lock=True, session=lock)
        assert msg.lock_token is not None
        first.complete("sq", msg.lock_token)
    first.close()
    # Compacted: 50 sends and completes would take several KB; the live state is one record.
    assert (tmp_path / "journal.ccb").stat().st_size < 500

    second = Broker(CONFIG, clock=clock, persistence=Persistence(tmp_path, fsync=False))
    relock = _accept(second, "a")
    assert second.session_state("sq", "a", relock.token) == b"latest"
    assert second.list_sessions("sq", None, 0, 10) == ["a"]
    second.close()


def test_only_the_holder_passes_the_session_check(broker: Broker) -> None:
    lock = _accept(broker, "a")
    broker.check_session("sq", "a", lock.token)
    broker.check_session("sq", "a", None)
    with pytest.raises(SessionLockLost):
        broker.check_session("sq", "a", uuid.uuid4())
    with pytest.raises(SessionLockLost):
        broker.check_session("sq", "b", None)
