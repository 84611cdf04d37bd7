"""Delivering one queued TextOfEmail: claim it, compose it, hand it to the provider, record it."""

from __future__ import annotations

import math
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from dbmail.core.clock import utcnow
from dbmail.core.compose import compose
from dbmail.core.errors import DeliveryError, FailureKind, RequestInvalid
from dbmail.core.settings import Settings
from dbmail.core.unsubscribe import unsubscribe_url
from dbmail.feedback.events import bare_address
from dbmail.outgoing.emails import expiry_reason, message_id_for, message_ref_for
from dbmail.outgoing.gathering import Gathered, deliveries, expecting
from dbmail.outgoing.queue import QueuedEmail, SendQueue
from dbmail.outgoing.send_rate import SendBudget, Unlimited

if TYPE_CHECKING:  # integration types only: the domain never imports PynamoDB
    from dbmail.core.transports import Transport
    from dbmail.feedback.store import SuppressionStore
    from dbmail.outgoing.expand import PreparedRequest
    from dbmail.outgoing.store import Store

logger = Logger(child=True)

# Longer than a send invocation (30 s), shorter than the queue's visibility timeout (180 s):
# a live claim blocks a concurrent duplicate delivery; a redelivery after a crash finds it lapsed.
CLAIM_LEASE = timedelta(seconds=60)
SQS_MAX_DELAY_SECONDS = 900
# A send needs this much of the invocation left: botocore's adaptive mode may wait for the
# provider's rate, and three attempts of at most 5 s each (transports.SES_CLIENT_CONFIG) must
# fit. With less left, the email is handed back to the queue untouched, no try spent.
SEND_TIME_RESERVE_SECONDS = 20.0
# The records of one SQS batch (the send events' BatchSize, at most MAX_BATCH) are delivered on
# a thread each, in waves of CONCURRENT_SENDS (SendBatch): a wave's DynamoDB calls are gathered
# into one call each (below), and overlap the provider calls of the wave before. At most
# CONCURRENT_SENDS deliveries of a batch call the provider at a time, which the HTTP connection
# pools of its clients hold (transports.SES_CLIENT_CONFIG). What one EmailSender shares between
# the threads is thread-safe.
MAX_BATCH = 100
CONCURRENT_SENDS = 10
# Per container: every request's special headers (small), and the few requests whose emails
# must be rendered again (compiled templates: larger, and rarely needed).
HEADERS_CACHED = 512
PREPARED_CACHED = 16
# How long the first of a batch's deliveries to claim, to look its address up on the
# suppression list or to record its send waits for the others to ask the same (outgoing/
# gathering.py): they run at once, so they ask within a few milliseconds of each other (tens on
# a loaded machine). A delivery that is later makes a call of its own.
GATHER_SECONDS = 0.05


class SendOutcome(StrEnum):
    SENT = "sent"
    SUPPRESSED = "suppressed"  # the address is on the suppression list: recorded, nothing sent
    DUPLICATE = "duplicate"
    EXPIRED = "expired"
    FAILED = "failed"
    RETRYING = "retrying"  # a transient error: queued again after a delay; one try spent
    DEFERRED = "deferred"  # the invocation was nearly out of time: queued again, not tried
    THROTTLED = "throttled"  # the provider's rate: queued again after a delay; no try spent
    UNKNOWN = "unknown"


def verp_address(bounces_address: str, message_ref: str) -> str:
    """The envelope sender of one email: ``local+{message_ref}@domain`` of the bounces address,
    so that a bounce names its email (the inbound router takes it as a DSN)."""
    local, _, domain = bounces_address.rpartition("@")
    return f"{local}+{message_ref}@{domain}"


def retry_delay(kind: FailureKind, attempt: int, cap: int) -> int:
    """Seconds before the next try: exponential with jitter, throttles starting small (the
    provider's per-second rate), transient errors larger; within SQS's 900 s."""
    base = 2 if kind is FailureKind.THROTTLED else 30
    delay = min(cap, SQS_MAX_DELAY_SECONDS, base * 2 ** min(attempt, 10))
    return max(1, round(delay * random.uniform(0.5, 1.0)))


