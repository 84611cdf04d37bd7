"""Provider feedback as one shape (pure): SES event publishing JSON and SendGrid Event Webhook
objects become ``FeedbackEvent``s, whatever the provider, for the recorder.

Each event carries the ``message_ref`` of the email it is about when the provider gives it back:
the 32-hex digest of our Message-ID ``<dbmail.{digest}@domain>``, found in the SES message tag
``message_ref``, the original headers (Message-ID, or the VERP Return-Path
``bounces+{digest}@domain``), or SendGrid's ``message_ref`` custom arg and ``smtp-id``.
Anything malformed raises ``FeedbackInvalid``: the message is not an event we can use and
retrying cannot change that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from enum import StrEnum

from dbmail.core.addresses import mailbox_key, redact_addresses
from dbmail.core.errors import DbmailError

MAX_BODY_CHARS = 256 * 1024  # SQS's message size; an SES event is far smaller
MAX_RECIPIENTS = 100  # SES sends to at most 50 per message; each of our emails has one
MAX_ADDRESS_CHARS = 320
MAX_DIAGNOSTIC_CHARS = 1000
MESSAGE_REF_TAG = "message_ref"  # the SES message tag and the SendGrid custom arg
_REF = re.compile(r"(?:\bdbmail\.|\+)([0-9a-f]{32})@", re.IGNORECASE)
_BARE_REF = re.compile(r"^[0-9a-f]{32}$")


class FeedbackInvalid(DbmailError):
    """A feedback message that is not a usable event (malformed, or of a type we do not take)."""


class FeedbackKind(StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    REJECTED = "rejected"  # SES refused to send it (a virus)
    DELAYED = "delayed"  # the receiver has not taken it yet; the provider keeps trying
    UNSUBSCRIBED = "unsubscribed"
    DROPPED = "dropped"  # SendGrid did not send it (its own suppression lists, an invalid address)


class BounceType(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    UNDETERMINED = "undetermined"


@dataclass(frozen=True)
class FeedbackEvent:
    """One provider event about one message. ``recipients`` are bare, lower-cased addresses;
    ``event_id`` is the same on every delivery of the same event (the recorder's idempotency)."""

    kind: FeedbackKind
    recipients: tuple[str, ...]
    event_id: str
    occurred_at: datetime
    source: str
    message_ref: str | None
    provider_message_id: str | None
    bounce_type: str | None = None
    diagnostic: str | None = None


def message_ref_of(text: object) -> str | None:
    """The digest out of one of our Message-IDs (``<dbmail.{digest}@domain>``), a VERP address
    (``local+{digest}@domain``) or a bare digest; None for anything else."""
    if not isinstance(text, str) or len(text) > 1000:
        return None
    if _BARE_REF.match(text.strip()):
        return text.strip().lower()
    match = _REF.search(text)
    return match.group(1).lower() if match else None


def bare_address(value: object) -> str | None:
    """The lower-cased addr-spec of ``value`` ('a@b' or 'Name <a@b>'), or None if it is none."""
    if not isinstance(value, str) or len(value) > MAX_ADDRESS_CHARS or "\n" in value or "\r" in value:
        return None
    address = mailbox_key(parseaddr(value)[1])
    local, _, domain = address.rpartition("@")
    return address if local and "." in domain else None


def _addresses(values: Iterable[object]) -> tuple[str, ...]:
    found = (bare_address(value) for value in values)
    return tuple(dict.fromkeys(address for address in found if address))[:MAX_RECIPIENTS]


def _diagnostic(parts: Iterable[object]) -> str | None:
    text = "; ".join(str(part).strip() for part in parts if isinstance(part, str | int) and str(part).strip())
    return redact_addresses(" ".join(text.split()))[:MAX_DIAGNOSTIC_CHARS] or None


def _time(value: object, what: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise FeedbackInvalid(f"{what} is missing or not a time")
    try:
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError):
        raise FeedbackInvalid(f"{what} is not a time: {str(value)[:40]!r}") from None


def _object(value: object, what: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise FeedbackInvalid(f"{what} is missing or not an object")
    return value


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _text(value: object, limit: int = 500) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def parse_body(body: object) -> dict:
    """An SQS body: JSON text, at most MAX_BODY_CHARS, an object."""
    if not isinstance(body, str) or len(body) > MAX_BODY_CHARS:
        raise FeedbackInvalid(f"the body is not text of at most {MAX_BODY_CHARS} characters")
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise FeedbackInvalid("the body is not JSON") from None
    if not isinstance(parsed, dict):
        raise FeedbackInvalid("the body is not a JSON object")
    return parsed


# ---- SES ----------------------------------------------------------------------------------

# eventType: (kind, the event's own object, where its recipients are, the address field in each)
_SES_TYPES = {
    "Send": (FeedbackKind.SENT, "send", None, None),
    "Delivery": (FeedbackKind.DELIVERED, "delivery", "recipients", None),
    "Bounce": (FeedbackKind.BOUNCED, "bounce", "bouncedRecipients", "emailAddress"),
    "Complaint": (FeedbackKind.COMPLAINED, "complaint", "complainedRecipients", "emailAddress"),
    "Reject": (FeedbackKind.REJECTED, "reject", None, None),
    "DeliveryDelay": (FeedbackKind.DELAYED, "deliveryDelay", "delayedRecipients", "emailAddress"),
}
_SES_BOUNCE_TYPES = {"Permanent": BounceType.PERMANENT, "Transient": BounceType.TRANSIENT}


def _ses_message_ref(mail: Mapping) -> str | None:
    """Our tag first (set on every SES send), then the headers SES gives back as sent."""
    tags = mail.get("tags")
    if isinstance(tags, Mapping):
        for value in _list(tags.get(MESSAGE_REF_TAG)):
            if ref := message_ref_of(value):
                return ref
    for header in _list(mail.get("headers"))[:200]:
        if isinstance(header, Mapping) and str(header.get("name", "")).lower() in ("message-id", "return-path"):
            if ref := message_ref_of(header.get("value")):
                return ref
    common = mail.get("commonHeaders")
    return message_ref_of(common.get("messageId")) if isinstance(common, Mapping) else None


def from_ses_event(body: Mapping) -> FeedbackEvent:
    """An SES event-publishing record (the SQS body of a raw SNS delivery), or the same inside
    an SNS envelope (``{"Type": "Notification", "Message": "..."}``) when raw delivery is off."""
    body = _object(body, "the event")
    if body.get("Type") == "Notification" and "Message" in body:
        body = parse_body(body["Message"])
    event_type = body.get("eventType") or body.get("notificationType")  # identity notifications say the latter
    if not isinstance(event_type, str) or event_type not in _SES_TYPES:
        raise FeedbackInvalid(f"not an SES event of a type we record: eventType {str(event_type)[:40]!r}")
    kind, key, recipients_key, address_key = _SES_TYPES[event_type]
    mail = _object(body.get("mail"), "mail")
    detail = body.get(key) if isinstance(body.get(key), Mapping) else {}
    message_id = _text(mail.get("messageId"))
    if not message_id:
        raise FeedbackInvalid("mail.messageId is missing")
    occurred_at = _time(detail.get("timestamp") or mail.get("timestamp"), f"{key}.timestamp")
    if recipients_key is None:
        recipients = _addresses(_list(mail.get("destination")))
    elif address_key is None:  # a list of addresses
        recipients = _addresses(_list(detail.get(recipients_key)))
    else:  # a list of objects, each naming one
        entries = _list(detail.get(recipients_key))
        recipients = _addresses(e.get(address_key) if isinstance(e, Mapping) else None for e in entries)
    bounce_type = diagnostic = None
    if kind is FeedbackKind.BOUNCED:
        bounce_type = _SES_BOUNCE_TYPES.get(detail.get("bounceType"), BounceType.UNDETERMINED)
        codes = [e.get("diagnosticCode") for e in _list(detail.get("bouncedRecipients")) if isinstance(e, Mapping)]
        diagnostic = _diagnostic([detail.get("bounceSubType"), *codes])
    elif kind is FeedbackKind.COMPLAINED:
        diagnostic = _diagnostic(["complaint", detail.get("complaintFeedbackType")])
    elif kind is FeedbackKind.REJECTED:
        diagnostic = _diagnostic(["rejected by SES", detail.get("reason")])
    elif kind is FeedbackKind.DELAYED:
        codes = [e.get("diagnosticCode") for e in _list(detail.get("delayedRecipients")) if isinstance(e, Mapping)]
        diagnostic = _diagnostic(["delayed", detail.get("delayType"), *codes])
    feedback_id = _text(detail.get("feedbackId"), 200)
    event_id = f"ses:{feedback_id}" if feedback_id else f"ses:{event_type}:{message_id}:{occurred_at.isoformat()}"
    return FeedbackEvent(
        kind=kind,
        recipients=recipients,
        event_id=event_id,
        occurred_at=occurred_at,
        source="ses",
        message_ref=_ses_message_ref(mail),
        provider_message_id=message_id,
        bounce_type=bounce_type,
        diagnostic=diagnostic,
    )


# ---- SendGrid -----------------------------------------------------------------------------

_SENDGRID_KINDS = {
    "delivered": FeedbackKind.DELIVERED,
    "bounce": FeedbackKind.BOUNCED,
    "dropped": FeedbackKind.DROPPED,
    "spamreport": FeedbackKind.COMPLAINED,
    "unsubscribe": FeedbackKind.UNSUBSCRIBED,
    "group_unsubscribe": FeedbackKind.UNSUBSCRIBED,
    "deferred": FeedbackKind.DELAYED,
}


# The fields of a SendGrid event that from_sendgrid_event reads: the webhook queues only these
# (not the IP, user agent, URL or custom fields a post may carry) for the feedback function.
_SENDGRID_FIELDS = (
    "event",
    "sg_event_id",
    "sg_message_id",
    "email",
    "timestamp",
    "type",
    "status",
    "reason",
    "response",
    "smtp-id",
    MESSAGE_REF_TAG,
)
SENDGRID_ENVELOPE = "sendgrid"  # a FeedbackQueue body {"sendgrid": {...}} holds one SendGrid event


def sendgrid_queue_body(event: Mapping) -> str:
    """The FeedbackQueue body for one SendGrid event (from_queue_body reads it back)."""
    kept = {name: event[name] for name in _SENDGRID_FIELDS if name in event}
    body = json.dumps({SENDGRID_ENVELOPE: kept}, separators=(",", ":"))
    if len(body) > MAX_BODY_CHARS:
        raise FeedbackInvalid(f"the SendGrid event is over {MAX_BODY_CHARS} characters")
    return body


def from_queue_body(body: Mapping) -> FeedbackEvent:
    """A FeedbackQueue message: an SES event (from the configuration set's SNS topic) or a
    SendGrid event the webhook queued; FeedbackInvalid for anything else."""
    body = _object(body, "the message")
    if SENDGRID_ENVELOPE not in body:
        return from_ses_event(body)
    event = from_sendgrid_event(body[SENDGRID_ENVELOPE])
    if event is None:
        raise FeedbackInvalid("a SendGrid event of a type dbmail does not record")
    return event


def from_sendgrid_event(event: Mapping) -> FeedbackEvent | None:
    """One object of a SendGrid Event Webhook post; None for the types we do not record
    (processed, open, click, group_resubscribe)."""
    event = _object(event, "the SendGrid event")
    name = event.get("event")
    kind = _SENDGRID_KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        return None
    event_id = _text(event.get("sg_event_id"), 200)
    if not event_id:
        raise FeedbackInvalid("sg_event_id is missing")
    recipients = _addresses([event.get("email")])
    if not recipients:
        raise FeedbackInvalid("email is missing or not an address")
    bounce_type = None
    if kind is FeedbackKind.BOUNCED:  # "bounce" is hard; "blocked" a temporary refusal
        bounce_type = BounceType.TRANSIENT if event.get("type") == "blocked" else BounceType.PERMANENT
    diagnostic = None
    if kind in (FeedbackKind.BOUNCED, FeedbackKind.DROPPED, FeedbackKind.DELAYED):
        diagnostic = _diagnostic([event.get("status"), event.get("reason"), event.get("response")])
    return FeedbackEvent(
        kind=kind,
        recipients=recipients,
        event_id=f"sendgrid:{event_id}",
        occurred_at=_time(event.get("timestamp"), "timestamp"),
        source="sendgrid",
        message_ref=message_ref_of(event.get(MESSAGE_REF_TAG)) or message_ref_of(event.get("smtp-id")),
        provider_message_id=_text(event.get("sg_message_id"), 200),
        bounce_type=bounce_type,
        diagnostic=diagnostic,
    )
