"""Delivery status notifications (RFC 3464) arriving at the bounces address, as FeedbackEvents (pure).

A DSN is a ``multipart/report; report-type=delivery-status`` message: a human-readable part, a
``message/delivery-status`` part (a block of per-message fields, then one block per recipient:
Final-Recipient, Action, Status, Diagnostic-Code, ...), and the original message
(``message/rfc822``) or its headers (``text/rfc822-headers``). Each recipient block becomes one
event, with source "dsn":

| Action | Status | event |
|---|---|---|
| failed (also "failure", "error") | 5.x.x | bounced, permanent |
| failed | 4.x.x | bounced, transient |
| failed | none or unreadable | bounced, undetermined |
| delayed | any | delayed |
| delivered, relayed, expanded | any | delivered |

The email it is about is named by ``message_ref``: first the VERP address the DSN was sent to
(``bounces+{digest}@domain``, our envelope sender), then the original's Message-ID
(``<dbmail.{digest}@domain>``), then the DSN's own In-Reply-To / References. A DSN naming none
is returned with ``message_ref`` None: the recorder counts it unmatched. The recorder applies a
DSN only when its recipient is the matched email's own, so a forged DSN naming another address
changes neither the email nor the suppression list (unmatched too).

Only the stdlib ``email`` package parses it, leniently and within limits: at most
MAX_PARSE_BYTES of the message are read (the report comes before the original message), at most
MAX_PARTS parts are looked at, at most MAX_RECIPIENTS recipient blocks are read, each field is
cut to MAX_FIELD_CHARS. Anything that is not a delivery-status report raises ``NotADsn``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, message_from_string
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime

from dbmail.core.addresses import redact_addresses
from dbmail.feedback.events import (
    MAX_DIAGNOSTIC_CHARS,
    BounceType,
    FeedbackEvent,
    FeedbackInvalid,
    FeedbackKind,
    bare_address,
    message_ref_of,
)

MAX_PARSE_BYTES = 1024 * 1024  # of the message: the report part comes before the original message
MAX_PARTS = 50  # MIME parts looked at to find the report
MAX_RECIPIENTS = 100  # recipient blocks read from one report
MAX_STATUS_BYTES = 64 * 1024  # of the delivery-status part
MAX_HEADERS_BYTES = 64 * 1024  # of the original's headers (text/rfc822-headers)
MAX_FIELD_CHARS = 1000
SOURCE = "dsn"
REPORT_TYPES = ("message/delivery-status", "message/global-delivery-status")  # RFC 3464, RFC 6533
ORIGINAL_TYPES = ("message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers")

_STATUS = re.compile(r"^\s*([245])\.\d{1,3}\.\d{1,3}\b")
_SMTP_REPLY = re.compile(r"^\s*([245])\d\d\b")
# SES's Message-ID on the wire: its message id @ email.amazonses.com (or <region>.amazonses.com)
_SES_MESSAGE_ID = re.compile(r"<([0-9a-z-]{20,100})@(?:[a-z0-9-]+\.)?amazonses\.com>", re.IGNORECASE)
_FAILED = ("failed", "failure", "error")
_DELIVERED = ("delivered", "relayed", "expanded")


class NotADsn(FeedbackInvalid):
    """Mail to the bounces address that is not a delivery-status report we can read."""


@dataclass(frozen=True)
class _Original:
    message_ref: str | None
    provider_message_id: str | None


def parse_dsn(raw: bytes, envelope_recipients: Sequence[str], received_at: datetime) -> list[FeedbackEvent]:
    """The events of a DSN (one per recipient block it reports on); raises NotADsn.

    ``envelope_recipients`` are the addresses of ours it was delivered to (the bounces address,
    with a VERP suffix when it answers one of our emails); ``received_at`` stands in for a
    report that gives no date.
    """
    message = message_from_bytes(raw[:MAX_PARSE_BYTES], policy=compat32)
    parts = _report_parts(message)
    report = next((part for part in parts if part.get_content_type() in REPORT_TYPES), None)
    if report is None:
        raise NotADsn(_why_not(message))
    blocks = _blocks(report)
    per_message = blocks[0] if blocks else Message()
    # A recipient block names a recipient; a blank line with a space in it joins the first one
    # to the per-message block, which then is both.
    per_recipient = [
        block for block in blocks if _field(block, "Final-Recipient") or _field(block, "Original-Recipient")
    ]
    original = _original(parts)
    message_ref = (
        _first(message_ref_of(address) for address in envelope_recipients)
        or original.message_ref
        or _first(message_ref_of(_field(message, name)) for name in ("In-Reply-To", "References"))
    )
    identity = _field(message, "Message-ID") or hashlib.sha256(raw[:MAX_PARSE_BYTES]).hexdigest()
    reported_at = _date(_field(per_message, "Arrival-Date")) or received_at
    events: dict[str, FeedbackEvent] = {}  # by event id: a block repeated is one event
    for block in per_recipient[:MAX_RECIPIENTS]:
        event = _event(block, identity, message_ref, original, reported_at, _field(per_message, "Reporting-MTA"))
        if event is not None:
            events.setdefault(event.event_id, event)
    if not events:
        raise NotADsn("the delivery-status report names no recipient we can read")
    return list(events.values())


def _report_parts(message: Message) -> list[Message]:
    """The parts of the report: the message's own, or those of the first attached message that
    is a multipart/report (a DSN some MTAs wrap in a multipart/mixed)."""
    parts = _parts(message)
    if any(part.get_content_type() in REPORT_TYPES for part in parts):
        return parts
    for part in parts:
        payload = part.get_payload() if part.get_content_type() == "message/rfc822" else None
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            if payload[0].get_content_type() == "multipart/report":
                return _parts(payload[0])
    return parts


def _parts(message: Message) -> list[Message]:
    """The message's parts, depth first, at most MAX_PARTS (an attached message's parts are not entered)."""
    found: list[Message] = []
    pending = [message]
    while pending and len(found) < MAX_PARTS:
        part = pending.pop(0)
        found.append(part)
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            children = part.get_payload()
            pending[:0] = [child for child in children if isinstance(child, Message)][:MAX_PARTS]
    return found


def _why_not(message: Message) -> str:
    content_type = message.get_content_type()
    if _field(message, "Auto-Submitted").lower().startswith("auto-") and content_type != "multipart/report":
        return "an automatic reply (Auto-Submitted), not a delivery-status report"
    if content_type == "multipart/report":
        report_type = str(message.get_param("report-type", "", header="content-type") or "")[:40]
        return f"a multipart/report of report-type {report_type!r} without a delivery-status part"
    return f"not a delivery-status report ({content_type[:60]})"


def _blocks(report: Message) -> list[Message]:
    """The field blocks of a delivery-status part: the per-message block first."""
    payload = report.get_payload()
    if isinstance(payload, list):  # the parser split it into blocks already
        return [block for block in payload if isinstance(block, Message)][: MAX_RECIPIENTS + 1]
    data = report.get_payload(decode=True) or b""
    text = data[:MAX_STATUS_BYTES].decode("utf-8", "replace").replace("\r\n", "\n")
    chunks = [chunk for chunk in re.split(r"\n[ \t]*\n", text) if chunk.strip()]
    return [HeaderParser(policy=compat32).parsestr(chunk) for chunk in chunks[: MAX_RECIPIENTS + 1]]


def _original(parts: Iterable[Message]) -> _Original:
    """The original message's Message-ID, as a message_ref and as an SES message id."""
    for part in parts:
        if part.get_content_type() not in ORIGINAL_TYPES:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            headers = payload[0]
        else:
            data = part.get_payload(decode=True) or b""
            headers = message_from_string(data[:MAX_HEADERS_BYTES].decode("utf-8", "replace"), policy=compat32)
        message_id = _field(headers, "Message-ID")
        ses = _SES_MESSAGE_ID.search(message_id)
        return _Original(message_ref_of(message_id), ses.group(1).lower() if ses else None)
    return _Original(None, None)


