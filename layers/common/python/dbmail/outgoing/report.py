"""The original's "Mail delivery failure" report: one message per request, sent once every
email of it is final, listing each failed address and the error, to the request's sender, with
a copy to the support address (the original copied its bounces address; ours is read by dbmail
itself, for DSNs). Its envelope sender is the plain bounces address: a bounce of the report is
a DSN naming no email of ours, recorded unmatched, never answered, so it cannot loop."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from dbmail.core.compose import OutgoingEmail, compose

SUBJECT = "Mail delivery failure"
MAX_LISTED = 1000  # a report stays a readable email whatever the number of failures


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
    request_error: str | None = None,
) -> OutgoingEmail:
    """``failures`` are (send_to, error) pairs; the error is shortened to its first line.
    ``request_error``: the request itself could not be (fully) expanded."""
    failures = list(failures)
    lines = [
        f"  {send_to}: {error.splitlines()[0][:160] if error else 'unknown error'}"
        for send_to, error in failures[:MAX_LISTED]
    ]
    if len(failures) > MAX_LISTED:
        lines.append(f"  ... and {len(failures) - MAX_LISTED} more (dbmail status {request_id})")
    parts = []
    if request_error:
        parts.append(
            f'The message "{request_subject}" could not be sent as written:\n\n  {request_error[:500]}\n\n'
            "Fix the message and send it again from the website.\n"
        )
    if lines:
        parts.append(
            f'{len(failures)} email(s) of the message "{request_subject}" could not be delivered:\n\n'
            + "\n".join(lines)
            + "\n\n"
            "Once the cause is fixed (an address corrected, a sender identity verified), an operator "
            f"can send these again, once each, with: dbmail resend {request_id}\n"
        )
    body = "\n".join(parts) + f"\nRequest {request_id} ({site_url}/email/{request_id}).\n"
    return compose(
        send_from=report_from,
        send_to=report_to,
        subject=f"{SUBJECT}: {request_subject}"[:200],
        body=body,
        message_id=f"<dbmail.outgoing.report.{request_id}@{report_from.rpartition('@')[2].rstrip('>')}>",
        date=date,
        envelope_sender=envelope_sender,
        # RFC 3834: machine-made, so auto-responders (and our own inbound router) never answer it
        special_headers={"Auto-Submitted": "auto-generated"},
    )
