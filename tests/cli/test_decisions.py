"""The commands' decisions, as pure functions: durations, selection, re-signing, sweep, masks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus.cli.decisions import (
    DEAD_LETTERED,
    EXPIRED,
    NO_EXPIRY,
    OLDER_THAN,
    YOUNG,
    Selection,
    SweepVerdict,
    describe_duration,
    flatten,
    guarded,
    mask_connection_string,
    mask_value,
    needs_resign,
    parse_duration,
    sas_expires_at,
    selects,
    sweep_verdict,
)
from claimcheck_bus.cli.doctor import FAIL, OK, SKIP, clock_check

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1.5h", timedelta(minutes=90)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "1h junk", "-1h", "soon"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**8))
def test_describe_duration_round_trips(seconds: int) -> None:
    span = timedelta(seconds=seconds)
    assert parse_duration(describe_duration(span)) == span


def _selects(selection: Selection, **kwargs: object) -> bool:
    values = {"message_id": "m-1", "reason": "Poison", "enqueued_time": NOW - timedelta(days=2)}
    values.update(kwargs)
    return selects(selection, now=NOW, **values)  # type: ignore[arg-type]


def test_an_empty_selection_selects_nothing_and_all_selects_everything() -> None:
    assert Selection().is_empty
    assert not _selects(Selection())
    assert _selects(Selection(everything=True), reason=None, enqueued_time=None)


def test_every_given_criterion_must_hold() -> None:
    assert _selects(Selection(ids=frozenset({"m-1"})))
    assert not _selects(Selection(ids=frozenset({"m-2"})))
    assert _selects(Selection(reason="poison"))  # any case
    assert not _selects(Selection(reason="Other"))
    assert _selects(Selection(older_than=timedelta(days=1)))
    assert not _selects(Selection(older_than=timedelta(days=3)))
    assert not _selects(Selection(older_than=timedelta(days=1)), enqueued_time=None)
    assert not _selects(Selection(reason="Poison", ids=frozenset({"m-2"})))


def test_sas_expires_at_reads_se() -> None:
    url = "https://a.blob.core.windows.net/c/b.json?se=2026-12-04T13%3A00%3A00Z&sp=r&sig=abc"
    assert sas_expires_at(url) == datetime(2026, 12, 4, 13, tzinfo=timezone.utc)
    assert sas_expires_at("https://a/c/b.json?sp=r") is None
    assert sas_expires_at("https://a/c/b.json?se=garbage") is None


def test_needs_resign_when_expired_soon_or_unknown() -> None:
    hour = timedelta(hours=1)
    assert needs_resign(NOW - hour, NOW, hour)
    assert needs_resign(NOW + timedelta(minutes=30), NOW, hour)
    assert not needs_resign(NOW + 2 * hour, NOW, hour)
    assert needs_resign(None, NOW, hour)


def _verdict(**kwargs: object) -> SweepVerdict:
    values: dict[str, object] = {
        "expires_at": None,
        "published_at": None,
        "last_modified": None,
        "now": NOW,
        "grace": timedelta(hours=1),
        "older_than": None,
    }
    values.update(kwargs)
    return sweep_verdict(**values)  # type: ignore[arg-type]


def test_sweep_deletes_only_past_expiry_plus_grace() -> None:
    assert _verdict(expires_at=NOW - timedelta(hours=2)) == SweepVerdict(True, EXPIRED)
    assert _verdict(expires_at=NOW - timedelta(minutes=30)) == SweepVerdict(False, YOUNG)
    assert _verdict(expires_at=NOW + timedelta(days=1)) == SweepVerdict(False, YOUNG)


def test_a_recorded_expiry_wins_over_older_than() -> None:
    young = _verdict(
        expires_at=NOW + timedelta(days=1),
        published_at=NOW - timedelta(days=30),
        older_than=timedelta(days=1),
    )
    assert young == SweepVerdict(False, YOUNG)


def test_without_expiry_only_an_explicit_older_than_deletes() -> None:
    old = NOW - timedelta(days=30)
    assert _verdict(published_at=old) == SweepVerdict(False, NO_EXPIRY)
    assert _verdict(published_at=old, older_than=timedelta(days=7)) == SweepVerdict(
        True, OLDER_THAN
    )
    assert _verdict(last_modified=old, older_than=timedelta(days=7)).delete
    assert not _verdict(published_at=NOW, older_than=timedelta(days=7)).delete
    assert not _verdict(older_than=timedelta(days=7)).delete  # no time known at all


def test_a_dead_letter_keeps_its_payload() -> None:
    delete = SweepVerdict(True, EXPIRED)
    assert guarded(delete, "m-1", {"m-1"}) == SweepVerdict(False, DEAD_LETTERED)
    assert guarded(delete, "m-2", {"m-1"}) == delete
    assert guarded(delete, None, {"m-1"}) == delete


def test_connection_strings_keep_names_and_lose_keys() -> None:
    masked = mask_connection_string(
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc=="
    )
    assert masked == (
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=***"
    )
    masked = mask_connection_string(
        "AccountName=a;AccountKey=k;SharedAccessSignature=sv=1&sig=s;NewSecretThing=x"
    )
    assert masked == "AccountName=a;AccountKey=***;SharedAccessSignature=***;NewSecretThing=***"


def test_mask_value() -> None:
    assert mask_value("x", "opaque-secret", secret=True) == "***"
    assert mask_value("x", None, secret=True) is None
    assert mask_value("x", "https://h/p?sig=abc", secret=False) == "https://h/p?***"
    assert mask_value("x", 3, secret=False) == 3


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": [2],
        "e": None,
    }


def testclock_check() -> None:
    assert clock_check(None).status == SKIP
    assert clock_check(NOW, lambda: NOW + timedelta(seconds=3)).status == OK
    late = clock_check(NOW, lambda: NOW + timedelta(minutes=6))
    assert late.status == FAIL
    assert "+360 s" in late.detail
