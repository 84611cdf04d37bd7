"""SES event publishing, with the SES mailbox simulator, for the local moto server.

SES publishes an event for each email sent with a configuration set that has an event
destination: Send when it accepts the message, then per recipient Delivery, Bounce or
Complaint. The local moto does the same for its SES (v1 and v2, raw and simple): each event is
the JSON SES publishes to an SNS destination (``eventType``, ``mail``, and ``send``,
``delivery``, ``bounce`` or ``complaint``), published on the destination's topic in the moto
process, so moto's SNS hands it to the subscribed queue (RawMessageDelivery: the SQS body is
the event).

What a recipient gets is the mailbox simulator's (``<kind>[+label]@simulator.amazonses.com``):

| recipient | events after Send |
|---|---|
| ``bounce@`` | Bounce, Permanent / General, ``550 5.1.1`` |
| ``complaint@`` | Delivery, then Complaint (``abuse``) |
| ``suppressionlist@`` | Bounce, Permanent / Suppressed |
| ``ooto@`` | Delivery, and an RFC 3834 auto-reply to the Return-Path (over the SES hop, when the Return-Path is ours) |
| ``success@``, any other address | Delivery |

Events are published by a worker thread in the order of the sends, a moment after the send
returned (as SES's come after its answer). Their ids are derived from the SES message id,
the recipient and the kind, so the same send always yields the same events.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP, compat32
from email.utils import format_datetime, getaddresses, parseaddr
from typing import Any

log = logging.getLogger("dbmail_local.ses_events")

SIMULATOR_DOMAIN = "simulator.amazonses.com"
REPORTING_MTA = "a8-70.smtp-out.amazonses.com"
PUBLISH_DELAY_SECONDS = 0.3  # SES's events come after its answer to the send
MAX_HEADER_CHARS = 10_000  # more header text than this is cut, with headersTruncated
# SES event type names by their normalised spelling (CloudFormation's "deliveryDelay", SES v2's "DELIVERY_DELAY")
EVENT_TYPES = {
    "send": "Send",
    "reject": "Reject",
    "bounce": "Bounce",
    "complaint": "Complaint",
    "delivery": "Delivery",
    "deliverydelay": "DeliveryDelay",
    "open": "Open",
    "click": "Click",
    "renderingfailure": "RenderingFailure",
    "subscription": "Subscription",
}
SUPPRESSED_DIAGNOSTIC = (
    "Amazon SES has suppressed sending to this address because it has a recent history of bouncing as an invalid "
    "address. To request removal of this address from the suppression list, use the SES console."
)


def event_type_key(name: str) -> str:
    """``deliveryDelay``, ``DELIVERY_DELAY`` and ``DeliveryDelay`` all name one event type."""
    return name.replace("_", "").replace("-", "").lower()


def simulator_kind(address: str) -> str:
    """The mailbox simulator's behaviour for an address: success, bounce, complaint, suppressionlist, ooto."""
    local, _, domain = parseaddr(address)[1].lower().rpartition("@")
    kind = local.partition("+")[0]
    if domain == SIMULATOR_DOMAIN and kind in ("bounce", "complaint", "suppressionlist", "ooto"):
        return kind
    return "success"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SentMail:
    """One send SES accepted with a configuration set, as the event destination needs it."""

    message_id: str  # SES's
    source: str
    recipients: tuple[str, ...]  # the envelope recipients, bare addresses
    raw: bytes
    configuration_set: str
    account_id: str
    region: str
    tags: Mapping[str, str] = field(default_factory=dict)  # the send's EmailTags / Tags
    feedback_address: str | None = None  # v2 FeedbackForwardingEmailAddress, v1 ReturnPath
    sent_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def return_path(self) -> str:
        """Where SES sends bounces and auto-replies: the feedback address, else Return-Path, else Source."""
        if self.feedback_address:
            return parseaddr(self.feedback_address)[1]
        header = BytesHeaderParser(policy=compat32).parsebytes(self.raw).get("Return-Path")
        return parseaddr(str(header))[1] if header else parseaddr(self.source)[1]


