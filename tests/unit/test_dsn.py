"""DSNs (RFC 3464) to the bounces address: real-world shapes, hostile ones, and the router's
handling (recorded, never forwarded or answered)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from dbmail import wiring
from dbmail.core.statuses import InboundStatus
from dbmail.feedback.dsn import MAX_RECIPIENTS, NotADsn, parse_dsn
from dbmail.feedback.events import BounceType, FeedbackKind
from dbmail.inbound.routing import is_bounces_address
from tests.conftest import function_settings
from tests.unit.test_inbound import Outbox, receive

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "dsn"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REF = "0123456789abcdef0123456789abcdef"
OTHER_REF = "fedcba9876543210fedcba9876543210"
BOUNCES = "bounces@example.org"


def dsn(
    *,
    recipients=(
        (
            "student@students.example.net",
            "failed",
            "5.1.1",
            "smtp; 550 5.1.1 <student@students.example.net>: User unknown",
        ),
    ),
    original_message_id: str | None = f"<dbmail.{REF}@example.org>",
    original_as: str = "text/rfc822-headers",
    report_type: str = "delivery-status",
    extra_per_message: str = "",
) -> bytes:
    """A Postfix-shaped DSN: multipart/report with the notification, the delivery-status report
    and the original's headers (or the whole original, as Gmail and Exim send it)."""
    blocks = [
        "Reporting-MTA: dns; mx.students.example.net\n"
        f"Arrival-Date: Sun, 1 Nov 2026 11:59:58 +0000{extra_per_message}\n"
    ]
    for address, action, status, diagnostic in recipients:
        block = f"Final-Recipient: rfc822; {address}\nOriginal-Recipient: rfc822;{address}\nAction: {action}\n"
        block += f"Status: {status}\n" if status else ""
        block += f"Diagnostic-Code: {diagnostic}\n" if diagnostic else ""
        blocks.append(block)
    original = "From: Splash <splash@example.org>\nTo: student@students.example.net\nSubject: Welcome\n"
    if original_message_id:
        original += f"Message-ID: {original_message_id}\n"
    if original_as == "message/rfc822":
        original += "\nWelcome to Splash!\n"
    text = f"""From: MAILER-DAEMON@mx.students.example.net (Mail Delivery System)
To: bounces+{REF}@example.org
Subject: Undelivered Mail Returned to Sender
Message-ID: <20261101120000.ABC123@mx.students.example.net>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type={report_type}; boundary="B0UND"

--B0UND
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.students.example.net.

I'm sorry to have to inform you that your message could not be delivered.

--B0UND
Content-Description: Delivery report
Content-Type: message/{"delivery-status" if report_type == "delivery-status" else report_type}

{chr(10).join(blocks)}
--B0UND
Content-Description: Undelivered Message
Content-Type: {original_as}

{original}
--B0UND--
"""
    return text.replace("\n", "\r\n").encode()


# ---- real-world shapes ------------------------------------------------------------------------

