"""Service Bus entity semantics of the emulator's broker, driven with a fake clock."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from broker_clock import T0, FakeClock
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus.emulator.broker import (
    MAX_FORWARD_HOPS,
    Broker,
    BrokerError,
    EntityNotFound,
    LockLost,
    MessageMeta,
    MessageNotFound,
    MessageState,
    OperationNotAllowed,
    effective_ttl,
    filter_matches,
    subscription_accepts,
)
from claimcheck_bus.emulator.config import (
    CorrelationFilter,
    EmulatorConfig,
    EntityOptions,
    QueueConfig,
    SqlRule,
    SubscriptionConfig,
    TopicConfig,
)
from claimcheck_bus.emulator.sql_filter import Changes, parse_action, parse_filter

LOCK = timedelta(seconds=30)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _broker(clock: FakeClock, *queues: QueueConfig, topics: tuple[TopicConfig, ...] = ()) -> Broker:
    return Broker(EmulatorConfig(queues=queues, topics=topics), clock=clock)


def _q(name: str = "q", **options: object) -> QueueConfig:
    return QueueConfig(name, EntityOptions(lock_duration=LOCK, **options))  # type: ignore[arg-type]


def _one(broker: Broker, path: str, *, peek_lock: bool = True):  # type: ignore[no-untyped-def]
    got = broker.receive(path, 1, peek_lock=peek_lock)
    assert len(got) == 1, f"expected one message on {path}, got {got}"
    return got[0]


# ---------------------------------------------------------------------------------------------
# pure decisions


def test_filter_needs_every_set_field() -> None:
    rule = CorrelationFilter(subject="OrderCreated", content_type="application/json")
    assert filter_matches(
        rule, MessageMeta(subject="OrderCreated", content_type="application/json")
    )
    assert not filter_matches(rule, MessageMeta(subject="OrderCreated"))
    assert not filter_matches(
        rule, MessageMeta(subject="orderCreated", content_type="application/json")
    )


@pytest.mark.parametrize(
    ("wanted", "actual", "match"),
    [
        ("value1", "value1", True),
        ("value1", b"value1", True),  # a protocol layer may hand over undecoded strings
        ("value1", "value2", False),
        (1, 1, True),
        (1, 1.0, True),
        (1, True, False),  # True == 1 in Python, not in a filter
        (True, True, True),
        (True, "true", False),
    ],
)
def test_filter_properties_compare_by_value(wanted: object, actual: object, match: bool) -> None:
    rule = CorrelationFilter(properties={"p": wanted})
    assert filter_matches(rule, MessageMeta(application_properties={"p": actual})) is match


def test_filter_property_missing_does_not_match() -> None:
    rule = CorrelationFilter(properties={"p": "v"})
    assert not filter_matches(rule, MessageMeta(application_properties={"q": "v"}))


def test_subscription_rules_are_or_and_none_means_all() -> None:
    a = CorrelationFilter(subject="a")
    b = CorrelationFilter(subject="b")
    assert subscription_accepts((), MessageMeta())
    assert subscription_accepts((a, b), MessageMeta(subject="b"))
    assert not subscription_accepts((a, b), MessageMeta(subject="c"))


@given(
    st.lists(
        st.one_of(st.none(), st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=99))),
        max_size=4,
    )
)
def test_effective_ttl_is_shortest_given(limits: list[timedelta | None]) -> None:
    present = [x for x in limits if x is not None]
    assert effective_ttl(*limits) == (min(present) if present else None)


# ---------------------------------------------------------------------------------------------
# queues: send, receive, settle


def test_sequence_numbers_start_at_one_and_increase(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    assert [broker.send("q", b"%d" % i, MessageMeta())[0] for i in range(3)] == [1, 2, 3]
    got = broker.receive("q", 10, peek_lock=True)
    assert [m.sequence_number for m in got] == [1, 2, 3]
    assert [m.bare for m in got] == [b"0", b"1", b"2"]
    assert all(m.enqueued_time == T0 and m.delivery_count == 0 for m in got)


def test_bare_bytes_are_not_copied(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    body = bytes(1 << 20)
    broker.send("q", body, MessageMeta())
    assert _one(broker, "q").bare is body


def test_peek_lock_hides_message_until_settled(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"x", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    assert msg.locked_until == T0 + LOCK
    assert broker.receive("q", 10, peek_lock=True) == []
    broker.complete("q", msg.lock_token)
    assert broker.peek("q", 1, 10) == []


def test_receive_and_delete_removes_at_once(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"x", MessageMeta())
    msg = _one(broker, "q", peek_lock=False)
    assert msg.lock_token is None
    assert broker.peek("q", 1, 10) == []


def test_receive_returns_copies(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"x", MessageMeta())
    msg = _one(broker, "q")
    msg.delivery_count = 99
    msg.state = MessageState.DEFERRED
    assert msg.lock_token is not None
    broker.abandon("q", msg.lock_token)
    again = _one(broker, "q")
    assert again.delivery_count == 1
    assert again.state is MessageState.ACTIVE


def test_complete_twice_is_lock_lost(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"x", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    broker.complete("q", msg.lock_token)
    with pytest.raises(LockLost) as info:
        broker.complete("q", msg.lock_token)
    assert info.value.condition == "com.microsoft:message-lock-lost"


def test_unknown_lock_token_is_lock_lost(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    for settle in (
        broker.complete,
        broker.abandon,
        broker.release,
        broker.defer,
        broker.renew_lock,
    ):
        with pytest.raises(LockLost):
            settle("q", uuid.uuid4())


def test_abandon_counts_delivery_and_redelivers_first(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"1", MessageMeta())
    broker.send("q", b"2", MessageMeta())
    first = _one(broker, "q")
    assert first.lock_token is not None
    broker.abandon("q", first.lock_token)
    again = broker.receive("q", 2, peek_lock=True)
    assert [(m.sequence_number, m.delivery_count) for m in again] == [(1, 1), (2, 0)]


def test_release_does_not_count_delivery(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"1", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    broker.release("q", msg.lock_token)
    assert _one(broker, "q").delivery_count == 0


def test_renew_lock_extends_from_now(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"1", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    clock.advance(seconds=20)
    assert broker.renew_lock("q", msg.lock_token) == clock.now + LOCK
    clock.advance(seconds=20)  # past the original lock, inside the renewed one
    assert broker.tick() == T0 + timedelta(seconds=20) + LOCK
    broker.complete("q", msg.lock_token)


def test_renew_expired_lock_is_lock_lost(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"1", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    clock.advance(seconds=31)
    with pytest.raises(LockLost):
        broker.renew_lock("q", msg.lock_token)
    # The expiry was applied on the spot, even without tick().
    assert _one(broker, "q").delivery_count == 1


def test_lock_expiry_redelivers_with_count_on_tick(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"1", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    assert broker.tick() == T0 + LOCK
    clock.advance(seconds=30)
    assert broker.tick() is None
    assert broker.peek("q", 1, 1)[0].delivery_count == 1
    with pytest.raises(LockLost):
        broker.complete("q", msg.lock_token)
    again = _one(broker, "q")
    assert again.delivery_count == 1
    assert again.lock_token != msg.lock_token


def test_max_delivery_count_by_abandon_goes_to_dlq(clock: FakeClock) -> None:
    broker = _broker(clock, _q(max_delivery_count=3))
    broker.send("q", b"1", MessageMeta(message_id="m"))
    for _ in range(3):
        msg = _one(broker, "q")
        assert msg.lock_token is not None
        broker.abandon("q", msg.lock_token)
    assert broker.receive("q", 1, peek_lock=True) == []
    dead = _one(broker, "q/$DeadLetterQueue")
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_description is not None
    assert "3" in dead.dead_letter_description
    assert dead.meta.message_id == "m"
    assert dead.delivery_count == 3


def test_max_delivery_count_by_lock_expiry_goes_to_dlq(clock: FakeClock) -> None:
    broker = _broker(clock, _q(max_delivery_count=2))
    broker.send("q", b"1", MessageMeta())
    for _ in range(2):
        _one(broker, "q")
        clock.advance(seconds=31)
        broker.tick()
    assert broker.peek("q", 1, 10) == []
    assert _one(broker, "q/$DeadLetterQueue").dead_letter_reason == "MaxDeliveryCountExceeded"


def test_dlq_is_never_dead_lettered_by_delivery_count(clock: FakeClock) -> None:
    broker = _broker(clock, _q(max_delivery_count=1))
    broker.send("q", b"1", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    broker.abandon("q", msg.lock_token)
    for _ in range(3):
        dead = _one(broker, "q/$DeadLetterQueue")
        assert dead.lock_token is not None
        broker.abandon("q/$DeadLetterQueue", dead.lock_token)
    dead = _one(broker, "q/$DeadLetterQueue")
    assert dead.delivery_count == 4
    assert dead.lock_token is not None
    with pytest.raises(OperationNotAllowed):
        broker.dead_letter("q/$DeadLetterQueue", dead.lock_token, "again", None)
    broker.complete("q/$DeadLetterQueue", dead.lock_token)
    assert broker.peek("q/$DeadLetterQueue", 1, 10) == []


def test_dead_letter_with_reason_gets_new_sequence_number(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    for i in range(3):
        broker.send("q", b"%d" % i, MessageMeta())
    got = broker.receive("q", 3, peek_lock=True)
    assert got[2].lock_token is not None
    broker.dead_letter("q", got[2].lock_token, "BadInput", "field x missing")
    dead = _one(broker, "Q/$deadletterqueue")
    assert dead.sequence_number == 1  # the DLQ numbers its own messages
    assert dead.bare == b"2"
    assert (dead.dead_letter_reason, dead.dead_letter_description) == (
        "BadInput",
        "field x missing",
    )
    assert dead.dead_letter_source is None  # a queue's own DLQ; the source is implied


def test_defer_then_receive_deferred_then_complete(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"1", MessageMeta())
    broker.send("q", b"2", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    broker.defer("q", msg.lock_token)
    assert [m.sequence_number for m in broker.receive("q", 10, peek_lock=False)] == [2]
    assert broker.receive("q", 10, peek_lock=True) == []
    peeked = broker.peek("q", 1, 10)
    assert [(m.sequence_number, m.state) for m in peeked] == [(1, MessageState.DEFERRED)]
    (deferred,) = broker.receive_deferred("q", [1], peek_lock=True)
    assert deferred.state is MessageState.DEFERRED
    assert deferred.lock_token is not None
    with pytest.raises(MessageNotFound):  # locked by the receiver above
        broker.receive_deferred("q", [1], peek_lock=True)
    broker.complete("q", deferred.lock_token)
    with pytest.raises(MessageNotFound) as info:
        broker.receive_deferred("q", [1], peek_lock=True)
    assert info.value.condition == "com.microsoft:message-not-found"


def test_deferred_message_abandoned_stays_deferred(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"1", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    broker.defer("q", msg.lock_token)
    (deferred,) = broker.receive_deferred("q", [1], peek_lock=True)
    assert deferred.lock_token is not None
    broker.abandon("q", deferred.lock_token)
    assert broker.receive("q", 10, peek_lock=True) == []
    (again,) = broker.receive_deferred("q", [1], peek_lock=False)
    assert again.delivery_count == 1
    assert broker.peek("q", 1, 10) == []


def test_deferred_message_can_be_dead_lettered(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"1", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    broker.defer("q", msg.lock_token)
    (deferred,) = broker.receive_deferred("q", [1], peek_lock=True)
    assert deferred.lock_token is not None
    broker.dead_letter("q", deferred.lock_token, "r", "d")
    assert _one(broker, "q/$DeadLetterQueue").state is MessageState.ACTIVE


def test_receive_deferred_is_all_or_nothing(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"1", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    broker.defer("q", msg.lock_token)
    with pytest.raises(MessageNotFound):
        broker.receive_deferred("q", [1, 7], peek_lock=True)
    assert [m.sequence_number for m in broker.receive_deferred("q", [1], peek_lock=True)] == [1]


def test_peek_from_sequence_number_without_lock(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    for i in range(5):
        broker.send("q", b"%d" % i, MessageMeta())
    broker.schedule("q", b"later", MessageMeta(), T0 + timedelta(hours=1))
    locked = _one(broker, "q")
    peeked = broker.peek("q", 3, 10)
    assert [m.sequence_number for m in peeked] == [3, 4, 5, 6]
    assert peeked[-1].state is MessageState.SCHEDULED
    assert all(m.lock_token is None and m.delivery_count == 0 for m in peeked)
    assert [m.sequence_number for m in broker.peek("q", 0, 2)] == [1, 2]  # locked ones too
    assert locked.lock_token is not None
    broker.complete("q", locked.lock_token)
    assert [m.sequence_number for m in broker.peek("q", 0, 1)] == [2]


def test_peek_stays_fast_with_many_settled(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    for _ in range(5000):
        broker.send("q", b"x", MessageMeta())
    assert len(broker.receive("q", 4990, peek_lock=False)) == 4990
    assert [m.sequence_number for m in broker.peek("q", 1, 3)] == [4991, 4992, 4993]
    assert [m.sequence_number for m in broker.peek("q", 4995, 100)] == [
        4995,
        4996,
        4997,
        4998,
        4999,
        5000,
    ]


# ---------------------------------------------------------------------------------------------
# TTL


def test_ttl_is_min_of_message_and_entity(clock: FakeClock) -> None:
    broker = _broker(clock, _q(default_message_time_to_live=timedelta(seconds=10)))
    broker.send("q", b"short", MessageMeta(time_to_live=timedelta(seconds=5)))
    broker.send("q", b"long", MessageMeta(time_to_live=timedelta(seconds=50)))
    broker.send("q", b"none", MessageMeta())
    expiries = [m.expires_at for m in broker.peek("q", 1, 10)]
    assert expiries == [
        T0 + timedelta(seconds=5),
        T0 + timedelta(seconds=10),
        T0 + timedelta(seconds=10),
    ]


def test_expired_message_is_dropped_on_tick(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"x", MessageMeta(time_to_live=timedelta(seconds=5)))
    assert broker.tick() == T0 + timedelta(seconds=5)
    clock.advance(seconds=5)
    assert broker.tick() is None
    assert broker.peek("q", 1, 10) == []
    assert broker.peek("q/$DeadLetterQueue", 1, 10) == []


def test_expired_message_is_never_handed_out_before_tick(clock: FakeClock) -> None:
    broker = _broker(clock, _q(dead_lettering_on_message_expiration=True))
    broker.send("q", b"x", MessageMeta(time_to_live=timedelta(seconds=5)))
    broker.send("q", b"y", MessageMeta())
    clock.advance(seconds=6)
    assert [m.bare for m in broker.receive("q", 10, peek_lock=False)] == [b"y"]
    dead = _one(broker, "q/$DeadLetterQueue")
    assert dead.dead_letter_reason == "TTLExpiredException"
    assert dead.expires_at is None


def test_ttl_dead_lettering_and_never_expiring_in_dlq(clock: FakeClock) -> None:
    broker = _broker(clock, _q(dead_lettering_on_message_expiration=True))
    broker.send("q", b"x", MessageMeta(time_to_live=timedelta(seconds=5)))
    clock.advance(seconds=5)
    broker.tick()
    clock.advance(days=365)
    assert broker.tick() is None
    dead = _one(broker, "q/$DeadLetterQueue")
    assert dead.dead_letter_reason == "TTLExpiredException"
    assert dead.meta.time_to_live == timedelta(seconds=5)


def test_locked_message_does_not_expire_under_its_lock(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"x", MessageMeta(time_to_live=timedelta(seconds=5)))
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    clock.advance(seconds=10)
    broker.tick()
    broker.complete("q", msg.lock_token)  # still settleable past its TTL

    broker.send("q", b"y", MessageMeta(time_to_live=timedelta(seconds=5)))
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    clock.advance(seconds=10)
    broker.abandon("q", msg.lock_token)  # returns expired: gone
    assert broker.peek("q", 1, 10) == []


def test_deferred_messages_expire_too(clock: FakeClock) -> None:
    broker = _broker(clock, _q(dead_lettering_on_message_expiration=True))
    broker.send("q", b"x", MessageMeta(time_to_live=timedelta(seconds=5)))
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    broker.defer("q", msg.lock_token)
    clock.advance(seconds=6)
    with pytest.raises(MessageNotFound):
        broker.receive_deferred("q", [1], peek_lock=True)
    assert _one(broker, "q/$DeadLetterQueue").dead_letter_reason == "TTLExpiredException"


# ---------------------------------------------------------------------------------------------
# scheduling


def test_scheduled_message_activates_when_due(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    at = T0 + timedelta(minutes=5)
    seq = broker.schedule("q", b"x", MessageMeta(time_to_live=timedelta(minutes=1)), at)
    assert seq == 1
    assert broker.receive("q", 10, peek_lock=True) == []
    (peeked,) = broker.peek("q", 1, 10)
    assert peeked.state is MessageState.SCHEDULED
    assert peeked.scheduled_enqueue_time == at
    assert peeked.expires_at is None  # its TTL counts from activation
    assert broker.tick() == at
    clock.now = at
    assert broker.tick() == at + timedelta(minutes=1)
    msg = _one(broker, "q")
    assert msg.state is MessageState.ACTIVE
    assert msg.enqueued_time == at
    assert msg.expires_at == at + timedelta(minutes=1)


def test_send_with_scheduled_time_in_meta_schedules(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"x", MessageMeta(scheduled_enqueue_time=T0 + timedelta(seconds=1)))
    broker.send("q", b"past", MessageMeta(scheduled_enqueue_time=T0 - timedelta(seconds=1)))
    assert [m.bare for m in broker.receive("q", 10, peek_lock=False)] == [b"past"]
    clock.advance(seconds=1)
    assert [m.bare for m in broker.receive("q", 10, peek_lock=False)] == [b"x"]  # due, no tick


def test_scheduled_then_cancelled(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    seq = broker.schedule("q", b"x", MessageMeta(), T0 + timedelta(seconds=10))
    broker.cancel_scheduled("q", seq)
    assert broker.peek("q", 1, 10) == []
    clock.advance(seconds=11)
    broker.tick()
    assert broker.receive("q", 10, peek_lock=True) == []
    with pytest.raises(MessageNotFound):
        broker.cancel_scheduled("q", seq)


def test_cancel_after_activation_is_not_found(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    seq = broker.schedule("q", b"x", MessageMeta(), T0 + timedelta(seconds=10))
    clock.advance(seconds=10)
    broker.tick()
    with pytest.raises(MessageNotFound):
        broker.cancel_scheduled("q", seq)
    assert len(broker.receive("q", 10, peek_lock=True)) == 1


# ---------------------------------------------------------------------------------------------
# duplicate detection


def test_duplicate_inside_window_is_dropped(clock: FakeClock) -> None:
    broker = _broker(
        clock,
        _q(
            requires_duplicate_detection=True,
            duplicate_detection_history_time_window=timedelta(seconds=20),
        ),
    )
    assert broker.send("q", b"1", MessageMeta(message_id="a")) == [1]
    clock.advance(seconds=19)
    assert broker.send("q", b"2", MessageMeta(message_id="a")) == []
    assert broker.send("q", b"3", MessageMeta(message_id="b")) == [2]
    assert broker.send("q", b"4", MessageMeta()) == [3]  # no id, no detection
    clock.advance(seconds=1)  # 20 s after the first "a"
    broker.tick()
    assert broker.send("q", b"5", MessageMeta(message_id="a")) == [4]
    assert [m.bare for m in broker.receive("q", 10, peek_lock=False)] == [b"1", b"3", b"4", b"5"]


def test_no_duplicate_detection_unless_required(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    assert broker.send("q", b"1", MessageMeta(message_id="a")) == [1]
    assert broker.send("q", b"2", MessageMeta(message_id="a")) == [2]


def test_topic_duplicate_detection(clock: FakeClock) -> None:
    topic = TopicConfig(
        "t",
        EntityOptions(requires_duplicate_detection=True),
        (SubscriptionConfig("s", EntityOptions(), ()),),
    )
    broker = _broker(clock, topics=(topic,))
    assert broker.send("t", b"1", MessageMeta(message_id="a")) == [1]
    assert broker.send("t", b"1", MessageMeta(message_id="a")) == []
    assert len(broker.receive("t/Subscriptions/s", 10, peek_lock=False)) == 1


# ---------------------------------------------------------------------------------------------
# topics


def _topic_broker(clock: FakeClock) -> Broker:
    topic = TopicConfig(
        "events",
        EntityOptions(default_message_time_to_live=timedelta(minutes=10)),
        (
            SubscriptionConfig("all", EntityOptions(lock_duration=LOCK), ()),
            SubscriptionConfig(
                "billing",
                EntityOptions(lock_duration=LOCK, max_delivery_count=1),
                (
                    CorrelationFilter(subject="OrderCreated", properties={"region": "eu"}),
                    CorrelationFilter(correlation_id="vip"),
                ),
            ),
        ),
    )
    return _broker(clock, topics=(topic,))


def test_fan_out_by_filters(clock: FakeClock) -> None:
    broker = _topic_broker(clock)
    broker.send(
        "events", b"1", MessageMeta(subject="OrderCreated", application_properties={"region": "eu"})
    )
    broker.send(
        "events", b"2", MessageMeta(subject="OrderCreated", application_properties={"region": "us"})
    )
    broker.send("events", b"3", MessageMeta(correlation_id="vip"))
    assert [m.bare for m in broker.peek("events/Subscriptions/all", 1, 10)] == [b"1", b"2", b"3"]
    billing = broker.peek("events/Subscriptions/billing", 1, 10)
    assert [(m.sequence_number, m.bare) for m in billing] == [(1, b"1"), (3, b"3")]


def test_topic_numbers_once_and_subscriptions_share_the_number(clock: FakeClock) -> None:
    broker = _topic_broker(clock)
    assert broker.send("events", b"x", MessageMeta(subject="nothing")) == [1]
    assert broker.send("events", b"y", MessageMeta(correlation_id="vip")) == [2]
    assert [m.sequence_number for m in broker.peek("events/Subscriptions/billing", 1, 10)] == [2]


def test_fan_out_gives_each_subscription_its_own_copy_and_lock(clock: FakeClock) -> None:
    broker = _topic_broker(clock)
    broker.send("events", b"x", MessageMeta(correlation_id="vip"))
    a = _one(broker, "events/Subscriptions/all")
    b = _one(broker, "events/Subscriptions/billing")
    assert a.lock_token != b.lock_token
    assert a.bare is b.bare
    assert a.lock_token is not None
    assert b.lock_token is not None
    broker.complete("events/Subscriptions/all", a.lock_token)
    with pytest.raises(LockLost):  # a lock belongs to its subscription
        broker.complete("events/Subscriptions/all", b.lock_token)
    broker.abandon("events/Subscriptions/billing", b.lock_token)  # max 1 -> DLQ
    assert broker.peek("events/Subscriptions/all", 1, 10) == []


def test_subscription_dlq_carries_source(clock: FakeClock) -> None:
    broker = _topic_broker(clock)
    broker.send("events", b"x", MessageMeta(correlation_id="vip"))
    msg = _one(broker, "events/Subscriptions/billing")
    assert msg.lock_token is not None
    broker.dead_letter("events/Subscriptions/billing", msg.lock_token, "why", "because")
    dead = _one(broker, "events/subscriptions/BILLING/$DeadLetterQueue")
    assert dead.dead_letter_source == "events/Subscriptions/billing"
    assert dead.dead_letter_reason == "why"
    assert len(broker.receive("events/Subscriptions/all", 10, peek_lock=True)) == 1


def test_topic_ttl_applies_to_subscriptions(clock: FakeClock) -> None:
    broker = _topic_broker(clock)
    broker.send("events", b"x", MessageMeta())
    (peeked,) = broker.peek("events/Subscriptions/all", 1, 1)
    assert peeked.expires_at == T0 + timedelta(minutes=10)


def test_schedule_on_topic_and_cancel_everywhere(clock: FakeClock) -> None:
    broker = _topic_broker(clock)
    seq = broker.schedule(
        "events", b"x", MessageMeta(correlation_id="vip"), T0 + timedelta(seconds=9)
    )
    assert len(broker.peek("events/Subscriptions/all", 1, 10)) == 1
    assert len(broker.peek("events/Subscriptions/billing", 1, 10)) == 1
    broker.cancel_scheduled("events", seq)
    assert broker.peek("events/Subscriptions/all", 1, 10) == []
    assert broker.peek("events/Subscriptions/billing", 1, 10) == []


def test_topic_is_send_only_and_subscriptions_receive_only(clock: FakeClock) -> None:
    broker = _topic_broker(clock)
    assert broker.has_entity("events")
    with pytest.raises(OperationNotAllowed):
        broker.receive("events", 1, peek_lock=True)
    with pytest.raises(OperationNotAllowed):
        broker.send("events/Subscriptions/all", b"x", MessageMeta())
    with pytest.raises(BrokerError):
        broker.send("events/Subscriptions/all/$DeadLetterQueue", b"x", MessageMeta())


# ---------------------------------------------------------------------------------------------
# paths


def test_paths_are_case_insensitive_and_unknown_ones_raise(clock: FakeClock) -> None:
    broker = Broker(EmulatorConfig.default(), clock=clock)
    for path in (
        "orders",
        "ORDERS",
        "orders/$DeadLetterQueue",
        "Orders/$deadletterqueue",
        "events",
        "events/Subscriptions/all",
        "EVENTS/subscriptions/ALL/$DeadLetterQueue",
        "/orders/",
    ):
        assert broker.has_entity(path), path
    assert not broker.has_entity("nope")
    assert not broker.has_entity("events/Subscriptions/nope")
    assert broker.entity_path("events/SUBSCRIPTIONS/all") == "events/Subscriptions/all"
    assert broker.options("ORDERS") == EntityOptions()
    with pytest.raises(EntityNotFound) as info:
        broker.send("nope", b"x", MessageMeta())
    assert info.value.condition == "amqp:not-found"
    with pytest.raises(EntityNotFound):
        broker.receive("nope", 1, peek_lock=True)
    with pytest.raises(EntityNotFound):
        broker.options("nope")


def test_dead_letter_queue_options_are_the_parents_lock_settings(clock: FakeClock) -> None:
    broker = _broker(
        clock, _q(default_message_time_to_live=timedelta(seconds=1), max_delivery_count=3)
    )
    options = broker.options("q/$DeadLetterQueue")
    assert options.lock_duration == LOCK
    assert options.default_message_time_to_live is None


# ---------------------------------------------------------------------------------------------
# forwarding


def test_forward_to_passes_messages_on_arrival(clock: FakeClock) -> None:
    broker = _broker(clock, _q("in", forward_to="out"), _q("out"))
    broker.send("in", b"x", MessageMeta())
    assert broker.peek("in", 1, 10) == []
    assert _one(broker, "out").bare == b"x"


def test_subscription_forwards_to_queue(clock: FakeClock) -> None:
    topic = TopicConfig(
        "t", EntityOptions(), (SubscriptionConfig("s", EntityOptions(forward_to="q"), ()),)
    )
    broker = _broker(clock, _q(), topics=(topic,))
    broker.send("t", b"x", MessageMeta())
    assert _one(broker, "q").bare == b"x"


def test_scheduled_message_forwards_when_due(clock: FakeClock) -> None:
    broker = _broker(clock, _q("in", forward_to="out"), _q("out"))
    broker.schedule("in", b"x", MessageMeta(), T0 + timedelta(seconds=3))
    assert [m.state for m in broker.peek("in", 1, 10)] == [MessageState.SCHEDULED]
    clock.advance(seconds=3)
    broker.tick()
    assert broker.peek("in", 1, 10) == []
    assert _one(broker, "out").bare == b"x"


def test_forward_dead_lettered_messages(clock: FakeClock) -> None:
    broker = _broker(clock, _q(forward_dead_lettered_messages_to="graveyard"), _q("graveyard"))
    broker.send("q", b"x", MessageMeta())
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    broker.dead_letter("q", msg.lock_token, "why", "because")
    assert broker.peek("q/$DeadLetterQueue", 1, 10) == []
    moved = _one(broker, "graveyard")
    assert (moved.dead_letter_reason, moved.dead_letter_source) == ("why", "q")


def test_forwarding_cycle_stops_in_transfer_dlq(clock: FakeClock) -> None:
    broker = _broker(clock, _q("a", forward_to="b"), _q("b", forward_to="a"))
    broker.send("a", b"x", MessageMeta())
    dead = [
        m
        for path in ("a/$Transfer/$DeadLetterQueue", "b/$Transfer/$DeadLetterQueue")
        for m in broker.receive(path, 10, peek_lock=False)
    ]
    assert len(dead) == 1
    assert dead[0].dead_letter_reason == "MaxTransferHopCountExceeded"
    assert MAX_FORWARD_HOPS == 4


# ---------------------------------------------------------------------------------------------
# listeners


def test_listeners_hear_about_receivable_messages(clock: FakeClock) -> None:
    broker = _broker(clock, _q("Orders", dead_lettering_on_message_expiration=True))
    heard: list[str] = []
    broker.add_listener(heard.append)
    broker.send("orders", b"x", MessageMeta(time_to_live=timedelta(seconds=100)))
    assert heard == ["Orders"]
    msg = _one(broker, "orders")
    assert msg.lock_token is not None
    heard.clear()
    broker.abandon("orders", msg.lock_token)
    assert heard == ["Orders"]
    msg = _one(broker, "orders")
    assert msg.lock_token is not None
    heard.clear()
    broker.release("orders", msg.lock_token)
    assert heard == ["Orders"]
    _one(broker, "orders")
    heard.clear()
    clock.advance(seconds=30)
    broker.tick()  # lock expiry
    assert heard == ["Orders"]
    heard.clear()
    clock.advance(seconds=100)
    broker.tick()  # TTL -> DLQ
    assert heard == ["Orders/$DeadLetterQueue"]
    heard.clear()
    broker.schedule("orders", b"y", MessageMeta(), clock.now + timedelta(seconds=1))
    assert heard == []
    clock.advance(seconds=1)
    broker.tick()
    assert heard == ["Orders"]


def test_listener_may_call_back_into_broker(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    received: list[bytes] = []

    def deliver(path: str) -> None:
        received.extend(m.bare for m in broker.receive(path, 10, peek_lock=False))

    broker.add_listener(deliver)
    broker.send("q", b"x", MessageMeta())
    assert received == [b"x"]


def test_failing_listener_does_not_break_the_broker(clock: FakeClock) -> None:
    broker = _broker(clock, _q())

    def boom(path: str) -> None:
        raise RuntimeError("listener bug")

    broker.add_listener(boom)
    assert broker.send("q", b"x", MessageMeta()) == [1]
    assert len(broker.receive("q", 1, peek_lock=True)) == 1


# ---------------------------------------------------------------------------------------------
# scale


def test_receive_from_100k_queue_is_not_quadratic() -> None:
    broker = Broker(EmulatorConfig(queues=(QueueConfig("q"),)))
    meta = MessageMeta()
    start = time.perf_counter()
    for _ in range(100_000):
        broker.send("q", b"x", meta)
    for _ in range(2_000):
        (msg,) = broker.receive("q", 1, peek_lock=True)
        assert msg.lock_token is not None
        broker.complete("q", msg.lock_token)
    got = broker.receive("q", 100_000, peek_lock=False)
    elapsed = time.perf_counter() - start
    assert len(got) == 98_000
    # Linear work is ~1-2 s here; O(n) per message would take minutes.
    assert elapsed < 20, elapsed


def test_defer_after_ttl_passed_under_lock_expires(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.send("q", b"x", MessageMeta(time_to_live=timedelta(seconds=5)))
    msg = _one(broker, "q")
    assert msg.lock_token is not None
    clock.advance(seconds=6)
    broker.tick()
    broker.defer("q", msg.lock_token)
    assert broker.peek("q", 1, 10) == []


def test_entities_added_at_run_time(clock: FakeClock) -> None:
    broker = _broker(clock, _q())
    broker.add_queue(QueueConfig("Fresh", EntityOptions(forward_to="Q")))
    broker.add_topic(
        TopicConfig("t", EntityOptions(), (SubscriptionConfig("s", EntityOptions(), ()),))
    )
    assert broker.has_entity("fresh/$DeadLetterQueue")
    assert broker.options("fresh").forward_to == "q"  # the configured spelling
    broker.send("fresh", b"x", MessageMeta())
    broker.send("t", b"y", MessageMeta())
    assert _one(broker, "q").bare == b"x"
    assert _one(broker, "t/Subscriptions/s").bare == b"y"
    with pytest.raises(ValueError, match="exists already"):
        broker.add_queue(QueueConfig("FRESH"))
    with pytest.raises(ValueError, match="not a queue or topic"):
        broker.add_queue(QueueConfig("other", EntityOptions(forward_to="nowhere")))


def test_config_with_unknown_forward_target_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="'a' forwards to 'nowhere'"):
        _broker(clock, _q("a", forward_to="nowhere"))


def _sql(name: str, expression: str, action: str | None = None) -> SqlRule:
    return SqlRule(name, parse_filter(expression), parse_action(action) if action else None)


def test_sql_rules_route_and_actions_change_only_that_subscriptions_copy(
    clock: FakeClock,
) -> None:
    restamped: list[tuple[bytes, Changes]] = []

    def restamp(bare: bytes, changes: Changes) -> bytes:
        restamped.append((bare, changes))
        return bare + b"+action"

    topic = TopicConfig(
        "t",
        EntityOptions(),
        (
            SubscriptionConfig("big", EntityOptions(), (_sql("big", "amount > 100"),)),
            SubscriptionConfig(
                "eu",
                EntityOptions(),
                (
                    _sql("eu", "region = 'EU'", "SET tier = 'gold'; REMOVE amount"),
                    CorrelationFilter(subject="Refund"),
                ),
            ),
        ),
    )
    broker = Broker(EmulatorConfig(topics=(topic,)), clock=clock, restamp=restamp)
    broker.send("t", b"a", MessageMeta(application_properties={"amount": 500, "region": "US"}))
    broker.send("t", b"b", MessageMeta(application_properties={"amount": 5, "region": "EU"}))
    broker.send("t", b"c", MessageMeta(subject="Refund"))

    assert [m.bare for m in broker.receive("t/Subscriptions/big", 10, peek_lock=False)] == [b"a"]
    eu = broker.receive("t/Subscriptions/eu", 10, peek_lock=False)
    assert [m.bare for m in eu] == [b"b+action", b"c"]
    assert eu[0].meta.application_properties == {"region": "EU", "tier": "gold"}
    assert restamped == [(b"b", Changes(user={"tier": "gold", "amount": None}))]


def test_correlation_rule_with_an_action(clock: FakeClock) -> None:
    rule = CorrelationFilter(subject="s", action=parse_action("SET sys.Label = 'seen'"))
    topic = TopicConfig("t", EntityOptions(), (SubscriptionConfig("x", EntityOptions(), (rule,)),))
    broker = Broker(EmulatorConfig(topics=(topic,)), clock=clock)
    broker.send("t", b"m", MessageMeta(subject="s"))
    assert _one(broker, "t/Subscriptions/x").meta.subject == "seen"
