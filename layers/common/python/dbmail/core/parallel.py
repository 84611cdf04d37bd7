"""A few independent AWS calls at once: the 25-item writes and 10-message sends of one expansion
batch are round trips that do not depend on each other, so they overlap instead of queueing.

Thread pools are kept between uses (``pooled``): a warm Lambda container, or the local runner's
invocations, reuse their threads instead of starting a batch's worth of them each time (a send
batch of 50 spent about 7 ms of CPU starting its threads)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

CALLS_IN_FLIGHT = 4  # per batch: well within a client's connection pool (dbmail.core.aws.POOL_CONNECTIONS)

_idle_pools: dict[str, list[tuple[int, ThreadPoolExecutor]]] = {}  # by thread name: (threads, pool)
_idle_lock = threading.Lock()


@contextmanager
def pooled(workers: int, name: str) -> Iterator[Callable[..., Future]]:
    """``submit(fn, *args)`` for this caller alone until it leaves: up to ``workers`` of its tasks
    run at once, each on a thread of its own (the send's waves count on it), on a pool kept for
    the next caller. Leave once the tasks submitted are done."""
    with _idle_lock:
        idle = _idle_pools.setdefault(name, [])
        lent = max(idle, key=lambda entry: entry[0], default=None)
        if lent is not None:
            idle.remove(lent)
    if lent is None or lent[0] < workers:
        if lent is not None:
            lent[1].shutdown(wait=False)  # its idle threads end; a larger pool replaces it
        lent = (workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name))
    pool = lent[1]
    slots = threading.BoundedSemaphore(workers)  # a pool lent again may have more threads

    def bounded(fn: Callable[..., R], *args) -> R:
        with slots:
            return fn(*args)

    try:
        yield lambda fn, *args: pool.submit(bounded, fn, *args)
    finally:
        with _idle_lock:
            _idle_pools[name].append(lent)


def each_at_once(call: Callable[[T], R], items: Sequence[T], in_flight: int = CALLS_IN_FLIGHT) -> list[R]:
    """``call`` on every item, up to ``in_flight`` at a time; the results in the items' order.
    Every call runs to its end before the first error (if any) is raised, so the caller knows
    that nothing of the batch is still in flight when it handles the error."""
    if len(items) <= 1 or in_flight <= 1:
        return [call(item) for item in items]
    with pooled(min(in_flight, len(items)), "call") as submit:
        futures = [submit(call, item) for item in items]
        wait(futures)
    return [future.result() for future in futures]


@contextmanager
def one_behind(call: Callable[[T], object], name: str) -> Iterator[Callable[[T], None]]:
    """``start(item)`` runs ``call(item)`` on a thread while the caller goes on with its next
    item: each start, and leaving, first waits for the call before (raising its error), so
    the calls run one at a time, in order, and none is left running after the block."""
    pending: list[Future] = []

    def finish() -> None:
        while pending:
            pending.pop().result()

    with pooled(1, name) as submit:

        def start(item: T) -> None:
            finish()
            pending.append(submit(call, item))

        try:
            yield start
        except BaseException as exc:
            wait(pending)  # the block's own error is the one raised; the call's, if any, goes with it
            for future in pending:
                if future.exception() is not None:
                    exc.add_note(f"and the call in flight failed: {future.exception()!r}")
            raise
        finish()
