"""The OData subset of Batch's list operations: `$filter`, `$select`, `maxresults` and skip tokens.

A filter is parsed once into a predicate over one kind of item (task, pool, job, supported image), from a
table of the properties Batch lets that list filter on ("OData filters in Batch",
learn.microsoft.com/rest/api/batchservice/odata-filters-in-batch): comparisons (`eq ne gt ge lt le`) of a
property with a string, number or `datetime'...'` literal, `startswith(property,'prefix')` where the list
allows it, joined by `and` / `or` (and binds tighter) with parentheses. Anything else is Batch's
400 `InvalidQueryParameterValue`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from .state import Job, Pool, ServiceError, Task

MAX_RESULTS = 1000
# A filter longer than this is refused before it is parsed: no request makes the parser work without bound.
MAX_FILTER_CHARS = 4096

T = TypeVar("T")
Predicate = Callable[[T], bool]
TaskPredicate = Callable[[Task], bool]

_TOKEN = re.compile(
    r"\s*(?:(?P<open>\()|(?P<close>\))|(?P<comma>,)|datetime'(?P<datetime>[^']*)'"
    r"|'(?P<string>(?:[^']|'')*)'|(?P<number>-?\d+)|(?P<word>[A-Za-z][A-Za-z0-9_/]*))"
)
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
ALL_OPERATORS = frozenset(_OPERATORS)
EQUALITY = frozenset({"eq", "ne"})


@dataclass(frozen=True, slots=True)
class Property(Generic[T]):
    """One filterable property: how to read it from an item, the operators Batch allows on it, and whether
    `startswith(property,'...')` is allowed."""

    get: Callable[[T], object]
    operators: frozenset[str] = ALL_OPERATORS
    startswith: bool = False


TASK_PROPERTIES: dict[str, Property[Task]] = {
    "id": Property(lambda task: task.task_id, startswith=True),
    "state": Property(lambda task: task.state.value, EQUALITY),
    "stateTransitionTime": Property(lambda task: task.state_transition_time),
    "creationTime": Property(lambda task: task.creation_time),
    "executionInfo/result": Property(lambda task: task.result.value if task.result else None, EQUALITY),
    "executionInfo/exitCode": Property(lambda task: task.exit_code),
}


# List Pools and List Jobs filter on these ("OData filters in Batch"); ids compare as text, as there.
POOL_PROPERTIES: dict[str, Property[Pool]] = {
    "id": Property(lambda pool: pool.pool_id, startswith=True),
    "state": Property(lambda pool: pool.state.value, EQUALITY),
    "stateTransitionTime": Property(lambda pool: pool.state_transition_time),
    "allocationState": Property(lambda pool: pool.allocation_state.value, EQUALITY),
    "allocationStateTransitionTime": Property(lambda pool: pool.allocation_state_transition_time),
    "creationTime": Property(lambda pool: pool.creation_time),
    "vmSize": Property(lambda pool: str(pool.body.get("vmSize", "")).lower(), EQUALITY),
}
JOB_PROPERTIES: dict[str, Property[Job]] = {
    "id": Property(lambda job: job.job_id, startswith=True),
    "state": Property(lambda job: job.state.value, EQUALITY),
    "stateTransitionTime": Property(lambda job: job.state_transition_time),
    "creationTime": Property(lambda job: job.creation_time),
    "executionInfo/poolId": Property(lambda job: job.pool_id, startswith=True),
    "executionInfo/endTime": Property(lambda job: job.end_time),
}


def invalid(message: str) -> ServiceError:
    return ServiceError(400, "InvalidQueryParameterValue", message)


def parse_filter(text: str | None) -> TaskPredicate:
    """A task list's `$filter` as a predicate over tasks."""
    return compile_filter(text, TASK_PROPERTIES)


