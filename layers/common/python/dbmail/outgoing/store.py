"""DynamoDB access through PynamoDB: the only module that knows the tables' shapes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime

from pynamodb.exceptions import AttributeDeserializationError, UpdateError

from dbmail.core.errors import RequestInvalid
from dbmail.core.models import (
    BoundModels,
    EmailRequestBase,
    MessageRequestBase,
    TextOfEmailBase,
    bind_models,
    get_or_none,
)
from dbmail.core.settings import Settings
from dbmail.core.statuses import EmailStatus, RequestStatus
from dbmail.outgoing.expand import message_ref_for

MAX_ERROR_CHARS = 1000


def _update_if(item, actions: list, condition) -> bool:
    """A conditional update; False (not an error) when the condition does not hold."""
    try:
        item.update(actions=actions, condition=condition)
    except UpdateError as exc:
        if getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException":
            return False
        raise
    return True


class Store:
    """Reads and conditional writes on the three tables; every write that races is conditional."""

    def __init__(self, settings: Settings, models: BoundModels | None = None):
        self.models = models or bind_models(settings)

    # ---- MessageRequest ---------------------------------------------------------------
    def get_request(self, request_id: str) -> MessageRequestBase | None:
        try:
            return get_or_none(self.models.MessageRequest, request_id)
        except (AttributeDeserializationError, ValueError, TypeError) as exc:
            raise RequestInvalid(f"malformed request item (see docs/schema.md): {exc}") from exc

    def put_new_request(self, request: MessageRequestBase) -> None:
        """Write a new request item; it must not exist yet (its INSERT starts the expansion)."""
        request.save(condition=self.models.MessageRequest.request_id.does_not_exist())

    def requests_with_status(self, status: str, created_after: datetime | None = None) -> Iterator[MessageRequestBase]:
        Request = self.models.MessageRequest
        condition = Request.created_at >= created_after if created_after else None
        return Request.by_status.query(status, range_key_condition=condition)

    def claim_request(self, request_id: str, owner: str, now: datetime, lease_until: datetime, takeover: bool) -> bool:
        """Take the expansion lease when it is free or lapsed. With ``takeover`` (a stream retry:
        Lambda runs one invocation per shard at a time) a lease held by a stream invocation is
        taken too, since that invocation has ended."""
        Request = self.models.MessageRequest
        free = Request.lease_until.does_not_exist() | (Request.lease_until < now)
        if takeover:
            free |= Request.lease_owner.startswith("stream:")
        waiting = Request.status.is_in(RequestStatus.QUEUED, RequestStatus.PROCESSING) | Request.status.does_not_exist()
        condition = waiting & free
        actions = [
            Request.status.set(RequestStatus.PROCESSING),
            Request.lease_owner.set(owner),
            Request.lease_until.set(lease_until),
        ]
        return _update_if(Request(request_id), actions, condition)

    def save_expand_progress(self, request_id: str, owner: str, cursor: str, counts: dict[str, int]) -> None:
        """Checkpoint after a chunk: a resumed expansion starts after ``cursor``."""
        Request = self.models.MessageRequest
        Request(request_id).update(
            actions=[
                Request.expand_cursor.set(cursor),
                Request.email_count.set(counts["emails"]),
                Request.skipped_count.set(counts["skipped"]),
                Request.render_failed_count.set(counts["render_failed"]),
                Request.render_seconds.set(counts["render_seconds"]),
            ],
            condition=Request.lease_owner == owner,
        )

    def finish_request(
        self,
        request_id: str,
        status: str,
        now: datetime,
        counts: dict[str, int] | None = None,
        error: str | None = None,
    ) -> None:
        """Record the expansion's end. Written without reading the item back, so that a request
        whose item is malformed can still be recorded as failed."""
        Request = self.models.MessageRequest
        actions = [
            Request.status.set(status),
            Request.processed_at.set(now),
            Request.lease_owner.remove(),
            Request.lease_until.remove(),
        ]
        if counts is not None:
            actions += [
                Request.email_count.set(counts["emails"]),
                Request.skipped_count.set(counts["skipped"]),
                Request.render_failed_count.set(counts["render_failed"]),
                Request.recipient_count.set(counts["recipients"]),
                Request.render_seconds.set(counts["render_seconds"]),
            ]
        if error is not None:
            actions.append(Request.error.set(error[:MAX_ERROR_CHARS]))
        Request._get_connection().update_item(request_id, actions=actions)

    def mark_settled(self, request_id: str, now: datetime) -> None:
        """Every email of the request is final (as the sweep saw it); the sweep stops looking."""
        Request = self.models.MessageRequest
        Request._get_connection().update_item(request_id, actions=[Request.settled_at.set(now)])

    def mark_failures_reported(self, request_id: str, now: datetime) -> bool:
        """Claim the request's one failure report; False if it was already claimed."""
        Request = self.models.MessageRequest
        return _update_if(
            Request(request_id), [Request.failure_reported_at.set(now)], Request.failure_reported_at.does_not_exist()
        )

    def unmark_failures_reported(self, request_id: str) -> None:
        Request = self.models.MessageRequest
        Request._get_connection().update_item(request_id, actions=[Request.failure_reported_at.remove()])

    def reopen(self, request_id: str) -> None:
        """The sweep watches the request again (before any of its emails is queued again)."""
        Request = self.models.MessageRequest
        Request._get_connection().update_item(request_id, actions=[Request.settled_at.remove()])

    def count_resent(self, request_id: str, resent: int) -> None:
        Request = self.models.MessageRequest
        Request._get_connection().update_item(request_id, actions=[Request.resent_count.add(resent)])

    # ---- EmailRequest (recipients) ----------------------------------------------------
    def count_recipients(self, request_id: str) -> int:
        return self.models.EmailRequest.count(request_id, consistent_read=True)

    def iter_recipients(self, request_id: str, after: str | None = None) -> Iterator[EmailRequestBase]:
        Recipient = self.models.EmailRequest
        condition = Recipient.recipient_key > after if after else None
        return Recipient.query(request_id, range_key_condition=condition, consistent_read=True, page_size=500)

    def put_recipients(self, recipients: Iterable[EmailRequestBase]) -> None:
        with self.models.EmailRequest.batch_write() as batch:
            for recipient in recipients:
                batch.save(recipient)

    def delete_recipients(self, request_id: str) -> None:
        """Remove the recipients of a request that was refused before its item was written."""
        with self.models.EmailRequest.batch_write() as batch:
            for recipient in self.iter_recipients(request_id):
                batch.delete(recipient)

    def get_recipient(self, request_id: str, recipient_key: str) -> EmailRequestBase | None:
        return get_or_none(self.models.EmailRequest, request_id, recipient_key)

    # ---- TextOfEmail ------------------------------------------------------------------
    def new_email(self, **attributes) -> TextOfEmailBase:
        return self.models.TextOfEmail(**attributes)

    def put_emails(self, emails: Iterable[TextOfEmailBase]) -> None:
        """Batch-write new emails (25 per call; PynamoDB retries unprocessed items)."""
        with self.models.TextOfEmail.batch_write() as batch:
            for email in emails:
                batch.save(email)

    def email_statuses(self, request_id: str, email_keys: Iterable[str]) -> dict[str, str]:
        """Status of those emails that exist, for a resumed expansion's first chunk."""
        keys = [(request_id, key) for key in email_keys]
        return {
            email.email_key: email.status
            for email in self.models.TextOfEmail.batch_get(
                keys, consistent_read=True, attributes_to_get=["email_key", "status"]
            )
        }

    def email_ref(self, request_id: str, email_key: str) -> TextOfEmailBase:
        """A key-only handle; a successful conditional update fills in the rest (ALL_NEW)."""
        return self.models.TextOfEmail(request_id, email_key)

    def get_email(self, request_id: str, email_key: str) -> TextOfEmailBase | None:
        return get_or_none(self.models.TextOfEmail, request_id, email_key)

    def iter_emails(
        self, request_id: str, attributes: list[str] | None = None, statuses: Iterable[str] | None = None
    ) -> Iterator[TextOfEmailBase]:
        Email = self.models.TextOfEmail
        condition = Email.status.is_in(*statuses) if statuses else None
        return Email.query(request_id, filter_condition=condition, attributes_to_get=attributes, page_size=1000)

    def failed_emails(self, request_id: str) -> Iterator[TextOfEmailBase]:
        return self.iter_emails(request_id, ["email_key", "send_to", "error", "tries"], [EmailStatus.FAILED])

    def email_status_counts(self, request_id: str) -> Counter:
        return Counter(email.status for email in self.iter_emails(request_id, ["status"]))

    def claim_email(self, email: TextOfEmailBase, claim_id: str, now: datetime, lease_until: datetime) -> bool:
        """Only one send may hold an email; once its lease lapses (the holder died) another may.
        ``claim_id`` is unique per receive (the SQS receipt handle), so even two concurrent
        deliveries of one message cannot both hold it. The email's message_ref is written now,
        before the provider is called, so that its feedback can find the email."""
        Email = self.models.TextOfEmail
        condition = (Email.status == EmailStatus.QUEUED) | (
            (Email.status == EmailStatus.PROCESSING) & (Email.claimed_until < now)
        )
        actions = [
            Email.status.set(EmailStatus.PROCESSING),
            Email.claim_id.set(claim_id),
            Email.claimed_until.set(lease_until),
            Email.message_ref.set(message_ref_for(email.request_id, email.email_key)),
        ]
        return _update_if(email, actions, condition)

    def mark_suppressed(self, email: TextOfEmailBase, reason: str, claim_id: str) -> bool:
        """The claimed email is not sent: its address is suppressed (``reason`` goes in error).
        Final, like sent; the body is cleared as for a sent email."""
        Email = self.models.TextOfEmail
        condition = (Email.status == EmailStatus.PROCESSING) & (Email.claim_id == claim_id)
        actions = [
            Email.status.set(EmailStatus.SUPPRESSED),
            Email.error.set(reason[:MAX_ERROR_CHARS]),
            Email.msgtext.remove(),
            Email.claimed_until.remove(),
        ]
        return _update_if(email, actions, condition)

    def mark_sent(self, email: TextOfEmailBase, when: datetime, provider_message_id: str, message_id: str) -> None:
        """Record delivery and clear the body (it can be rendered again from the request)."""
        Email = self.models.TextOfEmail
        email.update(
            actions=[
                Email.status.set(EmailStatus.SENT),
                Email.sent.set(when),
                Email.msgtext.remove(),
                Email.error.remove(),
                Email.provider_message_id.set(provider_message_id),
                Email.message_id.set(message_id),
                Email.claimed_until.remove(),
            ]
        )

    def record_failure(
        self, email: TextOfEmailBase, error: str, *, final: bool, counts_as_try: bool, now: datetime
    ) -> None:
        """Release the claim after a failed try: ``failed`` for good, or queued again (the caller
        re-queues it). A throttle is not a try."""
        Email = self.models.TextOfEmail
        email.update(
            actions=[
                Email.error.set(error[:MAX_ERROR_CHARS]),
                Email.status.set(EmailStatus.FAILED if final else EmailStatus.QUEUED),
                Email.claimed_until.remove(),
                Email.queued_at.set(now),
                Email.tries.add(1) if counts_as_try else Email.throttles.add(1),
            ]
        )

    def requeue_email(self, email: TextOfEmailBase, now: datetime, *, resend: bool = False) -> bool:
        """Mark a stranded email (or, with ``resend``, a failed one) queued again, before its
        message is sent; False if it was sent, taken or changed meanwhile."""
        Email = self.models.TextOfEmail
        if resend:
            condition = Email.status == EmailStatus.FAILED
            actions = [Email.tries.set(0), Email.resends.add(1)]
        else:
            condition = (Email.status == EmailStatus.QUEUED) | (
                (Email.status == EmailStatus.PROCESSING) & (Email.claimed_until < now)
            )
            actions = [Email.claimed_until.remove()]
        return _update_if(email, [*actions, Email.status.set(EmailStatus.QUEUED), Email.queued_at.set(now)], condition)

    def expire_email(self, email: TextOfEmailBase, reason: str, now: datetime, claim_id: str | None = None) -> bool:
        """Mark an unsent email expired (never sent); False if it was sent or taken meanwhile.
        ``claim_id``: the caller holds the claim itself."""
        Email = self.models.TextOfEmail
        condition = (Email.status == EmailStatus.QUEUED) | (
            (Email.status == EmailStatus.PROCESSING) & (Email.claimed_until < now)
        )
        if claim_id is not None:
            condition |= (Email.status == EmailStatus.PROCESSING) & (Email.claim_id == claim_id)
        return _update_if(
            email,
            [Email.status.set(EmailStatus.EXPIRED), Email.error.set(reason), Email.claimed_until.remove()],
            condition,
        )
