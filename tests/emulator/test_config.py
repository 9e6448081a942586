"""Config.json parsing and validation, and ISO 8601 durations."""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus.emulator.broker import Broker, MessageMeta
from claimcheck_bus.emulator.config import (
    TIMESPAN_MAX,
    ConfigError,
    ConfigWarning,
    CorrelationFilter,
    EmulatorConfig,
    EntityOptions,
    SqlRule,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    ttl_from_duration,
)

# The official emulator's sample, trimmed to one queue and one topic.
OFFICIAL: dict[str, Any] = {
    "UserConfig": {
        "Namespaces": [
            {
                "Name": "sbemulatorns",
                "Queues": [
                    {
                        "Name": "orders",
                        "Properties": {
                            "DeadLetteringOnMessageExpiration": False,
                            "DefaultMessageTimeToLive": "PT1H",
                            "DuplicateDetectionHistoryTimeWindow": "PT20S",
                            "ForwardDeadLetteredMessagesTo": "",
                            "ForwardTo": "",
                            "LockDuration": "PT1M",
                            "MaxDeliveryCount": 3,
                            "RequiresDuplicateDetection": False,
                            "RequiresSession": False,
                        },
                    }
                ],
                "Topics": [
                    {
                        "Name": "events",
                        "Properties": {
                            "DefaultMessageTimeToLive": "PT1H",
                            "DuplicateDetectionHistoryTimeWindow": "PT20S",
                            "RequiresDuplicateDetection": False,
                        },
                        "Subscriptions": [
                            {
                                "Name": "billing",
                                "Properties": {
                                    "DeadLetteringOnMessageExpiration": True,
                                    "DefaultMessageTimeToLive": "PT1H",
                                    "LockDuration": "PT30S",
                                    "MaxDeliveryCount": 5,
                                    "ForwardDeadLetteredMessagesTo": "",
                                    "ForwardTo": "orders",
                                    "RequiresSession": False,
                                },
                                "Rules": [
                                    {
                                        "Name": "only-orders",
                                        "Properties": {
                                            "FilterType": "Correlation",
                                            "CorrelationFilter": {
                                                "ContentType": "application/json",
                                                "CorrelationId": "c1",
                                                "Label": "OrderCreated",
                                                "MessageId": "m1",
                                                "ReplyTo": "r",
                                                "ReplyToSessionId": "rs",
                                                "SessionId": "s",
                                                "To": "t",
                                                "Properties": {"prop1": "value1", "n": 3},
                                            },
                                        },
                                    }
                                ],
                            },
                            {"Name": "all", "Properties": {}},
                        ],
                    }
                ],
            }
        ],
        "Logging": {"Type": "File"},
    }
}


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "Config.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _broken(edit: Any) -> dict[str, Any]:
    document = copy.deepcopy(OFFICIAL)
    edit(document)
    return document


def _queue_props(document: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = document["UserConfig"]["Namespaces"][0]["Queues"][0]["Properties"]
    return props


# ---------------------------------------------------------------------------------------------
# durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT1M", timedelta(minutes=1)),
        ("P1D", timedelta(days=1)),
        ("PT0.5S", timedelta(milliseconds=500)),
        ("PT20S", timedelta(seconds=20)),
        ("P1DT2H3M4S", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("P2W", timedelta(days=14)),
        ("P1Y", timedelta(days=365)),
        ("P1M", timedelta(days=30)),  # month before T; minutes after
        ("PT1H", timedelta(hours=1)),
        ("PT1,25S", timedelta(seconds=1.25)),
        ("P10675199DT2H48M5.4775807S", TIMESPAN_MAX + timedelta(microseconds=1)),  # rounded
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "P", "PT", "1M", "PT1X", "P1H", "PT1.5M", "-PT1M", "PT1M2H", "P1DT", "pt1m ", "PTS"],
)
def test_parse_duration_rejects(text: str) -> None:
    if text == "pt1m ":
        text = "pt1m"  # lower case is not ISO 8601
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_duration(text)


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10_000_000)))
def test_format_then_parse_round_trips(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


def test_timespan_max_means_never() -> None:
    assert ttl_from_duration(parse_duration("P10675199DT2H48M5.4775807S")) is None
    assert ttl_from_duration(timedelta(days=1)) == timedelta(days=1)


# ---------------------------------------------------------------------------------------------
# Config.json


def test_official_sample_loads(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, OFFICIAL))
    (queue,) = config.queues
    assert queue.name == "orders"
    assert queue.options == EntityOptions(
        lock_duration=timedelta(minutes=1),
        max_delivery_count=3,
        default_message_time_to_live=timedelta(hours=1),
    )
    (topic,) = config.topics
    assert topic.options.default_message_time_to_live == timedelta(hours=1)
    billing, everything = topic.subscriptions
    assert billing.options.forward_to == "orders"
    assert billing.options.forward_dead_lettered_messages_to is None  # "" = none
    assert billing.options.dead_lettering_on_message_expiration
    assert billing.options.lock_duration == timedelta(seconds=30)
    assert billing.rules == (
        CorrelationFilter(
            correlation_id="c1",
            message_id="m1",
            to="t",
            reply_to="r",
            subject="OrderCreated",
            session_id="s",
            reply_to_session_id="rs",
            content_type="application/json",
            properties={"prop1": "value1", "n": 3},
        ),
    )
    assert everything.rules == ()
    assert everything.options == EntityOptions()


