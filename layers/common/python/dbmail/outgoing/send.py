"""Delivering one queued TextOfEmail: claim it, compose it, hand it to the provider, record it."""

from __future__ import annotations

import random
from collections.abc import Callable
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
from dbmail.outgoing.expand import expiry_reason, message_id_for, message_ref_for
from dbmail.outgoing.queue import QueuedEmail, SendQueue

if TYPE_CHECKING:  # integration types only: the domain never imports PynamoDB
    from dbmail.core.transports import Transport
    from dbmail.feedback.store import SuppressionStore
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


@dataclass
class EmailSender:
    store: Store
    transport: Transport
    queue: SendQueue
    settings: Settings
    suppressions: SuppressionStore
    clock: Callable[[], datetime] = field(default=utcnow)
    _headers_by_request: dict = field(default_factory=dict)

    def deliver(
        self,
        queued: QueuedEmail,
        claim_id: str,
        receive_count: int,
        time_left: Callable[[], float] = lambda: float("inf"),
    ) -> SendOutcome:
        """Claim, send and record one email. Every provider failure is recorded and the email
        queued again (or failed, when permanent or out of tries), so the SQS message itself
        succeeds; only an unforeseen error is raised, after releasing the claim."""
        log = {"request_id": queued.request_id, "email_key": queued.email_key, "receive_count": receive_count}
        if time_left() < SEND_TIME_RESERVE_SECONDS:
            self.queue.enqueue_later(queued, 1)
            logger.info("invocation nearly out of time; email handed back to the queue", extra=log)
            return SendOutcome.DEFERRED
        now = self.clock()
        email = self.store.email_ref(queued.request_id, queued.email_key)
        message_ref = message_ref_for(queued.request_id, queued.email_key)
        if not self.store.claim_email(email, claim_id, now, now + CLAIM_LEASE):
            return self._not_claimed(queued, log)
        reason = expiry_reason(email, now, self.settings.max_age)
        if reason:
            self.store.expire_email(email, reason, now, claim_id=claim_id)
            logger.info("email expired before sending", extra={**log, "reason": reason})
            return SendOutcome.EXPIRED
        try:
            suppressed = self._suppression(email)
            if suppressed:
                self.store.mark_suppressed(email, suppressed, claim_id)
                logger.info("address suppressed; email not sent", extra={**log, "error": suppressed})
                return SendOutcome.SUPPRESSED
            outgoing = compose(
                send_from=email.send_from,
                send_to=[email.send_to],
                subject=email.subject or "",
                body=email.msgtext or "",
                message_id=message_id_for(email.request_id, email.email_key, email.send_from),
                date=now,
                envelope_sender=verp_address(self.settings.bounces_address, message_ref),
                special_headers=self._special_headers(email.request_id),
                unsubscribe_url=self._unsubscribe(email),
            )
            provider_id = self.transport.send(outgoing)
        except RequestInvalid as exc:
            return self._failed(email, FailureKind.PERMANENT, exc, log)
        except DeliveryError as exc:
            return self._failed(email, exc.kind, exc, log)
        except Exception as exc:
            self.store.record_failure(
                email, f"{type(exc).__name__}: {exc}", final=False, counts_as_try=True, now=self.clock()
            )
            logger.exception("unexpected error while sending; the message is retried", extra=log)
            raise
        self.store.mark_sent(email, self.clock(), provider_id, outgoing.message_id)
        logger.info("email sent", extra=log)
        return SendOutcome.SENT

    def _failed(self, email, kind: FailureKind, exc: Exception, log: dict) -> SendOutcome:
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
        attempt = int(email.throttles or 0) if throttled else tries
        self.queue.enqueue_later(
            QueuedEmail(email.request_id, email.email_key),
            retry_delay(kind, attempt, self.settings.retry_max_delay_seconds),
        )
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

    def _suppression(self, email) -> str | None:
        """Why the email's address is suppressed (the suppression's reason, source and date), or None."""
        address = bare_address(email.send_to)
        entry = self.suppressions.get(address) if address else None
        if entry is None:
            return None
        return f"suppressed: {entry.reason} (by {entry.source}, {entry.created_at:%Y-%m-%d})"

    def _special_headers(self, request_id: str) -> dict:
        """A request's special headers, read once per request per container."""
        if request_id not in self._headers_by_request:
            if len(self._headers_by_request) >= 512:  # a warm container lives long; stay bounded
                self._headers_by_request.clear()
            request = self.store.get_request(request_id)
            self._headers_by_request[request_id] = (request.special_headers if request else None) or {}
        return self._headers_by_request[request_id]

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
