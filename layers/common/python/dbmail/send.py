"""Delivering one queued TextOfEmail: claim it, compose it, hand it to the provider, record it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aws_lambda_powertools import Logger

from dbmail.compose import compose
from dbmail.errors import DeliveryError, RequestInvalid
from dbmail.expand import message_id_for
from dbmail.models import EmailStatus, utcnow
from dbmail.queue import QueuedEmail
from dbmail.settings import Settings
from dbmail.store import Store
from dbmail.transports import Transport
from dbmail.unsubscribe import unsubscribe_url

logger = Logger(child=True)

# Longer than a send invocation (30 s), shorter than the queue's visibility timeout (180 s):
# a live claim blocks a concurrent duplicate delivery; a redelivery after a crash finds it lapsed.
CLAIM_LEASE = timedelta(seconds=60)


class SendOutcome:
    SENT = "sent"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"
    FAILED = "failed"
    UNKNOWN = "unknown"


class RetryableDeliveryError(Exception):
    """Raised to make the batch processor report this record as failed, so SQS retries it."""


@dataclass
class EmailSender:
    store: Store
    transport: Transport
    settings: Settings
    clock: Callable[[], datetime] = field(default=utcnow)
    _headers_by_request: dict = field(default_factory=dict)

    def deliver(self, queued: QueuedEmail, claim_id: str, receive_count: int) -> str:
        log = {"request_id": queued.request_id, "email_key": queued.email_key, "receive_count": receive_count}
        now = self.clock()
        email = self.store.email_ref(queued.request_id, queued.email_key)
        if not self.store.claim_email(email, claim_id, now, now + CLAIM_LEASE):
            return self._not_claimed(queued, log)
        reason = self._expiry_reason(email, now)
        if reason:
            self.store.expire_email(email, reason, now, claim_id=claim_id)
            logger.info("email expired before sending", extra={**log, "reason": reason})
            return SendOutcome.EXPIRED
        final_try = receive_count >= self.settings.max_tries
        try:
            outgoing = compose(
                send_from=email.send_from,
                send_to=[email.send_to],
                subject=email.subject or "",
                body=email.msgtext or "",
                message_id=message_id_for(email.request_id, email.email_key, email.send_from),
                date=now,
                envelope_sender=self.settings.bounces_address,
                special_headers=self._special_headers(email.request_id),
                unsubscribe_url=self._unsubscribe(email),
            )
            provider_id = self.transport.send(outgoing)
        except (RequestInvalid, DeliveryError) as exc:
            permanent = isinstance(exc, RequestInvalid) or exc.permanent
            final = permanent or final_try
            self.store.record_failure(email, f"{type(exc).__name__}: {exc}", final=final)
            if final:
                self.store.count_failed_email(email.request_id)
            logger.warning("delivery failed", extra={**log, "error_type": type(exc).__name__,
                                                     "error": str(exc), "permanent": permanent})
            if permanent:
                return SendOutcome.FAILED
            raise RetryableDeliveryError(str(exc)) from exc
        self.store.mark_sent(email, self.clock(), provider_id, outgoing.message_id)
        logger.info("email sent", extra=log)
        return SendOutcome.SENT

    def _not_claimed(self, queued: QueuedEmail, log: dict) -> str:
        """The claim failed: the email is missing, already final, or held by another live message."""
        email = self.store.get_email(queued.request_id, queued.email_key)
        if email is None:
            logger.error("queued email does not exist; dropping the message", extra=log)
            return SendOutcome.UNKNOWN
        logger.info("email already final or held by another message; duplicate dropped",
                    extra={**log, "status": email.status})
        return SendOutcome.DUPLICATE

    def _expiry_reason(self, email, now: datetime) -> str | None:
        if email.sent_by is not None and email.sent_by < now:
            return "sent_by deadline passed"
        if email.created_at < now - self.settings.max_age:
            return "older than 7 days"
        return None

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
        if email.user_id is None:
            return None
        address = email.send_to.rpartition("<")[2].rstrip(">").strip()
        return unsubscribe_url(self.settings.site_url, self.settings.unsubscribe_secret, int(email.user_id), address)
