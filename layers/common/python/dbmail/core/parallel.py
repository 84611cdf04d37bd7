"""A few independent AWS calls at once: the 25-item writes and 10-message sends of one expansion
batch are round trips that do not depend on each other, so they overlap instead of queueing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

CALLS_IN_FLIGHT = 4  # per batch: well within a client's connection pool (dbmail.core.aws.POOL_CONNECTIONS)


def each_at_once(call: Callable[[T], R], items: Sequence[T], in_flight: int = CALLS_IN_FLIGHT) -> list[R]:
    """``call`` on every item, up to ``in_flight`` at a time; the results in the items' order.
    Every call runs to its end before the first error (if any) is raised, so the caller knows
    that nothing of the batch is still in flight when it handles the error."""
    if len(items) <= 1 or in_flight <= 1:
        return [call(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(in_flight, len(items)), thread_name_prefix="call") as pool:
        futures = [pool.submit(call, item) for item in items]
    return [future.result() for future in futures]
