"""The original's "Mail delivery failure" report: one message per request with failures,
listing each failed address and the error type, to the request's sender and the bounces address."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from dbmail.compose import OutgoingEmail, compose

SUBJECT = "Mail delivery failure"


def failure_report(
    *,
    request_id: str,
    request_subject: str,
    failures: Iterable[tuple[str, str]],
    report_from: str,
    report_to: list[str],
    site_url: str,
    date: datetime,
    envelope_sender: str,
) -> OutgoingEmail:
    """``failures`` are (send_to, error) pairs; the error is shortened to its first line."""
    lines = [f"  {send_to}: {error.splitlines()[0][:160] if error else 'unknown error'}" for send_to, error in failures]
    body = (
        f"{len(lines)} email(s) of the message \"{request_subject}\" could not be delivered:\n\n"
        + "\n".join(lines)
        + f"\n\nRequest {request_id} ({site_url}/email/{request_id}).\n"
        "Addresses that failed three times are kept in the send dead-letter queue; "
        "an operator can redrive them once the cause is fixed.\n"
    )
    return compose(
        send_from=report_from,
        send_to=report_to,
        subject=f"{SUBJECT}: {request_subject}"[:200],
        body=body,
        message_id=f"<dbmail.report.{request_id}.{len(lines)}@{report_from.rpartition('@')[2].rstrip('>')}>",
        date=date,
        envelope_sender=envelope_sender,
    )
