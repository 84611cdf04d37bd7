"""Expanding a MessageRequest into one TextOfEmail per recipient address, queued for sending.

Idempotent and resumable: email keys are deterministic, progress is checkpointed after each
chunk, and a resumed expansion re-checks the one chunk that may have been half done. The
expansion lease keeps the stream trigger and the schedule from working on one request at once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from dbmail.core.addresses import check_sender, check_special_headers, format_address
from dbmail.core.clock import utcnow
from dbmail.core.errors import ExpansionIncomplete, RequestInvalid, TemplateInvalid, TemplateLimitExceeded
from dbmail.core.settings import Settings
from dbmail.core.statuses import EmailStatus, RequestStatus
from dbmail.outgoing import render as rendering
from dbmail.outgoing.queue import QueuedEmail, SendQueue
from dbmail.outgoing.sendto import Destination, get_sendto_function

if TYPE_CHECKING:  # integration types only: the domain never imports PynamoDB
    from dbmail.core.models import MessageRequestBase
    from dbmail.outgoing.store import Store

logger = Logger(child=True)

CHUNK_RECIPIENTS = 200
LEASE = timedelta(minutes=16)  # longer than the 15-minute Lambda timeout
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
    FAILED = "failed"
    EXPIRED = "expired"
    SCHEDULED = "scheduled"
    ALREADY_DONE = "already_done"
    BUSY = "busy"
    MISSING = "missing"


def email_key(recipient_key: str, index: int) -> str:
    """Deterministic: the same recipient and position always give the same key."""
    return f"{recipient_key}#{index}"


def message_ref_for(request_id: str, key: str) -> str:
    """The email's 32-hex reference: in its Message-ID, its VERP envelope sender and the
    provider's feedback (TextOfEmail.message_ref)."""
    return hashlib.sha256(f"{request_id}/{key}".encode()).hexdigest()[:32]


def message_id_for(request_id: str, key: str, send_from: str) -> str:
    """A stable RFC 5322 Message-ID, so a receiver can recognise a repeated delivery."""
    domain = send_from.rpartition("@")[2].rstrip(">").strip() or "dbmail.invalid"
    return f"<dbmail.{message_ref_for(request_id, key)}@{domain}>"


def expiry_reason(item, now: datetime, max_age: timedelta) -> str | None:
    """Why mail (a request or one of its emails: both carry created_at and sent_by) must not go
    out any more, or None. The original's rule: never late (sent_by), never older than the
    window (``max_age``, which is settings.max_age)."""
    if item.sent_by is not None and item.sent_by < now:
        return "sent_by deadline passed"
    return too_old(item, now, max_age)


def too_old(item, now: datetime, max_age: timedelta) -> str | None:
    """The window half of ``expiry_reason``: why ``item`` is past it, or None."""
    if item.created_at < now - max_age:
        return f"older than {max_age.days} days"
    return None


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
    compiled: rendering.CompiledMessage
    destinations: Callable
    send_from: str
    created_at: datetime
    sent_by: datetime | None
    request_context: dict
    message_vars: dict
    email_host_sender: str

    def render(self, recipient) -> tuple[list[Destination], str, str]:
        user = rendering.UserContext({f: getattr(recipient, f) for f in RECIPIENT_FIELDS}, recipient.vars)
        subject, body = self.compiled.render(
            rendering.build_context(user, self.request_context, self.email_host_sender, self.message_vars)
        )
        return self.destinations(recipient), subject, body


