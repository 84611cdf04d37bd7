"""Inbound mail end to end: SMTP to the local stack's SES front, S3, the inbound handler in the
runner, and forwards through SES into the outbox."""

from __future__ import annotations

import email
import os
import smtplib
import uuid
from email import policy
from email.message import EmailMessage

import pytest

from dbmail import wiring
from dbmail.client import install_default_email_lists, publish_directory, set_plain_redirect
from dbmail.core import models, settings
from tests.conftest import DIRECTORY, function_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def routing(local_stack):
    settings.website_settings.cache_clear()
    models.bind_models.cache_clear()
    wiring.inbound_router.cache_clear()
    install_default_email_lists()
    publish_directory(**DIRECTORY)
    set_plain_redirect("directors", "Dir One <dir1@example.net>, dir2@example.net")
    yield local_stack
    settings.website_settings.cache_clear()
    models.bind_models.cache_clear()
    wiring.inbound_router.cache_clear()


def send(to: str, sender: str = '"Pa Rent" <parent@example.net>', **headers) -> str:
    """Send over SMTP; returns the unique subject token to find the results by."""
    token = uuid.uuid4().hex[:10]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"Trip {token}"
    message["DKIM-Signature"] = "v=1; d=example.net; b=broken-by-forwarding"
    for name, value in headers.items():
        message[name] = value
    message.set_content("See you Saturday.\n")
    with smtplib.SMTP(os.environ["DBMAIL_LOCAL_SMTP_HOST"], int(os.environ["DBMAIL_LOCAL_SMTP_PORT"])) as smtp:
        smtp.send_message(message, to_addrs=[to])
    return token


def outbox_with(local_stack, text: str) -> list[email.message.EmailMessage]:
    found = []
    for path in local_stack.outbox.glob("*.eml"):
        raw = path.read_bytes()
        if text.encode() in raw:
            found.append(email.message_from_bytes(raw, policy=policy.default))
    return found


def arrived(local_stack, token: str, count: int) -> list[email.message.EmailMessage]:
    messages = local_stack.wait_for(
        lambda: m if len(m := outbox_with(local_stack, token)) >= count else None, timeout=30
    )
    assert len(messages) == count, f"expected {count} messages, got {len(messages)}"
    return messages


def recipients(messages) -> list[str]:
    return sorted(a.addr_spec for m in messages for a in m["To"].addresses)


def test_class_section_redirect_and_teacher_each_reach_the_expected_recipients(routing):
    # (the directors' copy, to directors@, comes back in through the SES hop and the directors
    # redirect delivers it to its two addresses, as once deployed)
    cases = [
        (
            "E1234-class@example.org",
            [
                "dir1@example.net",
                "dir2@example.net",
                "directors@example.org",
                "s1@example.net",
                "s2@example.net",
                "teacher@example.net",
            ],
            "[E1234] Trip",
        ),
        (
            "E1234s1-students@example.org",
            ["dir1@example.net", "dir2@example.net", "directors@example.org", "s1@example.net"],
            "[E1234s1] Trip",
        ),
        ("directors@example.org", ["dir1@example.net", "dir2@example.net"], "Trip"),
    ]
    for to, expected, subject_start in cases:
        token = send(to)
        messages = arrived(routing, token, len(expected))
        assert recipients(messages) == expected, to
        for message in messages:
            assert message["Subject"].startswith(subject_start)
            assert message["X-ESP-SENDER"] == "Pa Rent <parent@example.net>"
            assert message["From"].addresses[0].addr_spec == "noreply@example.org"
            assert message["Reply-To"] == "Pa Rent <parent@example.net>"
            assert message["DKIM-Signature"] is None
            assert message["X-DBMail-Forwarded"] == "example.org"
    # a teacher by username: forwarded with its headers kept
    token = send("tcher@example.org")
    (message,) = arrived(routing, token, 1)
    assert message["To"] == "tcher@example.org" and message["Subject"] == f"Trip {token}"
    assert message["X-ESP-SENDER"] is None


def test_an_unknown_address_gives_a_known_sender_one_notice_and_a_stranger_none(routing):
    send("nobody-here@example.org")
    (notice,) = arrived(routing, "nobody-here@example.org", 1)
    assert notice["Subject"] == "Undeliverable mail"
    assert [a.addr_spec for a in notice["To"].addresses] == ["parent@example.net"]
    token = send("nobody-else@example.org", sender="stranger@example.com")
    store = wiring.inbound_router(function_settings("inbound")).store

    def recorded():
        return [i for i in store.with_status("undeliverable") if token in (i.subject or "")]

    (item,) = routing.wait_for(recorded, timeout=30)
    assert item.detail.endswith("notice not sent")
    assert outbox_with(routing, "nobody-else@example.org") == []


def test_a_foreign_domain_is_refused_at_rcpt(routing):
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send("someone@not-our-domain.test")