class PerRequest:
    """A bounded LRU cache of what is read or computed once per request, shared by threads: the
    deliveries of a batch (usually one request's) that miss at once wait for one load."""

    def __init__(self, load: Callable[[str], object], maxsize: int):
        self._load, self._maxsize = load, maxsize
        self._values: OrderedDict[str, object] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def __call__(self, request_id: str):
        with self._lock:
            if request_id in self._values:
                self._values.move_to_end(request_id)
                return self._values[request_id]
            loading = self._loading.setdefault(request_id, threading.Lock())
        with loading:
            with self._lock:
                if request_id in self._values:  # loaded by the thread this one waited for
                    return self._values[request_id]
            try:
                value = self._load(request_id)  # an error is not cached: the next call loads again
                with self._lock:
                    self._values[request_id] = value
                    if len(self._values) > self._maxsize:
                        self._values.popitem(last=False)
            finally:
                with self._lock:
                    self._loading.pop(request_id, None)
        return value


def render_email_again(store: Store, prepared: PreparedRequest, email) -> tuple[str, str]:
    """An email's subject and body rendered again from its request and recipient, as expansion
    rendered them: for a message that did not carry them (too large to inline, or queued again
    by the sweep) and for ``dbmail render``."""
    recipient = store.get_recipient(email.request_id, email.recipient_key)
    if recipient is None:
        raise RequestInvalid(f"recipient {email.recipient_key!r} of request {email.request_id!r} is gone")
    _, subject, body = prepared.render(recipient)
    return subject, body