def test_loaded_config_drives_a_broker(tmp_path: Path) -> None:
    broker = Broker(load_config(_write(tmp_path, OFFICIAL)))
    assert broker.has_entity("events/Subscriptions/billing/$DeadLetterQueue")
    broker.send("events", b"x", MessageMeta())
    assert len(broker.receive("events/Subscriptions/all", 10, peek_lock=False)) == 1
    assert broker.receive("orders", 10, peek_lock=False) == []  # the billing rule did not match


def test_default_config() -> None:
    config = EmulatorConfig.default()
    assert [q.name for q in config.queues] == ["orders"]
    assert [(t.name, [s.name for s in t.subscriptions]) for t in config.topics] == [
        ("events", ["all"])
    ]
    assert config.topics[0].subscriptions[0].rules == ()


def test_forward_targets_take_the_configured_spelling() -> None:
    document = _broken(
        lambda d: d["UserConfig"]["Namespaces"][0]["Topics"][0]["Subscriptions"][0][
            "Properties"
        ].update(ForwardTo="ORDERS", ForwardDeadLetteredMessagesTo="Events")
    )
    sub = parse_config(document).topics[0].subscriptions[0]
    assert sub.options.forward_to == "orders"
    assert sub.options.forward_dead_lettered_messages_to == "events"


def test_minimal_document_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "Config.json"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"UserConfig": {"Namespaces": [{"Name": "ns"}]}}).encode()
    )
    assert load_config(path) == EmulatorConfig()


def test_unknown_properties_warn_with_file_and_path(tmp_path: Path) -> None:
    document = _broken(lambda d: _queue_props(d).update(EnablePartitioning=True))
    path = _write(tmp_path, document)
    with pytest.warns(ConfigWarning) as caught:
        load_config(path)
    (warning,) = caught
    text = str(warning.message)
    assert str(path) in text
    assert "UserConfig.Namespaces[0].Queues[0].Properties.EnablePartitioning" in text


