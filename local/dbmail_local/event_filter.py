"""Lambda event filtering (an event source mapping's FilterCriteria), for the runner's pollers.

Supported subset of the pattern syntax: nested objects; lists of exact values (strings,
numbers, booleans, null); and the operators ``exists``, ``prefix``, ``suffix``,
``anything-but`` and ``equals-ignore-case``. A record matches when any filter matches; a filter
matches when every key matches; a list matches when any of its entries does, and a field
holding a list matches when any element does. Patterns using anything else are rejected when
the runner starts, so a filter is never silently ignored.
"""

import json
from typing import Any

_MISSING = object()
_OPERATORS = frozenset({"exists", "prefix", "suffix", "anything-but", "equals-ignore-case"})


class FilterPatternError(ValueError):
    """A FilterCriteria pattern the local runner does not understand."""


def _validate(pattern: Any, where: str) -> None:
    if not isinstance(pattern, dict) or not pattern:
        raise FilterPatternError(f"{where}: expected a non-empty JSON object")
    for key, rule in pattern.items():
        if isinstance(rule, dict):
            _validate(rule, f"{where}.{key}")
        elif isinstance(rule, list) and rule:
            for condition in rule:
                if isinstance(condition, dict) and (len(condition) != 1 or not _OPERATORS.issuperset(condition)):
                    raise FilterPatternError(f"{where}.{key}: unsupported condition {json.dumps(condition)}")
        else:
            raise FilterPatternError(f"{where}.{key}: expected an object or a non-empty list")


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: booleans are not numbers, 1 equals 1.0."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    return value == expected


def _condition_matches(condition: Any, field: Any) -> bool:
    if not isinstance(condition, dict):
        return field is not _MISSING and any(_same(value, condition) for value in _values(field))
    ((operator, argument),) = condition.items()
    if operator == "exists":
        return (field is not _MISSING) == bool(argument)
    if field is _MISSING:
        return False
    values = _values(field)
    if operator == "prefix":
        return any(isinstance(value, str) and value.startswith(argument) for value in values)
    if operator == "suffix":
        return any(isinstance(value, str) and value.endswith(argument) for value in values)
    if operator == "equals-ignore-case":
        return any(isinstance(value, str) and value.lower() == argument.lower() for value in values)
    excluded = argument if isinstance(argument, list) else [argument]  # anything-but
    return all(not any(_same(value, other) for other in excluded) for value in values)


def _values(field: Any) -> list[Any]:
    return field if isinstance(field, list) else [field]


def _pattern_matches(pattern: dict[str, Any], value: Any) -> bool:
    for key, rule in pattern.items():
        field = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if isinstance(rule, dict):
            if not _pattern_matches(rule, field):
                return False
        elif not any(_condition_matches(condition, field) for condition in rule):
            return False
    return True


class EventFilter:
    """The FilterCriteria of one event source mapping; without filters every record matches."""

    def __init__(self, criteria: dict[str, Any] | None) -> None:
        self.patterns: list[dict[str, Any]] = []
        for number, entry in enumerate((criteria or {}).get("Filters", []), start=1):
            try:
                pattern = json.loads(entry["Pattern"])
            except (KeyError, TypeError, json.JSONDecodeError) as error:
                raise FilterPatternError(f"filter {number}: not a JSON Pattern ({error})") from error
            _validate(pattern, f"filter {number}")
            self.patterns.append(pattern)

    def matches(self, record: dict[str, Any]) -> bool:
        return not self.patterns or any(_pattern_matches(pattern, record) for pattern in self.patterns)
