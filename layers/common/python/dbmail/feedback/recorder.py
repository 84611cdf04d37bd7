"""Recording one feedback event on its email, and suppressing the address when it must be.

- The email is found by ``message_ref``. The index is eventually consistent, so an event that
  matches nothing while young (MATCH_GRACE) raises FeedbackNotYetMatched and comes back; an
  older one is logged as unmatched and dropped (failure reports and inbound forwards name the
  configuration set too, and never match).
- Statuses only move up: sent < delivered < bounced < complained (EmailStatus.FEEDBACK_RANK);
  an event applied once (its id is in ``feedback_events``) changes nothing the second time.
- Suppression: a hard bounce, a complaint or an unsubscribe at once; soft bounces once an
  address has DBMAIL_SOFT_BOUNCE_LIMIT of them within DBMAIL_SOFT_BOUNCE_WINDOW_DAYS. Only the
  matched email's own recipient is ever suppressed, never another address an event names.
  The suppression is written before the email, so a retry after a crash still makes it.
- An event applies to its email only when it names the email's own recipient (bare, lower-cased
  addresses): SES's bounced / complained / delivery recipients (``mail.destination`` for a
  reject), SendGrid's ``email``, a DSN's recipient block. One that names other addresses only
  (a forged DSN, a mixed-up event) changes nothing and is logged as unmatched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from dbmail.core.addresses import mask
from dbmail.core.clock import utcnow
from dbmail.core.errors import DbmailError
from dbmail.core.settings import Settings
from dbmail.core.statuses import EmailStatus
from dbmail.feedback.events import BounceType, FeedbackEvent, FeedbackKind, bare_address

if TYPE_CHECKING:  # integration types only: the domain never imports PynamoDB
    from dbmail.feedback.store import FeedbackStore, SuppressionStore

logger = Logger(child=True)

MATCH_GRACE = timedelta(minutes=2)
MAX_ATTEMPTS = 5  # conditional writes lost to a concurrent event, before giving up (SQS retries)

# the status an event moves an email to (when that is up, by FEEDBACK_RANK)
_TARGET = {
    FeedbackKind.DELIVERED: EmailStatus.DELIVERED,
    FeedbackKind.BOUNCED: EmailStatus.BOUNCED,
    FeedbackKind.DROPPED: EmailStatus.BOUNCED,
    FeedbackKind.COMPLAINED: EmailStatus.COMPLAINED,
}
# what a SendGrid drop's reason says about the address ("Bounced Address", "Spam Reporting
# Address", "Unsubscribed Address", "Invalid"); other drops suppress nothing
_DROP_REASONS = (("unsubscribe", "unsubscribe"), ("spam", "complaint"), ("bounce", "bounce"), ("invalid", "bounce"))


class FeedbackNotYetMatched(DbmailError):
    """The event's email is not found (or not yet recorded as sent): retried later."""


class RecordOutcome(StrEnum):
    RECORDED = "recorded"  # the email's status moved
    NOTED = "noted"  # applied, status unchanged (out of order, a delay, an unsubscribe)
    DUPLICATE = "duplicate"  # applied before
    UNMATCHED = "unmatched"  # no email of ours, or not its recipient
    IGNORED = "ignored"  # nothing to record (SES's Send event: the send function records it)


