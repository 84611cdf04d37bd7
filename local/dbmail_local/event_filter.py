"""Lambda event filtering (a stream event source mapping's FilterCriteria), for the runner.

Supported: what template.yaml's filter (``{"eventName": ["INSERT"]}``) needs, nested objects
and lists of exact values (strings, numbers, booleans, null). A record matches when any filter
matches; a filter matches when every key matches; a list matches when any of its values equals
the field (or, for a field holding a list, any of its elements). Patterns using anything else
(``exists``, ``prefix``, numeric or other operators) are rejected when the runner starts, so a
filter is never silently ignored.
"""

import json
from typing import Any

_MISSING = object()


class FilterPatternError(ValueError):
    """A FilterCriteria pattern the local runner does not understand."""


def _validate(pattern: Any, where: str) -> None:
    if not isinstance(pattern, dict) or not pattern:
        raise FilterPatternError(f"{where}: expected a non-empty JSON object")
    for key, rule in pattern.items():
        if isinstance(rule, dict):
            _validate(rule, f"{where}.{key}")
        elif isinstance(rule, list) and rule:
            for value in rule:
                if isinstance(value, dict | list):
                    raise FilterPatternError(f"{where}.{key}: unsupported condition {json.dumps(value)}")
        else:
            raise FilterPatternError(f"{where}.{key}: expected an object or a non-empty list")


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: booleans are not numbers, 1 equals 1.0."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    return value == expected


def _pattern_matches(pattern: dict[str, Any], value: Any) -> bool:
    for key, rule in pattern.items():
        field = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if isinstance(rule, dict):
            if not _pattern_matches(rule, field):
                return False
            continue
        if field is _MISSING:
            return False
        values = field if isinstance(field, list) else [field]
        if not any(_same(actual, expected) for actual in values for expected in rule):
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
