"""Rewriting a received message so that real providers accept the forward (pure).

Group forwards get the original's treatment (To/Cc removed, X-ESP-SENDER, subject prefix,
fresh Message-ID, From = the rule's from_email) and, without a from_email, a DMARC-safe From:
"Original Name via Site" <noreply@chapter-domain> with Reply-To set to the original sender.
Headers SES rejects or that break forwarding are stripped or repaired everywhere.
"""

from __future__ import annotations

import base64
import email
import uuid
from dataclasses import dataclass
from email import policy
from email.header import Header, decode_header, make_header
from email.message import Message
from email.utils import formataddr, getaddresses

from dbmail.routing import Route

LOOP_HEADER = "X-DBMail-Forwarded"
# Forwards go out 7-bit clean (8-bit bodies re-encoded, 8-bit header bytes as encoded words):
# SES and many receivers refuse raw 8-bit, and received mail is often malformed.
OUTGOING = policy.SMTP.clone(cte_type="7bit")
SES_MAX_RECIPIENTS = 50

# Dropped from every forward: SES sets its own, and a forward must not claim the original's.
STRIPPED = frozenset(h.lower() for h in ("Return-Path", "Sender", "DKIM-Signature", "X-SES-Receipt",
                                          "X-SES-DKIM-Signature", "Bcc"))
# At most one of each may appear (RFC 5322, and SES refuses repeats such as Delivered-To).
SINGLE = frozenset(h.lower() for h in ("Date", "From", "Reply-To", "To", "Cc", "Message-ID", "In-Reply-To",
                                        "References", "Subject", "Delivered-To", "MIME-Version",
                                        "Content-Type", "Content-Transfer-Encoding", "List-Id"))


def parse(raw: bytes) -> Message:
    """Lenient parse: whatever the bytes, a Message comes back (defects are recorded, not raised)."""
    return email.message_from_bytes(raw, policy=policy.compat32)


def header_text(message: Message, name: str) -> str:
    """A header decoded to text (encoded words, 8-bit junk replaced), '' when absent."""
    value = message.get(name)
    if value is None:
        return ""
    try:
        return str(make_header(decode_header(str(value))))
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        return str(value).encode("utf-8", "replace").decode("utf-8")


def original_sender(message: Message) -> tuple[str, str]:
    """(name, address) of From, or ('', '') when there is none or it does not parse."""
    pairs = getaddresses([header_text(message, "From")])
    name, address = pairs[0] if pairs else ("", "")
    return (name, address) if "@" in address else ("", "")


def _clean_headers(message: Message) -> None:
    seen: set[str] = set()
    kept = []
    for name, value in message._headers:  # noqa: SLF001 - compat32 keeps raw headers in order
        key = name.strip().lower()
        if not key or key in STRIPPED or (key in SINGLE and key in seen):
            continue
        seen.add(key)
        kept.append((name, value))
    message._headers = kept  # noqa: SLF001


def _seven_bit_bodies(message: Message) -> None:
    """Re-encode 8-bit leaf bodies as base64, bytes unchanged (the generator cannot, without a charset)."""
    for part in message.walk():
        if part.is_multipart():
            continue
        encoding = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        payload = part.get_payload(decode=True) if encoding not in ("base64", "quoted-printable") else None
        if payload is None or payload.isascii():
            continue
        del part["Content-Transfer-Encoding"]
        part.set_payload(base64.encodebytes(payload).decode("ascii"))
        part["Content-Transfer-Encoding"] = "base64"


def _set(message: Message, name: str, value: str) -> None:
    del message[name]
    message[name] = Header(value, "utf-8").encode() if not value.isascii() else value


@dataclass(frozen=True)
class Forward:
    """One SES call: the MIME bytes and at most 50 recipients."""

    raw: bytes
    destinations: tuple[str, ...]
    part: str  # a stable name, so a retried delivery skips what already went
    # True when To names exactly the destinations: SES then takes them from the headers
    # (it counts header and envelope recipients together against its limit of 50).
    addressed_by_headers: bool = False


def rewrite(raw: bytes, route: Route, *, site_name: str, chapter_domain: str) -> Message:
    """The message as it will be forwarded for ``route`` (before per-recipient addressing)."""
    message = parse(raw)
    _clean_headers(message)
    name, address = original_sender(message)
    if route.group:
        for header in ("To", "Cc"):
            del message[header]
        _set(message, "X-ESP-SENDER", formataddr((name, address)) if address else "unknown")
        subject = header_text(message, "Subject")
        if route.subject_prefix:
            subject = f"{route.subject_prefix} {subject}".strip()
        _set(message, "Subject", subject)
        del message["Message-ID"]
        message["Message-ID"] = f"<{uuid.uuid4().hex}@{chapter_domain}>"
    if route.group and route.rule.from_email:
        _set(message, "From", route.rule.from_email)
    else:
        via = f"{name or address or 'Unknown sender'} via {site_name}"
        _set(message, "From", formataddr((via, f"noreply@{chapter_domain}")))
        if address and message.get("Reply-To") is None:
            _set(message, "Reply-To", formataddr((name, address)))
    message[LOOP_HEADER] = chapter_domain
    _seven_bit_bodies(message)
    return message


def split_forwards(message: Message, route: Route, key: str) -> list[Forward]:
    """cc_all: one message with everyone in To (in copies of at most 50, SES's limit);
    otherwise one message per recipient, To naming only them (a UserEmail forward keeps its To)."""
    recipients = route.recipients
    forwards = []
    if route.rule.cc_all and route.group:
        # SES counts the addresses in To as recipients too: a list over 50 goes as copies of
        # one message (same Message-ID), each naming its 50.
        for i in range(0, len(recipients), SES_MAX_RECIPIENTS):
            batch = recipients[i:i + SES_MAX_RECIPIENTS]
            _set(message, "To", ", ".join(formataddr((p.name or "", p.email)) for p in batch))
            forwards.append(Forward(message.as_bytes(policy=OUTGOING), tuple(p.email for p in batch),
                                    f"{key}:all:{i}", addressed_by_headers=True))
        return forwards
    for person in recipients:
        if route.group:
            _set(message, "To", formataddr((person.name or "", person.email)))
        forwards.append(Forward(message.as_bytes(policy=OUTGOING), (person.email,), f"{key}:{person.email.lower()}"))
    return forwards