@dataclass
class EmailSender:
    """Delivers queued emails; one instance serves the concurrent deliveries of a container, so
    what it caches per request is behind thread-safe LRU caches."""

    store: Store
    transport: Transport
    queue: SendQueue
    settings: Settings
    suppressions: SuppressionStore
    budget: SendBudget = field(default_factory=Unlimited)
    clock: Callable[[], datetime] = field(default=utcnow)

    def __post_init__(self):
        self._special_headers = PerRequest(self._read_special_headers, HEADERS_CACHED)
        self._prepared = PerRequest(self._prepare, PREPARED_CACHED)

    def gathered_calls(self, after_claims: Callable[[], None] = lambda: None) -> tuple[Gathered, ...]:
        """A claim, a suppression lookup and a record of sends, each one call for the deliveries
        that share it (a wave of a batch: one call each, not ten); ``after_claims`` is called
        once a call of claims has returned."""

        def claim_emails(asks: dict) -> dict:
            try:
                return self.store.claim_emails(asks)
            finally:
                after_claims()

        return (
            Gathered(claim_emails, GATHER_SECONDS),
            Gathered(lambda asks: self.suppressions.get_many(asks.keys()), GATHER_SECONDS),
            Gathered(self.store.mark_sent_many, GATHER_SECONDS),
        )

    def batch(self, deliveries: int) -> SendBatch:
        """The deliveries of one batch (the send function's records), in waves (SendBatch)."""
        return SendBatch(self, deliveries)

    def deliver(
        self,
        queued: QueuedEmail,
        claim_id: str,
        receive_count: int,
        time_left: Callable[[], float] = lambda: float("inf"),
        calls: tuple[Gathered, ...] | None = None,
        sending: AbstractContextManager | None = None,
    ) -> SendOutcome:
        """Claim, send and record one email. Every provider failure is recorded and the email
        queued again (or failed, when permanent or out of tries), so the SQS message itself
        succeeds; only an unforeseen error is raised, after releasing the claim. ``calls``: the
        gathered calls it shares with others (a wave's), else its own; ``sending`` is held
        around the provider call (a batch's slot)."""
        with deliveries(*(calls or self.gathered_calls())) as asks:
            return self._deliver(queued, claim_id, receive_count, time_left, sending or nullcontext(), *asks)

    def _deliver(
        self,
        queued: QueuedEmail,
        claim_id: str,
        receive_count: int,
        time_left: Callable[[], float],
        sending: AbstractContextManager,
        claim: Callable[[str, tuple], object],
        lookup: Callable[[str, None], object],
        mark_sent: Callable[[str, tuple], None],
    ) -> SendOutcome:
        log = {"request_id": queued.request_id, "email_key": queued.email_key, "receive_count": receive_count}
        if time_left() < SEND_TIME_RESERVE_SECONDS:
            self.queue.enqueue_later(queued, 1)
            logger.info("invocation nearly out of time; email handed back to the queue", extra=log)
            return SendOutcome.DEFERRED
        now = self.clock()
        email = claim(claim_id, (self.store.email_ref(queued.request_id, queued.email_key), now, now + CLAIM_LEASE))
        if email is None:
            return self._not_claimed(queued, log)
        reason = expiry_reason(email, now, self.settings.max_age)
        if reason:
            self.store.expire_email(email, reason, now, claim_id=claim_id)
            logger.info("email expired before sending", extra={**log, "reason": reason})
            return SendOutcome.EXPIRED
        try:
            suppressed = self._suppression(email, lookup)
            if suppressed:
                self.store.mark_suppressed(email, suppressed, claim_id)
                logger.info("address suppressed; email not sent", extra={**log, "error": suppressed})
                return SendOutcome.SUPPRESSED
            subject, body = self._content(queued, email)
            outgoing = compose(
                send_from=email.send_from,
                send_to=[email.send_to],
                subject=subject or "",
                body=body or "",
                message_id=message_id_for(email.request_id, email.email_key, email.send_from),
                date=now,
                envelope_sender=verp_address(
                    self.settings.bounces_address, message_ref_for(email.request_id, email.email_key)
                ),
                special_headers=self._special_headers(email.request_id),
                unsubscribe_url=self._unsubscribe(email),
            )
            with sending:  # a slot of the batch's, which may have taken a while (a slow provider)
                tokened = time_left() >= SEND_TIME_RESERVE_SECONDS and self.budget.take(
                    queued.priority, lambda: time_left() - SEND_TIME_RESERVE_SECONDS
                )
                if tokened:
                    provider_id = self.transport.send(outgoing)
            if not tokened:
                self.store.release_claim(email, claim_id, self.clock())
                self.queue.enqueue_later(queued, 1)
                logger.info("no send slot or token in time; email handed back to the queue", extra=log)
                return SendOutcome.DEFERRED
        except RequestInvalid as exc:
            return self._failed(queued, email, FailureKind.PERMANENT, exc, log)
        except DeliveryError as exc:
            return self._failed(queued, email, exc.kind, exc, log)
        except Exception as exc:
            self.store.record_failure(
                email, f"{type(exc).__name__}: {exc}", final=False, counts_as_try=True, now=self.clock()
            )
            logger.exception("unexpected error while sending; the message is retried", extra=log)
            raise
        mark_sent(claim_id, (email, self.clock(), provider_id, outgoing.message_id))
        logger.info("email sent", extra=log)
        return SendOutcome.SENT

    def _content(self, queued: QueuedEmail, email) -> tuple[str | None, str | None]:
        """The subject and body: from the message, else from an item written with its body (by
        older code), else rendered again from the request and recipient."""
        if queued.msgtext is not None:
            return queued.subject, queued.msgtext
        if email.msgtext is not None:
            return email.subject, email.msgtext
        return render_email_again(self.store, self._prepared(email.request_id), email)

    def _failed(self, queued: QueuedEmail, email, kind: FailureKind, exc: Exception, log: dict) -> SendOutcome:
        throttled = kind is FailureKind.THROTTLED
        tries = int(email.tries or 0) + (0 if throttled else 1)
        final = kind is FailureKind.PERMANENT or (not throttled and tries >= self.settings.max_tries)
        self.store.record_failure(
            email, f"{type(exc).__name__}: {exc}", final=final, counts_as_try=not throttled, now=self.clock()
        )
        logger.warning(
            "delivery failed",
            extra={
                **log,
                "error_type": type(exc).__name__,
                "error": str(exc),
                "kind": str(kind),
                "tries": tries,
                "final": final,
            },
        )
        if final:
            return SendOutcome.FAILED
        attempt = int(email.throttles or 0) + 1 if throttled else tries  # counting this one
        delay = retry_delay(kind, attempt, self.settings.retry_max_delay_seconds)
        asked = exc.retry_after if isinstance(exc, DeliveryError) else None  # at least the provider's Retry-After
        if asked is not None:
            delay = max(delay, min(SQS_MAX_DELAY_SECONDS, math.ceil(asked)))
        self.queue.enqueue_later(queued, delay)
        return SendOutcome.THROTTLED if throttled else SendOutcome.RETRYING

    def _not_claimed(self, queued: QueuedEmail, log: dict) -> str:
        """The claim failed: the email is missing, already final, or held by another live message."""
        email = self.store.get_email(queued.request_id, queued.email_key)
        if email is None:
            logger.error("queued email does not exist; dropping the message", extra=log)
            return SendOutcome.UNKNOWN
        logger.info(
            "email already final or held by another message; duplicate dropped", extra={**log, "status": email.status}
        )
        return SendOutcome.DUPLICATE

    def _suppression(self, email, lookup: Callable[[str, None], object]) -> str | None:
        """Why the email's address is suppressed (the suppression's reason, source and date), or None."""
        address = bare_address(email.send_to)
        entry = lookup(address, None) if address else None
        if entry is None:
            return None
        return f"suppressed: {entry.reason} (by {entry.source}, {entry.created_at:%Y-%m-%d})"

    def _read_special_headers(self, request_id: str) -> dict:
        """A request's special headers (cached: read once per request per container)."""
        request = self.store.get_request(request_id)
        return (request.special_headers if request else None) or {}

    def _prepare(self, request_id: str) -> PreparedRequest:
        """A request compiled for rendering again (cached: once per request per container). The
        template engine is loaded here, for the first email rendered again, never at cold start."""
        from dbmail.outgoing.expand import prepare

        request = self.store.get_request(request_id)
        if request is None:
            raise RequestInvalid(f"request {request_id!r} is gone; its email cannot be rendered again")
        return prepare(request, self.settings)

    def _unsubscribe(self, email) -> str | None:
        """One-click unsubscribe for mail that goes to (or on behalf of) a website user."""
        address = bare_address(email.send_to)
        if email.user_id is None or address is None:
            return None
        return unsubscribe_url(
            self.settings.unsubscribe_url,
            self.settings.unsubscribe_secret,
            int(email.user_id),
            address,
            days=self.settings.unsubscribe_token_days,
        )


