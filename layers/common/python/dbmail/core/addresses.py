"""Address and header rules shared by the client, expand, send and inbound (pure functions)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from email.headerregistry import Address
from email.utils import getaddresses, parseaddr
from typing import TypeVar

from dbmail.core.errors import AddressInvalid, HeaderInvalid, SenderNotAllowed

# The addr-spec we accept: 7-bit local part (SES does not support SMTPUTF8) and a dotted domain.
_ADDR_SPEC = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII except ':' and space (RFC 5322 ftext)

# Headers dbmail writes itself; a request may not set them.
MANAGED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Return-Path",
        "Sender",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    )
)

# Trace and signature headers belong to the servers a message passes through: a request that
# set them would forge its path, and SendGrid refuses every send that carries one.
SERVER_HEADERS = frozenset(h.lower() for h in ("Received", "DKIM-Signature", "X-SG-ID", "X-SG-EID"))


_ANY_ADDRESS = re.compile(r"[^\s<>()\[\],;:\"'@]+@[^\s<>()\[\],;:\"'@]+")


def redact_addresses(text: str) -> str:
    """``text`` (a provider's error or diagnostic) without the email addresses it may quote."""
    return _ANY_ADDRESS.sub("<address>", text)


def mask(address: str) -> str:
    """An address fit for logs: the domain only ('***@example.org')."""
    _, addr = parseaddr(address)
    return "***@" + addr.rpartition("@")[2] if "@" in addr else "***"


def parse_address(value: str) -> Address:
    """Parse one address ('Name <a@b>' or 'a@b'); CR/LF, lists and bad addr-specs are refused."""
    if not isinstance(value, str) or "\r" in value or "\n" in value:
        raise AddressInvalid("an address may not contain CR or LF")
    pairs = getaddresses([value.strip()])
    if len(pairs) != 1 or not _ADDR_SPEC.match(pairs[0][1]) or ".." in pairs[0][1]:
        raise AddressInvalid(f"not a single valid email address: {value!r}")
    name, addr = pairs[0]
    username, _, domain = addr.rpartition("@")
    return Address(display_name=name, username=username, domain=domain.lower())


def mailbox_key(address: object) -> str:
    """What two spellings of one mailbox share: the addr-spec stripped and lower-cased, or "" when
    there is no address (None, blank, not a string). See ``unique_mailboxes`` for the rule."""
    return address.strip().lower() if isinstance(address, str) else ""


T = TypeVar("T")


def unique_mailboxes(
    items: Iterable[T], address: Callable[[T], object] = lambda item: item, *, seen: set[str] | None = None
) -> tuple[T, ...]:
    """``items`` with one item a mailbox: the first of each is kept, in order, and an item
    without an address is dropped. ``address`` picks the addr-spec out of an item (the item
    itself by default: a string).

    The same mailbox is the same addr-spec but for surrounding white space and case, in the
    domain (case-insensitive, RFC 5321) and in the local part as well. RFC 5321 lets a server
    tell ``Ada@`` from ``ada@``, but no provider dbmail delivers to does, the website compares
    emails case-insensitively and inbound routing lower-cases local parts, so sending to both
    would deliver twice (and providers refuse a repeated recipient). Nothing else is folded:
    ``ada+trip@`` and ``ada@``, ``a.da@`` and ``ada@`` stay apart, and display names are not
    compared.

    ``seen`` holds the keys (``mailbox_key``) already taken and is updated: pass one set to
    several calls to keep each mailbox in the first of them only."""
    seen = set() if seen is None else seen
    kept = []
    for item in items:
        key = mailbox_key(address(item))
        if key and key not in seen:
            seen.add(key)
            kept.append(item)
    return tuple(kept)


def format_address(name: str | None, email: str) -> str:
    """The original's '"First Last" <email>' form (or the bare address when there is no name)."""
    name = " ".join((name or "").split()).replace("\\", "").replace('"', "")
    return f'"{name}" <{email.strip()}>' if name else email.strip()


def check_sender(value: str, allowed_domains: Iterable[str]) -> Address:
    """The From address, refused unless its domain (or a parent domain) is allowed (DMARC)."""
    address = parse_address(value)
    domain = address.domain.lower()
    for allowed in allowed_domains:
        if domain == allowed or domain.endswith("." + allowed):
            return address
    raise SenderNotAllowed(f"From domain {domain!r} is not an allowed sender domain ({', '.join(allowed_domains)})")


def check_special_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a request's special_headers: names are tokens, values carry no CR/LF,
    dbmail's own headers are not overridden and no server's trace or signature is forged.
    Reply-To is trimmed and must be an address."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise HeaderInvalid("special_headers must be a JSON object of header name to value")
    clean: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise HeaderInvalid(f"invalid header name {name!r}")
        if name.lower() in MANAGED_HEADERS:
            raise HeaderInvalid(f"header {name!r} is set by dbmail and may not be overridden")
        if name.lower() in SERVER_HEADERS:
            raise HeaderInvalid(f"header {name!r} is added by mail servers; a request may not set it")
        if not isinstance(value, str):
            raise HeaderInvalid(f"header {name!r} must have a string value")
        if "\r" in value or "\n" in value:
            raise HeaderInvalid(f"header {name!r} contains CR or LF (header injection)")
        if name.lower() == "reply-to":
            value = value.strip()
            for part in value.split(","):
                parse_address(part)
        clean[name] = value
    return clean
