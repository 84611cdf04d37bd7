"""The feedback loop on the real local stack: SES events from the mailbox simulator through the
configuration set's SNS destination and the feedback queue to the feedback function, the
suppression list, and DSNs over SMTP to the bounces address (recorded, never forwarded)."""

from __future__ import annotations

import json
import os
import re
import smtplib
import time
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime, parseaddr

import pytest

from dbmail import wiring
from dbmail.client import submit_request
from dbmail.core import models, settings
from dbmail.core.statuses import InboundStatus
from dbmail.inbound.store import InboundStore
from dbmail_local.ses_events import SentMail, events_for

pytestmark = pytest.mark.integration

SIMULATOR = "simulator.amazonses.com"
FINAL = ("delivered", "bounced", "complained", "suppressed", "failed", "expired")


@pytest.fixture(scope="module")
def feedback(local_stack):
    settings.website_settings.cache_clear()
    models.bind_models.cache_clear()
    wiring.clear()
    yield local_stack
    settings.website_settings.cache_clear()
    models.bind_models.cache_clear()
    wiring.clear()


def suppressions():
    return wiring.suppression_store(settings.website_settings())


def submit(addresses: list[str], token: str) -> str:
    return submit_request(
        subject=f"Feedback {token}",
        msgtext="Hello {{ user.first_name }}\n",
        recipients=[
            {"user_id": 9000 + n, "username": f"u{n}", "email": address, "first_name": "Sim"}
            for n, address in enumerate(addresses)
        ],
        sendto_fn_name="",
        sender="Splash <splash@example.org>",
    )


def emails(store, request_id: str) -> dict[str, object]:
    """The request's emails by their recipient's bare address."""
    return {parseaddr(e.send_to)[1].lower(): e for e in store.iter_emails(request_id)}


def wait_emails(local_stack, store, request_id: str, done, timeout: float = 90) -> dict[str, object]:
    def ready():
        found = emails(store, request_id)
        return found if found and all(done(e) for e in found.values()) else None

    return local_stack.wait_for(ready, timeout=timeout, interval=0.5)


def outbox_with(local_stack, text: str) -> list:
    return [path for path in local_stack.outbox.glob("*.eml") if text.encode() in path.read_bytes()]


def smtp_send(raw: bytes, to: str) -> str:
    """Sends with a null envelope sender, as MTAs send DSNs; returns SES receiving's message id."""
    with smtplib.SMTP(os.environ["DBMAIL_LOCAL_SMTP_HOST"], int(os.environ["DBMAIL_LOCAL_SMTP_PORT"])) as smtp:
        smtp.ehlo()
        assert smtp.mail("")[0] == 250 and smtp.rcpt(to)[0] == 250
        code, reply = smtp.data(raw)
    assert code == 250
    return re.search(r"<?([0-9a-v]{40})>?", reply.decode()).group(1)


def inbound_item(local_stack, message_id: str, timeout: float = 30):
    """The inbound message's record once it is final (or failed)."""
    store = InboundStore(settings.website_settings())

    def final():
        item = store.get(message_id)
        return item if item is not None and item.status != InboundStatus.RECEIVED else None

    return local_stack.wait_for(final, timeout=timeout, interval=0.3)


def verp(message_ref: str) -> str:
    local, _, domain = os.environ["DBMAIL_BOUNCES_ADDRESS"].partition("@")
    return f"{local}+{message_ref}@{domain}"


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def postfix_dsn(to: str, address: str, token: str, message_id: str | None = None) -> bytes:
    """What Postfix sends when a recipient's server answers 550 5.1.1 (text/rfc822-headers)."""
    now = format_datetime(datetime.now(UTC))
    headers = f"From: Splash <splash@example.org>\nTo: {address}\nSubject: Feedback {token}\n"
    headers += f"Message-ID: {message_id}\n" if message_id else ""
    return crlf(f"""From: MAILER-DAEMON@mx.students.example.net (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: {now}
Message-ID: <{uuid.uuid4().hex}@mx.students.example.net>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="POSTFIX-{token}"

--POSTFIX-{token}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.students.example.net. DSN {token}

<{address}>: host mx.students.example.net[192.0.2.7] said: 550 5.1.1 User unknown

--POSTFIX-{token}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.students.example.net
X-Postfix-Queue-ID: 4F2A1C0123
Arrival-Date: {now}

Final-Recipient: rfc822; {address}
Original-Recipient: rfc822;{address}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.students.example.net
Diagnostic-Code: smtp; 550 5.1.1 <{address}>: Recipient address rejected: User unknown

--POSTFIX-{token}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{headers}
--POSTFIX-{token}--
""")


