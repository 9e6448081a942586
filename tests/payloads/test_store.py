"""The payload store's decisions, without I/O: names, metadata, SAS lifetime, keys, errors."""

from __future__ import annotations

import re
import string
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus.errors import (
    ConfigurationError,
    MessageError,
    PayloadAccessDeniedError,
    PayloadNotFoundError,
    PayloadUnavailableError,
    TimeToLiveTooLongError,
)
from claimcheck_bus.payloads.store import (
    ACCOUNT_KEY_MAX_LIFETIME,
    DELEGATION_KEY_REFRESH_GAIN,
    USER_DELEGATION_MAX_LIFETIME,
    KeyWindow,
    StoredPayload,
    blob_name_for,
    container_create_is_fatal,
    decode_metadata_value,
    delegation_key_window,
    digest,
    encode_metadata_value,
    is_payload_name_of,
    message_id_of,
    needs_new_delegation_key,
    payload_metadata,
    sas_expiry,
    sas_protocol,
    should_recreate_container,
    signed_expiry,
    storage_error,
    unescape_name_segment,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


# --- blob_name_for ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entity", "event_type", "message_id", "expected"),
    [
        ("orders", "OrderCreated", "6f1c", "orders/OrderCreated/6f1c.json"),
        ("events", "OrderShipped", "a-b_c", "events/OrderShipped/a-b_c.json"),
        ("sales/orders", "OrderCreated", "1", "sales/orders/OrderCreated/1.json"),
        ("/sales//orders/", "OrderCreated", "1", "sales/orders/OrderCreated/1.json"),
        ("orders.v2", "Order.Created", "1.2", "orders.v2/Order.Created/1.2.json"),
        ("a/../b", "E", "1", "a/~2E~2E/b/E/1.json"),
        ("./orders", "E", "1", "~2E/orders/E/1.json"),
        ("orders", "E", "../../x", "orders/E/..~2F..~2Fx.json"),
        ("orders", "E", "a/b", "orders/E/a~2Fb.json"),
        ("orders", "A/B", "1", "orders/A~2FB/1.json"),
        ("orders", "E", "50%", "orders/E/50~25.json"),
        ("orders", "E", "a\\b", "orders/E/a~5Cb.json"),
        ("orders", "E", "tab\there\x00nul\x7f", "orders/E/tab~09here~00nul~7F.json"),
        ("orders", "E", "\ud800", "orders/E/~ED~A0~80.json"),
        ("orders", "E", "caf\u00e9 \u65e5\u672c", "orders/E/caf\u00e9 \u65e5\u672c.json"),
        ("orders", "E", "a~b", "orders/E/a~7Eb.json"),
    ],
)
def test_blob_names_follow_the_wire_contract_and_escape_what_azure_forbids(
    entity: str, event_type: str, message_id: str, expected: str
) -> None:
    assert blob_name_for(entity, event_type, message_id) == expected


@pytest.mark.parametrize(
    ("entity", "event_type", "message_id"),
    [("", "E", "1"), ("///", "E", "1"), ("orders", "", "1"), ("orders", "E", "")],
)
def test_a_blob_name_needs_an_entity_an_event_type_and_a_message_id(
    entity: str, event_type: str, message_id: str
) -> None:
    with pytest.raises(MessageError, match="needs"):
        blob_name_for(entity, event_type, message_id)


@pytest.mark.parametrize(
    ("blob_name", "entity", "message_id", "ours"),
    [
        ("orders/OrderCreated/m-1.json", "orders", "m-1", True),
        ("events/OrderCreated/m-1.json", "events/Subscriptions/billing", "m-1", True),
        ("sales/orders/E/m-1.json", "sales/orders", "m-1", True),
        ("orders/E/a~2Fb.json", "orders", "a/b", True),
        # Another message's payload, another entity's, or not our layout at all.
        ("orders/OrderCreated/m-2.json", "orders", "m-1", False),
        ("payments/OrderCreated/m-1.json", "orders", "m-1", False),
        ("orders/m-1.json", "orders", "m-1", False),
        ("orders/a/b/m-1.json", "orders", "m-1", False),
        ("orders//m-1.json", "orders", "m-1", False),
        ("orders/OrderCreated/m-1.json", "orders", None, False),
        ("../secret/x.json", "orders", "x", False),
    ],
)
def test_own_credentials_serve_only_the_message_s_own_payload(
    blob_name: str, entity: str, message_id: str | None, ours: bool
) -> None:
    assert is_payload_name_of(blob_name, entity, message_id) is ours


