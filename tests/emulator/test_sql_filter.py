"""The Service Bus SQL grammar, rule by rule: filters, actions, and what is refused where."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from claimcheck_bus.emulator.sql_filter import SqlSyntaxError, parse_action, parse_filter

SYSTEM = {
    "message_id": "m-1",
    "correlation_id": "corr",
    "subject": "OrderCreated",
    "to": "billing",
    "reply_to": None,
    "content_type": "application/json",
    "time_to_live": timedelta(minutes=5),
}
USER = {
    "region": "EU",
    "amount": 250,
    "ratio": 0.5,
    "IsClaimCheck": True,
    "note": None,
    "path": "50%_off",
    "key with space": "yes",
}


def matches(expression: str, user: dict[str, object] | None = None) -> bool:
    return parse_filter(expression).matches(SYSTEM, USER if user is None else user)


# comparisons ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("amount = 250", True),
        ("amount <> 250", False),
        ("amount != 100", True),
        ("amount > 100", True),
        ("amount >= 250", True),
        ("amount < 250", False),
        ("amount <= 250.0", True),  # long against double compares numerically
        ("region = 'EU'", True),
        ("region = 'eu'", False),  # ordinal, case-sensitive (our reading; undocumented)
        ("region > 'A'", True),
        ("IsClaimCheck = TRUE", True),
        ("IsClaimCheck = false", False),
        ("region = 1", False),  # a string against a number is unknown, so not a match
        ("'EU' = region", True),
    ],
)
def test_comparison_operators(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sys.Label = 'OrderCreated'", True),
        ("sys.label = 'OrderCreated'", True),  # scope and system names are case-insensitive
        ("SYS.MessageId = 'm-1'", True),
        ("sys.CorrelationId = 'corr'", True),
        ("sys.To = 'billing'", True),
        ("sys.ContentType LIKE 'application/%'", True),
        ("sys.ReplyTo IS NULL", True),
        ("sys.TimeToLive IS NOT NULL", True),
        ("user.region = 'EU'", True),
        ("[key with space] = 'yes'", True),
        ("\"key with space\" = 'yes'", True),
        ("user.[region] = 'EU'", True),
    ],
)
def test_properties_by_scope_and_quoting(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


# logic and unknowns ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("region = 'EU' AND amount > 100", True),
        ("region = 'EU' AND amount > 1000", False),
        ("region = 'US' OR amount > 100", True),
        ("NOT region = 'US'", True),
        ("NOT (region = 'EU' OR amount > 1000)", False),
        ("region = 'US' OR region = 'EU' AND amount > 1000", False),  # AND binds tighter
        ("(region = 'US' OR region = 'EU') AND amount > 100", True),
        # missing = unknown: unknown OR true is true, unknown AND true is unknown (no match)
        ("missing = 1 OR amount = 250", True),
        ("missing = 1 AND amount = 250", False),
        ("NOT missing = 1", False),
        ("missing = 1 AND amount = 0", False),
    ],
)
def test_and_or_not_with_three_valued_logic(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("note IS NULL", True),
        ("missing IS NULL", True),
        ("region IS NULL", False),
        ("region IS NOT NULL", True),
        ("EXISTS(note)", True),  # present with a null value
        ("EXISTS (missing)", False),
        ("NOT EXISTS(missing)", True),
        ("EXISTS(sys.To)", True),
        ("EXISTS(sys.ReplyTo)", False),
    ],
)
def test_is_null_and_exists(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("region IN ('US', 'EU')", True),
        ("region IN ('US')", False),
        ("region NOT IN ('US', 'APAC')", True),
        ("amount IN (1, 250.0)", True),
        ("missing IN ('x')", False),
        ("missing NOT IN ('x')", False),  # unknown either way
        ("region IN ('US', missing)", False),
    ],
)
def test_in(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("region LIKE 'E%'", True),
        ("region LIKE '_U'", True),
        ("region LIKE 'E'", False),
        ("region NOT LIKE 'U%'", True),
        ("path LIKE '50!%!_off' ESCAPE '!'", True),
        ("path LIKE '50!%x%' ESCAPE '!'", False),
        ("path LIKE '50%'", True),
        ("amount LIKE '2%'", False),  # LIKE on a number is unknown
        ("missing LIKE '%'", False),
        ("region LIKE 'a.c'", False),  # regex characters are literal
    ],
)
def test_like_with_wildcards_and_escape(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("amount + 50 = 300", True),
        ("amount - 50 * 2 = 150", True),  # * before -
        ("(amount - 50) * 2 = 400", True),
        ("amount / 100 = 2", True),  # integer division truncates
        ("-7 / 2 = -3", True),
        ("-7 % 2 = -1", True),  # remainder takes the dividend's sign, as in .NET
        ("ratio * 4 = 2.0", True),
        ("amount % 7 = 5", True),
        ("-amount = -250", True),
        ("+amount = 250", True),
        ("amount / 0 = 1", False),  # unknown
        ("missing + 1 = 1", False),
        ("region + 'x' = 'EUx'", True),
        ("1.5E2 = 150", True),
    ],
)
def test_arithmetic(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


def test_functions() -> None:
    assert matches("property('region') = 'EU'")
    assert matches("property('sys.Label') = 'OrderCreated'")
    assert matches("newid() <> newid()")
    assert matches("1 = 1")
    assert matches("TRUE")


# refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "line", "column", "fragment"),
    [
        ("region = ", 1, 10, "expected a value"),
        ("region == 'EU'", 1, 9, "expected a value"),
        ("region = 'EU' AND\n  amount >> 5", 2, 11, "expected a value"),
        ("region = 'EU", 1, 10, "missing closing '"),
        ("sys.EnqueuedTimeUtc > 0", 1, 5, "sys.EnqueuedTimeUtc"),
        ("lower(region) = 'eu'", 1, 1, "unknown function lower()"),
        ("region", 1, 1, "expected a condition"),
        ("amount + (region = 'EU') = 1", 1, 18, "found a condition"),
        ("region = 'EU' amount", 1, 15, "unexpected 'amount'"),
        ("region LIKE region", 1, 13, "string constant pattern"),
        ("region LIKE 'x' ESCAPE '!!'", 1, 24, "one-character"),
        ("amount IS NULL AND 1 + 1", 1, 22, "expected a condition"),
        ("1 IS NULL", 1, 1, "IS NULL applies to a property"),
        ("region = 'EU' ; ", 1, 15, "unexpected ';'"),
        ("", 1, 1, "empty"),
        ("region = @x", 1, 10, "unexpected character '@'"),
        ("AND = 1", 1, 1, "reserved word"),
        ("9223372036854775808 = 1", 1, 1, "64 bits"),
    ],
)
def test_unsupported_syntax_is_refused_with_line_and_column(
    expression: str, line: int, column: int, fragment: str
) -> None:
    with pytest.raises(SqlSyntaxError) as refused:
        parse_filter(expression)
    assert (refused.value.line, refused.value.column) == (line, column), str(refused.value)
    assert fragment in str(refused.value)


# actions ---------------------------------------------------------------------------------------


def test_set_and_remove_user_properties_in_order() -> None:
    action = parse_action("SET amount = amount * 2; SET doubled = amount; REMOVE note")
    changes = action.apply(SYSTEM, USER)
    assert changes.user == {"amount": 500, "doubled": 500, "note": None}
    assert changes.system == {}


def test_set_system_properties_as_microsofts_sample_config_does() -> None:
    changes = parse_action("SET sys.To = 'Entity'\nSET sys.Label = sys.Label + '-copy'").apply(
        SYSTEM, USER
    )
    assert changes.system == {"to": "Entity", "subject": "OrderCreated-copy"}


def test_set_newid_gives_a_guid_string() -> None:
    changes = parse_action("SET user.trace = newid()").apply(SYSTEM, USER)
    assert uuid.UUID(str(changes.user["trace"]))


@pytest.mark.parametrize(
    ("expression", "line", "column", "fragment"),
    [
        ("SET", 1, 4, "expected a property name"),
        ("SET x 1", 1, 7, "expected '='"),
        ("UPDATE x = 1", 1, 1, "expected SET or REMOVE"),
        ("SET sys.TimeToLive = 5", 1, 5, "only string system properties"),
        ("SET x = 1;\nDELETE x", 2, 1, "expected SET or REMOVE"),
        ("SET x = (a = 1)", 1, 12, "found a condition"),
        (";", 1, 1, "expected SET or REMOVE"),
        ("  ", 1, 3, "empty"),
    ],
)
def test_unsupported_actions_are_refused_with_line_and_column(
    expression: str, line: int, column: int, fragment: str
) -> None:
    with pytest.raises(SqlSyntaxError) as refused:
        parse_action(expression)
    assert (refused.value.line, refused.value.column) == (line, column), str(refused.value)
    assert fragment in str(refused.value)
