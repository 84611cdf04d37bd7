"""MIME composition as the original does it (pure): multipart/alternative for HTML bodies,
special headers, one-click unsubscribe, de-duplicated recipients, the bounces envelope sender."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

import html2text

from dbmail.addresses import check_special_headers, parse_address
from dbmail.render import is_html


@dataclass(frozen=True)
class OutgoingEmail:
    """A message ready for a transport: SES takes its MIME, SendGrid its parts."""

    sender: Address
    to: tuple[Address, ...]
    subject: str
    text: str
    html: str | None
    message_id: str
    date: datetime
    envelope_sender: str
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    reply_to: tuple[Address, ...] = field(default_factory=tuple)


def html_to_text(html: str) -> str:
    """A readable plain part for an HTML body (links kept, no hard wrapping)."""
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    return converter.handle(html).strip() + "\n"


def dedupe_addresses(addresses: Sequence[Address]) -> tuple[Address, ...]:
    """Drop repeated addresses (case-insensitive), keeping the first; providers reject repeats."""
    seen: set[str] = set()
    unique = []
    for address in addresses:
        key = address.addr_spec.lower()
        if key not in seen:
            seen.add(key)
            unique.append(address)
    return tuple(unique)


def compose(
    *,
    send_from: str,
    send_to: Sequence[str],
    subject: str,
    body: str,
    message_id: str,
    date: datetime,
    envelope_sender: str,
    special_headers: Mapping[str, str] | None = None,
    unsubscribe_url: str | None = None,
) -> OutgoingEmail:
    headers = check_special_headers(special_headers)
    reply_to_value = next((v for k, v in headers.items() if k.lower() == "reply-to"), None)
    extra = [(k, v) for k, v in headers.items() if k.lower() != "reply-to"]
    if unsubscribe_url:
        extra.append(("List-Unsubscribe", f"<{unsubscribe_url}>"))
        extra.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    html = body if is_html(body) else None
    return OutgoingEmail(
        sender=parse_address(send_from),
        to=dedupe_addresses([parse_address(a) for a in send_to]),
        subject=" ".join(subject.split()),
        text=html_to_text(body) if html else body,
        html=html,
        message_id=message_id,
        date=date,
        envelope_sender=envelope_sender,
        headers=tuple(extra),
        reply_to=tuple(parse_address(a) for a in reply_to_value.split(",")) if reply_to_value else (),
    )


def to_mime(email: OutgoingEmail) -> bytes:
    """RFC 5322 bytes with CRLF line ends; non-ASCII names and subjects become encoded words."""
    message = EmailMessage(policy=SMTP)
    message["Return-Path"] = f"<{email.envelope_sender}>"
    message["From"] = email.sender
    message["To"] = email.to
    if email.reply_to:
        message["Reply-To"] = email.reply_to
    message["Subject"] = email.subject
    message["Date"] = format_datetime(email.date)
    message["Message-ID"] = email.message_id
    for name, value in email.headers:
        message[name] = value
    message.set_content(email.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    if email.html is not None:
        message.add_alternative(email.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message.as_bytes()
