"""MIME composition as the original does it (pure): multipart/alternative for HTML bodies,
special headers, one-click unsubscribe, de-duplicated recipients, the bounces envelope sender."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.utils import format_datetime
from functools import lru_cache

import html2text

from dbmail.core.addresses import check_special_headers, parse_address, unique_mailboxes
from dbmail.core.errors import AddressInvalid


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
NAME_WORD = MAX_LINE - len("Reply-To: ")  # a display name's encoded word fits beside any address header's name
_CHUNKS = re.compile(r"[ \t]*[^ \t]+|[ \t]+$")  # each word with the whitespace before it
_SPECIALS = frozenset('()<>@,:;."[]\\')  # RFC 5322 3.2.3: a phrase holding one is quoted or encoded
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


def _encoded_words(text: str, first: int, rest: int) -> list[str]:
    """``text`` as RFC 2047 UTF-8 encoded words, the first at most ``first`` characters long,
    the others at most ``rest``; Q or B, whichever is shorter. Only whole characters go in a
    word (each must decode on its own), and Q keeps plain only what a phrase allows
    (RFC 2047 5(3)), so the words serve display names as well as unstructured headers."""
    b_length = -(-len(text.encode()) // 3) * 4
    q = len("".join(map(_q, text))) <= b_length
    prefix, words, chars = f"=?utf-8?{'q' if q else 'b'}?", [], ""
    budget = first - len(prefix) - 2

    def encoded(part: str) -> str:
        return "".join(map(_q, part)) if q else base64.b64encode(part.encode()).decode()

    for char in text:
        if chars and len(encoded(chars + char)) > budget:
            words.append(f"{prefix}{encoded(chars)}?=")
            chars, budget = "", rest - len(prefix) - 2
        chars += char
    words.append(f"{prefix}{encoded(chars)}?=")
    return words


def _encode_words(name: str, text: str) -> str:
    """``name: text`` as encoded words of at most 75 characters, one per line. All of the text,
    spaces too, is inside the words: the folding whitespace between two encoded words is not
    part of the value (RFC 2047 6.2). The stdlib (3.12.1) puts a space there when it folds a
    long subject, and the space is lost (CPython gh-144156)."""
    words = _encoded_words(text, min(MAX_ENCODED_WORD, MAX_LINE - len(name) - 2), MAX_ENCODED_WORD)
    return f"{name}: " + "\r\n ".join(words) + "\r\n"


def _unstructured(name: str, text: str) -> str:
    """An unstructured header (Subject, a special header): ASCII as written, folded only at its
    whitespace; otherwise (or with a word too long for a line) encoded words."""
    return (text.isascii() and _fold_ascii(name, text)) or _encode_words(name, text)


def _mailbox(address: Address) -> str:
    """One mailbox as the stdlib writes it, except that a non-ASCII display name is encoded here
    (the stdlib parses every header again): its ASCII words stay as they are, each run of other
    words becomes encoded words, spaces inside. A name with specials or uneven spacing is
    encoded whole, so that it decodes exactly."""
    name = address.display_name
    if name.isascii() and "=?" not in name:
        return str(address)
    words = name.split(" ")
    if not _SPECIALS.isdisjoint(name) or "" in words or not name.isprintable():
        return f"{' '.join(_encoded_words(name, NAME_WORD, NAME_WORD))} <{address.addr_spec}>"
    tokens, run = [], []
    for word in [*words, None]:  # None: the end, which closes the last run
        if word is not None and (not word.isascii() or "=?" in word):
            run.append(word)
            continue
        if run:
            tokens += _encoded_words(" ".join(run), NAME_WORD, NAME_WORD)
            run = []
        if word is not None:
            tokens.append(word)
    return f"{' '.join(tokens)} <{address.addr_spec}>"


def _address_header(name: str, addresses: Sequence[Address]) -> str:
    """``name: mailbox, mailbox``, folded between its words."""
    folded = _fold_ascii(name, ", ".join(map(_mailbox, addresses)))
    if folded is None:  # a word over 998 octets: only so long an addr-spec or ASCII name makes one
        raise AddressInvalid(f"an address of the {name} header is too long for a line (998 octets)")
    return folded


def is_html(body: str) -> bool:
    """The original's rule: a body containing an <html> tag (with or without attributes)."""
    return bool(HTML_MARKER.search(body))


@lru_cache(maxsize=16)  # one body to many recipients (an unpersonalised one) is converted once
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
    """RFC 5322 bytes with CRLF line ends, written directly (the stdlib's EmailMessage parses
    every header it is given, and cost more than the rest of a send): non-ASCII names and
    subjects become encoded words, ASCII headers (List-Unsubscribe's long URL) stay as written,
    both parts are UTF-8 quoted-printable, so the message is 7-bit."""
    headers = [
        f"Return-Path: <{email.envelope_sender}>\r\n",
        _address_header("From", (email.sender,)),
        _address_header("To", email.to),
        _address_header("Reply-To", email.reply_to) if email.reply_to else "",
        _unstructured("Subject", email.subject),
        f"Date: {format_datetime(email.date)}\r\n",
        _unstructured("Message-ID", email.message_id),
        *(_unstructured(name, value) for name, value in email.headers),
        "MIME-Version: 1.0\r\n",
    ]
    head = "".join(headers).encode("ascii")
    text = _part("plain", email.text)
    if email.html is None:
        return head + text
    # "=_" never occurs in quoted-printable (there a "=" is followed by two hex digits or a line end)
    boundary = b"=_" + hashlib.blake2b(email.message_id.encode(), digest_size=12).hexdigest().encode()
    return b"".join(
        (
            head,
            b'Content-Type: multipart/alternative;\r\n boundary="%s"\r\n\r\n--%s\r\n' % (boundary, boundary),
            text,
            b"\r\n--%s\r\n" % boundary,
            _part("html", email.html),
            b"\r\n--%s--\r\n" % boundary,
        )
    )


def _part(subtype: str, content: str) -> bytes:
    """A text/``subtype`` part's headers and body: UTF-8, quoted-printable, CRLF line ends."""
    body = b"\r\n".join(content.encode().splitlines()) + b"\r\n"
    return (
        b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
        % subtype.encode()
        + binascii.b2a_qp(body, istext=True)
    )