@given(
    entity=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3).map("/".join),
    event_type=st.text(min_size=1, max_size=12),
    message_id=st.text(min_size=1, max_size=40),
)
def test_every_published_name_is_recognised_as_its_message_s(
    entity: str, event_type: str, message_id: str
) -> None:
    try:
        name = blob_name_for(entity, event_type, message_id)
    except MessageError:
        return
    assert is_payload_name_of(name, entity, message_id)


def test_a_blob_name_longer_than_azure_allows_is_refused_with_the_numbers() -> None:
    with pytest.raises(MessageError, match=r"would have 1\d{3} characters.*1024") as raised:
        blob_name_for("orders", "E" * 1100, "id-1")
    assert raised.value.message_id == "id-1"
    assert raised.value.entity == "orders"


entities = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4).map("/".join)


@given(
    entity=entities,
    event_type=st.text(min_size=1, max_size=30),
    message_id=st.text(min_size=1, max_size=128),
)
def test_blob_names_are_safe_and_keep_the_message_id_recoverable(
    entity: str, event_type: str, message_id: str
) -> None:
    try:
        name = blob_name_for(entity, event_type, message_id)
    except MessageError:
        assert not entity.strip("/")
        return
    segments = name.split("/")
    assert all(segments), "no empty segments"
    assert all(segment not in (".", "..") for segment in segments)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\\" for c in name)
    name.encode("utf-8")  # no lone surrogates left
    assert name.endswith(".json")
    assert unescape_name_segment(segments[-1][: -len(".json")]) == message_id
    assert unescape_name_segment(segments[-2]) == event_type


@given(a=st.text(min_size=1, max_size=20), b=st.text(min_size=1, max_size=20))
def test_distinct_message_ids_never_share_a_blob(a: str, b: str) -> None:
    if a != b:
        assert blob_name_for("orders", "E", a) != blob_name_for("orders", "E", b)


# --- metadata -----------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def test_payload_metadata_names_are_identifiers_and_plain_values_stay_readable() -> None:
    metadata = payload_metadata("6f1c-42", "OrderCreated", "orders", "ab" * 32)
    assert metadata == {
        "message_id": "6f1c-42",
        "event_type": "OrderCreated",
        "entity": "orders",
        "sha256": "ab" * 32,
    }
    assert all(_IDENTIFIER.match(name) for name in metadata)
    assert message_id_of(metadata) == "6f1c-42"


def test_payload_metadata_records_a_content_encoding_only_when_there_is_one() -> None:
    assert payload_metadata("1", "E", "q", "00", "gzip")["content_encoding"] == "gzip"
    assert "content_encoding" not in payload_metadata("1", "E", "q", "00", None)


@given(st.text(max_size=200))
def test_metadata_values_are_printable_ascii_and_round_trip(value: str) -> None:
    encoded = encode_metadata_value(value)
    assert all(0x20 <= ord(c) < 0x7F for c in encoded)
    assert encoded == encoded.strip()
    assert decode_metadata_value(encoded) == value


def test_metadata_beyond_azures_8_kib_is_refused() -> None:
    with pytest.raises(MessageError, match="8192"):
        payload_metadata("1", "\u00e9" * 2000, "orders", "00")


def test_digest_is_size_and_sha256_hex() -> None:
    assert digest(b"abc") == (
        3,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    )
    assert digest(memoryview(b"xabcx")[1:4]) == digest(b"abc")