def mail_object(sent: SentMail) -> dict[str, Any]:
    """The ``mail`` object of every event of one send (SES's shape)."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(sent.raw)
    listed: list[dict[str, str]] = []
    used = 0
    truncated = False
    for name, value in headers.items():
        text = str(value)
        used += len(name) + len(text)
        if used > MAX_HEADER_CHARS:
            truncated = True
            break
        listed.append({"name": name, "value": text})

    def addresses(name: str) -> list[str]:
        return [str(value) for value in headers.get_all(name, [])]

    common: dict[str, Any] = {"from": addresses("From"), "to": addresses("To")}
    if headers.get("Cc"):
        common["cc"] = addresses("Cc")
    common["messageId"] = str(headers.get("Message-ID") or sent.message_id)
    common["subject"] = str(headers.get("Subject") or "")
    if headers.get("Date"):
        common["date"] = str(headers["Date"])
    source = parseaddr(sent.source)[1] or (getaddresses(addresses("From")) or [("", "")])[0][1]
    domain = source.rpartition("@")[2]
    tags = {name: [value] for name, value in sent.tags.items()}
    tags.update(
        {
            "ses:configuration-set": [sent.configuration_set],
            "ses:source-ip": ["127.0.0.1"],
            "ses:from-domain": [domain],
            "ses:caller-identity": ["dbmail-local"],
        }
    )
    return {
        "timestamp": _stamp(sent.sent_at),
        "source": sent.source,
        "sourceArn": f"arn:aws:ses:{sent.region}:{sent.account_id}:identity/{domain}",
        "sendingAccountId": sent.account_id,
        "messageId": sent.message_id,
        "destination": list(sent.recipients),
        "headersTruncated": truncated,
        "headers": listed,
        "commonHeaders": common,
        "tags": tags,
    }


def _feedback_id(sent: SentMail, kind: str, recipient: str) -> str:
    digest = hashlib.sha256(f"{sent.message_id}\0{kind}\0{recipient.lower()}".encode()).hexdigest()
    return f"{digest[:16]}-{digest[16:24]}-{digest[24:28]}-{digest[28:32]}-{digest[32:44]}-000000"


def _delivery(sent: SentMail, mail: dict, recipient: str, at: datetime) -> dict[str, Any]:
    return {
        "eventType": "Delivery",
        "mail": mail,
        "delivery": {
            "timestamp": _stamp(at),
            "processingTimeMillis": max(1, int((at - sent.sent_at).total_seconds() * 1000)),
            "recipients": [recipient],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": REPORTING_MTA,
        },
    }


def _bounce(sent: SentMail, mail: dict, recipient: str, at: datetime, suppressed: bool) -> dict[str, Any]:
    bounced = {
        "emailAddress": recipient,
        "action": "failed",
        "status": "5.1.1",
        "diagnosticCode": SUPPRESSED_DIAGNOSTIC if suppressed else "smtp; 550 5.1.1 user unknown",
    }
    return {
        "eventType": "Bounce",
        "mail": mail,
        "bounce": {
            "feedbackId": _feedback_id(sent, "bounce", recipient),
            "bounceType": "Permanent",
            "bounceSubType": "Suppressed" if suppressed else "General",
            "bouncedRecipients": [bounced],
            "timestamp": _stamp(at),
            "reportingMTA": "dns; amazonses.com" if suppressed else f"dsn; {REPORTING_MTA}",
        },
    }


def _complaint(sent: SentMail, mail: dict, recipient: str, at: datetime) -> dict[str, Any]:
    return {
        "eventType": "Complaint",
        "mail": mail,
        "complaint": {
            "feedbackId": _feedback_id(sent, "complaint", recipient),
            "complaintSubType": None,
            "complainedRecipients": [{"emailAddress": recipient}],
            "timestamp": _stamp(at),
            "userAgent": "Amazon SES Mailbox Simulator",
            "complaintFeedbackType": "abuse",
            "arrivalDate": _stamp(at),
        },
    }


def events_for(sent: SentMail, at: datetime | None = None) -> list[dict[str, Any]]:
    """Every event of one send, in order: Send, then each recipient's (see the module's table)."""
    at = at or sent.sent_at + timedelta(milliseconds=300)
    mail = mail_object(sent)
    events: list[dict[str, Any]] = [{"eventType": "Send", "mail": mail, "send": {}}]
    for recipient in sent.recipients:
        kind = simulator_kind(recipient)
        if kind in ("bounce", "suppressionlist"):
            events.append(_bounce(sent, mail, recipient, at, suppressed=kind == "suppressionlist"))
            continue
        events.append(_delivery(sent, mail, recipient, at))
        if kind == "complaint":
            events.append(_complaint(sent, mail, recipient, at + timedelta(milliseconds=100)))
    return events


def auto_reply(sent: SentMail, recipient: str) -> bytes:
    """The out-of-office answer (RFC 3834) ``ooto@`` sends to the original's Return-Path."""
    original = BytesHeaderParser(policy=compat32).parsebytes(sent.raw)
    reply = EmailMessage(policy=SMTP)
    reply["From"] = recipient
    reply["To"] = sent.return_path
    reply["Subject"] = f"Auto: {str(original.get('Subject') or '')}"[:200]
    reply["Date"] = format_datetime(datetime.now(UTC))
    reply["Message-ID"] = f"<{uuid.uuid4().hex}@{SIMULATOR_DOMAIN}>"
    if original.get("Message-ID"):
        reply["In-Reply-To"] = str(original["Message-ID"])
        reply["References"] = str(original["Message-ID"])
    reply["Auto-Submitted"] = "auto-replied"
    reply.set_content("I am out of the office and will answer your message when I am back.\n")
    return reply.as_bytes()