def prepare(
    request: MessageRequestBase, settings: Settings, limits: rendering.RenderLimits = rendering.DEFAULT_LIMITS
) -> PreparedRequest:
    """Validate the request as a whole; any RequestInvalid here fails it before any email exists."""
    message_vars = request.message_vars or {}
    if not isinstance(message_vars, dict):
        raise RequestInvalid("message_vars must be a JSON object of name to value")
    check_special_headers(request.special_headers)
    return PreparedRequest(
        request_id=request.request_id,
        compiled=rendering.compile_message(  # a preview's draft request may not carry template_dialect
            request.subject, request.msgtext, limits, request.template_dialect
        ),
        destinations=get_sendto_function(request.sendto_fn_name),
        send_from=resolve_sender(request, settings),
        created_at=request.created_at,
        sent_by=request.sent_by,
        request_context={
            "id": request.request_id,
            "subject": request.subject or "",
            "sender": request.sender or "",
            "public": bool(request.public),
            "public_url": f"{settings.site_url}/email/{request.request_id}",
            "created_at": request.created_at,
            "priority_level": request.priority_level,
        },
        message_vars=message_vars,
        email_host_sender=settings.email_host_sender,
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
    settings: Settings
    clock: Callable[[], datetime] = field(default=utcnow)

    def expand(
        self, request_id: str, *, owner: str, takeover: bool, time_left: Callable[[], float] = lambda: float("inf")
    ) -> Outcome:
        """Expand one request; ``takeover`` marks the stream trigger (see Store.claim_request)."""
        now = self.clock()
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
        try:
            prepared = prepare(request, self.settings)
            self._check_recipients_complete(request)
        except RequestInvalid as exc:
            return self._fail(request_id, now, exc)
        if not self.store.claim_request(request_id, owner, now, now + LEASE, takeover):
            return Outcome.BUSY
        resuming = request.status == RequestStatus.PROCESSING
        counts = Counts.resumed_from(request)
        cursor = request.expand_cursor
        budget = request_render_budget(int(request.recipient_count or 0))

        started = time.monotonic()

        def out_of_time() -> bool:
            """Checked before each recipient, so a stopping runner or a Lambda near its timeout
            stops within one render (the unwritten chunk is done again on resume). Each
            invocation first gets a chunk or a second, whichever ends sooner: it always progresses."""
            if cursor == request.expand_cursor and time.monotonic() - started < FIRST_PROGRESS_SECONDS:
                return False
            return time_left() < SAFETY_MARGIN_SECONDS

        try:
            for chunk in _chunks(self.store.iter_recipients(request_id, after=cursor), CHUNK_RECIPIENTS):
                self._expand_chunk(prepared, chunk, counts, careful=resuming, budget=budget, out_of_time=out_of_time)
                resuming = False
                cursor = chunk[-1].recipient_key
                self.store.save_expand_progress(request_id, owner, cursor, counts.as_dict())
        except TemplateLimitExceeded as exc:
            return self._fail(request_id, self.clock(), exc)
        counts.recipients = (
            request.recipient_count if request.recipient_count is not None else self.store.count_recipients(request_id)
        )
        self.store.finish_request(request_id, RequestStatus.PROCESSED, self.clock(), counts=counts.as_dict())
        logger.info("request processed", extra={"request_id": request_id, **counts.as_dict()})
        return Outcome.PROCESSED

    def _fail(self, request_id: str, now: datetime, exc: RequestInvalid) -> str:
        self.store.finish_request(request_id, RequestStatus.FAILED, now, error=f"{type(exc).__name__}: {exc}")
        logger.warning(
            "request failed", extra={"request_id": request_id, "error_type": type(exc).__name__, "error": str(exc)}
        )
        return Outcome.FAILED

    def _check_recipients_complete(self, request: MessageRequestBase) -> None:
        """The website writes every recipient before the request item; a short count means it did not."""
        if request.recipient_count is None or request.expand_cursor:
            return
        found = self.store.count_recipients(request.request_id)
        if found != int(request.recipient_count):
            raise RequestInvalid(
                f"recipient_count is {int(request.recipient_count)} but {found} recipients are stored: "
                "write every recipient before the request item"
            )

    def _expand_chunk(
        self,
        prepared: PreparedRequest,
        recipients: list,
        counts: Counts,
        careful: bool,
        budget: float,
        out_of_time: Callable[[], bool],
    ) -> None:
        """Render, write and queue one chunk. A broken render limit, or the request's rendering
        time passing ``budget``, raises TemplateLimitExceeded before anything of the chunk is written."""
        emails = []
        now = self.clock()
        for recipient in recipients:
            if out_of_time():
                raise ExpansionIncomplete(f"request {prepared.request_id}: out of time; resumes with this chunk")
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
                emails.append(self._email(prepared, recipient, index, destination.send_to, subject, body, now))
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
        self.queue.enqueue(QueuedEmail(e.request_id, e.email_key) for e in to_queue)
        counts.emails += sum(1 for e in emails if e.status == EmailStatus.QUEUED)

    def _email(
        self,
        prepared: PreparedRequest,
        recipient,
        index: int,
        send_to: str,
        subject: str,
        body: str,
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
            msgtext=body,
            created_at=prepared.created_at,
            sent_by=prepared.sent_by,
            status=status,
            error=error,
            queued_at=now,
        )


def _chunks(items: Iterable, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
