"""The scheduled sweep that replaces the original's cron. Each run:

- expands requests whose time has come, and any the stream missed or left half done; of a bulk
  request (expanded in chunks by the expand_chunk function) it queues again the plan, or each
  chunk, whose invocation died, and finishes the request once every chunk is counted;
- for every recent request not yet settled, expires mail that must not go out late and queues
  again every email left stranded (``queued`` past the grace period with its message lost, or
  ``processing`` under a lapsed claim), so that no email depends on one SQS message arriving;
- settles a request once every email is final, and then mails its sender the one
  "Mail delivery failure" report, with a copy to the support address, if anything failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from dbmail.core.clock import utcnow
from dbmail.core.errors import DeliveryError, ExpansionIncomplete, RequestInvalid
from dbmail.core.statuses import EmailStatus, RequestStatus
from dbmail.outgoing.emails import expiry_reason
from dbmail.outgoing.expand import Expander, is_priority, resolve_sender
from dbmail.outgoing.queue import QueuedEmail
from dbmail.outgoing.report import failure_report

if TYPE_CHECKING:  # integration types only: the domain never imports boto3
    from dbmail.core.transports import Transport

logger = Logger(child=True)

# A queued request with no schedule that is older than this was missed by the stream trigger.
STREAM_GRACE = timedelta(minutes=2)
# How far back to look for requests that may still have unsettled mail (emails older than the
# 7-day window are expired by this sweep, so settled, well within it).
SWEEP_WINDOW = timedelta(days=9)
# While the send queue is busy a queued email may just be waiting its turn; past this many grace
# periods it is queued again anyway (a duplicate message is harmless: the claim is exclusive).
BUSY_QUEUE_GRACE_FACTOR = 12
MAX_REQUEUES_PER_RUN = 10_000
SAFETY_MARGIN_SECONDS = 30.0
EMAIL_SWEEP_ATTRIBUTES = ["request_id", "email_key", "status", "claimed_until", "queued_at", "created_at"]


@dataclass
class Expirer:
    expander: Expander
    transport: Transport
    clock: Callable[[], datetime] = field(default=utcnow)

    @property
    def store(self):
        return self.expander.store

    @property
    def settings(self):
        return self.expander.settings

    def run(self, owner: str, time_left: Callable[[], float] = lambda: float("inf")) -> dict[str, int]:
        summary: Counter = Counter()
        now = self.clock()

        def expand(label: str, request_id: str) -> None:
            """One request's failure must not stop the sweep: it is logged, counted, and retried next run."""
            try:
                outcome = self.expander.expand(request_id, owner=owner, takeover=False, time_left=time_left)
            except ExpansionIncomplete:
                outcome = "incomplete"
            except Exception:
                logger.exception("expansion failed; retried on the next run", extra={"request_id": request_id})
                outcome = "error"
            summary[f"{label}_{outcome}"] += 1

        for request in self.store.requests_with_status(RequestStatus.QUEUED):
            due = request.processed_by is not None and request.processed_by <= now
            missed = request.processed_by is None and request.created_at < now - STREAM_GRACE
            if due or missed:
                expand("expand", request.request_id)
        for request in self.store.requests_with_status(RequestStatus.PROCESSING):
            # a planned bulk request holds no request lease: its chunks have theirs
            if request.lease_until is None or request.lease_until < now:
                expand("resume", request.request_id)
        backlog = self.expander.queue.backlog()
        for status in (RequestStatus.PROCESSED, RequestStatus.FAILED):
            for request in self.store.requests_with_status(status, created_after=now - SWEEP_WINDOW):
                if request.settled_at is not None:
                    continue
                if time_left() < SAFETY_MARGIN_SECONDS:
                    summary["sweep_incomplete"] += 1
                    break
                try:
                    self._sweep(request, self.clock(), backlog, summary)
                except Exception:
                    logger.exception(
                        "sweep of a request failed; retried on the next run", extra={"request_id": request.request_id}
                    )
                    summary["sweep_error"] += 1
        logger.info("expire run", extra=dict(summary))
        return dict(summary)

    def _sweep(self, request, now: datetime, backlog: int, summary: Counter) -> None:
        """One request: expire, queue again what was stranded, settle when every email is final."""
        reason = expiry_reason(request, now, self.settings.max_age)
        outstanding = 0
        stranded: list[QueuedEmail] = []
        priority = is_priority(request)
        for email in self.store.iter_emails(request.request_id, EMAIL_SWEEP_ATTRIBUTES, EmailStatus.OUTSTANDING):
            if reason and self.store.expire_email(email, reason, now):
                summary["emails_expired"] += 1
                continue
            outstanding += 1
            if (
                not reason
                and summary["emails_requeued"] + len(stranded) < MAX_REQUEUES_PER_RUN
                and self._stranded(email, now, backlog)
                and self.store.requeue_email(email, now)
            ):
                stranded.append(QueuedEmail(email.request_id, email.email_key, priority=priority))
        if stranded:
            self.expander.queue.enqueue(stranded)
            summary["emails_requeued"] += len(stranded)
            logger.warning(
                "stranded emails queued again", extra={"request_id": request.request_id, "emails": len(stranded)}
            )
        if outstanding == 0 and self._report_failures(request, now, summary):
            self.store.mark_settled(request.request_id, now)
            summary["requests_settled"] += 1

    def _stranded(self, email, now: datetime, backlog: int) -> bool:
        grace = self.settings.stranded_after
        if email.status == EmailStatus.PROCESSING:
            return email.claimed_until is None or email.claimed_until < now - grace
        queued_at = email.queued_at or email.created_at
        if backlog:
            grace *= BUSY_QUEUE_GRACE_FACTOR
        return queued_at < now - grace

    def _report_failures(self, request, now: datetime, summary: Counter) -> bool:
        """The request's one "Mail delivery failure" report, once every email is final; False
        if it is still to be sent (the next run tries again)."""
        failures = [(e.send_to, e.error or "unknown") for e in self.store.failed_emails(request.request_id)]
        request_error = request.error if request.status == RequestStatus.FAILED else None
        if not (failures or request_error) or request.failure_reported_at is not None:
            return True
        if not self.store.mark_failures_reported(request.request_id, now):
            return True  # another run has it
        settings = self.settings
        try:
            sender = resolve_sender(request, settings)
        except RequestInvalid:
            sender = settings.default_sender
        report = failure_report(
            request_id=request.request_id,
            request_subject=request.subject or "",
            failures=failures,
            request_error=request_error,
            report_from=settings.default_sender,
            # a copy to support: the bounces address is dbmail's own (DSNs), which drops anything else
            report_to=[sender, *([settings.support_address] if settings.support_address else [])],
            site_url=settings.site_url,
            date=now,
            envelope_sender=settings.bounces_address,
        )
        try:
            self.transport.send(report)
        except DeliveryError as exc:
            self.store.unmark_failures_reported(request.request_id)
            logger.warning(
                "failure report not sent; tried again next run",
                extra={"request_id": request.request_id, "error": str(exc)},
            )
            return False
        summary["failure_reports"] += 1
        logger.info("failure report sent", extra={"request_id": request.request_id, "failures": len(failures)})
        return True
