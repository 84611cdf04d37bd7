"""Sending a request's failed (or expired) emails again once the cause is fixed: the operator's
`dbmail resend`. Each email is queued once, keeps its Message-ID, and is counted on the request."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from dbmail.core.errors import NotFound, RequestInvalid
from dbmail.core.statuses import EmailStatus
from dbmail.outgoing.queue import QueuedEmail, SendQueue

if TYPE_CHECKING:  # integration types only: the domain never imports PynamoDB
    from dbmail.outgoing.store import Store

logger = Logger(child=True)

RESENDABLE = frozenset({EmailStatus.FAILED})


def resend(
    store: Store, queue: SendQueue, request_id: str, now: datetime, statuses: Iterable[str] | None = None
) -> int:
    """Queue the request's emails in ``statuses`` again; returns how many. An email another
    resend (or a send) took meanwhile is skipped, so running this twice resends nothing twice."""
    statuses = frozenset(EmailStatus(status) for status in (statuses or [EmailStatus.FAILED]))
    if not statuses <= RESENDABLE:
        allowed, refused = sorted(map(str, RESENDABLE)), sorted(map(str, statuses - RESENDABLE))
        raise RequestInvalid(f"only emails in {allowed} can be resent, not {refused}")
    if store.get_request(request_id) is None:
        raise NotFound(f"no request {request_id!r}")
    store.reopen(request_id)  # first, so that the sweep finds any email a crash leaves queued below
    requeued = [
        QueuedEmail(email.request_id, email.email_key)
        for email in store.iter_emails(request_id, ["request_id", "email_key", "status"], statuses)
        if store.requeue_email(email, now, resend=True)
    ]
    queue.enqueue(requeued)
    if requeued:
        store.count_resent(request_id, len(requeued))
    logger.info("emails resent", extra={"request_id": request_id, "emails": len(requeued)})
    return len(requeued)