# (account id, region, configuration set) -> the set's event destinations (SES v1's shape)
Destinations = Callable[[str, str, str], list[Mapping[str, Any]]]
Publish = Callable[[str, str, str, str], None]  # (account id, region, topic ARN, message)
Reply = Callable[[str, list[str], bytes], None]  # (envelope sender, recipients, raw): the SES hop's offer


class EventPublisher:
    """Publishes each accepted send's events to its configuration set's SNS destinations, in order,
    from a worker thread; ooto@ auto-replies go to ``reply`` (the SES hop)."""

    def __init__(self, destinations: Destinations, publish: Publish, reply: Reply | None = None) -> None:
        self._destinations = destinations
        self._publish = publish
        self._reply = reply
        self._queue: queue.Queue[SentMail] = queue.Queue()
        threading.Thread(target=self._work, name="ses-events", daemon=True).start()

    def offer(self, sent: SentMail) -> None:
        self._queue.put(sent)

    def _work(self) -> None:
        while True:
            sent = self._queue.get()
            wait = PUBLISH_DELAY_SECONDS - (datetime.now(UTC) - sent.sent_at).total_seconds()
            if wait > 0:
                time.sleep(wait)
            try:
                self.publish_all(sent)
            except Exception:  # a worker that dies would silently publish nothing more
                log.exception("SES events not published", extra={"message_id": sent.message_id})

    def publish_all(self, sent: SentMail) -> int:
        """Publishes the events of one send; returns how many were published."""
        destinations = [
            d
            for d in self._destinations(sent.account_id, sent.region, sent.configuration_set)
            if str(d.get("Enabled", True)).lower() != "false" and (d.get("SNSDestination") or {}).get("TopicARN")
        ]
        published = 0
        for event in events_for(sent, datetime.now(UTC)):
            key = event_type_key(event["eventType"])
            for destination in destinations:
                if key in {event_type_key(t) for t in destination.get("MatchingEventTypes", [])}:
                    topic = destination["SNSDestination"]["TopicARN"]
                    self._publish(sent.account_id, sent.region, topic, json.dumps(event))
                    published += 1
        log.info(
            "SES events published",
            extra={
                "message_id": sent.message_id,
                "configuration_set": sent.configuration_set,
                "events": published,
                "recipients": len(sent.recipients),
            },
        )
        if self._reply is not None:
            for recipient in sent.recipients:
                if simulator_kind(recipient) == "ooto" and sent.return_path:
                    self._reply("", [sent.return_path], auto_reply(sent, recipient))
        return published