def compile_filter(text: str | None, properties: Mapping[str, Property[T]]) -> Predicate[T]:
    """`text` (None or blank: everything) as a predicate over items with these `properties`; 400
    InvalidQueryParameterValue when it cannot be parsed or names what the list does not filter on."""
    if not text or not text.strip():
        return lambda _item: True
    if len(text) > MAX_FILTER_CHARS:
        raise invalid(f"$filter is {len(text)} characters; the limit is {MAX_FILTER_CHARS}")
    parser = _Parser(_tokenize(text), properties)
    predicate = parser.parse_or()
    if parser.tokens:
        raise invalid(f"unexpected {parser.tokens[0][1]!r} in $filter {text!r}")
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
            raise invalid(f"cannot parse $filter at {text[position : position + 40]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser(Generic[T]):
    """Recursive descent over the tokens; nesting is bounded by the filter's length limit."""

    def __init__(self, tokens: _Tokens, properties: Mapping[str, Property[T]]) -> None:
        self.tokens = tokens
        self.properties = properties

    def parse_or(self) -> Predicate[T]:
        left = self.parse_and()
        while self.tokens and self.tokens[0] == ("word", "or"):
            self.tokens = self.tokens[1:]
            left = _either(left, self.parse_and())
        return left

    def parse_and(self) -> Predicate[T]:
        left = self.parse_term()
        while self.tokens and self.tokens[0] == ("word", "and"):
            self.tokens = self.tokens[1:]
            left = _both(left, self.parse_term())
        return left

    def parse_term(self) -> Predicate[T]:
        tokens = self.tokens
        if tokens and tokens[0][0] == "open":
            self.tokens = tokens[1:]
            inner = self.parse_or()
            if not self.tokens or self.tokens[0][0] != "close":
                raise invalid("unbalanced parentheses in $filter")
            self.tokens = self.tokens[1:]
            return inner
        if tokens and tokens[0] == ("word", "startswith"):
            return self._startswith()
        if len(tokens) < 3 or tokens[0][0] != "word" or tokens[1][0] != "word":
            raise invalid("expected `property operator value` in $filter")
        (_, name), (_, op_name), (kind, literal) = tokens[:3]
        prop = self._property(name)
        if op_name not in _OPERATORS:
            raise invalid(f"unknown operator {op_name!r} in $filter")
        if op_name not in prop.operators:
            raise invalid(
                f"$filter cannot use {op_name!r} on {name!r}; use {', '.join(sorted(prop.operators))}"
            )
        self.tokens = tokens[3:]
        return _compare(prop.get, _OPERATORS[op_name], _literal(kind, literal))

    def _startswith(self) -> Predicate[T]:
        shape = [kind for kind, _ in self.tokens[1:6]]
        if shape != ["open", "word", "comma", "string", "close"]:
            raise invalid("expected startswith(property,'prefix') in $filter")
        name, prefix = self.tokens[2][1], _literal("string", self.tokens[4][1])
        prop = self._property(name)
        if not prop.startswith:
            raise invalid(f"$filter cannot use startswith on {name!r}")
        self.tokens = self.tokens[6:]
        get = prop.get

        def predicate(item: T) -> bool:
            value = get(item)
            # Batch ids compare without regard to case.
            return isinstance(value, str) and value.lower().startswith(str(prefix).lower())

        return predicate

    def _property(self, name: str) -> Property[T]:
        prop = self.properties.get(name)
        if prop is None:
            raise invalid(f"$filter on {name!r} is not supported; use one of {', '.join(self.properties)}")
        return prop


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


def _compare(getter: Callable[[T], object], op: Callable[[Any, Any], bool], value: object) -> Predicate[T]:
    def predicate(item: T) -> bool:
        actual = getter(item)
        if actual is None or type(actual) is not type(value):
            # Comparing a missing or differently typed property is false, as in OData, never an error.
            return op is operator.ne and actual != value
        return op(actual, value)

    return predicate


def _both(left: Predicate[T], right: Predicate[T]) -> Predicate[T]:
    return lambda item: left(item) and right(item)


def _either(left: Predicate[T], right: Predicate[T]) -> Predicate[T]:
    return lambda item: left(item) or right(item)
