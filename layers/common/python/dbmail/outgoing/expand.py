"""Expanding a MessageRequest into one TextOfEmail per recipient address, queued for sending.

A request of up to BULK_THRESHOLD recipients is expanded by the invocation that finds it (the
stream's, or the schedule's): one read of its recipients, the count checked before any email
exists, then render, write and queue, checkpointed after each batch; a resumed expansion
re-checks the one batch that may have been half done. The request's lease keeps the stream
trigger and the schedule from working on it at once.

A bulk request (above BULK_THRESHOLD) is handed to the expand_chunk function instead, so that
it never holds a stream shard: a ``plan`` message counts its recipients a chunk (CHUNK_SIZE)
at a time, keeping only each chunk's last key, checks the count, and queues one message per
chunk; each chunk is expanded by its own invocation under its own lease, and its counts are
added to the request's once. The update that counts the last chunk finishes the request. A
chunk whose lease existed before it was taken may be half done, so it is expanded carefully:
an email that exists keeps its status.

Idempotent and resumable either way: email keys are deterministic, and a put never replaces an
email already claimed or sent. The expire sweep queues again a bulk request's plan or chunks
whose invocation died (its lease lapsed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from dbmail.core.addresses import check_sender, check_special_headers, format_address
from dbmail.core.clock import parse_datetime, utcnow
from dbmail.core.errors import ExpansionIncomplete, RequestInvalid, TemplateInvalid, TemplateLimitExceeded
from dbmail.core.parallel import one_behind
from dbmail.core.settings import Settings
from dbmail.core.statuses import EmailStatus, RequestStatus
from dbmail.outgoing import render as rendering
from dbmail.outgoing.emails import too_old
from dbmail.outgoing.queue import QueuedEmail, SendQueue, SqsQueue
from dbmail.outgoing.sendto import Destination, get_sendto_function, recipient_fields

if TYPE_CHECKING:  # integration types only: the domain never imports PynamoDB
    from dbmail.core.models import MessageRequestBase
    from dbmail.outgoing.store import Store

logger = Logger(child=True)

BULK_THRESHOLD = 5000  # recipients; a request with more is expanded in chunks
CHUNK_SIZE = 2000  # recipients of a bulk request per chunk (one expand_chunk invocation)
PRIORITY_MAX_RECIPIENTS = 100  # a request this small goes in the priority send lane
BATCH_RECIPIENTS = 200  # recipients rendered, written and queued at a time
LEASE = timedelta(minutes=16)  # longer than the 15-minute Lambda timeout
CHUNK_LEASE = timedelta(minutes=6)  # longer than the expand_chunk function's 5-minute timeout
SAFETY_MARGIN_SECONDS = 30.0
FIRST_PROGRESS_SECONDS = 1.0


def request_render_budget(recipients: int) -> float:
    """Seconds of rendering one request may use in all: generous for any real template (those
    take well under a millisecond per email), and short enough that a slow one cannot hold the
    stream for hours one allowed second at a time."""
    return 60.0 + 0.005 * recipients


RECIPIENT_FIELDS = (
    "user_id",
    "username",
    "email",
    "first_name",
    "last_name",
    "guardian_name",
    "guardian_email",
    "emergency_name",
    "emergency_email",
)


class Outcome(StrEnum):
    PROCESSED = "processed"
    CHUNKED = "chunked"  # a bulk request handed to the expand_chunk function (its plan or chunks queued)
    PLANNED = "planned"  # a bulk request cut into chunks, each queued
    CHUNK_DONE = "chunk_done"  # one chunk expanded and counted; others remain
    FAILED = "failed"
    EXPIRED = "expired"
    SCHEDULED = "scheduled"
    ALREADY_DONE = "already_done"
    BUSY = "busy"
    MISSING = "missing"


def is_bulk(request: MessageRequestBase) -> bool:
    return request.recipient_count is not None and int(request.recipient_count) > BULK_THRESHOLD


def is_priority(request: MessageRequestBase) -> bool:
    """The send lane of the request's emails: priority for a request that is not bulk and is
    small or urgent (the original's priority_level), so that it never waits behind a bulk send."""
    if request.recipient_count is None or is_bulk(request):
        return False
    return int(request.recipient_count) <= PRIORITY_MAX_RECIPIENTS or int(request.priority_level or 0) >= 1


@dataclass(frozen=True)
class ExpandTask:
    """A message of the expand-chunk queue: plan a bulk request (``chunk`` None) or expand its
    chunk number ``chunk``."""

    request_id: str
    chunk: int | None = None

    def to_body(self) -> str:
        task: dict = {"request_id": self.request_id}
        if self.chunk is not None:
            task["chunk"] = self.chunk
        return json.dumps(task, separators=(",", ":"))

    @classmethod
    def from_body(cls, body: str) -> ExpandTask:
        data = json.loads(body)
        chunk = data.get("chunk")
        return cls(request_id=str(data["request_id"]), chunk=None if chunk is None else int(chunk))


def chunk_range(ends: list[str], chunk: int) -> tuple[str | None, str]:
    """Chunk ``chunk`` is the recipients after the previous chunk's last key, through its own."""
    return (ends[chunk - 1] if chunk else None), ends[chunk]


def email_key(recipient_key: str, index: int) -> str:
    """Deterministic: the same recipient and position always give the same key."""
    return f"{recipient_key}#{index}"


def resolve_sender(request: MessageRequestBase, settings: Settings) -> str:
    """The request's sender, else the creator's address, else the site default; domain-checked."""
    if request.sender and request.sender.strip():
        chosen = request.sender.strip()
    elif request.creator is not None and request.creator.email:
        creator = request.creator
        chosen = format_address(" ".join(p for p in (creator.first_name, creator.last_name) if p), creator.email)
    else:
        chosen = settings.default_sender
    check_sender(chosen, settings.allowed_sender_domains)
    return chosen


@dataclass(frozen=True)
class PreparedRequest:
    """Everything per-request, computed once: compiled templates, send-to function, sender."""

    request_id: str
    compiled: rendering.CompiledMessage  # bound to request_context, message_vars and email_host_sender
    destinations: Callable
    send_from: str
    created_at: datetime
    sent_by: datetime | None
    request_context: dict
    message_vars: dict
    email_host_sender: str
    priority: bool  # the send lane of its emails (is_priority)

    def render(self, recipient) -> tuple[list[Destination], str, str]:
        fields = recipient_fields(recipient)
        user = rendering.UserContext(fields, fields.get("vars"), RECIPIENT_FIELDS)
        subject, body = self.compiled.render(
            rendering.build_context(user, self.request_context, self.email_host_sender, self.message_vars)
        )
        return self.destinations(recipient), subject, body


def prepare(
    request: MessageRequestBase, settings: Settings, limits: rendering.RenderLimits = rendering.DEFAULT_LIMITS
) -> PreparedRequest:
    """Validate the request as a whole; any RequestInvalid here fails it before any email exists.

    The templates are bound to the request's shared names (``CompiledMessage.bind``): ``render``
    builds each recipient's context from these same values."""
    message_vars = request.message_vars or {}
    if not isinstance(message_vars, dict):
        raise RequestInvalid("message_vars must be a JSON object of name to value")
    check_special_headers(request.special_headers)
    compiled = rendering.compile_message(  # a preview's draft request may not carry template_dialect
        request.subject, request.msgtext, limits, request.template_dialect
    )
    request_context = {
        "id": request.request_id,
        "subject": request.subject or "",
        "sender": request.sender or "",
        "public": bool(request.public),
        "public_url": f"{settings.site_url}/email/{request.request_id}",
        "created_at": request.created_at,
        "priority_level": request.priority_level,
    }
    return PreparedRequest(
        request_id=request.request_id,
        compiled=compiled.bind(rendering.shared_context(request_context, settings.email_host_sender, message_vars)),
        destinations=get_sendto_function(request.sendto_fn_name),
        send_from=resolve_sender(request, settings),
        created_at=request.created_at,
        sent_by=request.sent_by,
        request_context=request_context,
        message_vars=message_vars,
        email_host_sender=settings.email_host_sender,
        priority=is_priority(request),
    )


@dataclass
class Counts:
    recipients: int = 0
    emails: int = 0
    skipped: int = 0
    render_failed: int = 0
    render_seconds: float = 0.0

    @classmethod
    def resumed_from(cls, request: MessageRequestBase) -> Counts:
        """The counts checkpointed with the cursor (zero for a fresh expansion)."""
        if not request.expand_cursor:
            return cls()
        return cls(
            emails=int(request.email_count or 0),
            skipped=int(request.skipped_count or 0),
            render_failed=int(request.render_failed_count or 0),
            render_seconds=float(request.render_seconds or 0),
        )

    def as_dict(self) -> dict[str, int | float]:
        return {
            "recipients": self.recipients,
            "emails": self.emails,
            "skipped": self.skipped,
            "render_failed": self.render_failed,
            "render_seconds": round(self.render_seconds, 3),
        }


@dataclass
class Expander:
    store: Store
    queue: SendQueue
    chunk_queue: SqsQueue  # the expand_chunk function's: plans and chunks of bulk requests
    settings: Settings
    clock: Callable[[], datetime] = field(default=utcnow)

    def expand(
        self, request_id: str, *, owner: str, takeover: bool, time_left: Callable[[], float] = lambda: float("inf")
    ) -> Outcome:
        """Expand one request, or hand a bulk one to the expand_chunk function; ``takeover``
        marks the stream trigger (see Store.claim_request)."""
        now = self.clock()
        request = self._request_to_expand(request_id, now)
        if isinstance(request, Outcome):
            return request
        stale = too_old(request, now, self.settings.max_age)
        if stale:
            self.store.finish_request(
                request_id, RequestStatus.EXPIRED, now, error=f"{stale} when its turn came; never expanded"
            )
            logger.info("request expired", extra={"request_id": request_id})
            return Outcome.EXPIRED
        if request.processed_by is not None and request.processed_by > now:
            logger.info(
                "request scheduled", extra={"request_id": request_id, "processed_by": str(request.processed_by)}
            )
            return Outcome.SCHEDULED
        if request.chunk_ends is not None:
            return self.resume_chunks(request, now)
        try:
            prepared = prepare(request, self.settings)
        except RequestInvalid as exc:
            return self._fail(request_id, now, exc)
        if not self.store.claim_request(request_id, owner, now, now + LEASE, takeover):
            return Outcome.BUSY
        if is_bulk(request):
            self.chunk_queue.send_bodies([ExpandTask(request_id).to_body()])
            logger.info(
                "bulk request queued to be planned",
                extra={"request_id": request_id, "recipients": request.recipient_count},
            )
            return Outcome.CHUNKED
        return self._expand_inline(request, prepared, owner, time_left)

    def _expand_inline(
        self, request: MessageRequestBase, prepared: PreparedRequest, owner: str, time_left: Callable[[], float]
    ) -> Outcome:
        request_id = request.request_id
        resuming = request.status == RequestStatus.PROCESSING
        counts = Counts.resumed_from(request)
        cursor = request.expand_cursor
        recipients: Iterable = self.store.iter_recipients(request_id, after=cursor)
        if request.recipient_count is not None and not cursor:
            # one read: the website writes every recipient before the request item, and a short
            # count means it did not; checked before any email exists
            recipients = list(recipients)
            if len(recipients) != int(request.recipient_count):
                return self._fail(request_id, self.clock(), _count_mismatch(request, len(recipients)))
        budget = request_render_budget(int(request.recipient_count or 0))
        started = time.monotonic()

        def out_of_time() -> bool:
            """Checked before each recipient, so a stopping runner or a Lambda near its timeout
            stops within one render (the unwritten batch is done again on resume). Each
            invocation first gets a batch or a second, whichever ends sooner: it always progresses."""
            if cursor == request.expand_cursor and time.monotonic() - started < FIRST_PROGRESS_SECONDS:
                return False
            return time_left() < SAFETY_MARGIN_SECONDS

        read = 0
        try:
            for batch in _batches(recipients, BATCH_RECIPIENTS):
                self._expand_batch(prepared, batch, counts, careful=resuming, budget=budget, out_of_time=out_of_time)
                resuming = False
                read += len(batch)
                cursor = batch[-1].recipient_key
                self.store.save_expand_progress(request_id, owner, cursor, counts.as_dict())
        except TemplateLimitExceeded as exc:
            return self._fail(request_id, self.clock(), exc)
        if request.recipient_count is not None:
            counts.recipients = int(request.recipient_count)
        elif request.expand_cursor:  # an item without recipient_count (older writers), resumed
            counts.recipients = self.store.count_recipients(request_id)
        else:
            counts.recipients = read
        self.store.finish_request(request_id, RequestStatus.PROCESSED, self.clock(), counts=counts.as_dict())
        logger.info("request processed", extra={"request_id": request_id, **counts.as_dict()})
        return Outcome.PROCESSED

    # ---- bulk requests: the expand_chunk function's tasks ---------------------------------
    def run_task(self, task: ExpandTask, time_left: Callable[[], float] = lambda: float("inf")) -> Outcome:
        if task.chunk is None:
            return self.plan(task.request_id)
        return self.expand_chunk(task.request_id, task.chunk, time_left)

    def plan(self, request_id: str) -> Outcome:
        """Cut a bulk request into chunks and queue one message per chunk. The recipients are
        counted before any email exists (Store.chunk_ends). A plan made already (a message
        delivered twice, a plan that died part-way) is not made again: its chunks not yet
        started are queued again."""
        now = self.clock()
        request = self._request_to_expand(request_id, now)
        if isinstance(request, Outcome):
            return request
        if request.chunk_ends is not None:
            return self.resume_chunks(request, now)
        ends, found = self.store.chunk_ends(request_id, CHUNK_SIZE)
        if found != int(request.recipient_count or 0):
            return self._fail(request_id, self.clock(), _count_mismatch(request, found))
        if not self.store.save_plan(request_id, ends):
            logger.info("request planned elsewhere or moved on", extra={"request_id": request_id})
            return Outcome.BUSY
        # queued, then marked so: a plan that dies in between is delivered again, and queues them all again
        self.chunk_queue.send_bodies(ExpandTask(request_id, chunk).to_body() for chunk in range(len(ends)))
        self.store.mark_chunks_queued(request_id, self.clock())
        logger.info("request planned", extra={"request_id": request_id, "recipients": found, "chunks": len(ends)})
        return Outcome.PLANNED

    def resume_chunks(self, request: MessageRequestBase, now: datetime) -> Outcome:
        """For a planned request (the sweep, or a plan delivered again): finish it if every chunk
        is counted, else queue again each chunk whose invocation died (its lease lapsed) or whose
        message seems lost (never started, queued over ``stranded_after`` ago). A message
        queued twice is harmless: the chunk's lease and count are taken once."""
        request_id, chunks = request.request_id, len(request.chunk_ends)
        if len(request.chunks_done or ()) == chunks:
            return self._finish_chunks(request_id, chunks)
        stranded = stranded_chunks(request, now, self.settings.stranded_after)
        if not stranded:
            return Outcome.BUSY
        self.store.mark_chunks_queued(request_id, now)
        self.chunk_queue.send_bodies(ExpandTask(request_id, chunk).to_body() for chunk in stranded)
        logger.warning("chunks queued again", extra={"request_id": request_id, "chunks": stranded})
        return Outcome.CHUNKED

    def expand_chunk(self, request_id: str, chunk: int, time_left: Callable[[], float]) -> Outcome:
        """Render, write and queue one chunk's emails under the chunk's lease, then add its counts
        to the request's, once. A lapsed lease taken over means the chunk may be half done: it is
        expanded carefully (an email that exists keeps its status, and is queued again only if it
        is still outstanding)."""
        now = self.clock()
        lease_until = now + CHUNK_LEASE
        claimed = self.store.claim_chunk(request_id, chunk, now, lease_until)
        if claimed is None:  # counted already, held by another invocation, or the request moved on
            return self._finish_if_complete(request_id)
        request, started_before = claimed
        try:
            prepared = prepare(request, self.settings)
        except RequestInvalid as exc:
            return self._fail(request_id, now, exc)
        after, through = chunk_range(request.chunk_ends, chunk)
        counts = Counts()
        budget = request_render_budget(int(request.recipient_count)) - float(request.render_seconds or 0)
        try:
            # a batch's emails are queued while the next batch renders and writes: the chunk is
            # counted only after the last batch's are (leaving one_behind waits for them)
            with one_behind(self.queue.enqueue, "enqueue") as enqueue:
                for batch in _batches(
                    self.store.iter_recipients(request_id, after=after, through=through), BATCH_RECIPIENTS
                ):
                    self._expand_batch(
                        prepared,
                        batch,
                        counts,
                        careful=started_before,
                        budget=budget,
                        out_of_time=lambda: time_left() < SAFETY_MARGIN_SECONDS,
                        enqueue=enqueue,
                    )
                    counts.recipients += len(batch)
        except TemplateLimitExceeded as exc:
            return self._fail(request_id, self.clock(), exc)
        except Exception:
            self.store.release_chunk(request_id, chunk, lease_until, self.clock())  # the retry takes it at once
            raise
        done = self.store.count_chunk(request_id, chunk, counts.as_dict())
        logger.info(
            "chunk expanded",
            extra={"request_id": request_id, "chunk": chunk, "careful": started_before, **counts.as_dict()},
        )
        if done is None:
            return self._finish_if_complete(request_id)
        if done == len(request.chunk_ends):
            return self._finish_chunks(request_id, done)
        return Outcome.CHUNK_DONE

    def _finish_if_complete(self, request_id: str) -> Outcome:
        request = self.store.get_request(request_id)
        if request is None or request.status in RequestStatus.FINAL:
            return Outcome.ALREADY_DONE
        if request.chunk_ends is not None and len(request.chunks_done or ()) == len(request.chunk_ends):
            return self._finish_chunks(request_id, len(request.chunk_ends))
        return Outcome.BUSY

    def _finish_chunks(self, request_id: str, chunks: int) -> Outcome:
        if not self.store.finish_chunks(request_id, self.clock(), chunks):
            return Outcome.ALREADY_DONE
        logger.info("request processed", extra={"request_id": request_id, "chunks": chunks})
        return Outcome.PROCESSED

    def _request_to_expand(self, request_id: str, now: datetime) -> MessageRequestBase | Outcome:
        """The request, or the outcome when there is none to expand: missing, malformed (failed
        now), or final already."""
        try:
            request = self.store.get_request(request_id)
        except RequestInvalid as exc:
            return self._fail(request_id, now, exc)
        if request is None:
            logger.warning("request not found", extra={"request_id": request_id})
            return Outcome.MISSING
        if request.created_at is None:
            return self._fail(request_id, now, RequestInvalid("malformed request item: created_at is required"))
        if request.status in RequestStatus.FINAL:
            return Outcome.ALREADY_DONE
        return request

    def _fail(self, request_id: str, now: datetime, exc: RequestInvalid) -> Outcome:
        self.store.finish_request(request_id, RequestStatus.FAILED, now, error=f"{type(exc).__name__}: {exc}")
        logger.warning(
            "request failed", extra={"request_id": request_id, "error_type": type(exc).__name__, "error": str(exc)}
        )
        return Outcome.FAILED

    def _expand_batch(
        self,
        prepared: PreparedRequest,
        recipients: list,
        counts: Counts,
        careful: bool,
        budget: float,
        out_of_time: Callable[[], bool],
        enqueue: Callable[[list[QueuedEmail]], object] | None = None,
    ) -> None:
        """Render, write and queue one batch (``enqueue``: the send queue's, unless given). A
        broken render limit, or the request's rendering time passing ``budget``, raises
        TemplateLimitExceeded before anything of the batch is written. The items hold no body:
        it travels in the send message, queued only once its item is written."""
        emails = []
        bodies: dict[str, tuple[str, str]] = {}
        now = self.clock()
        for recipient in recipients:
            if out_of_time():
                raise ExpansionIncomplete(f"request {prepared.request_id}: out of time; resumes with this batch")
            started = time.monotonic()
            try:
                destinations, subject, body = prepared.render(recipient)
            except TemplateLimitExceeded:
                raise
            except TemplateInvalid as exc:
                counts.render_failed += 1
                emails.append(
                    self._email(
                        prepared,
                        recipient,
                        0,
                        recipient.email or "",
                        "",
                        now,
                        status=EmailStatus.FAILED,
                        error=str(exc),
                    )
                )
                continue
            finally:
                counts.render_seconds += time.monotonic() - started
                if counts.render_seconds > budget:
                    raise TemplateLimitExceeded(
                        f"rendering took over {budget:.0f} s for the request (the request's time limit)"
                    )
            if not destinations:
                counts.skipped += 1
                continue
            for index, destination in enumerate(destinations):
                email = self._email(prepared, recipient, index, destination.send_to, subject, now)
                emails.append(email)
                bodies[email.email_key] = (subject, body)
        if careful:
            existing = self.store.email_statuses(prepared.request_id, (e.email_key for e in emails))
            to_write = [e for e in emails if e.email_key not in existing]
            to_queue = [
                e for e in emails if existing.get(e.email_key, e.status) in (EmailStatus.QUEUED, EmailStatus.PROCESSING)
            ]
        else:
            to_write = emails
            to_queue = [e for e in emails if e.status == EmailStatus.QUEUED]
        self.store.put_emails(to_write)
        queued = []
        for email in to_queue:
            subject, body = bodies.get(email.email_key, (None, None))  # none: the send renders it again
            queued.append(
                QueuedEmail(
                    email.request_id, email.email_key, subject=subject, msgtext=body, priority=prepared.priority
                )
            )
        (enqueue or self.queue.enqueue)(queued)
        counts.emails += sum(1 for e in emails if e.status == EmailStatus.QUEUED)

    def _email(
        self,
        prepared: PreparedRequest,
        recipient,
        index: int,
        send_to: str,
        subject: str,
        now: datetime,
        status: str = EmailStatus.QUEUED,
        error: str | None = None,
    ):
        return self.store.new_email(
            request_id=prepared.request_id,
            email_key=email_key(recipient.recipient_key, index),
            recipient_key=recipient.recipient_key,
            user_id=recipient.user_id,
            send_to=send_to or "-",
            send_from=prepared.send_from,
            subject=subject,
            created_at=prepared.created_at,
            sent_by=prepared.sent_by,
            status=status,
            error=error,
            queued_at=now,
        )


def stranded_chunks(request: MessageRequestBase, now: datetime, grace: timedelta) -> list[int]:
    """The chunks of a planned request to queue again: not counted, and either started under a
    lease that lapsed (its invocation died) or never started though queued over ``grace`` ago
    (or never marked queued: the plan died queueing them)."""
    done = set(request.chunks_done or ())
    leases = request.chunk_leases.as_dict() if request.chunk_leases is not None else {}
    lost = request.chunks_queued_at is None or request.chunks_queued_at < now - grace
    return [
        chunk
        for chunk in range(len(request.chunk_ends))
        if chunk not in done and (parse_datetime(leases[str(chunk)]) < now if str(chunk) in leases else lost)
    ]


def _count_mismatch(request: MessageRequestBase, found: int) -> RequestInvalid:
    return RequestInvalid(
        f"recipient_count is {int(request.recipient_count)} but {found} recipients are stored: "
        "write every recipient before the request item"
    )


def _batches(items: Iterable, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