def test_a_stored_payloads_repr_never_shows_its_sas() -> None:
    stored = StoredPayload(
        url="https://a.blob.core.windows.net/c/n.json?sv=1&sig=SECRETSIG",
        blob_name="n.json",
        size=1,
        sha256="00",
    )
    assert "SECRETSIG" not in repr(stored)
    assert stored.redacted_url == "https://a.blob.core.windows.net/c/n.json"


# --- sas_expiry ---------------------------------------------------------------------------------


def test_without_a_time_to_live_the_sas_lives_the_configured_hours() -> None:
    assert sas_expiry(NOW, 24, None, USER_DELEGATION_MAX_LIFETIME) == NOW + DAY


def test_a_time_to_live_shorter_than_the_configured_hours_changes_nothing() -> None:
    assert sas_expiry(NOW, 24, timedelta(minutes=5), USER_DELEGATION_MAX_LIFETIME) == NOW + DAY


def test_a_longer_time_to_live_stretches_the_sas_to_cover_it() -> None:
    ttl = timedelta(days=3, hours=2)
    assert sas_expiry(NOW, 24, ttl, USER_DELEGATION_MAX_LIFETIME) == NOW + ttl
    assert sas_expiry(NOW, 24, USER_DELEGATION_MAX_LIFETIME, USER_DELEGATION_MAX_LIFETIME) == (
        NOW + 7 * DAY
    )


def test_a_time_to_live_beyond_7_days_cannot_be_covered_by_a_user_delegation_sas() -> None:
    with pytest.raises(TimeToLiveTooLongError) as raised:
        sas_expiry(
            NOW,
            24,
            timedelta(days=8),
            USER_DELEGATION_MAX_LIFETIME,
            message_id="m-1",
            entity="orders",
        )
    text = str(raised.value)
    assert "8 days" in text
    assert "at most 7 days" in text
    assert "connection string" in text  # what to change
    assert (raised.value.message_id, raised.value.entity) == ("m-1", "orders")
    assert raised.value.dead_letter_reason == "TimeToLiveTooLong"


def test_account_key_sas_cover_long_ttls_but_refuse_more_than_a_year() -> None:
    assert sas_expiry(NOW, 24, 300 * DAY, ACCOUNT_KEY_MAX_LIFETIME) == NOW + 300 * DAY
    with pytest.raises(TimeToLiveTooLongError, match="at most 365 days"):
        sas_expiry(NOW, 24, 400 * DAY, ACCOUNT_KEY_MAX_LIFETIME)


def test_no_limit_means_any_time_to_live() -> None:
    assert sas_expiry(NOW, 1, 1000 * DAY, None) == NOW + 1000 * DAY


def test_configured_hours_beyond_the_limit_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"sas_expiry_hours: 200 hours.*at most 168"):
        sas_expiry(NOW, 200, None, USER_DELEGATION_MAX_LIFETIME)
    with pytest.raises(ConfigurationError, match="above 0"):
        sas_expiry(NOW, 0, None, None)


def test_sas_expiry_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sas_expiry(datetime(2025, 1, 1), 1, None, None)


def test_fractions_of_a_second_round_up_so_the_sas_never_ends_early() -> None:
    now = NOW + timedelta(microseconds=1)
    assert sas_expiry(now, 1, None, None) == NOW + timedelta(hours=1, seconds=1)
    other_zone = NOW.astimezone(timezone(timedelta(hours=5)))
    assert sas_expiry(other_zone, 1, None, None).utcoffset() == timedelta(0)


