"""CPU seconds by process over a measured span. On a machine this small the functions, DynamoDB
Local and moto share the cores, so whether a figure is bound by them decides what a ratio
against its floor can reach: the floor spends only the writes' CPU, dbmail spends that and its
reads, rendering and state besides."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dbmail_local.stack import EMULATORS, StatePaths, running_pid

THIS_PROCESS = "this process"  # the worker's functions and triggers, or the floor's client


def _process_seconds(pid: int) -> float:
    """utime + stime of a live process (and of its children waited for), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class CpuSpan:
    """``start()`` then ``stop()``: CPU seconds spent meanwhile by this process and each emulator
    of the stack, and the span's wall seconds."""

    def __init__(self, state: StatePaths) -> None:
        self._pids = {name: running_pid(state, name) for name in EMULATORS}
        self._before: dict[str, float] = {}
        self._started = 0.0

    def _read(self) -> dict[str, float]:
        seconds = {THIS_PROCESS: time.process_time()}
        seconds |= {name: _process_seconds(pid) for name, pid in self._pids.items() if pid is not None}
        return seconds

    def start(self) -> None:
        self._before, self._started = self._read(), time.perf_counter()

    def stop(self) -> dict[str, float]:
        after, wall = self._read(), time.perf_counter() - self._started
        spent = {name: round(after[name] - self._before[name], 2) for name in after}
        return spent | {"wall": round(wall, 2)}


def busy_seconds(spent: dict[str, float]) -> float:
    """The CPU seconds of every process of a span."""
    return sum(seconds for name, seconds in spent.items() if name != "wall")


def describe(spent: dict[str, float]) -> str:
    """``this process 6.8, dynamodb 3.6, moto 7.4 = 17.8 s in 11.4 s (1.56 of 2 cores)``."""
    busy = busy_seconds(spent)
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in spent.items() if name != "wall")
    return f"{parts} = {busy:.1f} s in {spent['wall']:.1f} s ({busy / spent['wall']:.2f} of {os.cpu_count()} cores)"