# flufl.bounce's DSN test messages (tests/corpus/dsn/README.md): the recipient each reports on,
# and what the report says (flufl.bounce's own expectations for the addresses and the delays).
REAL_WORLD = [
    ("dsn_01", "userx@example.com", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # "Status: 5.0.0 (comment)"
    ("dsn_02", "zzzzz@example.uk", FeedbackKind.BOUNCED, BounceType.TRANSIENT),  # x400 Final-Recipient, 4.4.7
    ("dsn_03", "userx@example.be", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # "Action: failure", SMTP code
    ("dsn_04", "userx@example.ch", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # upper-case MIME, Original-Recipient
    ("dsn_05", "userx@example.cz", FeedbackKind.DELAYED, None),
    ("dsn_06", "userx@example.com", FeedbackKind.DELAYED, None),  # "Action: Delayed"
    ("dsn_07", "userx@example.nz", FeedbackKind.DELAYED, None),
    ("dsn_08", "userx@example.de", FeedbackKind.DELAYED, None),
    ("dsn_09", "userx@example.com", FeedbackKind.BOUNCED, BounceType.PERMANENT),
    ("dsn_10", "anne.person@dom.ain", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # Postfix
    ("dsn_11", "joem@example.com", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # the same block repeated
    ("dsn_12", "userx@example.jp", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # "Action: failed (comment)"
    ("dsn_13", "userx@example.com", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # Exchange
    ("dsn_14", "userx@example.com.dk", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # no address type
    ("dsn_15", "userx@example.com", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # wrapped in multipart/mixed
    ("dsn_16", "userx@example.com", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # Postfix
    ("dsn_17", "userx@example.fi", FeedbackKind.DELAYED, None),  # Original-Recipient, not the forwarded-to
    ("dsn_18", "email@replaced.net", FeedbackKind.BOUNCED, BounceType.PERMANENT),  # "Action: error"
]


@pytest.mark.parametrize(("name", "recipient", "kind", "bounce_type"), REAL_WORLD, ids=[r[0] for r in REAL_WORLD])
def test_real_world_dsns_give_one_event_for_the_recipient_they_report_on(name, recipient, kind, bounce_type):
    # given a DSN a real MTA sent
    raw = (CORPUS / f"flufl.bounce-{name}.eml").read_bytes()
    # when it is parsed
    events = parse_dsn(raw, [BOUNCES], NOW)
    # then it is one event about that recipient, of the kind the report gives
    assert [(e.kind, e.bounce_type, e.recipients) for e in events] == [(kind, bounce_type, (recipient,))]
    assert events[0].source == "dsn" and events[0].event_id.startswith("dsn:")
    assert recipient not in (events[0].diagnostic or "")  # addresses are redacted


@pytest.mark.parametrize("name", ["postfix_01", "exim_01"])
def test_old_style_bounces_without_a_delivery_status_report_are_not_dsns(name):
    with pytest.raises(NotADsn, match="not a delivery-status report"):
        parse_dsn((CORPUS / f"flufl.bounce-{name}.eml").read_bytes(), [BOUNCES], NOW)


def test_the_verp_address_it_was_sent_to_names_the_email_first():
    # given a DSN to bounces+REF@ whose original headers carry another of our Message-IDs
    raw = dsn(original_message_id=f"<dbmail.{OTHER_REF}@example.org>")
    # then the envelope recipient wins: it is our own envelope sender, the headers are quoted text
    (event,) = parse_dsn(raw, [f"bounces+{REF}@example.org"], NOW)
    assert event.message_ref == REF


@pytest.mark.parametrize("original_as", ["text/rfc822-headers", "message/rfc822"])
def test_without_verp_the_originals_message_id_names_the_email(original_as):
    (event,) = parse_dsn(dsn(original_as=original_as), [BOUNCES], NOW)
    assert event.message_ref == REF
    assert (event.kind, event.bounce_type, event.recipients) == (
        FeedbackKind.BOUNCED,
        BounceType.PERMANENT,
        ("student@students.example.net",),
    )
    assert (
        event.diagnostic
        == "failed 5.1.1; smtp; 550 5.1.1 <<address>>: User unknown; reported by dns; mx.students.example.net"
    )
    assert event.occurred_at == datetime(2026, 11, 1, 11, 59, 58, tzinfo=UTC)  # the report's Arrival-Date


def test_an_ses_message_id_in_the_original_is_the_provider_message_id():
    raw = dsn(original_message_id="<010001812345abcd-1a2b3c4d-0000-4000-8000-123456789abc-000000@email.amazonses.com>")
    (event,) = parse_dsn(raw, [BOUNCES], NOW)
    assert event.message_ref is None
    assert event.provider_message_id == "010001812345abcd-1a2b3c4d-0000-4000-8000-123456789abc-000000"


def test_a_dsn_without_any_reference_has_no_message_ref():
    (event,) = parse_dsn(dsn(original_message_id=None), [BOUNCES], NOW)
    assert event.message_ref is None and event.provider_message_id is None


def test_each_action_and_status_class_maps_to_its_event():
    raw = dsn(
        recipients=[
            ("hard@example.net", "failed", "5.2.2", "smtp; 552 5.2.2 mailbox full"),
            ("soft@example.net", "failed", "4.4.7", "smtp; 421 4.4.7 timeout"),
            ("unsure@example.net", "failed", "", ""),
            ("later@example.net", "delayed", "4.4.1", "smtp; 451 4.4.1 try again"),
            ("fine@example.net", "delivered", "2.0.0", ""),
            ("onward@example.net", "relayed", "2.0.0", ""),
            ("odd@example.net", "gibberish", "5.0.0", ""),
        ]
    )
    events = {e.recipients[0]: (e.kind, e.bounce_type) for e in parse_dsn(raw, [BOUNCES], NOW)}
    assert events == {
        "hard@example.net": (FeedbackKind.BOUNCED, BounceType.PERMANENT),
        "soft@example.net": (FeedbackKind.BOUNCED, BounceType.TRANSIENT),
        "unsure@example.net": (FeedbackKind.BOUNCED, BounceType.UNDETERMINED),
        "later@example.net": (FeedbackKind.DELAYED, None),
        "fine@example.net": (FeedbackKind.DELIVERED, None),
        "onward@example.net": (FeedbackKind.DELIVERED, None),
    }


def test_the_same_dsn_twice_gives_the_same_event_ids():
    raw = dsn()
    first = parse_dsn(raw, [BOUNCES], NOW)
    again = parse_dsn(raw, [BOUNCES], datetime(2027, 1, 1, tzinfo=UTC))
    assert [e.event_id for e in first] == [e.event_id for e in again]


# ---- hostile ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x00\xff garbage \r\n\r\n\x80\x81", "not a delivery-status report"),
        (b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\nbroken", "without a"),
        (b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\nno boundary at all", "without a"),
        (
            dsn(report_type="disposition-notification"),
            "report-type 'disposition-notification'",
        ),
        (dsn(recipients=[("not an address", "failed", "5.1.1", "")]), "no recipient we can read"),
        (dsn(recipients=[]), "no recipient we can read"),
    ],
    ids=["garbage", "unterminated", "no-boundary", "other-report", "no-address", "no-recipient-block"],
)
def test_malformed_or_other_reports_are_not_dsns(raw, why):
    with pytest.raises(NotADsn, match=why):
        parse_dsn(raw, [BOUNCES], NOW)


def test_an_auto_reply_is_not_a_dsn():
    reply = EmailMessage(policy=SMTP)
    reply["From"] = "ooto@simulator.amazonses.com"
    reply["To"] = f"bounces+{REF}@example.org"
    reply["Subject"] = "Auto: Welcome"
    reply["Auto-Submitted"] = "auto-replied"
    reply.set_content("I am out of the office.\n")
    with pytest.raises(NotADsn, match="automatic reply"):
        parse_dsn(reply.as_bytes(), [f"bounces+{REF}@example.org"], NOW)


def test_huge_header_blocks_and_too_many_recipients_are_read_within_limits():
    # given a DSN with 5,000 junk fields in its report and 1,000 recipient blocks
    junk = "".join(f"\nX-Junk-{i}: {'y' * 60}" for i in range(5_000))
    raw = dsn(recipients=[(f"r{i}@example.net", "failed", "5.1.1", "") for i in range(1000)], extra_per_message=junk)
    started = time.monotonic()
    events = parse_dsn(raw, [BOUNCES], NOW)
    # then it is parsed quickly, into MAX_RECIPIENTS events
    assert time.monotonic() - started < 5
    assert len(events) == MAX_RECIPIENTS


def test_a_header_block_past_the_parse_limit_leaves_no_report_to_read():
    junk = "".join(f"\nX-Junk-{i}: {'y' * 60}" for i in range(20_000))  # 1.4 MB
    with pytest.raises(NotADsn):
        parse_dsn(dsn(extra_per_message=junk), [BOUNCES], NOW)


def test_a_report_past_the_parse_limit_is_not_read():
    # given 2 MB of text before the report (in a real DSN the report comes first)
    padded = dsn().replace(b"This is the mail system", b"P" * (2 * 1024 * 1024) + b"\r\nThis is the mail system")
    with pytest.raises(NotADsn):
        parse_dsn(padded, [BOUNCES], NOW)


# ---- the bounces address ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "ours"),
    [
        ("bounces@example.org", True),
        ("Bounces@Example.org", True),
        (f"bounces+{REF}@example.org", True),
        ("BOUNCES+anything@EXAMPLE.ORG", True),
        ("bouncesx@example.org", False),
        ("bounces@example.net", False),
        ("bounces@sub.example.org", False),
        ("directors@example.org", False),
        ("", False),
    ],
)
def test_the_bounces_address_and_its_verp_forms(address, ours):
    assert is_bounces_address(address, "Bounces <bounces@example.org>") is ours


# ---- the router -------------------------------------------------------------------------------


def test_a_dsn_to_the_bounces_address_is_recorded_and_never_forwarded(inbound):
    # given a DSN for an email we have no record of (reported long ago: the recorder does not wait)
    outbox = Outbox()
    message_id, status = receive(inbound, dsn(), recipients=[f"bounces+{REF}@example.org"])
    # then it is recorded as feedback (unmatched), and nothing is sent: no forward, no notice
    assert status == InboundStatus.FEEDBACK
    item = wiring.inbound_router(function_settings("inbound")).store.get(message_id)
    assert item.detail == "DSN for 1 recipients: 1 unmatched"
    assert outbox.sent() == []


@pytest.mark.parametrize(
    "raw",
    [
        b"From: someone@example.net\r\nTo: bounces@example.org\r\nSubject: hi\r\n\r\nplease forward me\r\n",
        (CORPUS / "flufl.bounce-postfix_01.eml").read_bytes(),
    ],
    ids=["plain-mail", "old-style-bounce"],
)
def test_other_mail_to_the_bounces_address_is_dropped_never_forwarded_or_answered(inbound, raw):
    outbox = Outbox()
    _, status = receive(inbound, raw, recipients=["bounces@example.org", "E1234-class@example.org"])
    assert status == InboundStatus.NOT_FEEDBACK
    assert outbox.sent() == []
