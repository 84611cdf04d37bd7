"""MIME composition as the original does it (pure): multipart/alternative for HTML bodies,
special headers, one-click unsubscribe, de-duplicated recipients, the bounces envelope sender."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address, UnstructuredHeader
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime

import html2text

from dbmail.core.addresses import check_special_headers, parse_address, unique_mailboxes


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


HTML_MARKER = re.compile(r"<html[\s>/]", re.IGNORECASE)
MAX_MESSAGE_BYTES = 40 * 1024 * 1024  # SES v2's limit for a raw message (and so ours)
MAX_LINE = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters...
MAX_LINE_OCTETS = 998  # ...and MUST be at most 998 (excluding CRLF)
MAX_ENCODED_WORD = 75  # RFC 2047 2
_CHUNKS = re.compile(r"[ \t]*[^ \t]+|[ \t]+$")  # each word with the whitespace before it
_Q_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")


def _fold_ascii(name: str, text: str) -> str | None:
    """``name: text`` folded only before existing whitespace, or None when a word would not
    fit in 998 octets."""
    first, *rest = _CHUNKS.findall(" " + text)  # the first word stays beside the name
    lines = [f"{name}:{first}"]
    for chunk in rest:  # each starts with whitespace: fold there if the line would pass 78
        if len(lines[-1]) + len(chunk) > MAX_LINE and chunk.strip():
            lines.append(chunk)
        else:
            lines[-1] += chunk
    if any(len(line) > MAX_LINE_OCTETS for line in lines):
        return None
    return "\r\n".join(lines) + "\r\n"


def _q(char: str) -> str:
    return char if char in _Q_PLAIN else "_" if char == " " else "".join(f"={b:02X}" for b in char.encode())


def _encode_words(name: str, text: str) -> str:
    """``name: text`` as RFC 2047 UTF-8 encoded words of at most 75 characters, one per line.
    All of the text, spaces too, is inside the words: the folding whitespace between two
    encoded words is not part of the value (RFC 2047 6.2). The stdlib (3.12.1) puts a space
    there when it folds a long subject, and the space is lost (CPython gh-144156)."""
    b_length = -(-len(text.encode()) // 3) * 4
    q = len("".join(map(_q, text))) <= b_length
    prefix, words, chars = f"=?utf-8?{'q' if q else 'b'}?", [], ""
    budget = min(MAX_ENCODED_WORD, MAX_LINE - len(name) - 2) - len(prefix) - 2

    def encoded(part: str) -> str:
        return "".join(map(_q, part)) if q else base64.b64encode(part.encode()).decode()

    for char in text:  # whole characters only: an encoded word must decode on its own
        if chars and len(encoded(chars + char)) > budget:
            words.append(f"{prefix}{encoded(chars)}?=")
            chars, budget = "", MAX_ENCODED_WORD - len(prefix) - 2
        chars += char
    words.append(f"{prefix}{encoded(chars)}?=")
    return f"{name}: " + "\r\n ".join(words) + "\r\n"


def _fold(name: str, value) -> str | None:
    """Our folding, or None for the stdlib's (non-ASCII address headers)."""
    text = str(value)
    if "\r" in text or "\n" in text or not name.isascii():
        return None
    if text.isascii():
        return _fold_ascii(name, text)
    if isinstance(value, UnstructuredHeader):
        return _encode_words(name, text)
    return None


class _WirePolicy(EmailPolicy):
    """SMTP's policy, except that ASCII headers are never turned into encoded words and
    non-ASCII unstructured ones (Subject) are encoded whole."""

    def fold(self, name, value):
        return _fold(name, value) or super().fold(name, value)

    def fold_binary(self, name, value):
        folded = _fold(name, value)
        return folded.encode("ascii") if folded else super().fold_binary(name, value)


# ASCII headers fold only at whitespace, never into encoded words (max_line_length=998 would make 900-char ones).
WIRE_POLICY = _WirePolicy(linesep="\r\n")


def is_html(body: str) -> bool:
    """The original's rule: a body containing an <html> tag (with or without attributes)."""
    return bool(HTML_MARKER.search(body))


def html_to_text(html: str) -> str:
    """A readable plain part for an HTML body (links kept, no hard wrapping)."""
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    return converter.handle(html).strip() + "\n"


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
        to=unique_mailboxes([parse_address(a) for a in send_to], lambda a: a.addr_spec),  # providers refuse repeats
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
    """RFC 5322 bytes with CRLF line ends; non-ASCII names and subjects become encoded words,
    ASCII headers (List-Unsubscribe's long URL) stay as written."""
    message = EmailMessage(policy=WIRE_POLICY)
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