@given(
    now=st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(timezone.utc),
    ),
    hours=st.floats(min_value=0.001, max_value=168),
    ttl=st.none() | st.timedeltas(min_value=timedelta(seconds=-10), max_value=timedelta(days=10)),
)
def test_sas_expiry_covers_hours_and_ttl_to_the_second_or_refuses(
    now: datetime, hours: float, ttl: timedelta | None
) -> None:
    try:
        expiry = sas_expiry(now, hours, ttl, USER_DELEGATION_MAX_LIFETIME)
    except TimeToLiveTooLongError:
        assert ttl is not None
        assert ttl > USER_DELEGATION_MAX_LIFETIME
        return
    wanted = now + max(timedelta(hours=hours), ttl or timedelta(0))
    assert expiry.microsecond == 0
    assert wanted <= expiry < wanted + timedelta(seconds=1)


def test_sas_protocol_is_https_only_unless_the_endpoint_is_plain_http() -> None:
    assert sas_protocol("https://acct.blob.core.windows.net") == "https"
    assert sas_protocol("http://127.0.0.1:10000/devstoreaccount1") == "https,http"


# --- delegation keys ----------------------------------------------------------------------------


def test_a_delegation_key_window_is_as_long_as_azure_allows_minus_skew() -> None:
    window = delegation_key_window(NOW)
    assert window.start < NOW < window.expiry <= NOW + USER_DELEGATION_MAX_LIFETIME
    assert window.expiry > NOW + USER_DELEGATION_MAX_LIFETIME - timedelta(minutes=10)


def test_no_cached_key_means_a_new_one() -> None:
    assert needs_new_delegation_key(NOW, NOW + DAY, None)


def test_a_cached_key_covering_the_sas_is_reused() -> None:
    cached = delegation_key_window(NOW - DAY)
    assert not needs_new_delegation_key(NOW, NOW + DAY, cached)
    assert not needs_new_delegation_key(NOW, NOW - DAY, cached)  # an already expired SAS


def test_a_key_that_expired_or_has_not_started_is_replaced() -> None:
    assert needs_new_delegation_key(NOW, NOW + timedelta(minutes=1), KeyWindow(NOW - DAY, NOW))
    assert needs_new_delegation_key(NOW, NOW + DAY, KeyWindow(NOW + DAY, NOW + 2 * DAY))


def test_a_key_falling_short_is_replaced_only_when_a_new_one_would_cover_much_more() -> None:
    full_week = NOW + USER_DELEGATION_MAX_LIFETIME
    fresh = delegation_key_window(NOW - timedelta(minutes=1))
    assert full_week > fresh.expiry  # no key can cover a full-week SAS to the second...
    assert not needs_new_delegation_key(NOW, full_week, fresh)  # ...so no key per upload
    older = delegation_key_window(NOW - DELEGATION_KEY_REFRESH_GAIN - timedelta(minutes=1))
    assert needs_new_delegation_key(NOW, full_week, older)


def test_a_user_delegation_sas_is_capped_by_its_keys_expiry() -> None:
    window = KeyWindow(NOW, NOW + DAY)
    assert signed_expiry(NOW + 2 * DAY, window) == NOW + DAY
    assert signed_expiry(NOW + timedelta(hours=1), window) == NOW + timedelta(hours=1)
    assert signed_expiry(NOW + 2 * DAY, None) == NOW + 2 * DAY


# --- storage failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "kind", "permanent"),
    [
        (404, "BlobNotFound", PayloadNotFoundError, True),
        (403, "AuthenticationFailed", PayloadAccessDeniedError, True),
        (401, None, PayloadAccessDeniedError, True),
        (503, "ServerBusy", PayloadUnavailableError, False),
        (429, None, PayloadUnavailableError, False),
        (None, None, PayloadUnavailableError, False),
        (400, "InvalidBlobOrBlock", MessageError, True),
    ],
)
def test_storage_statuses_map_to_errors_people_can_act_on(
    status: int | None, code: str | None, kind: type[MessageError], permanent: bool
) -> None:
    error = storage_error(
        "read", status, code, "HttpResponseError", blob_path="c/orders/E/1.json", message_id="m1"
    )
    assert type(error) is kind
    assert error.permanent is permanent
    text = str(error)
    assert "c/orders/E/1.json" in text
    assert "m1" in text
    assert "HttpResponseError" in text
    if status:
        assert f"HTTP {status}" in text