@dataclass
class FeedbackRecorder:
    emails: FeedbackStore
    suppressions: SuppressionStore
    settings: Settings
    clock: Callable[[], datetime] = field(default=utcnow)

    def record(self, event: FeedbackEvent) -> RecordOutcome:
        log = {"event_kind": str(event.kind), "event_source": event.source, "message_ref": event.message_ref}
        if event.kind is FeedbackKind.SENT:
            return RecordOutcome.IGNORED
        email = self.emails.find_email(event.message_ref) if event.message_ref else None
        if email is None:
            if event.message_ref and self.clock() - event.occurred_at < MATCH_GRACE:
                raise FeedbackNotYetMatched(f"no email has message_ref {event.message_ref} yet; retried")
            logger.info("feedback matches no email of ours; dropped", extra=log)
            return RecordOutcome.UNMATCHED
        log.update(request_id=email.request_id, email_key=email.email_key)
        address = bare_address(email.send_to)
        if address is None or address not in event.recipients:
            logger.warning(
                "feedback does not name its email's recipient; nothing recorded",
                extra={**log, "event_recipients": len(event.recipients)},
            )
            return RecordOutcome.UNMATCHED
        for _ in range(MAX_ATTEMPTS):
            if event.event_id in (email.feedback_events or ()):
                return RecordOutcome.DUPLICATE
            if email.status in EmailStatus.OUTSTANDING:
                raise FeedbackNotYetMatched("the email is not recorded as sent yet; retried")
            self._suppress(email, address, event, log)
            status = self._new_status(email.status, event.kind)
            if self._apply(email, event, status):
                outcome = RecordOutcome.RECORDED if status else RecordOutcome.NOTED
                logger.info(
                    "feedback recorded", extra={**log, "outcome": str(outcome), "status": status or email.status}
                )
                return outcome
            email = self.emails.get_email(email.request_id, email.email_key)  # changed meanwhile: read again
            if email is None:
                logger.warning("the email was deleted while the event was recorded; dropped", extra=log)
                return RecordOutcome.UNMATCHED
        raise FeedbackNotYetMatched("the email kept changing while the event was recorded; retried")

    @staticmethod
    def _new_status(current: str, kind: FeedbackKind) -> str | None:
        """Where ``kind`` moves an email now ``current``; None when it stays."""
        if kind is FeedbackKind.REJECTED:
            return EmailStatus.FAILED if current == EmailStatus.SENT else None
        target = _TARGET.get(kind)
        rank = EmailStatus.FEEDBACK_RANK
        if target is None or current not in rank or rank[target] <= rank[current]:
            return None
        return target

    def _apply(self, email, event: FeedbackEvent, status: str | None) -> bool:
        """One conditional write: the event's id, and what it changes."""
        keeps_status_but_informs = event.kind is FeedbackKind.DELAYED and email.status == EmailStatus.SENT
        return self.emails.apply_event(
            email,
            event.event_id,
            email.status,
            event.occurred_at,
            status=status,
            delivered=event.kind is FeedbackKind.DELIVERED,
            bounce_type=(event.bounce_type or BounceType.PERMANENT) if status == EmailStatus.BOUNCED else None,
            feedback=event.diagnostic if status or keeps_status_but_informs else None,
            error=(event.diagnostic or "rejected by the provider") if status == EmailStatus.FAILED else None,
        )

    def _reason(self, event: FeedbackEvent, address: str) -> str | None:
        """Why the event suppresses ``address``, or None."""
        if event.kind is FeedbackKind.COMPLAINED:
            return "complaint"
        if event.kind is FeedbackKind.UNSUBSCRIBED:
            return "unsubscribe"
        if event.kind is FeedbackKind.DROPPED:
            text = (event.diagnostic or "").lower()
            return next((reason for word, reason in _DROP_REASONS if word in text), None)
        if event.kind is not FeedbackKind.BOUNCED:
            return None
        if event.bounce_type == BounceType.PERMANENT:
            return "bounce"
        window = self.settings.soft_bounce_window
        count = self.emails.count_soft_bounce(address, event.event_id, event.occurred_at, window)
        return "soft_bounce" if count >= self.settings.soft_bounce_limit else None

    def _suppress(self, email, address: str, event: FeedbackEvent, log: dict) -> None:
        """Suppresses ``address``, the email's recipient (named by the event), when the event says so."""
        reason = self._reason(event, address)
        if reason is None:
            return
        detail = event.diagnostic
        if reason == "soft_bounce":
            detail = (
                f"{self.settings.soft_bounce_limit} soft bounces within {self.settings.soft_bounce_window.days} days"
            )
        added = self.suppressions.add(
            address,
            reason,
            event.source,
            detail=detail,
            user_id=int(email.user_id) if email.user_id is not None else None,
            request_id=email.request_id,
            now=self.clock(),
        )
        if added:
            logger.info("address suppressed", extra={**log, "address": mask(address), "reason": reason})
