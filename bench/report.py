"""Figures, targets and the tables the bench prints and writes (pure: no I/O)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """A measured quantity, repeated."""

    samples: tuple[float, ...]

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (0.5: the median of an odd count, the upper middle of an even)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def throughput_ratio(dbmail_seconds: float, floor_seconds: float) -> float:
    """dbmail's throughput as a fraction of the floor's, for the same work."""
    return floor_seconds / dbmail_seconds


@dataclass(frozen=True)
class Check:
    """One target of issue 11's must-show list."""

    name: str
    value: float
    target: float
    at_least: bool  # True: value >= target passes; False: value <= target
    unit: str  # "x" for ratios, "s", "MiB", "WCU"
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.at_least else self.value <= self.target

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def shown(self, value: float) -> str:
        return f"{value:.2f}{self.unit}" if self.unit == "x" else f"{value:,.3g} {self.unit}"

    @property
    def target_text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.shown(self.target)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header)), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells)


def check_rows(checks: Sequence[Check]) -> list[list[str]]:
    return [[c.name, c.shown(c.value), c.target_text, c.verdict, c.detail] for c in checks]


CHECK_HEADER = ("target", "measured", "goal", "result", "how")
