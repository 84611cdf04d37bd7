"""The account's send rate, held across the fleet: every send waits for a token instead of
provoking the provider's throttle.

One item of SendRateTable is a token bucket shared by every send, inbound and expire container,
kept as GCRA (the generic cell rate algorithm) keeps one: ``full_at``, when the bucket is full
again. Taking ``k`` tokens moves it on by ``k / rate`` from ``max(full_at, now)``, and is allowed
while that stays within the lane's tolerance of now: the burst (``BURST_SECONDS`` of the rate,
half of SES's own burst, so a send that leaves a little late never trips it) for the priority
lane, the burst less the priority reserve for the bulk lane, so a small request's email finds a
token at once however hard bulk mail presses. Each change is one conditional UpdateItem that
adds to ``full_at`` (concurrent takes commute; only a full bucket is set outright), and a
container takes a small block of tokens per call for the threads that wait, valid for
``TOKEN_TTL`` seconds: a token kept longer would be a burst SES has not allowed for.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aws_lambda_powertools import Logger

from dbmail.core.errors import DeliveryError, FailureKind

if TYPE_CHECKING:
    from dbmail.core.compose import OutgoingEmail
    from dbmail.core.transports import Transport

logger = Logger(child=True)

BURST_SECONDS = 0.5  # the bucket's burst: half a second of the rate (SES allows a whole second)
RESERVE_SHARE = 0.5  # of the burst, for the priority lane only
TOKEN_TTL = 0.2  # seconds a container may hold a token before sending with it
MAX_BLOCK = 20  # tokens per call at most (a send invocation has 10 threads; the local runner more)
NAP_SECONDS = 0.5  # a thread waiting on another's call looks at its own deadline this often
# how long a forward or a failure report waits for its tokens; then it fails for now and is
# tried again (the inbound sweep, the next expire run)
METERED_WAIT_SECONDS = 10.0


class SendBudget(Protocol):
    def take(self, priority: bool, time_left: Callable[[], float]) -> bool:
        """Block until one send is allowed (True), or give up (False) when waiting longer would
        leave the invocation less than its send reserve: the caller defers the email, no try
        spent. ``time_left`` is the invocation's seconds left beyond that reserve. Thread-safe."""
        ...


class Unlimited:
    """No rate applies (SendGrid without a rate, or an account that reports none)."""

    def take(self, priority: bool, time_left: Callable[[], float]) -> bool:
        return True


def send_rate(max_send_rate: float, provider: str, read_quota: Callable[[], float]) -> float | None:
    """Emails per second the fleet may send, or None for no limit: MaxSendRate if set, else the
    SES account's quota (``read_quota``, at cold start); SendGrid publishes no quota to read."""
    if max_send_rate > 0:
        rate, source = max_send_rate, "MaxSendRate"
    elif provider != "ses":
        rate, source = None, provider
    else:
        quota = read_quota()
        rate, source = (quota if quota > 0 else None), "the SES account's quota"
    logger.info("send rate", extra={"rate": rate, "source": source})
    return rate


class Bucket(Protocol):
    def take(self, cost: float, now: float, ceiling: float, full: bool) -> tuple[bool, float]:
        """Move the bucket's ``full_at`` on by ``cost`` seconds if it then stays at or before
        ``ceiling``; ``full``: the caller believes the bucket is full (``full_at <= now``).
        Returns (granted, ``full_at`` as the call left or found it)."""
        ...


@dataclass(eq=False)  # one waiting thread; found in its lane's queue by identity
class _Waiter:
    granted: bool = False


@dataclass
class _Lane:
    tolerance: float  # seconds of tokens this lane may take ahead of now
    block: int  # tokens per call at most
    whole_block: bool  # wait until a whole block fits (bulk: fewer calls), or one token (priority)
    queue: deque[_Waiter] = field(default_factory=deque)  # first come, first served
    handed: deque[float] = field(default_factory=deque)  # when tokens were handed out, the last TOKEN_TTL
    tokens: int = 0  # taken, not yet handed out
    valid_until: float = 0.0
    fetching: bool = False
    next_at: float = 0.0  # the bucket has nothing for this lane before then (as last seen)