class _Wave:
    """Up to CONCURRENT_SENDS deliveries of a batch that start together and share their gathered
    calls. The next wave starts once this one's claims are made (its DynamoDB calls then overlap
    this one's provider calls), or once each of its deliveries is done without one."""

    def __init__(self, sender: EmailSender, size: int):
        self.size = size
        self.calls = sender.gathered_calls(after_claims=self.start_next)
        self.started = threading.Event()
        self.next: _Wave | None = None
        self._unfinished = size
        self._lock = threading.Lock()

    def start_next(self) -> None:
        if self.next is not None:
            self.next.started.set()

    def finished(self) -> None:
        """One of its deliveries is done."""
        with self._lock:
            self._unfinished -= 1
            last = self._unfinished == 0
        if last:
            self.start_next()


class SendBatch:
    """The deliveries of one batch, on a thread each, in waves of CONCURRENT_SENDS: a wave's
    claims, suppression lookups and records of sends are one DynamoDB call each, and the next
    wave makes its calls while this one's emails are with the provider, so the provider is kept
    busy; at most CONCURRENT_SENDS of the batch's deliveries call it at a time. Deliveries join
    waves in the order they arrive, so only the last wave can be short of one that never came
    (its gathered calls wait GATHER_SECONDS for it at most). A context manager: its waves'
    deliveries are announced to their gathered calls (``expecting``) until the batch ends."""

    def __init__(self, sender: EmailSender, deliveries: int):
        self._sender = sender
        self._slots = threading.BoundedSemaphore(CONCURRENT_SENDS)
        self._waves = [
            _Wave(sender, min(CONCURRENT_SENDS, deliveries - start)) for start in range(0, deliveries, CONCURRENT_SENDS)
        ]
        for wave, following in zip(self._waves, self._waves[1:]):
            wave.next = following
        if self._waves:
            self._waves[0].started.set()
        self._joined = 0
        self._lock = threading.Lock()
        self._announced = ExitStack()

    def __enter__(self) -> SendBatch:
        for wave in self._waves:
            self._announced.enter_context(expecting(wave.size, *wave.calls))
        return self

    def __exit__(self, *exc_info) -> None:
        self._announced.close()

    def deliver(self, body: str, claim_id: str, receive_count: int, time_left: Callable[[], float]) -> SendOutcome:
        """One record's delivery (its SQS body), in its wave: ``EmailSender.deliver``. A body
        that is not a send message raises (ValueError, KeyError or TypeError) and leaves its
        wave at once."""
        with self._lock:
            position, self._joined = self._joined, self._joined + 1
        if position >= len(self._waves) * CONCURRENT_SENDS:  # more records than announced
            return self._sender.deliver(QueuedEmail.from_body(body), claim_id, receive_count, time_left)
        wave = self._waves[position // CONCURRENT_SENDS]
        wave.started.wait()
        try:
            try:
                queued = QueuedEmail.from_body(body)
            except (ValueError, KeyError, TypeError):
                for call in wave.calls:
                    call.withdraw()  # its wave's calls stop waiting for it
                raise
            return self._sender.deliver(
                queued, claim_id, receive_count, time_left, calls=wave.calls, sending=self._slots
            )
        finally:
            wave.finished()
