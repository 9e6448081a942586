"""Service Bus SQL filters and rule actions: parse once at start-up, evaluate per message (pure).

The grammar is the one Microsoft documents for subscription rules ("Subscription Rule SQL
Filter Syntax" and "SQL Action Syntax"): comparisons, AND/OR/NOT, [NOT] IN, [NOT] LIKE with
ESCAPE, IS [NOT] NULL, EXISTS, arithmetic, the functions newid() and property(), and the
actions SET and REMOVE. Anything else is refused with its line and column.

Evaluation follows SQL's three-valued logic: a user property that is absent is *unknown*
(None here); comparisons, arithmetic, LIKE and IN with an unknown operand are unknown, and a
filter matches only when it is definitely true. Where Microsoft does not document a detail we
chose, and say so next to the code: string comparison is ordinal and case-sensitive, operands
of different types (a string against a number) compare as unknown, and division by zero is
unknown rather than an error.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = [
    "SYSTEM_PROPERTIES",
    "Changes",
    "SqlAction",
    "SqlFilter",
    "SqlSyntaxError",
    "parse_action",
    "parse_filter",
]

# sys.<name> (case-insensitive) -> the message field it reads; only those known when a message is
# routed. The rest of Service Bus's system properties (SequenceNumber, EnqueuedTimeUtc, Size,
# DeliveryCount, ...) are refused at start-up rather than silently evaluated as unknown.
SYSTEM_PROPERTIES = {
    "messageid": "message_id",
    "correlationid": "correlation_id",
    "to": "to",
    "replyto": "reply_to",
    "label": "subject",
    "sessionid": "session_id",
    "replytosessionid": "reply_to_session_id",
    "contenttype": "content_type",
    "timetolive": "time_to_live",
    "scheduledenqueuetimeutc": "scheduled_enqueue_time",
}
# Those an action may SET or REMOVE (the string-valued ones).
SETTABLE_SYSTEM_PROPERTIES = frozenset(
    {
        "message_id",
        "correlation_id",
        "to",
        "reply_to",
        "subject",
        "session_id",
        "reply_to_session_id",
        "content_type",
    }
)

_KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "IN", "LIKE", "ESCAPE", "IS", "NULL", "EXISTS", "TRUE", "FALSE"}
    | {"SET", "REMOVE"}
)
_FUNCTIONS = frozenset({"NEWID", "PROPERTY"})
_COMPARISONS = frozenset({"=", "<>", "!=", ">", ">=", "<", "<="})

Value = None | bool | int | float | str | datetime | timedelta | uuid.UUID | bytes


class SqlSyntaxError(ValueError):
    """An expression the emulator cannot accept; `line` and `column` count from 1."""

    def __init__(self, problem: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {problem}")
        self.problem = problem
        self.line = line
        self.column = column


# ---------------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class _Token:
    kind: str  # number | string | name | quoted | op | eof
    text: str
    value: object
    line: int
    column: int


_OPERATORS = ("<>", "!=", ">=", "<=", "=", ">", "<", "+", "-", "*", "/", "%", "(", ")", ",", ".")
_NUMBER = re.compile(r"(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    line, line_start = 1, 0

    def where(at: int) -> tuple[int, int]:
        return line, at - line_start + 1

    while pos < len(text):
        char = text[pos]
        if char == "\n":
            pos += 1
            line, line_start = line + 1, pos
            continue
        if char.isspace():
            pos += 1
            continue
        here = where(pos)
        if char == ";":
            out.append(_Token("op", ";", ";", *here))
            pos += 1
        elif char == "'":
            pos, value = _quoted(text, pos, "'", here)
            out.append(_Token("string", value, value, *here))
        elif char == '"':
            pos, value = _quoted(text, pos, '"', here)
            out.append(_Token("quoted", value, value, *here))
        elif char == "[":
            pos, value = _quoted(text, pos, "]", here)
            out.append(_Token("quoted", value, value, *here))
        elif char.isdigit() or (char == "." and text[pos + 1 : pos + 2].isdigit()):
            match = _NUMBER.match(text, pos)
            assert match is not None
            literal = match.group(0)
            number: int | float
            if match.group(2) or "." in literal:
                number = float(literal)  # decimal and approximate constants are doubles
            else:
                number = int(literal)  # integer constants are 64-bit
                if not -(2**63) <= number < 2**63:
                    raise SqlSyntaxError(f"integer {literal} does not fit in 64 bits", *here)
            out.append(_Token("number", literal, number, *here))
            pos = match.end()
        elif char.isalpha():
            end = pos + 1
            while end < len(text) and (text[end].isalnum() or text[end] == "_"):
                end += 1
            word = text[pos:end]
            out.append(_Token("name", word, word, *here))
            pos = end
        else:
            for op in _OPERATORS:
                if text.startswith(op, pos):
                    out.append(_Token("op", op, op, *here))
                    pos += len(op)
                    break
            else:
                raise SqlSyntaxError(f"unexpected character {char!r}", *here)
    out.append(_Token("eof", "", None, *where(pos)))
    return out


def _quoted(text: str, pos: int, close: str, here: tuple[int, int]) -> tuple[int, str]:
    """Read a quoted run starting at text[pos]; the closing character doubled stands for itself."""
    chars: list[str] = []
    pos += 1
    while pos < len(text):
        if text[pos] == close:
            if text[pos + 1 : pos + 2] == close:
                chars.append(close)
                pos += 2
                continue
            return pos + 1, "".join(chars)
        chars.append(text[pos])
        pos += 1
    raise SqlSyntaxError(f"missing closing {close}", *here)


# ---------------------------------------------------------------------------------------------
# Syntax tree


@dataclass(frozen=True)
class _Node:
    line: int
    column: int


@dataclass(frozen=True)
class Const(_Node):
    value: Value


@dataclass(frozen=True)
class Prop(_Node):
    scope: str  # "sys" | "user"
    name: str  # a MessageMeta field for sys, the property name for user


@dataclass(frozen=True)
class Call(_Node):
    name: str  # NEWID | PROPERTY
    args: tuple[_Node, ...] = ()


@dataclass(frozen=True)
class Unary(_Node):
    op: str  # + - NOT
    operand: _Node


@dataclass(frozen=True)
class Binary(_Node):
    op: str  # arithmetic, comparison, AND, OR
    left: _Node
    right: _Node


@dataclass(frozen=True)
class IsNull(_Node):
    operand: Prop
    negated: bool


@dataclass(frozen=True)
class In(_Node):
    operand: _Node
    items: tuple[_Node, ...]
    negated: bool


@dataclass(frozen=True)
class Like(_Node):
    operand: _Node
    pattern: re.Pattern[str]
    negated: bool


@dataclass(frozen=True)
class Exists(_Node):
    operand: Prop


_PREDICATES = (IsNull, In, Like, Exists)


def _is_predicate(node: _Node) -> bool:
    if isinstance(node, _PREDICATES):
        return True
    if isinstance(node, Unary):
        return node.op == "NOT"
    if isinstance(node, Binary):
        return node.op in _COMPARISONS or node.op in ("AND", "OR")
    return isinstance(node, Const) and isinstance(node.value, bool)


# ---------------------------------------------------------------------------------------------
# Parser (recursive descent; precedence OR < AND < NOT < comparison < + - < * / % < unary)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.pos]

    def fail(self, problem: str, token: _Token | _Node | None = None) -> SqlSyntaxError:
        at = token if token is not None else self.token
        return SqlSyntaxError(problem, at.line, at.column)

    def advance(self) -> _Token:
        token = self.token
        self.pos += 1
        return token

    def keyword(self, *words: str) -> bool:
        token = self.token
        return token.kind == "name" and token.text.upper() in words

    def accept_keyword(self, word: str) -> bool:
        if self.keyword(word):
            self.pos += 1
            return True
        return False

    def expect_keyword(self, word: str) -> None:
        if not self.accept_keyword(word):
            raise self.fail(f"expected {word}, found {self._describe()}")

    def op(self, *ops: str) -> bool:
        return self.token.kind == "op" and self.token.text in ops

    def expect_op(self, op: str) -> _Token:
        if not self.op(op):
            raise self.fail(f"expected '{op}', found {self._describe()}")
        return self.advance()

    def _describe(self) -> str:
        token = self.token
        return "the end of the expression" if token.kind == "eof" else repr(token.text)

    def end(self) -> None:
        if self.token.kind != "eof":
            raise self.fail(f"unexpected {self._describe()}")

    # predicates ------------------------------------------------------------------------------

    def predicate(self) -> _Node:
        node = self.disjunction()
        if not _is_predicate(node):
            raise self.fail("expected a condition (a comparison, IN, LIKE, IS NULL, ...)", node)
        return node

    def disjunction(self) -> _Node:
        node = self.conjunction()
        while self.keyword("OR"):
            token = self.advance()
            node = Binary(token.line, token.column, "OR", self._cond(node), self._cond_next())
        return node

    def _cond_next(self) -> _Node:
        return self._cond(self.conjunction())

    def conjunction(self) -> _Node:
        node = self.negation()
        while self.keyword("AND"):
            token = self.advance()
            right = self._cond(self.negation())
            node = Binary(token.line, token.column, "AND", self._cond(node), right)
        return node

    def _cond(self, node: _Node) -> _Node:
        if not _is_predicate(node):
            raise self.fail("expected a condition, found a value", node)
        return node

    def negation(self) -> _Node:
        if self.keyword("NOT"):
            token = self.advance()
            return Unary(token.line, token.column, "NOT", self._cond(self.negation()))
        return self.comparison()

    def comparison(self) -> _Node:
        left = self.additive()
        token = self.token
        if self.op(*_COMPARISONS):
            self.advance()
            right = self._value(self.additive())
            return Binary(token.line, token.column, token.text, self._value(left), right)
        if self.keyword("IS"):
            self.advance()
            negated = self.accept_keyword("NOT")
            self.expect_keyword("NULL")
            if not isinstance(left, Prop):
                raise self.fail("IS NULL applies to a property", left)
            return IsNull(token.line, token.column, left, negated)
        negated = False
        if self.keyword("NOT") and self.tokens[self.pos + 1].text.upper() in ("IN", "LIKE"):
            self.advance()
            negated = True
            token = self.token
        if self.accept_keyword("IN"):
            self.expect_op("(")
            items = [self._value(self.additive())]
            while self.op(","):
                self.advance()
                items.append(self._value(self.additive()))
            self.expect_op(")")
            return In(token.line, token.column, self._value(left), tuple(items), negated)
        if self.accept_keyword("LIKE"):
            pattern_token = self.token
            if pattern_token.kind != "string":
                raise self.fail("LIKE needs a string constant pattern")
            self.advance()
            escape: str | None = None
            if self.accept_keyword("ESCAPE"):
                escape_token = self.token
                if escape_token.kind != "string" or len(str(escape_token.value)) != 1:
                    raise self.fail("ESCAPE needs a one-character string constant")
                self.advance()
                escape = str(escape_token.value)
            compiled = like_pattern(str(pattern_token.value), escape)
            return Like(token.line, token.column, self._value(left), compiled, negated)
        if negated:
            raise self.fail("expected IN or LIKE after NOT")
        return left

    def _value(self, node: _Node) -> _Node:
        if _is_predicate(node) and not isinstance(node, Const):
            raise self.fail("expected a value, found a condition", node)
        return node

    # values ----------------------------------------------------------------------------------

    def additive(self) -> _Node:
        node = self.multiplicative()
        while self.op("+", "-"):
            token = self.advance()
            right = self._value(self.multiplicative())
            node = Binary(token.line, token.column, token.text, self._value(node), right)
        return node

    def multiplicative(self) -> _Node:
        node = self.unary()
        while self.op("*", "/", "%"):
            token = self.advance()
            right = self._value(self.unary())
            node = Binary(token.line, token.column, token.text, self._value(node), right)
        return node

    def unary(self) -> _Node:
        if self.op("+", "-"):
            token = self.advance()
            operand = self._value(self.unary())
            if token.text == "-" and isinstance(operand, Const) and _number(operand.value):
                assert isinstance(operand.value, (int, float))
                return Const(token.line, token.column, -operand.value)
            return Unary(token.line, token.column, token.text, operand)
        return self.atom()

    def atom(self) -> _Node:
        token = self.token
        if token.kind in ("number", "string"):
            self.advance()
            return Const(token.line, token.column, token.value)  # type: ignore[arg-type]
        if self.op("("):
            self.advance()
            node = self.disjunction()
            self.expect_op(")")
            return node
        if token.kind == "quoted":
            return self.property()
        if token.kind != "name":
            raise self.fail(f"expected a value, found {self._describe()}")
        word = token.text.upper()
        if word in ("TRUE", "FALSE"):
            self.advance()
            return Const(token.line, token.column, word == "TRUE")
        if word == "NULL":
            self.advance()
            return Const(token.line, token.column, None)
        if word == "EXISTS":
            self.advance()
            self.expect_op("(")
            prop = self.property()
            self.expect_op(")")
            return Exists(token.line, token.column, prop)
        if self.tokens[self.pos + 1].text == "(":
            return self.call()
        return self.property()

    def call(self) -> _Node:
        token = self.advance()
        name = token.text.upper()
        if name not in _FUNCTIONS:
            raise self.fail(f"unknown function {token.text}()", token)
        self.expect_op("(")
        args: list[_Node] = []
        if not self.op(")"):
            args.append(self._value(self.additive()))
            while self.op(","):
                self.advance()
                args.append(self._value(self.additive()))
        self.expect_op(")")
        expected = 0 if name == "NEWID" else 1
        if len(args) != expected:
            raise self.fail(f"{token.text}() takes {expected} argument(s)", token)
        return Call(token.line, token.column, name, tuple(args))

    def property(self) -> Prop:
        first = self.token
        name = self._identifier()
        scope = "user"
        if self.op(".") and first.kind == "name" and first.text.lower() in ("sys", "user"):
            self.advance()
            scope = first.text.lower()
            name_token = self.token
            name = self._identifier()
            if scope == "sys":
                field_name = SYSTEM_PROPERTIES.get(name.lower())
                if field_name is None:
                    raise self.fail(
                        f"sys.{name} is not a system property this emulator can filter on "
                        f"(supported: {', '.join(sorted(_SYS_SPELLING.values()))})",
                        name_token,
                    )
                return Prop(first.line, first.column, "sys", field_name)
        return Prop(first.line, first.column, scope, name)

    def _identifier(self) -> str:
        token = self.token
        if token.kind == "quoted":
            self.advance()
            return str(token.value)
        if token.kind == "name":
            if token.text.upper() in _KEYWORDS:
                raise self.fail(f"{token.text} is a reserved word; write [{token.text}]")
            self.advance()
            return token.text
        raise self.fail(f"expected a property name, found {self._describe()}")


_SYS_SPELLING = {
    "messageid": "MessageId",
    "correlationid": "CorrelationId",
    "to": "To",
    "replyto": "ReplyTo",
    "label": "Label",
    "sessionid": "SessionId",
    "replytosessionid": "ReplyToSessionId",
    "contenttype": "ContentType",
    "timetolive": "TimeToLive",
    "scheduledenqueuetimeutc": "ScheduledEnqueueTimeUtc",
}


def like_pattern(pattern: str, escape: str | None) -> re.Pattern[str]:
    """A LIKE pattern as a regular expression: % any run, _ any one character, `escape` quotes."""
    parts: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if escape is not None and char == escape:
            following = next(chars, None)
            parts.append(re.escape(following if following is not None else escape))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class Message:
    """What an expression can read: system fields by MessageMeta name, user properties."""

    system: Mapping[str, object]
    user: Mapping[str, object]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read(prop: Prop, message: Message) -> Value:
    source = message.system if prop.scope == "sys" else message.user
    return _normal(source.get(prop.name))


def _normal(value: object) -> Value:
    if value is None or isinstance(
        value, (bool, int, float, str, datetime, timedelta, uuid.UUID, bytes)
    ):
        return value
    return str(value)


def _compare(op: str, left: Value, right: Value) -> bool | None:
    if left is None or right is None:
        return None
    if _number(left) and _number(right):
        pass
    elif type(left) is not type(right):
        # Undocumented: we treat a string against a number (and the like) as unknown.
        return None
    elif isinstance(left, (bool, uuid.UUID, bytes)) and op not in ("=", "<>", "!="):
        return None
    try:
        if op == "=":
            return left == right
        if op in ("<>", "!="):
            return left != right
        if op == ">":
            return left > right  # type: ignore[operator]
        if op == ">=":
            return left >= right  # type: ignore[operator]
        if op == "<":
            return left < right  # type: ignore[operator]
        return left <= right  # type: ignore[operator]
    except TypeError:
        return None


def _arithmetic(op: str, left: Value, right: Value) -> Value:
    if left is None or right is None:
        return None
    if op == "+" and isinstance(left, str) and isinstance(right, str):
        return left + right
    if not (_number(left) and _number(right)):
        return None
    a, b = left, right
    assert isinstance(a, (int, float))
    assert isinstance(b, (int, float))
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None  # undocumented: division by zero is unknown here, not an error
    if isinstance(a, int) and isinstance(b, int):
        # .NET integer division and remainder truncate toward zero.
        quotient = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
        return quotient if op == "/" else a - quotient * b
    return a / b if op == "/" else math.fmod(a, b)


def _and(left: bool | None, right: bool | None) -> bool | None:
    if left is False or right is False:
        return False
    if left is None or right is None:
        return None
    return True


def _or(left: bool | None, right: bool | None) -> bool | None:
    if left is True or right is True:
        return True
    if left is None or right is None:
        return None
    return False


def _not(value: bool | None) -> bool | None:
    return None if value is None else not value


def evaluate(node: _Node, message: Message) -> Value:
    """The value of `node` for `message` (None: unknown)."""
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Prop):
        return _read(node, message)
    if isinstance(node, Call):
        if node.name == "NEWID":
            return uuid.uuid4()
        name = evaluate(node.args[0], message)
        if not isinstance(name, str):
            return None
        scope, dot, rest = name.partition(".")
        if dot and scope.lower() == "sys":
            field_name = SYSTEM_PROPERTIES.get(rest.lower())
            return None if field_name is None else _normal(message.system.get(field_name))
        if dot and scope.lower() == "user":
            name = rest
        return _normal(message.user.get(name))
    if isinstance(node, Unary):
        operand = evaluate(node.operand, message)
        if node.op == "NOT":
            return _not(_truth(operand))
        if not _number(operand):
            return None
        assert isinstance(operand, (int, float))
        return -operand if node.op == "-" else operand
    if isinstance(node, Binary):
        if node.op == "AND":
            return _and(_truth(evaluate(node.left, message)), _truth(evaluate(node.right, message)))
        if node.op == "OR":
            return _or(_truth(evaluate(node.left, message)), _truth(evaluate(node.right, message)))
        left = evaluate(node.left, message)
        right = evaluate(node.right, message)
        if node.op in _COMPARISONS:
            return _compare(node.op, left, right)
        return _arithmetic(node.op, left, right)
    if isinstance(node, IsNull):
        is_null = _read(node.operand, message) is None
        return not is_null if node.negated else is_null
    if isinstance(node, Exists):
        if node.operand.scope == "sys":
            return message.system.get(node.operand.name) is not None
        return node.operand.name in message.user
    if isinstance(node, In):
        value = evaluate(node.operand, message)
        if value is None:
            return None
        found: bool | None = False
        for item in node.items:
            result = _compare("=", value, evaluate(item, message))
            if result:
                found = True
                break
            if result is None:
                found = None
        return _not(found) if node.negated else found
    if isinstance(node, Like):
        value = evaluate(node.operand, message)
        if not isinstance(value, str):
            return None
        matched = node.pattern.fullmatch(value) is not None
        return not matched if node.negated else matched
    raise TypeError(f"not an expression node: {node!r}")  # pragma: no cover


def _truth(value: Value) -> bool | None:
    return value if isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------------
# Public: filters and actions


@dataclass(frozen=True)
class SqlFilter:
    """A parsed SQL filter; `matches` is True only when the condition is definitely true."""

    expression: str
    tree: _Node = field(repr=False, compare=False)

    def matches(self, system: Mapping[str, object], user: Mapping[str, object]) -> bool:
        """Whether a message with these system fields and user properties passes the filter."""
        return evaluate(self.tree, Message(system, user)) is True


@dataclass(frozen=True)
class Changes:
    """What an action did: system fields and user properties set (None = removed)."""

    system: dict[str, object] = field(default_factory=dict)
    user: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class _Statement:
    target: Prop
    value: _Node | None  # None: REMOVE


@dataclass(frozen=True)
class SqlAction:
    """A parsed rule action: SET and REMOVE statements, applied in order."""

    expression: str
    statements: tuple[_Statement, ...] = field(repr=False, compare=False)

    def apply(self, system: Mapping[str, object], user: Mapping[str, object]) -> Changes:
        """The changes for one message; later statements see what earlier ones set."""
        current_system = dict(system)
        current_user = dict(user)
        changes = Changes()
        for statement in self.statements:
            message = Message(current_system, current_user)
            value = None if statement.value is None else evaluate(statement.value, message)
            if isinstance(value, uuid.UUID):
                value = str(value)
            if statement.target.scope == "sys":
                current_system[statement.target.name] = value
                changes.system[statement.target.name] = value
            else:
                if statement.value is None:
                    current_user.pop(statement.target.name, None)
                else:
                    current_user[statement.target.name] = value
                changes.user[statement.target.name] = value
        return changes


def parse_filter(expression: str) -> SqlFilter:
    """Parse a SqlFilter.SqlExpression; SqlSyntaxError says where it cannot be accepted."""
    parser = _Parser(expression)
    if parser.token.kind == "eof":
        raise parser.fail("the filter is empty")
    tree = parser.predicate()
    parser.end()
    return SqlFilter(expression, tree)


def parse_action(expression: str) -> SqlAction:
    """Parse an Action.SqlExpression (`SET p = expr`, `REMOVE p`, separated by `;`)."""
    parser = _Parser(expression)
    statements: list[_Statement] = []
    while parser.token.kind != "eof":
        token = parser.token
        if parser.accept_keyword("SET"):
            target = _settable(parser, parser.property())
            parser.expect_op("=")
            statements.append(_Statement(target, parser._value(parser.additive())))
        elif parser.accept_keyword("REMOVE"):
            statements.append(_Statement(_settable(parser, parser.property()), None))
        else:
            raise parser.fail(f"expected SET or REMOVE, found {parser._describe()}", token)
        if parser.op(";"):
            parser.advance()
    if not statements:
        raise parser.fail("the action is empty")
    return SqlAction(expression, tuple(statements))


def _settable(parser: _Parser, prop: Prop) -> Prop:
    if prop.scope == "sys" and prop.name not in SETTABLE_SYSTEM_PROPERTIES:
        raise parser.fail("an action can set only string system properties", prop)
    return prop
