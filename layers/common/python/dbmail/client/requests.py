"""The website's side: submit a MessageRequest (validated before anything is written) and read its state.

Write order is the contract that makes a request visible to ``expand`` only when complete:
every recipient first, then the request item, whose INSERT triggers the expansion.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from dbmail.core.addresses import check_special_headers, mask, parse_address
from dbmail.core.clock import parse_datetime, utcnow
from dbmail.core.errors import AddressInvalid, RequestInvalid
from dbmail.core.models import Person
from dbmail.core.settings import Settings, website_settings
from dbmail.core.statuses import EmailStatus, RequestStatus
from dbmail.outgoing.expand import RECIPIENT_FIELDS, prepare, stranded_chunks
from dbmail.outgoing.render import RenderLimits
from dbmail.outgoing.send import render_email_again
from dbmail.outgoing.store import Store

ADDRESS_FIELDS = ("email", "guardian_email", "emergency_email")
# The dry render at submission: stricter in time than expansion's per-email limit, so that what
# passes here is very unlikely to break a limit later.
DRY_RENDER_LIMITS = RenderLimits(seconds=0.5)
SAMPLE_RECIPIENT = {
    "user_id": 1,
    "username": "sample",
    "email": "sample@example.org",
    "first_name": "Sample",
    "last_name": "Student",
    "guardian_name": "Sample Guardian",
    "guardian_email": "guardian@example.org",
    "emergency_name": "Sample Contact",
    "emergency_email": "emergency@example.org",
}


def _as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return parse_datetime(value)


def recipient_key(recipient: Mapping[str, Any], index: int) -> str:
    """One key per distinct user, so a user listed twice gets one email (as in the original)."""
    user_id = recipient.get("user_id")
    return f"u{int(user_id):010d}" if user_id is not None else f"n{index:08d}"


def _check_recipient(recipient: Mapping[str, Any], index: int) -> None:
    unknown = set(recipient) - set(RECIPIENT_FIELDS) - {"vars"}
    if unknown:
        raise RequestInvalid(f"recipient {index}: unknown fields {sorted(unknown)}")
    for name in ADDRESS_FIELDS:
        value = recipient.get(name)
        if value:
            try:
                parse_address(value)
            except AddressInvalid as exc:
                raise AddressInvalid(
                    f"recipient {index} (user {recipient.get('user_id')}): {name} "
                    f"is not a valid address ({mask(value)})"
                ) from exc
    if recipient.get("vars") is not None and not isinstance(recipient["vars"], Mapping):
        raise RequestInvalid(f"recipient {index}: vars must be an object")


def submit_request(
    subject: str,
    msgtext: str,
    recipients: Iterable[Mapping[str, Any]],
    sendto_fn_name: str = "",
    sender: str | None = None,
    creator: Mapping[str, Any] | None = None,
    var_dict: Mapping[str, Any] | None = None,
    special_headers: Mapping[str, str] | None = None,
    processed_by: datetime | str | None = None,
    public: bool = False,
    priority_level: int | None = None,
    sent_by: datetime | str | None = None,
    template_dialect: str | None = None,
    *,
    settings: Settings | None = None,
    store: Store | None = None,
) -> str:
    """Validate and write a request; return its id. Raises a RequestInvalid subclass on bad input,
    in which case no request item exists (recipients already written are removed)."""
    settings = settings or website_settings()
    store = store or Store(settings)
    now = utcnow()
    processed_by, sent_by = _as_datetime(processed_by), _as_datetime(sent_by)
    if processed_by is not None and processed_by > now + settings.max_age:
        raise RequestInvalid(
            f"processed_by is more than {settings.max_age.days} days ahead; such a request would never be sent"
        )
    Request, Recipient = store.models.MessageRequest, store.models.EmailRequest
    request = Request(
        request_id=uuid.uuid4().hex,
        subject=subject,
        msgtext=msgtext,
        special_headers=check_special_headers(special_headers) or None,
        sendto_fn_name=sendto_fn_name or "",
        sender=sender,
        creator=Person(**{k: creator.get(k) for k in ("user_id", "username", "email", "first_name", "last_name")})
        if creator
        else None,
        created_at=now,
        processed_by=processed_by,
        sent_by=sent_by,
        priority_level=priority_level,
        public=public,
        message_vars=dict(var_dict) if var_dict else None,
        template_dialect=template_dialect,
        status=RequestStatus.QUEUED,
    )
    prepared = prepare(request, settings, DRY_RENDER_LIMITS)  # templates, send-to function, sender domain, headers
    recipients = iter(recipients)
    first = next(recipients, None)
    if first is not None:
        _check_recipient(first, 0)
        recipients = itertools.chain([first], recipients)
    sample = Recipient(
        request_id=request.request_id,
        recipient_key="sample",
        **{f: (first or SAMPLE_RECIPIENT).get(f) for f in RECIPIENT_FIELDS},
        vars=(first or {}).get("vars"),
    )
    prepared.render(sample)  # a dry render: a template that breaks a limit is refused here, unwritten

    seen: set[str] = set()

    def validated_recipients():
        for index, recipient in enumerate(recipients):
            _check_recipient(recipient, index)
            key = recipient_key(recipient, index)
            if key in seen:
                continue
            seen.add(key)
            yield Recipient(
                request_id=request.request_id,
                recipient_key=key,
                **{f: recipient.get(f) for f in RECIPIENT_FIELDS},
                vars=recipient.get("vars"),
            )

    try:
        store.put_recipients(validated_recipients())
    except RequestInvalid:
        store.delete_recipients(request.request_id)
        raise
    request.recipient_count = len(seen)
    store.put_new_request(request)
    return request.request_id


def request_status(request_id: str, *, settings: Settings | None = None, store: Store | None = None) -> dict[str, Any]:
    """The request's state and counts, its emails by status, whether they reconcile, and, when
    something is stuck, what and why."""
    settings = settings or website_settings()
    store = store or Store(settings)
    request = store.get_request(request_id)
    if request is None:
        raise RequestInvalid(f"no request {request_id!r}")
    now = utcnow()
    by_status: Counter = Counter()
    stale = Counter()
    for email in store.iter_emails(request_id, ["status", "queued_at", "claimed_until", "created_at"]):
        by_status[email.status] += 1
        if email.status == EmailStatus.QUEUED and (email.queued_at or email.created_at) < now - settings.stranded_after:
            stale["queued"] += 1
        elif email.status == EmailStatus.PROCESSING and (email.claimed_until is None or email.claimed_until < now):
            stale["processing"] += 1
    total = sum(by_status.values())
    final = sum(by_status[s] for s in EmailStatus.FINAL)
    expected = int(request.email_count or 0) + int(request.render_failed_count or 0)
    return {
        "request_id": request_id,
        "status": request.status,
        "error": request.error,
        "created_at": request.created_at.isoformat(),
        "processed_by": request.processed_by.isoformat() if request.processed_by else None,
        "processed_at": request.processed_at.isoformat() if request.processed_at else None,
        "recipients": int(request.recipient_count or 0),
        "emails": int(request.email_count or 0),
        "skipped_no_address": int(request.skipped_count or 0),
        "render_failed": int(request.render_failed_count or 0),
        "resent": int(request.resent_count or 0),
        "emails_by_status": dict(sorted(by_status.items())),
        "reconciliation": {
            "emails": total,
            "final": final,
            "outstanding": total - final,
            # every email is in a known state, and there are as many as the expansion made
            "balanced": sum(by_status[s] for s in EmailStatus) == total
            and (request.status != RequestStatus.PROCESSED or total == expected),
            "settled": request.settled_at is not None,
            "failure_report_sent": request.failure_reported_at is not None,
        },
        "stuck": _stuck(request, stale, now, settings),
    }


def _stuck(request, stale: Counter, now: datetime, settings: Settings) -> list[str]:
    """Plain sentences for the operator: what is not moving, and what will (or must) happen."""
    minutes = int(settings.stranded_after.total_seconds() // 60)
    found = []
    if (
        request.status == RequestStatus.QUEUED
        and request.processed_by is None
        and request.created_at < now - settings.stranded_after
    ):
        found.append(
            f"the request has waited over {minutes} min to be expanded: is the expand function "
            "running, and is its stream trigger enabled? The expire schedule expands it meanwhile."
        )
    if request.status == RequestStatus.PROCESSING and request.lease_until is not None and request.lease_until < now:
        found.append(
            "the expansion stopped part-way (its lease lapsed); the expire schedule resumes it from its checkpoint."
        )
    if request.status == RequestStatus.PROCESSING and request.chunk_ends is not None:
        lapsed = stranded_chunks(request, now, settings.stranded_after)
        if lapsed:
            found.append(
                f"{len(lapsed)} of the {len(request.chunk_ends)} chunks of the expansion stopped part-way or were "
                "never picked up; the expire schedule queues them again."
            )
    if stale["queued"]:
        found.append(
            f"{stale['queued']} email(s) queued for over {minutes} min: their send messages may be lost or the "
            "send function stopped; the expire sweep queues them again."
        )
    if stale["processing"]:
        found.append(
            f"{stale['processing']} email(s) claimed by a send that did not finish (its claim lapsed); "
            "the message comes back after the queue's visibility timeout, or the sweep queues it again."
        )
    return found


def render_again(
    request_id: str, email_key: str, *, settings: Settings | None = None, store: Store | None = None
) -> dict[str, str]:
    """Render an email again from its request and recipient (no item keeps its body)."""
    settings = settings or website_settings()
    store = store or Store(settings)
    request = store.get_request(request_id)
    email = store.get_email(request_id, email_key)
    if request is None or email is None:
        raise RequestInvalid(f"no email {email_key!r} in request {request_id!r}")
    subject, body = render_email_again(store, prepare(request, settings), email)
    return {"send_to": email.send_to, "send_from": email.send_from, "subject": subject, "msgtext": body}
