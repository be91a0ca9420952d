"""The OData subset of Batch's list operations: `$filter`, `$select`, `maxresults` and skip tokens.

Filters are parsed once into a predicate over a task: comparisons (`eq ne gt ge lt le`) of a property with
a string or `datetime'...'` literal, joined by `and` / `or` (and binds tighter) with parentheses. Properties:
`id`, `state`, `stateTransitionTime`, `creationTime`, `executionInfo/result`, `executionInfo/exitCode`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .state import ServiceError, Task

MAX_RESULTS = 1000

TaskPredicate = Callable[[Task], bool]

_TOKEN = re.compile(
    r"\s*(?:(?P<open>\()|(?P<close>\))|datetime'(?P<datetime>[^']*)'|'(?P<string>(?:[^']|'')*)'"
    r"|(?P<number>-?\d+)|(?P<word>[A-Za-z][A-Za-z0-9_/]*))"
)
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
_PROPERTIES: dict[str, Callable[[Task], object]] = {
    "id": lambda task: task.task_id,
    "state": lambda task: task.state.value,
    "stateTransitionTime": lambda task: task.state_transition_time,
    "creationTime": lambda task: task.creation_time,
    "executionInfo/result": lambda task: task.result.value if task.result else None,
    "executionInfo/exitCode": lambda task: task.exit_code,
}


def invalid(message: str) -> ServiceError:
    return ServiceError(400, "InvalidQueryParameterValue", message)


def parse_filter(text: str | None) -> TaskPredicate:
    if not text or not text.strip():
        return lambda _task: True
    tokens = _tokenize(text)
    predicate, rest = _parse_or(tokens)
    if rest:
        raise invalid(f"unexpected {rest[0][1]!r} in $filter {text!r}")
    return predicate


def parse_select(text: str | None) -> frozenset[str] | None:
    if not text:
        return None
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def parse_max_results(text: str | None) -> int:
    if text is None:
        return MAX_RESULTS
    try:
        value = int(text)
    except ValueError:
        raise invalid(f"maxresults must be a number, got {text!r}") from None
    if not 1 <= value <= MAX_RESULTS:
        raise invalid(f"maxresults must be between 1 and {MAX_RESULTS}")
    return value


def parse_skip_token(text: str | None) -> int:
    if text is None:
        return -1
    try:
        return int(text)
    except ValueError:
        raise invalid("the $skiptoken is not one this service issued") from None


_Tokens = list[tuple[str, str]]


def _tokenize(text: str) -> _Tokens:
    tokens: _Tokens = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise invalid(f"cannot parse $filter at {text[position:]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _parse_or(tokens: _Tokens) -> tuple[TaskPredicate, _Tokens]:
    left, tokens = _parse_and(tokens)
    while tokens and tokens[0] == ("word", "or"):
        right, tokens = _parse_and(tokens[1:])
        left = _either(left, right)
    return left, tokens


def _parse_and(tokens: _Tokens) -> tuple[TaskPredicate, _Tokens]:
    left, tokens = _parse_term(tokens)
    while tokens and tokens[0] == ("word", "and"):
        right, tokens = _parse_term(tokens[1:])
        left = _both(left, right)
    return left, tokens


def _parse_term(tokens: _Tokens) -> tuple[TaskPredicate, _Tokens]:
    if tokens and tokens[0][0] == "open":
        inner, rest = _parse_or(tokens[1:])
        if not rest or rest[0][0] != "close":
            raise invalid("unbalanced parentheses in $filter")
        return inner, rest[1:]
    if len(tokens) < 3 or tokens[0][0] != "word" or tokens[1][0] != "word":
        raise invalid("expected `property operator value` in $filter")
    (_, name), (_, op_name), (kind, literal) = tokens[:3]
    getter = _PROPERTIES.get(name)
    if getter is None:
        raise invalid(f"$filter on {name!r} is not supported; use one of {', '.join(_PROPERTIES)}")
    op = _OPERATORS.get(op_name)
    if op is None:
        raise invalid(f"unknown operator {op_name!r} in $filter")
    value = _literal(kind, literal)
    return _compare(getter, op, value), tokens[3:]


def _literal(kind: str, literal: str) -> object:
    if kind == "datetime":
        try:
            parsed = datetime.fromisoformat(literal)
        except ValueError:
            raise invalid(f"invalid datetime {literal!r} in $filter") from None
        # Batch reads a time without an offset as UTC.
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if kind == "string":
        return literal.replace("''", "'")
    if kind == "number":
        return int(literal)
    raise invalid(f"expected a literal in $filter, got {literal!r}")


def _compare(
    getter: Callable[[Task], object], op: Callable[[Any, Any], bool], value: object
) -> TaskPredicate:
    def predicate(task: Task) -> bool:
        actual = getter(task)
        if actual is None or type(actual) is not type(value):
            # Comparing a missing or differently typed property is false, as in OData, never an error.
            return op is operator.ne and actual != value
        return op(actual, value)

    return predicate


def _both(left: TaskPredicate, right: TaskPredicate) -> TaskPredicate:
    return lambda task: left(task) and right(task)


def _either(left: TaskPredicate, right: TaskPredicate) -> TaskPredicate:
    return lambda task: left(task) or right(task)
