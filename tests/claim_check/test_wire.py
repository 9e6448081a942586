"""The wire contract's pure functions: sizes, the offload decision, properties."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus import _sdk
from claimcheck_bus.claim_check.wire import (
    STANDARD_TIER_MAX,
    Route,
    choose_route,
    claim_check_properties,
    cloudevent_attribute,
    cloudevent_properties,
    is_true_flag,
    normalise_properties,
    offload_limit,
    read_claim_check,
    wire_size,
)
from claimcheck_bus.errors import InvalidClaimCheckError, PayloadTooLargeError

HASH = "ab" * 32


def message(body: bytes, **properties: object) -> object:
    return _sdk.build_message(
        body,
        content_type="application/json",
        message_id="3f2c9a6e-0000-4000-8000-000000000001",
        subject="OrderCreated",
        application_properties={"cloudEvents_type": "OrderCreated", **properties},
    )


@given(st.integers(min_value=0, max_value=70_000), st.integers(0, 3))
def test_wire_size_adds_the_body_to_the_envelope_exactly(body_length: int, extra: int) -> None:
    properties = {f"p{i}": "x" * (i * 100) for i in range(extra)}
    envelope = _sdk.encoded_size(message(b"", **properties))  # type: ignore[arg-type]
    actual = _sdk.encoded_size(message(b"a" * body_length, **properties))  # type: ignore[arg-type]
    assert wire_size(envelope, body_length) == actual


def test_offload_limit_is_the_smaller_of_threshold_and_entity_limit() -> None:
    assert offload_limit(None, None) == STANDARD_TIER_MAX
    assert offload_limit(None, 1024 * 1024) == 1024 * 1024
    assert offload_limit(64, 262144) == 64 * 1024
    assert offload_limit(1024, 262144) == 262144


@pytest.mark.parametrize(
    ("size", "threshold_kb", "entity_max", "expected"),
    [
        (1024, 64, 262144, Route.INLINE),
        (64 * 1024, 64, 262144, Route.INLINE),
        (64 * 1024 + 1, 64, 262144, Route.CLAIM_CHECK),
        (262144, None, 262144, Route.INLINE),
        (262145, None, 262144, Route.CLAIM_CHECK),
        (262145, 1024, 262144, Route.CLAIM_CHECK),
        (900_000, None, 1024 * 1024, Route.INLINE),
    ],
)
def test_route_by_size(
    size: int, threshold_kb: int | None, entity_max: int, expected: Route
) -> None:
    assert (
        choose_route(
            size, enabled=True, always=False, threshold_kb=threshold_kb, entity_max_bytes=entity_max
        )
        is expected
    )


def test_always_offloads_even_tiny_payloads() -> None:
    route = choose_route(10, enabled=True, always=True, threshold_kb=None, entity_max_bytes=None)
    assert route is Route.CLAIM_CHECK


def test_disabled_claim_check_refuses_what_the_entity_cannot_take() -> None:
    # The threshold is irrelevant when nothing can be offloaded.
    assert (
        choose_route(100_000, enabled=False, always=False, threshold_kb=1, entity_max_bytes=262144)
        is Route.INLINE
    )
    with pytest.raises(PayloadTooLargeError) as caught:
        choose_route(
            300_000,
            enabled=False,
            always=False,
            threshold_kb=None,
            entity_max_bytes=262144,
            message_id="m-1",
            entity="orders",
        )
    text = str(caught.value)
    assert "300000 bytes" in text
    assert "262144" in text
    assert "message m-1, on orders" in text
    assert "CLAIMCHECK_CLAIM_CHECK__ENABLED" in text


@given(
    st.integers(0, 10**9),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(1, 102400),
    st.none() | st.integers(1024, 100 * 1024 * 1024),
)
def test_route_properties(
    size: int, enabled: bool, always: bool, threshold: int | None, entity_max: int | None
) -> None:
    try:
        route = choose_route(
            size,
            enabled=enabled,
            always=always,
            threshold_kb=threshold,
            entity_max_bytes=entity_max,
        )
    except PayloadTooLargeError:
        assert not enabled
        assert size > (entity_max or STANDARD_TIER_MAX)
        return
    if route is Route.INLINE:
        # Whatever goes inline fits the entity.
        assert size <= (entity_max or STANDARD_TIER_MAX)
    else:
        assert enabled


def test_cloudevent_properties_carry_type_and_id() -> None:
    props = cloudevent_properties(
        event_type="OrderCreated",
        message_id="m-1",
        source="/orders",
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    )
    assert props == {
        "cloudEvents_specversion": "1.0",
        "cloudEvents_type": "OrderCreated",
        "cloudEvents_source": "/orders",
        "cloudEvents_id": "m-1",
        "cloudEvents_time": "2026-01-02T03:04:05.000000Z",
    }
    assert cloudevent_attribute(props, "type") == "OrderCreated"
    assert cloudevent_attribute({"cloudEvents:type": "Old"}, "type") == "Old"
    assert cloudevent_attribute({}, "type") is None


def test_claim_check_properties_round_trip() -> None:
    url = "https://a.blob.core.windows.net/claim-check/orders/E/1.json?sig=x"
    props = claim_check_properties(url, size=10, sha256=HASH)
    ref = read_claim_check(props)
    assert ref is not None
    assert (ref.url, ref.size, ref.sha256, ref.content_encoding) == (url, 10, HASH, None)


@pytest.mark.parametrize("flag", [True, "true", "True"])
def test_is_claim_check_accepts_bool_and_the_strings(flag: object) -> None:
    assert is_true_flag(flag)
    assert read_claim_check({"IsClaimCheck": flag, "ClaimCheckBlobUri": "https://x/c/b"})


@pytest.mark.parametrize("flag", [False, "false", "TRUE", 1, "yes", None, b"true"])
def test_anything_else_means_inline(flag: object) -> None:
    assert read_claim_check({"IsClaimCheck": flag, "ClaimCheckBlobUri": "https://x/c/b"}) is None


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"IsClaimCheck": True}, "no usable ClaimCheckBlobUri"),
        ({"IsClaimCheck": True, "ClaimCheckBlobUri": "  "}, "no usable ClaimCheckBlobUri"),
        ({"IsClaimCheck": True, "ClaimCheckBlobUri": 42}, "no usable ClaimCheckBlobUri"),
        ({"IsClaimCheck": True, "ClaimCheckBlobUri": "u", "ClaimCheckSize": -1}, "byte count"),
        ({"IsClaimCheck": True, "ClaimCheckBlobUri": "u", "ClaimCheckSize": "9"}, "byte count"),
        ({"IsClaimCheck": True, "ClaimCheckBlobUri": "u", "ClaimCheckSha256": "zz"}, "SHA-256"),
    ],
)
def test_invalid_claim_checks_are_typed_errors(props: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidClaimCheckError, match=problem) as caught:
        read_claim_check(props, message_id="m-9", entity="orders")
    assert caught.value.permanent
    assert "m-9" in str(caught.value)


def test_sdk_style_bytes_keys_and_values_are_normalised() -> None:
    received = {
        b"IsClaimCheck": True,
        b"ClaimCheckBlobUri": b"https://a/c/b",
        b"ClaimCheckSize": 5,
        b"bin": b"\xff\x00",
        "already": "str",
    }
    props = normalise_properties(received)
    assert props == {
        "IsClaimCheck": True,
        "ClaimCheckBlobUri": "https://a/c/b",
        "ClaimCheckSize": 5,
        "bin": b"\xff\x00",
        "already": "str",
    }
    assert read_claim_check(props) is not None


_values = st.one_of(
    st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(), st.binary(), st.none()
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["IsClaimCheck", "ClaimCheckBlobUri", "ClaimCheckSize", "ClaimCheckSha256", "x"]
        )
        | st.text(max_size=5),
        _values,
    ),
    st.booleans(),
)
def test_fuzzed_properties_give_a_ref_none_or_a_typed_error(
    props: dict[str, object], as_bytes: bool
) -> None:
    if as_bytes:
        props = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in props.items()}
    try:
        ref = read_claim_check(normalise_properties(props))
    except InvalidClaimCheckError:
        return
    if ref is not None:
        assert ref.url


def _utf8_text(**kwargs: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=st.characters(codec="utf-8"), **kwargs)


_prop_values = st.one_of(
    _utf8_text(max_size=300),
    # The SDK decodes bytes values to str on send (and fails on non-UTF-8): text only.
    _utf8_text(max_size=300).map(str.encode),
    st.integers(-(2**31), 2**31 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.uuids(),
    st.integers(0, 2**62).map(_sdk.amqp_long),
)


@given(
    st.dictionaries(_utf8_text(min_size=1, max_size=40), _prop_values, max_size=8),
    st.integers(0, 5000),
    _utf8_text(max_size=128),
    st.none() | _utf8_text(max_size=60),
    st.none() | st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=30)),
)
def test_the_envelope_bound_never_underestimates(
    properties: dict[str, object],
    body_length: int,
    message_id: str,
    correlation_id: str | None,
    ttl: timedelta | None,
) -> None:
    from claimcheck_bus.claim_check.wire import envelope_bound

    message = _sdk.build_message(
        b"b" * body_length,
        content_type="application/json",
        message_id=message_id or "m",
        subject="OrderCreated",
        application_properties=properties,
        correlation_id=correlation_id,
        time_to_live=ttl,
    )
    bound = envelope_bound(
        properties, (message_id or "m", "application/json", "OrderCreated", correlation_id, ttl)
    )
    assert bound is not None
    exact = _sdk.encoded_size(message)
    assert exact <= wire_size(bound, body_length) <= exact + 200 + 20 * len(properties)