@pytest.mark.parametrize(
    ("edit", "json_path", "problem"),
    [
        (
            lambda d: _queue_props(d).update(LockDuration="PT1X"),
            "UserConfig.Namespaces[0].Queues[0].Properties.LockDuration",
            "'PT1X' is not an ISO 8601 duration",
        ),
        (
            lambda d: _queue_props(d).update(LockDuration="PT6M"),
            "UserConfig.Namespaces[0].Queues[0].Properties.LockDuration",
            "maximum",
        ),
        (
            lambda d: _queue_props(d).update(LockDuration="PT0S"),
            "UserConfig.Namespaces[0].Queues[0].Properties.LockDuration",
            "longer than zero",
        ),
        (
            lambda d: _queue_props(d).update(MaxDeliveryCount="10"),
            "UserConfig.Namespaces[0].Queues[0].Properties.MaxDeliveryCount",
            "expected an integer",
        ),
        (
            lambda d: _queue_props(d).update(MaxDeliveryCount=0),
            "UserConfig.Namespaces[0].Queues[0].Properties.MaxDeliveryCount",
            "at least 1",
        ),
        (
            lambda d: _queue_props(d).update(RequiresSession="no"),
            "UserConfig.Namespaces[0].Queues[0].Properties.RequiresSession",
            "expected true or false",
        ),
        (
            lambda d: _queue_props(d).update(ForwardTo="nowhere"),
            "UserConfig.Namespaces[0].Queues[0].Properties.ForwardTo",
            "'nowhere' is not a queue or topic",
        ),
        (
            lambda d: _queue_props(d).update(ForwardTo="orders"),
            "UserConfig.Namespaces[0].Queues[0].Properties.ForwardTo",
            "cannot forward to itself",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0]["Queues"][0].pop("Name"),
            "UserConfig.Namespaces[0].Queues[0]",
            "missing Name",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0]["Queues"].append({"Name": "ORDERS"}),
            "UserConfig.Namespaces[0].Queues[1].Name",
            "duplicate entity name 'ORDERS'",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0]["Topics"][0].update(Name="Orders"),
            "UserConfig.Namespaces[0].Topics[0].Name",
            "duplicate entity name",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0]["Topics"][0]["Subscriptions"].append(
                {"Name": "Billing"}
            ),
            "UserConfig.Namespaces[0].Topics[0].Subscriptions[2].Name",
            "duplicate subscription name",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0]["Queues"][0].update(Name="bad name!"),
            "UserConfig.Namespaces[0].Queues[0].Name",
            "may contain only",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0]["Topics"][0]["Subscriptions"][0]["Rules"][0][
                "Properties"
            ].update(FilterType="Sql", SqlFilter={"SqlExpression": "sys.MessageId == '1'"}),
            "UserConfig.Namespaces[0].Topics[0].Subscriptions[0].Rules[0].Properties"
            ".SqlFilter.SqlExpression",
            "rule 'only-orders': line 1, column 16: expected a value",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0]["Topics"][0]["Subscriptions"][0]["Rules"][0][
                "Properties"
            ].update(Action={"SqlExpression": "SET a = 1;\nUPDATE b"}),
            "UserConfig.Namespaces[0].Topics[0].Subscriptions[0].Rules[0].Properties"
            ".Action.SqlExpression",
            "rule 'only-orders': line 2, column 1: expected SET or REMOVE",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0]["Topics"][0]["Subscriptions"][0]["Rules"][0][
                "Properties"
            ].update(FilterType="Sql"),
            "UserConfig.Namespaces[0].Topics[0].Subscriptions[0].Rules[0].Properties",
            "missing SqlFilter",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0]["Topics"][0]["Subscriptions"][0]["Rules"][0][
                "Properties"
            ]["CorrelationFilter"].update(Properties={"p": {"nested": 1}}),
            "UserConfig.Namespaces[0].Topics[0].Subscriptions[0].Rules[0].Properties"
            ".CorrelationFilter.Properties.p",
            "expected a string, number or boolean",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0]["Topics"][0]["Subscriptions"][0]["Rules"][0][
                "Properties"
            ].update(CorrelationFilter={}),
            "UserConfig.Namespaces[0].Topics[0].Subscriptions[0].Rules[0].Properties"
            ".CorrelationFilter",
            "at least one field",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"].append({"Name": "second"}),
            "UserConfig.Namespaces",
            "exactly one namespace",
        ),
        (
            lambda d: d["UserConfig"]["Namespaces"][0].update(Queues={"Name": "x"}),
            "UserConfig.Namespaces[0].Queues",
            "expected an array",
        ),
        (lambda d: d.pop("UserConfig"), "", "missing UserConfig"),
    ],
)
def test_malformed_config_names_file_and_path(
    tmp_path: Path, edit: Any, json_path: str, problem: str
) -> None:
    path = _write(tmp_path, _broken(edit))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert error.file == str(path)
    assert error.json_path == json_path
    assert problem in error.problem
    assert str(error).startswith(f"{path}: {json_path}")


def test_error_message_format() -> None:
    document = _broken(lambda d: _queue_props(d).update(LockDuration="PT1X"))
    with pytest.raises(ConfigError) as info:
        parse_config(document, "Config.json")
    assert str(info.value) == (
        "Config.json: UserConfig.Namespaces[0].Queues[0].Properties.LockDuration: "
        "'PT1X' is not an ISO 8601 duration"
    )


def test_bad_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "Config.json"
    path.write_text('{"UserConfig": ', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"Config\.json: not valid JSON: .* line 1"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_arbitrary_json_never_crashes_with_anything_but_config_error(document: object) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        with contextlib.suppress(ConfigError):
            parse_config(document)


def test_sql_rules_and_actions_as_microsofts_emulator_writes_them() -> None:
    document = copy.deepcopy(OFFICIAL)
    rules = document["UserConfig"]["Namespaces"][0]["Topics"][0]["Subscriptions"][0]["Rules"]
    rules.append(
        {
            "Name": "app-prop-filter-1",
            "Properties": {
                "FilterType": "Sql",
                "SqlFilter": {"SqlExpression": "sys.MessageId = '123456' AND userProp1 = 'value1'"},
                "Action": {"SqlExpression": "SET sys.To = 'Entity'"},
            },
        }
    )
    config = parse_config(document)
    sql = config.topics[0].subscriptions[0].rules[1]
    assert isinstance(sql, SqlRule)
    assert sql.name == "app-prop-filter-1"
    assert sql.filter.matches({"message_id": "123456"}, {"userProp1": "value1"})
    assert not sql.filter.matches({"message_id": "123456"}, {"userProp1": "other"})
    assert sql.action is not None
    assert sql.action.apply({}, {}).system == {"to": "Entity"}
