"""One call for the like calls of the deliveries in progress at once.

The records of a send batch are delivered at once, one thread each, and each makes the same
DynamoDB calls: its claim, its suppression lookup, its record of the send. A ``Gathered`` call
lets the first delivery to ask wait (at most ``gather_seconds``) until each delivery in
progress has asked or will not, then makes one call for all of them, so a batch's thirty calls
become a handful. The deliveries of a batch are announced before any starts (``expecting``):
the first to ask then waits for those not yet started too. A delivery alone (the CLI, a test)
asks without waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")


class _Round(Generic[K, A]):
    """The asks of one call, and its outcome once made."""

    def __init__(self) -> None:
        self.asks: dict[K, A] = {}
        self.results: Mapping[K, Any] = {}
        self.error: Exception | None = None
        self.made = threading.Event()


class Gathered(Generic[K, A]):
    """``call_many({key: argument})`` made once for the asks of the deliveries in progress.

    It returns a mapping of key to result (a missing key: None); a result that is an exception
    is raised in the delivery that asked for it, and a ``call_many`` that raises fails each
    delivery of its round. Keys must tell the deliveries apart (two asks of one key in a round
    share one result)."""

    def __init__(self, call_many: Callable[[dict[K, A]], Mapping[K, Any]], gather_seconds: float):
        self._call_many = call_many
        self._gather_seconds = gather_seconds
        self._changed = threading.Condition()
        self._may_ask = 0  # deliveries in progress or expected that have not asked yet, and may
        self._expected = 0  # of those, the announced ones not started yet
        self._forming: _Round[K, A] | None = None

    @contextmanager
    def expecting(self, deliveries: int) -> Iterator[None]:
        """Around a batch of ``deliveries`` about to start: a round waits for them as for those
        in progress (those that never start stop counting when the batch ends)."""
        with self._changed:
            self._may_ask += deliveries
            self._expected += deliveries
        try:
            yield
        finally:
            with self._changed:
                unstarted = min(deliveries, self._expected)
                self._expected -= unstarted
                self._may_ask -= unstarted
                self._changed.notify_all()

    def withdraw(self) -> None:
        """One announced delivery will not start (its record is not a delivery at all): a round
        stops waiting for it."""
        with self._changed:
            if self._expected:
                self._expected -= 1
                self._may_ask -= 1
                self._changed.notify_all()

    @contextmanager
    def delivery(self) -> Iterator[Callable[[K, A], Any]]:
        """Around one delivery; gives the function it asks with (once at most)."""
        asked: list[K] = []
        with self._changed:
            if self._expected:
                self._expected -= 1  # an announced one: counted already
            else:
                self._may_ask += 1
        try:
            yield lambda key, argument: self._ask(key, argument, asked)
        finally:
            if not asked:
                with self._changed:
                    self._may_ask -= 1
                    self._changed.notify_all()

    def _ask(self, key: K, argument: A, asked: list[K]) -> Any:
        if asked:
            raise RuntimeError("a delivery asks a gathered call once")
        with self._changed:
            asked.append(key)
            self._may_ask -= 1
            self._changed.notify_all()
            round_, leading = self._forming, self._forming is None
            if round_ is None:
                round_ = self._forming = _Round()
            round_.asks[key] = argument
            if leading:
                self._changed.wait_for(lambda: self._may_ask == 0, timeout=self._gather_seconds)
                self._forming = None  # a delivery that asks from now on starts the next round
        if leading:
            try:
                round_.results = self._call_many(round_.asks)
            except Exception as exc:  # each delivery of the round fails with it (and is retried)
                round_.error = exc
            finally:
                round_.made.set()
        round_.made.wait()
        if round_.error is not None:
            raise round_.error
        result = round_.results.get(key)
        if isinstance(result, Exception):
            raise result
        return result


@contextmanager
def deliveries(*calls: Gathered) -> Iterator[tuple[Callable[..., Any], ...]]:
    """One delivery of each of ``calls``, entered and left together."""
    with ExitStack() as stack:
        yield tuple(stack.enter_context(call.delivery()) for call in calls)


@contextmanager
def expecting(deliveries: int, *calls: Gathered) -> Iterator[None]:
    """A batch of ``deliveries`` announced to each of ``calls``."""
    with ExitStack() as stack:
        for call in calls:
            stack.enter_context(call.expecting(deliveries))
        yield
