"""What the bench sees of every AWS client a process makes, through botocore's events: calls by
operation, DynamoDB capacity units (ReturnConsumedCapacity=TOTAL injected into every call that
takes it; DynamoDB Local reports them as DynamoDB does, GSI writes included), the peak number of
calls in flight, and the parameters of chosen operations, appended to a file for the floors to
replay. DynamoDB Local reports no capacity for PartiQL (BatchExecuteStatement): its successful
write statements are counted by table instead, for the bench to price at their items' size.
"""

from __future__ import annotations

import pickle
import threading
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import botocore.session

WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
KB = 1024


def value_bytes(value: dict) -> int:
    """A DynamoDB attribute value's size as DynamoDB counts it (strings and binaries their bytes,
    numbers about a byte per two digits, sets and documents their members plus 3 bytes)."""
    ((kind, data),) = value.items()
    if kind == "S":
        return len(data.encode())
    if kind == "B":
        return len(data)
    if kind == "N":
        return len(data.lstrip("-").replace(".", "")) // 2 + 2
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(value_bytes({kind[0]: member}) for member in data)
    if kind == "L":
        return 3 + sum(1 + value_bytes(member) for member in data)
    return 3 + sum(1 + len(name.encode()) + value_bytes(member) for name, member in data.items())  # M


def item_bytes(item: dict) -> int:
    """A DynamoDB item's size (as a Scan returns it): each attribute's name and value."""
    return sum(len(name.encode()) + value_bytes(value) for name, value in item.items())


def statement_units(items: list[dict]) -> float:
    """The write units a PartiQL update of one of ``items`` costs on average: as an UpdateItem,
    one per started KB of the item."""
    if not items:
        return 1.0
    return sum(max(1, -(-item_bytes(item) // KB)) for item in items) / len(items)


def consumed_units(consumed: dict | list | None) -> dict[str, float]:
    """Capacity units by table from a response's ConsumedCapacity (one dict, or a list of them)."""
    if not consumed:
        return {}
    entries = consumed if isinstance(consumed, list) else [consumed]
    units: Counter = Counter()
    for entry in entries:
        units[entry["TableName"]] += float(entry.get("CapacityUnits", 0))
    return dict(units)


class Instruments:
    """Installed once per process (``install``): every client created after that is counted."""

    def __init__(self, capture: set[str] | None = None, capture_file: Path | None = None) -> None:
        self.calls: Counter = Counter()  # "service.Operation" -> calls
        self.write_units: Counter = Counter()  # table -> DynamoDB write units
        self.read_units: Counter = Counter()
        self.statement_writes: Counter = Counter()  # table -> PartiQL updates that were made
        self.capture = capture or set()  # operations whose parameters are kept, in order
        self.in_flight = 0  # calls of the captured operations under way
        self.peak_in_flight = 0
        self._capture_file: BinaryIO | None = capture_file.open("wb") if capture_file else None
        self._lock = threading.Lock()

    def install(self) -> None:
        original = botocore.session.Session.create_client
        instruments = self

        def create_client(session, *args, **kwargs):
            client = original(session, *args, **kwargs)
            instruments.attach(client)
            return client

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]

    def attach(self, client: Any) -> None:
        events = client.meta.events
        events.register("provide-client-params.dynamodb.*", self._ask_capacity)
        events.register("before-parameter-build.*.*", self._before)
        events.register("after-call.*.*", self._after)
        events.register("after-call-error.*.*", self._after_error)

    @staticmethod
    def _ask_capacity(params: dict, model: Any, **_: Any) -> None:
        if "ReturnConsumedCapacity" in model.input_shape.members:
            params.setdefault("ReturnConsumedCapacity", "TOTAL")

    def _before(self, params: dict, model: Any, **_: Any) -> None:
        with self._lock:
            self.calls[f"{model.service_model.service_name}.{model.name}"] += 1
            if model.name in self.capture:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                if self._capture_file is not None:
                    pickle.dump((model.name, params), self._capture_file)

    def _after(self, parsed: dict, model: Any, **_: Any) -> None:
        units = consumed_units(parsed.get("ConsumedCapacity"))
        if model.name == "BatchExecuteStatement" and not units:
            made = Counter(r.get("TableName", "?") for r in parsed.get("Responses", []) if "Error" not in r)
            with self._lock:
                self.statement_writes.update(made)
        with self._lock:
            if model.name in self.capture:
                self.in_flight -= 1
            (self.write_units if model.name in WRITES else self.read_units).update(units)

    def _after_error(self, model: Any, **_: Any) -> None:
        with self._lock:
            if model.name in self.capture:
                self.in_flight -= 1

    def close(self) -> None:
        if self._capture_file is not None:
            self._capture_file.close()

    def summary(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "write_units": dict(self.write_units),
            "read_units": dict(self.read_units),
            "statement_writes": dict(self.statement_writes),
            "peak_in_flight": self.peak_in_flight,
        }


def captured_calls(path: Path) -> list[tuple[str, dict]]:
    """The (operation, parameters) pairs an Instruments' capture file holds, in call order."""
    calls = []
    with path.open("rb") as file:
        while True:
            try:
                calls.append(pickle.load(file))
            except EOFError:
                return calls