def _event(
    block: Message,
    identity: str,
    message_ref: str | None,
    original: _Original,
    reported_at: datetime,
    reporting_mta: str,
) -> FeedbackEvent | None:
    recipient = _recipient(block)
    action = _field(block, "Action").lower().split(" ", 1)[0].strip("();,")
    if recipient is None or not action:
        return None
    status = _field(block, "Status")
    if action in _FAILED:
        kind = FeedbackKind.BOUNCED
        status_class = _status_class(status) or _status_class(_field(block, "Diagnostic-Code").partition(";")[2])
        bounce_type = {"5": BounceType.PERMANENT, "4": BounceType.TRANSIENT}.get(status_class, BounceType.UNDETERMINED)
    elif action == "delayed":
        kind, bounce_type = FeedbackKind.DELAYED, None
    elif action in _DELIVERED:
        kind, bounce_type = FeedbackKind.DELIVERED, None
    else:
        return None
    digest = hashlib.sha256("\0".join((identity, recipient, action, status)).encode()).hexdigest()[:32]
    return FeedbackEvent(
        kind=kind,
        recipients=(recipient,),
        event_id=f"dsn:{digest}",
        occurred_at=_date(_field(block, "Last-Attempt-Date")) or reported_at,
        source=SOURCE,
        message_ref=message_ref,
        provider_message_id=original.provider_message_id,
        bounce_type=bounce_type,
        diagnostic=_diagnostic(action, status, _field(block, "Diagnostic-Code"), reporting_mta),
    )


def _recipient(block: Message) -> str | None:
    """Original-Recipient (the address we sent to, before any forwarding), else Final-Recipient,
    when it is an RFC 822 address: ``rfc822; a@b`` (also without the type: ``<a@b>``)."""
    for name in ("Original-Recipient", "Final-Recipient"):
        value = _field(block, name)
        kind, found, address = value.partition(";")
        if not found:
            kind, address = "rfc822", value
        if kind.strip().lower() in ("rfc822", "utf-8") and (bare := bare_address(address.strip())):
            return bare
    return None


def _status_class(text: str) -> str | None:
    match = _STATUS.match(text) or _SMTP_REPLY.match(text)
    return match.group(1) if match else None


def _diagnostic(action: str, status: str, code: str, reporting_mta: str) -> str:
    parts = [f"{action} {status}".strip(), code, f"reported by {reporting_mta}" if reporting_mta else ""]
    text = "; ".join(part for part in parts if part)
    return redact_addresses(" ".join(text.split()))[:MAX_DIAGNOSTIC_CHARS]


def _field(headers: Message, name: str) -> str:
    """One field as one line of text, cut to MAX_FIELD_CHARS ("" when absent or unreadable)."""
    value = headers.get(name)
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return " ".join(text.split())[:MAX_FIELD_CHARS]


def _date(text: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _first(values: Iterable[str | None]) -> str | None:
    return next((value for value in values if value), None)
