"""The scheduled sweep that replaces the original's cron: expands requests whose time has
come (and any the stream missed or left half done), and expires mail that must not go out late."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aws_lambda_powertools import Logger

from dbmail.errors import DeliveryError, ExpansionIncomplete, RequestInvalid
from dbmail.expand import Expander, resolve_sender
from dbmail.models import EmailStatus, RequestStatus, utcnow
from dbmail.report import failure_report
from dbmail.transports import Transport

logger = Logger(child=True)

# A queued request with no schedule that is older than this was missed by the stream trigger.
STREAM_GRACE = timedelta(minutes=2)
# How far back to look for processed requests whose unsent mail may need expiring.
SWEEP_WINDOW = timedelta(days=30)


@dataclass
class Expirer:
    expander: Expander
    transport: Transport
    clock: Callable[[], datetime] = field(default=utcnow)

    @property
    def store(self):
        return self.expander.store

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
            if request.lease_until is None or request.lease_until < now:
                expand("resume", request.request_id)
        for request in self.store.requests_with_status(RequestStatus.PROCESSED, created_after=now - SWEEP_WINDOW):
            if int(request.failed_count or 0) > int(request.failure_reported_count or 0):
                summary["failure_reports"] += self._report_failures(request, now)
            if request.swept_at is not None:
                continue
            reason = self._expiry_reason(request, now)
            if reason:
                summary["emails_expired"] += self._expire_emails(request.request_id, reason, now)
                self.store.mark_swept(request.request_id, now)
                summary["requests_swept"] += 1
        logger.info("expire run", extra=dict(summary))
        return dict(summary)

    def _report_failures(self, request, now: datetime) -> int:
        """Mail the sender one report of the request's failed emails; 1 if it went, else 0."""
        settings = self.expander.settings
        failures = [(e.send_to, e.error or "unknown") for e in self.store.failed_emails(request.request_id)]
        try:
            sender = resolve_sender(request, settings)
        except RequestInvalid:
            sender = settings.default_sender
        report = failure_report(
            request_id=request.request_id, request_subject=request.subject or "", failures=failures,
            report_from=settings.default_sender, report_to=[sender, settings.bounces_address],
            site_url=settings.site_url, date=now, envelope_sender=settings.bounces_address,
        )
        try:
            self.transport.send(report)
        except DeliveryError as exc:
            logger.warning("failure report not sent", extra={"request_id": request.request_id, "error": str(exc)})
            return 0
        self.store.mark_failures_reported(request.request_id, int(request.failed_count))
        logger.info("failure report sent", extra={"request_id": request.request_id, "failures": len(failures)})
        return 1

    def _expiry_reason(self, request, now: datetime) -> str | None:
        if request.sent_by is not None and request.sent_by < now:
            return "sent_by deadline passed"
        if request.created_at < now - self.expander.settings.max_age:
            return "older than 7 days"
        return None

    def _expire_emails(self, request_id: str, reason: str, now: datetime) -> int:
        expired = 0
        for email in self.store.iter_emails(request_id, ["request_id", "email_key", "status", "claimed_until"]):
            if email.status in (EmailStatus.QUEUED, EmailStatus.PROCESSING):
                expired += self.store.expire_email(email, reason, now)
        return expired
