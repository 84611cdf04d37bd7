"""DynamoDB access through PynamoDB: the only module that knows the tables' shapes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.constants import (
    ALL_OLD,
    COUNT,
    ITEM,
    LAST_EVALUATED_KEY,
    NONE,
    PUT_REQUEST,
    UNPROCESSED_ITEMS,
    UPDATED_NEW,
)
from pynamodb.exceptions import AttributeDeserializationError, PutError, UpdateError
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
    item_of,
)
from dbmail.core.parallel import each_at_once
from dbmail.core.settings import Settings
from dbmail.core.statuses import EmailStatus, RequestStatus
from dbmail.outgoing.emails import message_ref_for

MAX_ERROR_CHARS = 1000
STATEMENTS_PER_CALL = 25  # BatchExecuteStatement's limit
WRITES_PER_CALL = 25  # BatchWriteItem's limit
UNPROCESSED_PAUSE_SECONDS = 0.05  # before the first retry of items a BatchWriteItem left unprocessed; doubles
CONDITION_FAILED = "ConditionalCheckFailed"  # a PartiQL statement's condition did not hold
# The claim and the record of a send, for a batch of emails at once (PartiQL; ``{t}`` is the
# table, each ``?`` a parameter in the order claim_emails and mark_sent_many give them).
CLAIM_STATEMENT = (
    'UPDATE "{t}" SET "status"=? SET "claim_id"=? SET "claimed_until"=? WHERE "request_id"=? AND "email_key"=? '
    'AND ("status"=? OR ("status"=? AND "claimed_until"<?) OR ("status"=? AND "claim_id"=?)) RETURNING ALL NEW *'
)
MARK_SENT_STATEMENT = (
    'UPDATE "{t}" SET "status"=? SET "sent"=? SET "provider_message_id"=? SET "message_id"=? '
    'REMOVE "msgtext" REMOVE "error" REMOVE "claimed_until" WHERE "request_id"=? AND "email_key"=?'
)


@dataclass(frozen=True, slots=True)
class NewEmail:
    """A TextOfEmail not yet written, as the put sends it (``item``, item_of's)."""

    item: dict[str, dict[str, Any]]

    @property
    def request_id(self) -> str:
        return self.item["request_id"]["S"]

    @property
    def email_key(self) -> str:
        return self.item["email_key"]["S"]

    @property
    def status(self) -> str:
        return self.item["status"]["S"]


def _string(value: str) -> dict[str, str]:
    """A PartiQL parameter holding a string."""
    return {"S": str(value)}


def _error_code(response: dict) -> str | None:
    """A BatchStatementResponse's error code (CONDITION_FAILED, or another), None if it was done."""
    return (response["Error"].get("Code") or "Error") if "Error" in response else None


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

    def chunk_ends(self, request_id: str, size: int) -> tuple[list[str], int]:
        """The last recipient_key of each run of ``size`` recipients in key order (and of the
        rest), and how many recipients there are. Each run is counted (Select COUNT, Limit: the
        run's rest), so that only a run's last key crosses the wire; DynamoDB ends a page at 1 MB
        read, and the run's count then goes on from where it stopped. The last run's last key,
        when no page ended there (a short run, or an emulator that ends a query at its Limit
        without a LastEvaluatedKey), comes from one reverse read of one key."""
        table = self.models.EmailRequest._get_connection()
        ends: list[str] = []
        count, start = 0, None
        while True:
            page = table.query(
                request_id, consistent_read=True, select=COUNT, limit=size - count % size, exclusive_start_key=start
            )
            count += page["Count"]
            start = page.get(LAST_EVALUATED_KEY)
            if start is None:
                break
            if page["Count"] and count % size == 0:
                ends.append(start["recipient_key"]["S"])
        if len(ends) < -(-count // size):
            last = table.query(
                request_id, consistent_read=True, limit=1, scan_index_forward=False, attributes_to_get=["recipient_key"]
            )
            ends.append(last["Items"][0]["recipient_key"]["S"])
        return ends, count

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
    def new_email(self, **attributes) -> NewEmail:
        """A new email item; its message_ref is set now, so that the ByMessageRef index is
        written once, with the put (the claim then finds it there)."""
        attributes.setdefault("message_ref", message_ref_for(attributes["request_id"], attributes["email_key"]))
        return NewEmail(item_of(self.models.TextOfEmail, attributes))

    def put_emails(self, emails: Iterable[NewEmail]) -> None:
        """Batch-write new emails: 25 per call, the calls a few at a time (each_at_once)."""
        emails = list(emails)
        each_at_once(
            self._write_emails, [emails[n : n + WRITES_PER_CALL] for n in range(0, len(emails), WRITES_PER_CALL)]
        )

    def _write_emails(self, emails: list[NewEmail]) -> None:
        """One BatchWriteItem, and again for what DynamoDB left unprocessed (its throttling),
        after a growing pause, up to the model's max_retry_attempts calls; then PutError (the
        invocation fails and its message comes back: a put never replaces a claimed email)."""
        model = self.models.TextOfEmail
        table = model._get_connection()
        items = [email.item for email in emails]
        for attempt in range(model.Meta.max_retry_attempts):
            if attempt:
                time.sleep(UNPROCESSED_PAUSE_SECONDS * 2 ** (attempt - 1))
            response = table.batch_write_item(put_items=items)
            unprocessed = response.get(UNPROCESSED_ITEMS, {}).get(model.Meta.table_name)
            if not unprocessed:
                return
            items = [entry[PUT_REQUEST][ITEM] for entry in unprocessed]
        raise PutError(f"Failed to batch write items: {len(items)} of {len(emails)} left unprocessed")

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
        deliveries of one message cannot both hold it; the receive that holds it may claim it
        again (a claim whose outcome was lost). The item comes back whole (ALL_NEW: small,
        since the body travels in the message). An item written before message_ref was set at
        put gets it now, before the provider is called, so that its feedback can find the email;
        one that has it keeps it (rewriting the key would write the index again)."""
        Email = self.models.TextOfEmail
        condition = (
            (Email.status == EmailStatus.QUEUED)
            | ((Email.status == EmailStatus.PROCESSING) & (Email.claimed_until < now))
            | ((Email.status == EmailStatus.PROCESSING) & (Email.claim_id == claim_id))
        )
        actions = [
            Email.status.set(EmailStatus.PROCESSING),
            Email.claim_id.set(claim_id),
            Email.claimed_until.set(lease_until),
            Email.message_ref.set(Email.message_ref | message_ref_for(email.request_id, email.email_key)),
        ]
        return _update_if(email, actions, condition)

    def claim_emails(self, asks: Mapping[str, tuple[TextOfEmailBase, datetime, datetime]]) -> dict[str, object]:
        """``claim_email`` for the deliveries of a batch at once, by claim_id (to the email, now
        and the lease's end): the claimed item, or None. The conditional updates go in one
        BatchExecuteStatement (a PartiQL update costs the write units of an UpdateItem), each
        returning its item as the claim left it (RETURNING ALL NEW): one call, not ten. A
        claimed item the response does not carry is read in one strongly consistent
        BatchGetItem. A claim of one, and a statement DynamoDB did not run (throttled, a server
        error), take claim_email's UpdateItem instead."""
        if len(asks) <= 1:
            return self._claim_each(asks)
        Email = self.models.TextOfEmail
        processing = _string(EmailStatus.PROCESSING)
        responses = self._run_statements(
            CLAIM_STATEMENT.format(t=Email.Meta.table_name),
            {
                claim_id: (
                    email,
                    [
                        processing,
                        _string(claim_id),
                        _string(Email.claimed_until.serialize(lease_until)),
                        _string(email.request_id),
                        _string(email.email_key),
                        _string(EmailStatus.QUEUED),
                        processing,
                        _string(Email.claimed_until.serialize(now)),
                        processing,
                        _string(claim_id),
                    ],
                )
                for claim_id, (email, now, lease_until) in asks.items()
            },
        )
        done = {c for c, r in responses.items() if _error_code(r) is None}
        items = {c: Email.from_raw_data(responses[c]["Item"]) for c in done if "Item" in responses[c]}
        items.update(self._read_emails({c: asks[c][0] for c in done - items.keys()}))
        held = {c: item for c, item in items.items() if item.claim_id == c}  # as returned or read now
        unrun = {c: asks[c] for c, r in responses.items() if _error_code(r) not in (None, CONDITION_FAILED)}
        results: dict[str, object] = dict.fromkeys(asks)  # None: not claimed
        results.update(self._claim_each(unrun))
        results.update(self._with_message_ref(held))
        return results

    def _claim_each(self, asks: Mapping[str, tuple[TextOfEmailBase, datetime, datetime]]) -> dict[str, object]:
        return {
            claim_id: email if self.claim_email(email, claim_id, now, lease_until) else None
            for claim_id, (email, now, lease_until) in asks.items()
        }

    def _read_emails(self, emails: Mapping[str, TextOfEmailBase]) -> dict[str, TextOfEmailBase]:
        """The emails that exist, by claim_id, read strongly consistently (BatchGetItem)."""
        if not emails:
            return {}
        by_key = {(e.request_id, e.email_key): claim_id for claim_id, e in emails.items()}
        return {
            by_key[(item.request_id, item.email_key)]: item
            for item in self.models.TextOfEmail.batch_get(list(by_key), consistent_read=True)
        }

    def _with_message_ref(self, held: Mapping[str, TextOfEmailBase]) -> dict[str, object]:
        """The claimed items, by claim_id (None: no longer held). One written without
        message_ref (by older code) gets it, as claim_email gives it."""
        Email = self.models.TextOfEmail
        found: dict[str, object] = {}
        for claim_id, item in held.items():
            message_ref = message_ref_for(item.request_id, item.email_key)
            still = item.message_ref is not None or _update_if(
                item, [Email.message_ref.set(message_ref)], Email.claim_id == claim_id
            )
            found[claim_id] = item if still else None
        return found

    def mark_sent_many(self, asks: Mapping[str, tuple[TextOfEmailBase, datetime, str, str]]) -> dict[str, object]:
        """``mark_sent`` for the deliveries of a batch at once, by claim_id (to the email, when,
        the provider's id and the Message-ID): None, or the error that one met. One
        BatchExecuteStatement; a statement DynamoDB did not run takes mark_sent's UpdateItem."""
        if len(asks) > 1:
            Email = self.models.TextOfEmail
            responses = self._run_statements(
                MARK_SENT_STATEMENT.format(t=Email.Meta.table_name),
                {
                    claim_id: (
                        email,
                        [
                            _string(EmailStatus.SENT),
                            _string(Email.sent.serialize(when)),
                            _string(provider_message_id),
                            _string(message_id),
                            _string(email.request_id),
                            _string(email.email_key),
                        ],
                    )
                    for claim_id, (email, when, provider_message_id, message_id) in asks.items()
                },
            )
            asks = {claim_id: asks[claim_id] for claim_id, r in responses.items() if _error_code(r) is not None}
        results: dict[str, object] = {}
        for claim_id, (email, when, provider_message_id, message_id) in asks.items():
            try:
                self.mark_sent(email, when, provider_message_id, message_id)
            except Exception as exc:  # that delivery's own failure, raised in it
                results[claim_id] = exc
        return results

    def _run_statements(self, statement: str, entries: Mapping[str, tuple[TextOfEmailBase, list]]) -> dict[str, dict]:
        """One PartiQL ``statement`` per entry (by claim_id: the email and its parameters), in as
        few BatchExecuteStatement calls as DynamoDB allows (25 statements, no item twice in a
        call). Each entry's BatchStatementResponse (``_error_code``: None when it was done). A
        call that fails as a whole gives its entries its error (they are tried again one by one)."""
        client = self.models.TextOfEmail._get_connection().connection.client
        calls: list[tuple[list[str], set[tuple[str, str]]]] = []  # (claim ids, their emails' keys)
        for claim_id, (email, _) in entries.items():
            key = (email.request_id, email.email_key)
            for ids, keys in calls:
                if len(ids) < STATEMENTS_PER_CALL and key not in keys:
                    break
            else:
                ids, keys = [], set()
                calls.append((ids, keys))
            ids.append(claim_id)
            keys.add(key)
        responses: dict[str, dict] = {}
        for call, _ in calls:
            try:
                answered = client.batch_execute_statement(
                    Statements=[{"Statement": statement, "Parameters": entries[claim_id][1]} for claim_id in call]
                )["Responses"]
            except (BotoCoreError, ClientError) as exc:
                responses.update(dict.fromkeys(call, {"Error": {"Code": type(exc).__name__}}))
                continue
            responses.update(zip(call, answered, strict=True))
        return responses

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
