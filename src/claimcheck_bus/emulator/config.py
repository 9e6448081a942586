"""The emulator's entity configuration, read from the official emulator's ``Config.json``."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from claimcheck_bus.emulator.sql_filter import (
    SqlAction,
    SqlFilter,
    SqlSyntaxError,
    parse_action,
    parse_filter,
)

__all__ = [
    "TIMESPAN_MAX",
    "ConfigError",
    "ConfigWarning",
    "CorrelationFilter",
    "EmulatorConfig",
    "EntityOptions",
    "QueueConfig",
    "Rule",
    "SqlRule",
    "SubscriptionConfig",
    "TopicConfig",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "ttl_from_duration",
]

# .NET TimeSpan.MaxValue (P10675199DT2H48M5.4775807S), truncated to microseconds: Service Bus
# writes it for "never expires".
TIMESPAN_MAX = timedelta(days=10675199, hours=2, minutes=48, seconds=5, microseconds=477580)

# Service Bus limits the lock to 5 minutes and the duplicate detection window to 7 days; we
# accept shorter values than the service's minimums so tests can run fast.
MAX_LOCK_DURATION = timedelta(minutes=5)
MAX_DUPLICATE_WINDOW = timedelta(days=7)
MAX_NAME_LENGTH = 260
MAX_SUBSCRIPTION_NAME_LENGTH = 50


@dataclass(frozen=True)
class EntityOptions:
    """Settings of a queue, topic or subscription (topics use only the TTL and dedup fields)."""

    lock_duration: timedelta = timedelta(seconds=60)
    max_delivery_count: int = 10
    default_message_time_to_live: timedelta | None = None  # None = never expires
    dead_lettering_on_message_expiration: bool = False
    requires_duplicate_detection: bool = False
    duplicate_detection_history_time_window: timedelta = timedelta(seconds=20)
    requires_session: bool = False
    forward_to: str | None = None
    forward_dead_lettered_messages_to: str | None = None


@dataclass(frozen=True)
class CorrelationFilter:
    """A correlation rule: every field that is set must match (AND); None = not part of it."""

    correlation_id: str | None = None
    message_id: str | None = None
    to: str | None = None
    reply_to: str | None = None
    subject: str | None = None
    session_id: str | None = None
    reply_to_session_id: str | None = None
    content_type: str | None = None
    properties: Mapping[str, object] = field(default_factory=dict)  # application properties
    action: SqlAction | None = None  # the rule's action, run on the copy this rule selects


@dataclass(frozen=True)
class SqlRule:
    """A rule with a SQL filter (FilterType "Sql") and optionally a SQL action."""

    name: str
    filter: SqlFilter
    action: SqlAction | None = None


Rule = CorrelationFilter | SqlRule


@dataclass(frozen=True)
class SubscriptionConfig:
    """A topic subscription; no rules means it receives every message sent to the topic."""

    name: str
    options: EntityOptions = EntityOptions()
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class QueueConfig:
    """A queue."""

    name: str
    options: EntityOptions = EntityOptions()


@dataclass(frozen=True)
class TopicConfig:
    """A topic with its subscriptions."""

    name: str
    options: EntityOptions = EntityOptions()
    subscriptions: tuple[SubscriptionConfig, ...] = ()


@dataclass(frozen=True)
class EmulatorConfig:
    """Every entity the emulator serves."""

    queues: tuple[QueueConfig, ...] = ()
    topics: tuple[TopicConfig, ...] = ()

    @classmethod
    def default(cls) -> EmulatorConfig:
        """Queue ``orders``; topic ``events`` with subscription ``all`` (no rules)."""
        return cls(
            queues=(QueueConfig("orders", EntityOptions()),),
            topics=(
                TopicConfig(
                    "events",
                    EntityOptions(),
                    (SubscriptionConfig("all", EntityOptions(), ()),),
                ),
            ),
        )


class ConfigError(ValueError):
    """A malformed Config.json; the message names the file and the JSON path of the bad field."""

    def __init__(self, file: str, json_path: str, problem: str) -> None:
        self.file = file
        self.json_path = json_path
        self.problem = problem
        where = f"{file}: {json_path}" if json_path else file
        super().__init__(f"{where}: {problem}")


class ConfigWarning(UserWarning):
    """Something in Config.json the emulator ignores (an unknown property)."""


# ---------------------------------------------------------------------------------------------
# ISO 8601 durations (pure)

_NUMBER = r"(\d+(?:[.,]\d+)?)"
_DURATION = re.compile(
    r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    rf"(?:T(?:(\d+)H)?(?:(\d+)M)?(?:{_NUMBER}S)?)?"
)
# xs:duration as .NET reads it: a year is 365 days and a month 30.
_UNIT_SECONDS = (365 * 86400, 30 * 86400, 7 * 86400, 86400, 3600, 60, 1)
_MAX_TIMEDELTA_SECONDS = Decimal(timedelta.max.days) * 86400


def parse_duration(text: str) -> timedelta:
    """Parse an ISO 8601 duration such as ``PT1M``, ``P1D`` or ``PT0.5S``; ValueError if not one.

    Only the seconds may carry a fraction (as in .NET's XmlConvert); it is rounded to
    microseconds. Negative durations are rejected: nothing in Service Bus config takes one.
    """
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    # "P" and "PT" alone match the pattern with every group empty.
    if match is None or all(g is None for g in match.groups()) or text.strip().endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration")
    total = Decimal(0)
    for group, unit in zip(match.groups(), _UNIT_SECONDS, strict=True):
        if group is not None:
            try:
                total += Decimal(group.replace(",", ".")) * unit
            except InvalidOperation as exc:  # pragma: no cover - the regex admits only digits
                raise ValueError(f"{text!r} is not an ISO 8601 duration") from exc
    if total > _MAX_TIMEDELTA_SECONDS:
        raise ValueError(f"{text!r} is longer than this emulator can represent")
    micros = int(total.scaleb(6).to_integral_value())
    return timedelta(microseconds=micros)


def format_duration(value: timedelta) -> str:
    """Render a non-negative timedelta as an ISO 8601 duration that parse_duration reads back."""
    if value < timedelta(0):
        raise ValueError("negative durations have no ISO 8601 form here")
    days = value.days
    rest = value.seconds
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"P{days}DT{hours}H{minutes}M{seconds}"
    if value.microseconds:
        text += f".{value.microseconds:06d}".rstrip("0")
    return text + "S"


def ttl_from_duration(value: timedelta) -> timedelta | None:
    """A time-to-live as the broker wants it: None when it is TimeSpan.MaxValue (never)."""
    return None if value >= TIMESPAN_MAX else value


# ---------------------------------------------------------------------------------------------
# Config.json (pure over the decoded JSON; load_config adds the file read)

_QUEUE_PROPERTIES = frozenset(
    {
        "DeadLetteringOnMessageExpiration",
        "DefaultMessageTimeToLive",
        "DuplicateDetectionHistoryTimeWindow",
        "ForwardDeadLetteredMessagesTo",
        "ForwardTo",
        "LockDuration",
        "MaxDeliveryCount",
        "RequiresDuplicateDetection",
        "RequiresSession",
    }
)
_TOPIC_PROPERTIES = frozenset(
    {
        "DefaultMessageTimeToLive",
        "DuplicateDetectionHistoryTimeWindow",
        "RequiresDuplicateDetection",
    }
)
_SUBSCRIPTION_PROPERTIES = frozenset(
    {
        "DeadLetteringOnMessageExpiration",
        "DefaultMessageTimeToLive",
        "ForwardDeadLetteredMessagesTo",
        "ForwardTo",
        "LockDuration",
        "MaxDeliveryCount",
        "RequiresSession",
    }
)
_CORRELATION_FIELDS = {
    "ContentType": "content_type",
    "CorrelationId": "correlation_id",
    "Label": "subject",
    "MessageId": "message_id",
    "ReplyTo": "reply_to",
    "ReplyToSessionId": "reply_to_session_id",
    "SessionId": "session_id",
    "To": "to",
}
_ENTITY_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._\-/~]*[A-Za-z0-9])?")
_SUBSCRIPTION_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._\-]*[A-Za-z0-9])?")

_T = TypeVar("_T")


class _Walker:
    """Reads decoded JSON with the path of every value, for errors that point at the field."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(self.file, path, problem)

    def obj(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object, got {_kind(value)}")
        return value

    def array(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected an array, got {_kind(value)}")
        return value

    def known(self, value: dict[str, Any], path: str, allowed: frozenset[str]) -> None:
        for key in value:
            if key not in allowed:
                warnings.warn(
                    f"{self.file}: {_join(path, key)}: unknown property, ignored",
                    ConfigWarning,
                    stacklevel=5,
                )

    def get(
        self,
        parent: dict[str, Any],
        path: str,
        key: str,
        convert: Callable[[object, str], _T],
        default: _T,
    ) -> _T:
        if key not in parent or parent[key] is None:
            return default
        return convert(parent[key], _join(path, key))

    def string(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {_kind(value)}")
        return value

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_kind(value)}")
        return value

    def positive_int(self, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {_kind(value)}")
        if value < 1:
            raise self.fail(path, f"{value} must be at least 1")
        return value

    def duration(self, value: object, path: str) -> timedelta:
        if not isinstance(value, str):
            raise self.fail(path, f"expected an ISO 8601 duration string, got {_kind(value)}")
        try:
            parsed = parse_duration(value)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None
        if parsed <= timedelta(0):
            raise self.fail(path, f"{value!r} must be longer than zero")
        return parsed

    def optional_name(self, value: object, path: str) -> str | None:
        text = self.string(value, path)
        return text or None  # Service Bus writes "" for "not forwarding"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _bounded(w: _Walker, value: timedelta, path: str, limit: timedelta, what: str) -> timedelta:
    if value > limit:
        raise w.fail(path, f"{format_duration(value)} exceeds the Service Bus maximum {what}")
    return value


def _entity_options(
    w: _Walker, props: dict[str, Any], path: str, allowed: frozenset[str]
) -> EntityOptions:
    """EntityOptions from a Properties object, validating each known key."""
    w.known(props, path, allowed)
    base = EntityOptions()
    lock = w.get(props, path, "LockDuration", w.duration, base.lock_duration)
    _bounded(w, lock, _join(path, "LockDuration"), MAX_LOCK_DURATION, "lock duration (PT5M)")
    window = w.get(
        props,
        path,
        "DuplicateDetectionHistoryTimeWindow",
        w.duration,
        base.duplicate_detection_history_time_window,
    )
    _bounded(
        w,
        window,
        _join(path, "DuplicateDetectionHistoryTimeWindow"),
        MAX_DUPLICATE_WINDOW,
        "duplicate detection window (P7D)",
    )
    ttl = w.get(props, path, "DefaultMessageTimeToLive", w.duration, TIMESPAN_MAX)
    return EntityOptions(
        lock_duration=lock,
        max_delivery_count=w.get(
            props, path, "MaxDeliveryCount", w.positive_int, base.max_delivery_count
        ),
        default_message_time_to_live=ttl_from_duration(ttl),
        dead_lettering_on_message_expiration=w.get(
            props, path, "DeadLetteringOnMessageExpiration", w.boolean, False
        ),
        requires_duplicate_detection=w.get(
            props, path, "RequiresDuplicateDetection", w.boolean, False
        ),
        duplicate_detection_history_time_window=window,
        requires_session=w.get(props, path, "RequiresSession", w.boolean, False),
        forward_to=w.get(props, path, "ForwardTo", w.optional_name, None),
        forward_dead_lettered_messages_to=w.get(
            props, path, "ForwardDeadLetteredMessagesTo", w.optional_name, None
        ),
    )


def _name(
    w: _Walker, entity: dict[str, Any], path: str, pattern: re.Pattern[str], limit: int
) -> str:
    if "Name" not in entity:
        raise w.fail(path, "missing Name")
    name = w.string(entity["Name"], _join(path, "Name"))
    if not name:
        raise w.fail(_join(path, "Name"), "must not be empty")
    if len(name) > limit:
        raise w.fail(_join(path, "Name"), f"{name!r} is longer than {limit} characters")
    if not pattern.fullmatch(name):
        raise w.fail(
            _join(path, "Name"),
            f"{name!r} may contain only letters, digits, '.', '-', '_'"
            + (", '/', '~'" if pattern is _ENTITY_NAME else "")
            + " and must start and end with a letter or digit",
        )
    return name


def _correlation_filter(w: _Walker, value: object, path: str) -> CorrelationFilter:
    spec = w.obj(value, path)
    w.known(spec, path, frozenset({*_CORRELATION_FIELDS, "Properties"}))
    fields: dict[str, Any] = {}
    for key, attr in _CORRELATION_FIELDS.items():
        fields[attr] = w.get(spec, path, key, w.string, None)
    props_path = _join(path, "Properties")
    raw_props = w.get(spec, path, "Properties", w.obj, dict[str, Any]())
    properties: dict[str, object] = {}
    for key, prop in raw_props.items():
        if isinstance(prop, (dict, list)) or prop is None:
            raise w.fail(
                _join(props_path, key),
                f"expected a string, number or boolean, got {_kind(prop)}",
            )
        properties[key] = prop
    if all(v is None for v in fields.values()) and not properties:
        raise w.fail(path, "a correlation filter needs at least one field")
    return CorrelationFilter(**fields, properties=properties)


def _sql(
    w: _Walker,
    value: object,
    path: str,
    rule: str,
    parse: Callable[[str], _T],
) -> _T:
    """Parse a {"SqlExpression": "..."} object; errors name the rule, line and column."""
    spec = w.obj(value, path)
    w.known(spec, path, frozenset({"SqlExpression", "CompatibilityLevel", "RequiresPreprocessing"}))
    expression_path = _join(path, "SqlExpression")
    if "SqlExpression" not in spec:
        raise w.fail(path, "missing SqlExpression")
    text = w.string(spec["SqlExpression"], expression_path)
    try:
        return parse(text)
    except SqlSyntaxError as exc:
        raise w.fail(expression_path, f"rule {rule!r}: {exc}") from None


def _rules(w: _Walker, sub: dict[str, Any], path: str) -> tuple[Rule, ...]:
    rules_path = _join(path, "Rules")
    raw = w.get(sub, path, "Rules", w.array, list[Any]())
    seen: set[str] = set()
    result: list[Rule] = []
    for index, item in enumerate(raw):
        rule_path = f"{rules_path}[{index}]"
        rule = w.obj(item, rule_path)
        w.known(rule, rule_path, frozenset({"Name", "Properties"}))
        name = _name(w, rule, rule_path, _SUBSCRIPTION_NAME, MAX_SUBSCRIPTION_NAME_LENGTH)
        if name.lower() in seen:
            raise w.fail(_join(rule_path, "Name"), f"duplicate rule name {name!r}")
        seen.add(name.lower())
        props_path = _join(rule_path, "Properties")
        props = w.obj(rule.get("Properties"), props_path)
        w.known(
            props, props_path, frozenset({"FilterType", "CorrelationFilter", "SqlFilter", "Action"})
        )
        filter_type = w.get(props, props_path, "FilterType", w.string, "Correlation")
        action: SqlAction | None = None
        if props.get("Action"):
            action = _sql(w, props["Action"], _join(props_path, "Action"), name, parse_action)
        if filter_type.lower() == "sql":
            if "SqlFilter" not in props:
                raise w.fail(props_path, "missing SqlFilter")
            sql_filter = _sql(
                w, props["SqlFilter"], _join(props_path, "SqlFilter"), name, parse_filter
            )
            result.append(SqlRule(name, sql_filter, action))
            continue
        if filter_type.lower() != "correlation":
            raise w.fail(
                _join(props_path, "FilterType"),
                f"{filter_type!r} is not a filter type (expected 'Correlation' or 'Sql')",
            )
        if "CorrelationFilter" not in props:
            raise w.fail(props_path, "missing CorrelationFilter")
        correlation = _correlation_filter(
            w, props["CorrelationFilter"], _join(props_path, "CorrelationFilter")
        )
        result.append(replace(correlation, action=action))
    return tuple(result)


def parse_config(document: object, file: str = "Config.json") -> EmulatorConfig:
    """Validate a decoded Config.json document; ConfigError names ``file`` and the JSON path."""
    w = _Walker(file)
    root = w.obj(document, "")
    w.known(root, "", frozenset({"UserConfig", "Logging"}))
    if "UserConfig" not in root:
        raise w.fail("", "missing UserConfig")
    user = w.obj(root["UserConfig"], "UserConfig")
    w.known(user, "UserConfig", frozenset({"Namespaces", "Logging"}))
    if "Namespaces" not in user:
        raise w.fail("UserConfig", "missing Namespaces")
    namespaces = w.array(user["Namespaces"], "UserConfig.Namespaces")
    if len(namespaces) != 1:
        raise w.fail(
            "UserConfig.Namespaces",
            f"the emulator serves exactly one namespace, found {len(namespaces)}",
        )
    ns_path = "UserConfig.Namespaces[0]"
    ns = w.obj(namespaces[0], ns_path)
    w.known(ns, ns_path, frozenset({"Name", "Queues", "Topics"}))
    _name(w, ns, ns_path, _ENTITY_NAME, MAX_NAME_LENGTH)

    names: dict[str, str] = {}  # lower-case -> as configured; queues and topics share one space
    forwards: list[tuple[str, str]] = []  # (json path, target) checked once every name is known
    queues = []
    for index, item in enumerate(w.get(ns, ns_path, "Queues", w.array, list[Any]())):
        path = f"{ns_path}.Queues[{index}]"
        entity = w.obj(item, path)
        w.known(entity, path, frozenset({"Name", "Properties"}))
        name = _name(w, entity, path, _ENTITY_NAME, MAX_NAME_LENGTH)
        if name.lower() in names:
            raise w.fail(_join(path, "Name"), f"duplicate entity name {name!r}")
        names[name.lower()] = name
        props_path = _join(path, "Properties")
        options = _entity_options(
            w,
            w.get(entity, path, "Properties", w.obj, dict[str, Any]()),
            props_path,
            _QUEUE_PROPERTIES,
        )
        forwards += _forward_targets(options, props_path)
        queues.append(QueueConfig(name, options))

    topics = []
    for index, item in enumerate(w.get(ns, ns_path, "Topics", w.array, list[Any]())):
        path = f"{ns_path}.Topics[{index}]"
        entity = w.obj(item, path)
        w.known(entity, path, frozenset({"Name", "Properties", "Subscriptions"}))
        name = _name(w, entity, path, _ENTITY_NAME, MAX_NAME_LENGTH)
        if name.lower() in names:
            raise w.fail(_join(path, "Name"), f"duplicate entity name {name!r}")
        names[name.lower()] = name
        options = _entity_options(
            w,
            w.get(entity, path, "Properties", w.obj, dict[str, Any]()),
            _join(path, "Properties"),
            _TOPIC_PROPERTIES,
        )
        subs = []
        sub_names: set[str] = set()
        for sub_index, sub_item in enumerate(
            w.get(entity, path, "Subscriptions", w.array, list[Any]())
        ):
            sub_path = f"{path}.Subscriptions[{sub_index}]"
            sub = w.obj(sub_item, sub_path)
            w.known(sub, sub_path, frozenset({"Name", "Properties", "Rules"}))
            sub_name = _name(w, sub, sub_path, _SUBSCRIPTION_NAME, MAX_SUBSCRIPTION_NAME_LENGTH)
            if sub_name.lower() in sub_names:
                raise w.fail(_join(sub_path, "Name"), f"duplicate subscription name {sub_name!r}")
            sub_names.add(sub_name.lower())
            props_path = _join(sub_path, "Properties")
            sub_options = _entity_options(
                w,
                w.get(sub, sub_path, "Properties", w.obj, dict[str, Any]()),
                props_path,
                _SUBSCRIPTION_PROPERTIES,
            )
            forwards += _forward_targets(sub_options, props_path)
            subs.append(SubscriptionConfig(sub_name, sub_options, _rules(w, sub, sub_path)))
        topics.append(TopicConfig(name, options, tuple(subs)))

    for path, target in forwards:
        if target.lower() not in names:
            raise w.fail(path, f"{target!r} is not a queue or topic in this namespace")

    def fix(options: EntityOptions) -> EntityOptions:
        # Store forward targets as configured so listeners and paths use one spelling.
        fwd = names[options.forward_to.lower()] if options.forward_to else None
        dlq = (
            names[options.forward_dead_lettered_messages_to.lower()]
            if options.forward_dead_lettered_messages_to
            else None
        )
        return replace(options, forward_to=fwd, forward_dead_lettered_messages_to=dlq)

    for index, queue in enumerate(queues):
        if queue.options.forward_to and queue.options.forward_to.lower() == queue.name.lower():
            raise w.fail(
                f"{ns_path}.Queues[{index}].Properties.ForwardTo",
                "a queue cannot forward to itself",
            )
    return EmulatorConfig(
        queues=tuple(QueueConfig(q.name, fix(q.options)) for q in queues),
        topics=tuple(
            TopicConfig(
                t.name,
                t.options,
                tuple(SubscriptionConfig(s.name, fix(s.options), s.rules) for s in t.subscriptions),
            )
            for t in topics
        ),
    )


def _forward_targets(options: EntityOptions, props_path: str) -> list[tuple[str, str]]:
    found = []
    if options.forward_to:
        found.append((_join(props_path, "ForwardTo"), options.forward_to))
    if options.forward_dead_lettered_messages_to:
        found.append(
            (
                _join(props_path, "ForwardDeadLetteredMessagesTo"),
                options.forward_dead_lettered_messages_to,
            )
        )
    return found


def load_config(path: str | Path) -> EmulatorConfig:
    """Read the official emulator's Config.json; ConfigError names the file and the bad field."""
    file = Path(path)
    name = str(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(name, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(name, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            name, "", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return parse_config(document, name)