def test_a_credential_failure_before_any_request_is_access_denied() -> None:
    error = storage_error(
        "upload", None, None, "CredentialUnavailableError", blob_path="c/b", authentication=True
    )
    assert isinstance(error, PayloadAccessDeniedError)
    assert "Storage Blob Data Contributor" in str(error)


def test_an_unreachable_or_refusing_storage_names_the_endpoint_and_the_setting() -> None:
    where = {
        "blob_path": "c/b",
        "endpoint": "http://127.0.0.1:1/devstoreaccount1",
        "setting": "claim_check.blob_storage.connection_string",
    }
    for error in (
        storage_error("upload", None, None, "ServiceRequestError", **where),
        storage_error("upload", 403, "AuthenticationFailed", "HttpResponseError", **where),
    ):
        text = str(error)
        assert "payload upload at http://127.0.0.1:1/devstoreaccount1 failed" in text
        assert "Check claim_check.blob_storage.connection_string " in text
        assert "(CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING)" in text
    assert "could not be reached" in str(storage_error("read", None, None, "X", **where))
    # A busy service is where it should be: the endpoint and the setting are not the problem.
    busy = str(storage_error("read", 503, "ServerBusy", "HttpResponseError", **where))
    assert "127.0.0.1" not in busy
    assert "claim_check.blob_storage" not in busy


def test_container_creation_races_and_missing_rights_are_not_fatal() -> None:
    assert not container_create_is_fatal(409, "ContainerAlreadyExists")
    assert not container_create_is_fatal(403, "AuthorizationPermissionMismatch")
    assert container_create_is_fatal(409, "ContainerBeingDeleted")
    assert container_create_is_fatal(400, "InvalidResourceName")
    assert container_create_is_fatal(None, None)


def test_only_a_vanished_container_triggers_a_recreate() -> None:
    assert should_recreate_container(404, "ContainerNotFound")
    assert not should_recreate_container(404, "BlobNotFound")
    assert not should_recreate_container(403, "ContainerNotFound")


def test_escaping_uses_only_url_safe_percent_triplets() -> None:
    name = blob_name_for("orders", "E", "".join(chr(c) for c in range(0x20)))
    escaped = name.split("/")[-1]
    assert set(escaped) <= set(string.hexdigits + "~.json")


def test_message_expiry_is_enqueue_time_plus_ttl_rounded_up() -> None:
    from claimcheck_bus.payloads.store import message_expiry

    now = datetime(2026, 12, 4, 12, 0, 0, 500_000, tzinfo=timezone.utc)
    assert message_expiry(now, None) is None
    assert message_expiry(now, timedelta(minutes=5)) == datetime(
        2026, 12, 4, 12, 5, 1, tzinfo=timezone.utc
    )
    later = datetime(2026, 12, 5, tzinfo=timezone.utc)
    assert message_expiry(now, timedelta(hours=1), later) == later + timedelta(hours=1)
    # A schedule in the past enqueues now.
    assert message_expiry(now, timedelta(hours=1), now - timedelta(days=1)) == datetime(
        2026, 12, 4, 13, 0, 1, tzinfo=timezone.utc
    )


def test_metadata_times_round_trip_to_the_second() -> None:
    from claimcheck_bus.payloads.store import (
        META_EXPIRES_AT,
        META_PUBLISHED_AT,
        parse_metadata_time,
    )

    at = datetime(2026, 12, 4, 15, 0, 7, tzinfo=timezone.utc)
    metadata = payload_metadata("m", "E", "q", published_at=at, expires_at=at)
    assert metadata[META_PUBLISHED_AT] == metadata[META_EXPIRES_AT] == "2026-12-04T15:00:07Z"
    assert parse_metadata_time(metadata[META_EXPIRES_AT]) == at
    assert parse_metadata_time("garbage") is None
    assert parse_metadata_time(None) is None
