"""The worker's decisions as pure functions: routing, versions, upcasting, error policy,
timing and lag."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from claimcheck_bus.claim_check.publication import event_version_property
from claimcheck_bus.errors import (
    EventDecodeError,
    PayloadNotFoundError,
    PayloadUnavailableError,
    UntrustedPayloadUrlError,
)
from claimcheck_bus.worker.dispatch import (
    BUSY_RECEIVE_WAIT,
    LINK_OPEN_WAIT,
    MAX_DESCRIPTION,
    Route,
    Settle,
    Turn,
    UnknownEventTypeError,
    UnsupportedEventVersionError,
    backoff,
    decide,
    describe,
    event_type_of,
    event_version_of,
    first_failure,
    lag_seconds,
    next_turn,
    percentile,
    read_version,
    receive_batch,
    receive_wait,
    refill_size,
    renew_delay,
    retention_cutoff,
    select_routes,
    session_receive_size,
    should_receive,
    upcast,
    upcast_chain,
)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Plain(BaseModel):
    Id: str


class Renamed(BaseModel):
    __event_type__: ClassVar[str] = "order.created"
    __event_version__: ClassVar[int] = 3
    Id: str


def test_event_type_and_version_of_a_class() -> None:
    assert (event_type_of(Plain), event_version_of(Plain)) == ("Plain", 1)
    assert (event_type_of(Renamed), event_version_of(Renamed)) == ("order.created", 3)
    assert event_type_of(Plain, "Other") == "Other"
    assert event_version_of(Plain, 2) == 2
    with pytest.raises(ValueError, match="version"):
        event_version_of(Plain, 0)


def test_publish_writes_the_version_only_when_above_one() -> None:
    assert event_version_property(Renamed(Id="x")) == {"EventVersion": 3}
    assert event_version_property(Plain(Id="x")) == {}


@pytest.mark.parametrize(
    ("properties", "version"),
    [({}, 1), ({"EventVersion": 2}, 2), ({"EventVersion": "4"}, 4), ({"EventVersion": b"5"}, 5)],
)
def test_read_version(properties: dict[str, Any], version: int) -> None:
    assert read_version(properties) == version


@pytest.mark.parametrize("bad", [0, -1, True, "two", 1.5, "99999999999"])
def test_read_version_refuses_what_is_not_a_positive_int(bad: object) -> None:
    with pytest.raises(UnsupportedEventVersionError):
        read_version({"EventVersion": bad})


def route(event_type: str, version: int = 1) -> Route:
    return Route(event_type, version, Plain, target=None)


def test_select_routes() -> None:
    routes = [route("A"), route("B"), route("A", 2)]
    assert select_routes(routes, "A") == [routes[0], routes[2]]
    with pytest.raises(UnknownEventTypeError, match="'C'") as raised:
        select_routes(routes, "C")
    assert "A, B" in str(raised.value)
    assert raised.value.dead_letter_reason == "UnknownEventType"
    with pytest.raises(UnknownEventTypeError):
        select_routes(routes, None)


def test_upcast_chain_runs_each_step_in_order() -> None:
    upcasters = {
        ("E", 1): lambda d: {**d, "v2": True},
        ("E", 2): lambda d: {**d, "v3": d["v2"]},
    }
    chain = upcast_chain(upcasters, "E", 1, 3)
    assert upcast({"id": 1}, chain) == {"id": 1, "v2": True, "v3": True}
    assert upcast_chain(upcasters, "E", 3, 3) == []
    assert len(upcast_chain(upcasters, "E", 2, 3)) == 1


def test_upcast_chain_refuses_gaps_and_newer_versions() -> None:
    with pytest.raises(UnsupportedEventVersionError, match="no upcaster from E version 2"):
        upcast_chain({("E", 1): lambda d: d}, "E", 1, 3)
    with pytest.raises(UnsupportedEventVersionError, match="newer"):
        upcast_chain({}, "E", 4, 3)


def test_decide_completes_what_succeeded() -> None:
    assert decide(None, delivery_count=0).settle is Settle.COMPLETE


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PayloadNotFoundError("payload missing", message_id="m"), "PayloadNotFound"),
        (UntrustedPayloadUrlError("outside"), "UntrustedPayloadUrl"),
        (EventDecodeError("not JSON"), "UndecodableEvent"),
        (UnknownEventTypeError("no handler"), "UnknownEventType"),
        (UnsupportedEventVersionError("v9"), "UnsupportedEventVersion"),
    ],
)
def test_decide_dead_letters_permanent_errors_at_once(error: Exception, reason: str) -> None:
    decision = decide(error, delivery_count=0)
    assert decision.settle is Settle.DEAD_LETTER
    assert decision.reason == reason
    assert decision.description is not None
    assert str(error) in decision.description


def test_decide_dead_letters_an_event_that_does_not_validate() -> None:
    with pytest.raises(ValidationError) as raised:
        Plain.model_validate({})
    decision = decide(raised.value, delivery_count=3)
    assert (decision.settle, decision.reason) == (Settle.DEAD_LETTER, "InvalidEvent")


@pytest.mark.parametrize(
    "error", [PayloadUnavailableError("storage down"), ConnectionError("db"), RuntimeError("x")]
)
def test_decide_abandons_transient_errors_with_backoff(error: Exception) -> None:
    first = decide(error, delivery_count=0, base_delay=0.5)
    later = decide(error, delivery_count=3, base_delay=0.5)
    assert first.settle is later.settle is Settle.ABANDON
    assert (first.delay, later.delay) == (0.5, 4.0)


@given(st.integers(min_value=-5, max_value=10_000))
def test_backoff_grows_and_is_capped(count: int) -> None:
    assert 0 < backoff(count, 0.1, 30.0) <= 30.0
    assert backoff(count, 0.1, 30.0) <= backoff(count + 1, 0.1, 30.0)


@given(st.text(max_size=5000))
def test_descriptions_are_bounded(text: str) -> None:
    assert len(describe(RuntimeError(text))) <= MAX_DESCRIPTION


def test_descriptions_mask_secrets() -> None:
    error = RuntimeError(
        "GET https://a.blob.core.windows.net/c/b?sv=1&sig=abc%2Bdef failed; "
        "AccountKey=Zm9vYmFy==;password=hunter2"
    )
    text = describe(error)
    for secret in ("abc%2Bdef", "Zm9vYmFy", "hunter2"):
        assert secret not in text
    assert "sig=***" in text
    assert text.startswith("RuntimeError: GET https://a.blob.core.windows.net/c/b")


def test_renew_at_half_the_remaining_lock() -> None:
    assert renew_delay(NOW + timedelta(seconds=30), NOW) == 15
    assert renew_delay(NOW - timedelta(seconds=1), NOW) == 0.2
    assert renew_delay(None, NOW) == 10


def test_lag_from_enqueue_to_commit() -> None:
    assert lag_seconds(NOW, NOW + timedelta(milliseconds=250)) == 0.25
    assert lag_seconds(NOW + timedelta(seconds=1), NOW) == 0  # clock skew never goes negative
    assert lag_seconds(None, NOW) is None


def test_retention_is_at_least_seven_days() -> None:
    assert retention_cutoff(NOW, timedelta(days=7)) == NOW - timedelta(days=7)
    with pytest.raises(ValueError, match="at least 7 days"):
        retention_cutoff(NOW, timedelta(days=6))


def test_receive_batch_fits_free_slots_and_the_lock() -> None:
    assert receive_batch(0, lock_seconds=30, handler_seconds=1) == 0
    assert receive_batch(8, lock_seconds=None, handler_seconds=0) == 8
    assert receive_batch(8, lock_seconds=30, handler_seconds=10) == 3
    assert receive_batch(8, lock_seconds=5, handler_seconds=60) == 1
    assert receive_batch(8, lock_seconds=None, handler_seconds=0, most=3) == 3
    assert receive_batch(2, lock_seconds=None, handler_seconds=0, most=3) == 2
    assert receive_batch(8, lock_seconds=30, handler_seconds=10, most=2) == 2


@given(st.integers(1, 10_000), st.floats(0.01, 1.0))
def test_refill_size_leaves_room_for_the_next_batch(capacity: int, refill: float) -> None:
    size = refill_size(capacity, refill)
    assert 1 <= size <= capacity
    # Once a batch is received, the next one is asked for when another batch's worth is free.
    assert should_receive(size, capacity, inflight=capacity - size, refill=refill)
    assert not should_receive(size - 1, capacity, inflight=capacity, refill=refill)


def test_percentile() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(101)], 0.95) == 95.0


def test_receive_wait() -> None:
    assert receive_wait(1.0, inflight=0, linked=False) == LINK_OPEN_WAIT  # the link opens
    assert receive_wait(1.0, inflight=0, linked=True) == 1.0  # idle: wait for work
    assert receive_wait(1.0, inflight=3, linked=True) == BUSY_RECEIVE_WAIT  # settlements wait


def test_should_receive_refills_in_batches() -> None:
    assert not should_receive(0, 16, inflight=0, refill=0.5)
    assert should_receive(1, 16, inflight=0, refill=0.5)  # idle entity: take what comes
    assert not should_receive(7, 16, inflight=9, refill=0.5)
    assert should_receive(8, 16, inflight=8, refill=0.5)
    assert should_receive(1, 1, inflight=0, refill=0.5)


def turn(**given: Any) -> Turn:
    state = dict(ready=0, free_slots=16, capacity=16, inflight=0, refill=0.5)
    state.update(stopping=False, hold=False)
    state.update(given)
    return next_turn(**state)


def test_a_lane_settles_what_is_ready_before_anything_else() -> None:
    assert turn(ready=1) is Turn.SETTLE
    assert turn(ready=3, inflight=16, free_slots=0, stopping=True, hold=True) is Turn.SETTLE


def test_a_lane_receives_only_when_a_batch_fits() -> None:
    assert turn() is Turn.RECEIVE  # idle: take what comes
    assert turn(inflight=8, free_slots=8) is Turn.RECEIVE
    assert turn(inflight=9, free_slots=7) is Turn.WAIT  # wait for settlements instead
    assert turn(inflight=16, free_slots=0) is Turn.WAIT


def test_a_held_lane_waits_instead_of_receiving() -> None:
    # The entity came back empty with messages in flight, or receiving failed.
    assert turn(hold=True, inflight=2, free_slots=14) is Turn.WAIT
    assert turn(hold=True) is Turn.WAIT


def test_a_stopping_lane_only_settles_and_ends_once_nothing_is_in_flight() -> None:
    assert turn(stopping=True, inflight=2, free_slots=14) is Turn.WAIT
    assert turn(stopping=True) is Turn.DONE


@given(
    st.integers(0, 64),
    st.integers(0, 64),
    st.integers(0, 64),
    st.booleans(),
    st.booleans(),
)
def test_a_lane_never_receives_past_its_slots_nor_ends_with_messages_in_flight(
    ready: int, free: int, inflight: int, stopping: bool, hold: bool
) -> None:
    chosen = turn(
        ready=ready,
        free_slots=free,
        capacity=64,
        inflight=inflight,
        stopping=stopping,
        hold=hold,
    )
    if chosen is Turn.RECEIVE:
        assert free > 0
        assert (stopping, hold, ready) == (False, False, 0)
    if chosen is Turn.DONE:
        assert stopping
        assert (inflight, ready) == (0, 0)


def test_first_failure_is_where_a_session_batch_stops() -> None:
    assert first_failure([None, None]) is None
    assert first_failure([]) is None
    assert first_failure([None, ValueError(), None, KeyError()]) == 1


def test_session_receive_size_leaves_room_for_the_failed_message() -> None:
    assert session_receive_size(64, 0) == 64
    assert session_receive_size(64, 10) == 54
    assert session_receive_size(8, 8) == 1
    assert session_receive_size(8, 20) == 1