def gmail_dsn(address: str, token: str, message_id: str) -> bytes:
    """Gmail's shape: the whole original attached (message/rfc822), to the plain bounces address."""
    return crlf(f"""From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {os.environ["DBMAIL_BOUNCES_ADDRESS"]}
Subject: Delivery Status Notification (Failure)
Message-ID: <{uuid.uuid4().hex}@mx.google.com>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; boundary="GMAIL-{token}"; report-type=delivery-status

--GMAIL-{token}
Content-Type: text/plain; charset="UTF-8"

** Address not found ** DSN {token}

Your message wasn't delivered to {address} because the address couldn't be found.

--GMAIL-{token}
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; a8-70.smtp-out.amazonses.com
Arrival-Date: Tue, 01 Dec 2026 04:10:03 -0800 (PST)

Final-Recipient: rfc822; {address}
Action: failed
Status: 5.1.1
Remote-MTA: dns; gmail-smtp-in.l.google.com. (2607:f8b0:4864:20::52c, the server for the domain gmail.com.)
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist.
Last-Attempt-Date: Tue, 01 Dec 2026 04:10:04 -0800 (PST)

--GMAIL-{token}
Content-Type: message/rfc822

From: Splash <splash@example.org>
To: {address}
Subject: Feedback {token}
Message-ID: {message_id}

Hello Sim

--GMAIL-{token}--
""")


def inbound_items_with(subject: str) -> list:
    store = InboundStore(settings.website_settings())
    return [
        item
        for status in (InboundStatus.FEEDBACK, InboundStatus.NOT_FEEDBACK, InboundStatus.FAILED)
        for item in store.with_status(status)
        if subject in (item.subject or "")
    ]


def test_the_mailbox_simulator_closes_the_loop_and_a_second_request_is_suppressed(feedback, store):
    # given a request to each mailbox simulator address (labelled: this test's own addresses)
    token = uuid.uuid4().hex[:10]
    kinds = ("success", "bounce", "complaint", "suppressionlist", "ooto")
    addresses = {kind: f"{kind}+{token}@{SIMULATOR}" for kind in kinds}
    request_id = submit(list(addresses.values()), token)
    # when SES's events come back through the configuration set, SNS, the queue and the feedback function
    # (the complaint simulator reports a delivery first and the complaint after it, so wait for the complaint)
    complaint = addresses["complaint"]
    found = wait_emails(
        feedback,
        store,
        request_id,
        lambda e: e.status == "complained" if parseaddr(e.send_to)[1].lower() == complaint else e.status in FINAL,
    )
    # then each email has what the simulator did to it
    status = {kind: found[address].status for kind, address in addresses.items()}
    assert status == {
        "success": "delivered",
        "bounce": "bounced",
        "complaint": "complained",
        "suppressionlist": "bounced",
        "ooto": "delivered",
    }
    bounce = found[addresses["bounce"]]
    assert bounce.bounce_type == "permanent" and "550 5.1.1" in bounce.feedback
    assert found[addresses["suppressionlist"]].bounce_type == "permanent"
    assert "Suppressed" in found[addresses["suppressionlist"]].feedback
    assert found[addresses["success"]].delivered_at is not None
    # and the bounced and complaining addresses are suppressed, the others not
    entries = {kind: suppressions().get(addresses[kind]) for kind in kinds}
    assert {k: (e.reason, e.source) for k, e in entries.items() if e} == {
        "bounce": ("bounce", "ses"),
        "complaint": ("complaint", "ses"),
        "suppressionlist": ("bounce", "ses"),
    }
    assert entries["bounce"].request_id == request_id
    sent_before = len(outbox_with(feedback, f"Feedback {token}"))
    assert sent_before == len(kinds)

    # when a second request goes to the suppressed addresses
    again = submit([addresses[k] for k in ("bounce", "complaint", "suppressionlist")], token)
    second = wait_emails(feedback, store, again, lambda e: e.status in FINAL)
    # then each is recorded suppressed, with the reason, and nothing is sent
    assert {e.status for e in second.values()} == {"suppressed"}
    assert "complaint" in second[addresses["complaint"]].error
    time.sleep(1.5)
    assert len(outbox_with(feedback, f"Feedback {token}")) == sent_before


def test_the_ooto_auto_reply_to_the_return_path_is_dropped_never_forwarded(feedback, store):
    # given an email to ooto@ (its auto-reply goes to our VERP Return-Path over the local SMTP front)
    token = uuid.uuid4().hex[:10]
    request_id = submit([f"ooto+{token}@{SIMULATOR}"], token)
    wait_emails(feedback, store, request_id, lambda e: e.status == "delivered")
    # then the auto-reply arrives at the bounces address and is dropped with its reason
    (item,) = feedback.wait_for(lambda: inbound_items_with(f"Auto: Feedback {token}"), timeout=30)
    assert item.status == InboundStatus.NOT_FEEDBACK
    assert "automatic reply" in item.detail
    time.sleep(1.0)
    assert outbox_with(feedback, f"Auto: Feedback {token}") == []


