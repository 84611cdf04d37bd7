"""DynamoDB access through PynamoDB: the only module that knows the tables' shapes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from pynamodb.constants import ALL_OLD, NONE, UPDATED_NEW
from pynamodb.exceptions import AttributeDeserializationError, UpdateError
from pynamodb.expressions.condition import size

from dbmail.core.clock import format_datetime
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
    return _conditionally(lambda: item.update(actions=actions, condition=condition))


def _conditionally(update: Callable[[], object]) -> bool:
    """Run a conditional update; False (not an error) when its condition does not hold."""
    try:
        update()
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

    # a bulk request's chunks (outgoing/expand.py: plan, then one invocation per chunk)
    def save_plan(self, request_id: str, chunk_ends: list[str]) -> bool:
        """Store the plan once (False if another plan was stored first, or the request moved on).
        The request's lease goes: from now on each chunk has its own."""
        Request = self.models.MessageRequest
        actions = [
            Request.chunk_ends.set(chunk_ends),
            Request.chunk_leases.set({}),
            Request.lease_owner.remove(),
            Request.lease_until.remove(),
        ]
        condition = (Request.status == RequestStatus.PROCESSING) & Request.chunk_ends.does_not_exist()
        return _update_if(Request(request_id), actions, condition)

    def mark_chunks_queued(self, request_id: str, now: datetime) -> None:
        """Chunk messages are queued (again) now: the sweep gives them time to be picked up."""
        Request = self.models.MessageRequest
        Request._get_connection().update_item(
            request_id, actions=[Request.chunks_queued_at.set(now)], return_values=NONE
        )

    def claim_chunk(
        self, request_id: str, chunk: int, now: datetime, lease_until: datetime
    ) -> tuple[MessageRequestBase, bool] | None:
        """Take chunk ``chunk``'s lease: the request is still processing, the chunk not counted
        yet and its lease absent or lapsed. Returns the request as it was and whether the chunk
        had started before (it may be half done), or None."""
        Request = self.models.MessageRequest
        lease = Request.chunk_leases[str(chunk)]
        condition = (
            (Request.status == RequestStatus.PROCESSING)
            & ~Request.chunks_done.contains(chunk)
            & (lease.does_not_exist() | (lease < format_datetime(now)))
        )
        try:
            response = Request._get_connection().update_item(
                request_id,
                actions=[lease.set(format_datetime(lease_until))],
                condition=condition,
                return_values=ALL_OLD,
            )
        except UpdateError as exc:
            if getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException":
                return None
            raise
        before = Request.from_raw_data(response["Attributes"])
        return before, str(chunk) in (before.chunk_leases or {})

    def release_chunk(self, request_id: str, chunk: int, lease_until: datetime, now: datetime) -> None:
        """Let the chunk's lease lapse now (its invocation stopped early), so that a retry takes
        it at once; it stays recorded, so the retry knows the chunk had started."""
        Request = self.models.MessageRequest
        lease = Request.chunk_leases[str(chunk)]
        _update_if(Request(request_id), [lease.set(format_datetime(now))], lease == format_datetime(lease_until))

    def count_chunk(self, request_id: str, chunk: int, counts: dict[str, int | float]) -> int | None:
        """Add the chunk's counts to the request's, once: the number of chunks done after it, or
        None when this chunk had been counted already."""
        Request = self.models.MessageRequest
        actions = [
            Request.chunks_done.add({chunk}),
            Request.email_count.add(counts["emails"]),
            Request.skipped_count.add(counts["skipped"]),
            Request.render_failed_count.add(counts["render_failed"]),
            Request.render_seconds.add(counts["render_seconds"]),
            Request.chunk_leases[str(chunk)].remove(),
        ]
        try:
            response = Request._get_connection().update_item(
                request_id, actions=actions, condition=~Request.chunks_done.contains(chunk), return_values=UPDATED_NEW
            )
        except UpdateError as exc:
            if getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException":
                return None
            raise
        return len(response["Attributes"]["chunks_done"]["NS"])

    def finish_chunks(self, request_id: str, now: datetime, chunks: int) -> bool:
        """The request is processed once all ``chunks`` are counted (False if not, or if it was
        finished already); its counts are the chunks' sums."""
        Request = self.models.MessageRequest
        actions = [
            Request.status.set(RequestStatus.PROCESSED),
            Request.processed_at.set(now),
            Request.chunk_leases.remove(),
            Request.lease_owner.remove(),
            Request.lease_until.remove(),
        ]
        condition = (Request.status == RequestStatus.PROCESSING) & (size(Request.chunks_done) == chunks)
        return _update_if(Request(request_id), actions, condition)

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

    def iter_recipients(
        self, request_id: str, after: str | None = None, through: str | None = None
    ) -> Iterator[EmailRequestBase]:
        """Recipients in key order, after ``after`` and up to ``through`` (inclusive) when given."""
        Recipient = self.models.EmailRequest
        key = Recipient.recipient_key
        if through is None:
            condition = key > after if after else None
        else:  # one condition per key: BETWEEN includes ``after``, which is left out below
            condition = key.between(after, through) if after else key <= through
        recipients = Recipient.query(request_id, range_key_condition=condition, consistent_read=True, page_size=500)
        if through is not None and after:
            return (recipient for recipient in recipients if recipient.recipient_key != after)
        return recipients

    def recipient_keys(self, request_id: str, page_size: int) -> Iterator[str]:
        """Every recipient_key in order, keys only. ``page_size`` bounds each call: DynamoDB
        Local reads all the rest of the partition for a page without a Limit."""
        Recipient = self.models.EmailRequest
        found = Recipient.query(
            request_id, consistent_read=True, attributes_to_get=["recipient_key"], page_size=page_size
        )
        return (recipient.recipient_key for recipient in found)

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
        """A new email item; its message_ref is set now, so that the ByMessageRef index is
        written once, with the put (the claim then finds it there)."""
        attributes.setdefault("message_ref", message_ref_for(attributes["request_id"], attributes["email_key"]))
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
        deliveries of one message cannot both hold it. The item comes back whole (ALL_NEW: small,
        since the body travels in the message). An item written before message_ref was set at
        put gets it now, before the provider is called, so that its feedback can find the email;
        one that has it keeps it (rewriting the key would write the index again)."""
        Email = self.models.TextOfEmail
        condition = (Email.status == EmailStatus.QUEUED) | (
            (Email.status == EmailStatus.PROCESSING) & (Email.claimed_until < now)
        )
        actions = [
            Email.status.set(EmailStatus.PROCESSING),
            Email.claim_id.set(claim_id),
            Email.claimed_until.set(lease_until),
            Email.message_ref.set(Email.message_ref | message_ref_for(email.request_id, email.email_key)),
        ]
        return _update_if(email, actions, condition)

    def _update_email(self, email: TextOfEmailBase, actions: list, condition=None) -> None:
        """An update whose result the send does not need: nothing is read back (ReturnValues NONE)."""
        self.models.TextOfEmail._get_connection().update_item(
            email.request_id, email.email_key, actions=actions, condition=condition, return_values=NONE
        )

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
        return _conditionally(lambda: self._update_email(email, actions, condition))

    def mark_sent(self, email: TextOfEmailBase, when: datetime, provider_message_id: str, message_id: str) -> None:
        """Record delivery and clear the body of an item written with one (by older code)."""
        Email = self.models.TextOfEmail
        self._update_email(
            email,
            [
                Email.status.set(EmailStatus.SENT),
                Email.sent.set(when),
                Email.msgtext.remove(),
                Email.error.remove(),
                Email.provider_message_id.set(provider_message_id),
                Email.message_id.set(message_id),
                Email.claimed_until.remove(),
            ],
        )

    def record_failure(
        self, email: TextOfEmailBase, error: str, *, final: bool, counts_as_try: bool, now: datetime
    ) -> None:
        """Release the claim after a failed try: ``failed`` for good, or queued again (the caller
        re-queues it). A throttle is not a try."""
        Email = self.models.TextOfEmail
        self._update_email(
            email,
            [
                Email.error.set(error[:MAX_ERROR_CHARS]),
                Email.status.set(EmailStatus.FAILED if final else EmailStatus.QUEUED),
                Email.claimed_until.remove(),
                Email.queued_at.set(now),
                Email.tries.add(1) if counts_as_try else Email.throttles.add(1),
            ],
        )

    def release_claim(self, email: TextOfEmailBase, claim_id: str, now: datetime) -> None:
        """Hand a claimed email back untried (the send rate left no time to send it): queued
        again, no try spent; the caller queues its message again."""
        Email = self.models.TextOfEmail
        self._update_email(
            email,
            [Email.status.set(EmailStatus.QUEUED), Email.claimed_until.remove(), Email.queued_at.set(now)],
            (Email.status == EmailStatus.PROCESSING) & (Email.claim_id == claim_id),
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