class FleetBudget:
    """A SendBudget drawing from a shared Bucket at ``rate`` tokens per second. The threads
    of a lane queue up; one of them asks the bucket for the queue's tokens at a time."""

    def __init__(
        self,
        bucket: Bucket,
        rate: float,
        clock: Callable[[], float] = time.time,
        max_block: int = MAX_BLOCK,
    ):
        if not rate > 0:
            raise ValueError(f"a send rate must be positive, not {rate!r}")
        self.bucket = bucket
        self.rate = rate
        self.interval = 1.0 / rate
        self.burst = max(1, math.floor(rate * BURST_SECONDS))
        self.reserve = min(self.burst - 1, math.floor(self.burst * RESERVE_SHARE))
        self._clock = clock
        self._full_at = 0.0  # a lower bound: full_at never moves back
        self._cond = threading.Condition()
        bulk = self.burst - self.reserve
        self._lanes = {
            True: _Lane(self.burst * self.interval, min(max_block, self.burst), whole_block=False),
            False: _Lane(bulk * self.interval, min(max_block, bulk), whole_block=True),
        }

    def take(self, priority: bool, time_left: Callable[[], float]) -> bool:
        lane = self._lanes[priority]
        deadline = self._clock() + max(0.0, time_left())
        me = _Waiter()
        with self._cond:
            lane.queue.append(me)
            try:
                while True:
                    now = self._clock()
                    while lane.tokens and now < lane.valid_until and lane.queue:
                        lane.queue.popleft().granted = True
                        lane.tokens -= 1
                        lane.handed.append(now)
                    if me.granted:
                        return True
                    ready_at = max(now, lane.next_at) + lane.queue.index(me) * self.interval
                    if ready_at > max(now, deadline):
                        return False  # no token before the reserve: the caller defers
                    if lane.fetching or now < lane.next_at:
                        if now >= deadline:
                            return False
                        until = lane.next_at if now < lane.next_at and not lane.fetching else now + NAP_SECONDS
                        self._cond.wait(timeout=min(until, deadline) - now)
                        continue
                    self._fetch(lane)
            finally:
                if not me.granted:
                    lane.queue.remove(me)

    def _fetch(self, lane: _Lane) -> None:
        """Asks the bucket for the queue's tokens, the lock released meanwhile (called and
        returning with it held): a block of tokens, or when to ask again."""
        lane.fetching = True
        while lane.handed and lane.handed[0] < self._clock() - TOKEN_TTL:
            lane.handed.popleft()
        # the threads waiting, and as many as took a token lately: they are likely back soon
        wanted = max(1, min(len(lane.queue) + len(lane.handed), lane.block))
        seen = self._full_at
        self._cond.release()
        try:
            now = self._clock()
            start = max(seen, now)
            fit = min(wanted, math.floor((now + lane.tolerance - start) * self.rate + 1e-9))
            granted, full_at = False, seen  # by what was last seen, nothing fits: no call
            if fit >= 1:
                granted, full_at = self.bucket.take(fit * self.interval, now, now + lane.tolerance, seen <= now)
        finally:
            self._cond.acquire()
            lane.fetching = False
            self._cond.notify_all()
        self._full_at = max(self._full_at, full_at)
        if granted:
            lane.tokens, lane.valid_until, lane.next_at = fit, now + TOKEN_TTL, 0.0
        else:
            needed = wanted if lane.whole_block else 1
            lane.next_at = max(self._full_at, now) + needed * self.interval - lane.tolerance


# ---- what draws from the budget besides the send function (the bucket's item: send_rate_store.py) ----


def draw(budget: SendBudget, recipients: int, within: float = METERED_WAIT_SECONDS) -> None:
    """Priority tokens for one message to ``recipients`` addresses (SES counts each recipient),
    waiting ``within`` seconds at most; raises DeliveryError (throttled) when the rate has none."""
    deadline = time.monotonic() + within
    for _ in range(recipients):
        if not budget.take(True, lambda: deadline - time.monotonic()):
            raise DeliveryError(
                f"no send token within {within:.0f} s (the account's send rate)", kind=FailureKind.THROTTLED
            )


@dataclass
class MeteredTransport:
    """A transport whose every send first draws its recipients' tokens from the budget."""

    transport: Transport
    budget: SendBudget

    def send(self, email: OutgoingEmail) -> str:
        draw(self.budget, len(email.to))
        return self.transport.send(email)


def metered(transport: Transport, budget: SendBudget) -> Transport:
    """``transport`` drawing from ``budget``; itself when no rate applies."""
    return transport if isinstance(budget, Unlimited) else MeteredTransport(transport, budget)