def test_duplicate_ses_events_change_nothing(feedback, store):
    # given a bounced email whose events were recorded
    token = uuid.uuid4().hex[:10]
    address = f"bounce+{token}@{SIMULATOR}"
    request_id = submit([address], token)
    (bounced,) = wait_emails(feedback, store, request_id, lambda e: e.status == "bounced").values()
    suppressed_at = suppressions().get(address).created_at
    # when SES delivers the same events again (at least once: SNS and SQS may repeat them)
    (path,) = outbox_with(feedback, f"Feedback {token}")
    sent = SentMail(
        message_id=bounced.provider_message_id,
        source="splash@example.org",
        recipients=(address,),
        raw=path.read_bytes(),
        configuration_set=feedback.env["DBMAIL_CONFIGURATION_SET"],
        account_id="123456789012",
        region="us-east-1",
    )
    sqs = feedback.client("sqs")
    queue_url = feedback.env["DBMAIL_LOCAL_FEEDBACKQUEUE_URL"]
    for event in [*events_for(sent), *events_for(sent)]:
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))

    def drained():
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return all(value == "0" for value in attributes.values())

    feedback.wait_for(drained, timeout=30)
    # then nothing changed: the same status, events and suppression
    after = store.get_email(request_id, bounced.email_key)
    assert (after.status, after.feedback_at, after.feedback_events, after.feedback) == (
        bounced.status,
        bounced.feedback_at,
        bounced.feedback_events,
        bounced.feedback,
    )
    assert suppressions().get(address).created_at == suppressed_at
    dead = sqs.get_queue_attributes(
        QueueUrl=feedback.env["DBMAIL_LOCAL_FEEDBACKDEADLETTERQUEUE_URL"],
        AttributeNames=["ApproximateNumberOfMessages"],
    )["Attributes"]["ApproximateNumberOfMessages"]
    assert dead == "0"


@pytest.mark.parametrize("shape", ["postfix-to-verp", "gmail-to-bounces"])
def test_a_dsn_over_smtp_is_recorded_on_its_email_and_not_forwarded(feedback, store, shape):
    # given an email that was delivered
    token = uuid.uuid4().hex[:10]
    address = f"student-{token}@students.example.net"
    request_id = submit([address], token)
    (email,) = wait_emails(feedback, store, request_id, lambda e: e.status == "delivered").values()
    assert email.message_ref
    # when the recipient's server sends a DSN back (to our VERP envelope sender, or, as some do,
    # to the plain bounces address, naming our Message-ID in the attached original)
    if shape == "postfix-to-verp":
        to = verp(email.message_ref)
        raw = postfix_dsn(to, address, token)
    else:
        to = os.environ["DBMAIL_BOUNCES_ADDRESS"]
        raw = gmail_dsn(address, token, email.message_id)
    message_id = smtp_send(raw, to)
    # then the email is bounced, with the diagnostic, and the address suppressed (source dsn)
    (bounced,) = wait_emails(feedback, store, request_id, lambda e: e.status == "bounced", timeout=30).values()
    assert bounced.bounce_type == "permanent" and "5.1.1" in bounced.feedback
    assert address not in bounced.feedback  # redacted
    entry = suppressions().get(address)
    assert (entry.reason, entry.source) == ("bounce", "dsn")
    # and nothing was forwarded or answered
    time.sleep(1.5)
    assert outbox_with(feedback, f"DSN {token}") == []
    item = inbound_item(feedback, message_id)
    assert (item.status, item.detail) == (InboundStatus.FEEDBACK, "DSN for 1 recipients: 1 recorded")


def test_a_forged_dsn_changes_nothing_for_an_address_the_email_was_not_sent_to(feedback, store):
    # given a delivered email to one address
    token = uuid.uuid4().hex[:10]
    address = f"student-{token}@students.example.net"
    victim = f"victim-{token}@students.example.net"
    request_id = submit([address], token)
    (email,) = wait_emails(feedback, store, request_id, lambda e: e.status == "delivered").values()
    # when a forged DSN to its VERP address claims another address bounced
    message_id = smtp_send(postfix_dsn(verp(email.message_ref), victim, token), verp(email.message_ref))
    # then it is recorded as a DSN that matches no recipient of ours
    item = inbound_item(feedback, message_id)
    assert (item.status, item.detail) == (InboundStatus.FEEDBACK, "DSN for 1 recipients: 1 unmatched")
    # and the email is untouched: still delivered, no bounce, no diagnostic, no event added
    after = store.get_email(email.request_id, email.email_key)
    fields = ("status", "bounce_type", "feedback", "feedback_at", "delivered_at", "feedback_events")
    assert [getattr(after, name) for name in fields] == [getattr(email, name) for name in fields]
    assert (after.status, after.bounce_type, after.feedback) == ("delivered", None, None)
    # and neither the named address nor the email's own is suppressed, and nothing is sent
    assert not suppressions().is_suppressed(victim)
    assert not suppressions().is_suppressed(address)
    assert outbox_with(feedback, f"DSN {token}") == []


def test_a_dsn_without_any_reference_is_recorded_unmatched_and_not_forwarded(feedback):
    token = uuid.uuid4().hex[:10]
    address = f"stranger-{token}@students.example.net"
    raw = postfix_dsn(os.environ["DBMAIL_BOUNCES_ADDRESS"], address, token)
    item = inbound_item(feedback, smtp_send(raw, os.environ["DBMAIL_BOUNCES_ADDRESS"]))
    assert (item.status, item.detail) == (InboundStatus.FEEDBACK, "DSN for 1 recipients: 1 unmatched")
    time.sleep(1.0)
    assert not suppressions().is_suppressed(address)
    assert outbox_with(feedback, f"DSN {token}") == []
