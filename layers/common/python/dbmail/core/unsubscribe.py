"""Signed one-click unsubscribe tokens (RFC 8058). The website may verify them with the same secret.

A token is ``<payload>.<signature>``, both base64url without padding:

- ``payload`` is compact JSON ``{"v":2,"u":<user id or null>,"e":"<address>","iat":<unix s>,"exp":<unix s>}``:
  the version, the website user the mail went to (or on behalf of), the lower-cased bare address
  that received it (a guardian's own address for a guardian's copy), when it was issued and when
  it stops working (``DBMAIL_UNSUBSCRIBE_TOKEN_DAYS`` after issue, 60 days by default);
- ``signature`` is HMAC-SHA256, keyed with the secret's UTF-8 bytes, of the payload part's ASCII
  text exactly as it stands in the token (the base64url string, not the decoded JSON).

It is checked in this order: size and alphabet (at most MAX_TOKEN_LENGTH characters), the
signature (constant-time), the version, then the times. The user and the address are inside the
signed payload, so changing either breaks the signature. Version 1 tokens (no expiry) are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dbmail.core.clock import utcnow
from dbmail.core.errors import ConfigurationError, DbmailError

MIN_SECRET_LENGTH = 32
VERSION = 2
DEFAULT_TOKEN_DAYS = 60
MAX_TOKEN_DAYS = 366  # a token claiming a longer life is refused even when signed
MAX_ADDRESS_LENGTH = 254  # RFC 5321's path limit, less the angle brackets
MAX_TOKEN_LENGTH = 512  # the whole token; a 254-character address and a 20-digit user id make 476
CLOCK_SKEW = timedelta(minutes=5)  # a token issued this far in the future still verifies
_SIGNATURE_CHARS = 43  # 32 bytes of HMAC-SHA256 in unpadded base64url
_SHAPE = re.compile(
    rf"[A-Za-z0-9_-]{{2,{MAX_TOKEN_LENGTH - 1 - _SIGNATURE_CHARS}}}\.[A-Za-z0-9_-]{{{_SIGNATURE_CHARS}}}"
)


class TokenInvalid(DbmailError):
    """The token is malformed, too long or of a version no longer accepted (HTTP 400)."""


class TokenForged(TokenInvalid):
    """The token was not made with this secret, or was altered (HTTP 403)."""


class TokenExpired(TokenInvalid):
    """The token was genuine but its time is over (HTTP 410)."""


@dataclass(frozen=True)
class UnsubscribeToken:
    """What a verified token says."""

    user_id: int | None
    address: str
    issued_at: datetime
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_secret(secret: str) -> bytes:
    """The secret as key bytes; a short one is a configuration error."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigurationError(f"the unsubscribe secret must be at least {MIN_SECRET_LENGTH} characters")
    return secret.encode()


def _sign(secret: str, payload_b64: str) -> bytes:
    return hmac.new(check_secret(secret), payload_b64.encode("ascii"), hashlib.sha256).digest()


def make_token(
    secret: str, user_id: int | None, email: str, *, now: datetime | None = None, days: int = DEFAULT_TOKEN_DAYS
) -> str:
    """A token naming the user and the address that receives the mail (a guardian may opt out too),
    good for ``days`` from ``now``."""
    address = email.strip().lower()
    if not address or len(address) > MAX_ADDRESS_LENGTH:
        raise ValueError(f"an unsubscribe token needs an address of 1 to {MAX_ADDRESS_LENGTH} characters")
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise ValueError(f"an unsubscribe token lives 1 to {MAX_TOKEN_DAYS} days, not {days}")
    issued = int((now or utcnow()).timestamp())
    claims = {"v": VERSION, "u": user_id, "e": address, "iat": issued, "exp": issued + days * 86400}
    payload_b64 = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{payload_b64}.{_b64(_sign(secret, payload_b64))}"


def verify_token(secret: str, token: str, *, now: datetime | None = None) -> UnsubscribeToken:
    """What a genuine, current token says; raises TokenInvalid (or its TokenForged, TokenExpired)."""
    key = check_secret(secret)  # a misconfiguration is the operator's, never the link's fault
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid("unsubscribe token too long")
    if not _SHAPE.fullmatch(token):
        raise TokenInvalid("malformed unsubscribe token")
    payload_b64, signature_b64 = token.split(".")
    expected = hmac.new(key, payload_b64.encode("ascii"), hashlib.sha256).digest()
    # compared as written: the last of 43 characters carries 2 unused bits, so four spellings
    # decode to one signature, and only the one make_token writes is the link
    if not hmac.compare_digest(signature_b64, _b64(expected)):
        raise TokenForged("unsubscribe token signature does not match")
    try:
        claims = json.loads(_unb64(payload_b64))
    except (binascii.Error, ValueError) as exc:  # signed by us, so only a secret shared with a bug
        raise TokenInvalid("malformed unsubscribe token payload") from exc
    if not isinstance(claims, dict) or claims.get("v") != VERSION:
        version = claims.get("v") if isinstance(claims, dict) else None
        raise TokenInvalid(f"unsubscribe token version {version!r} is not accepted (only {VERSION})")
    return _claims(claims, now or utcnow())


def _claims(claims: dict, now: datetime) -> UnsubscribeToken:
    user_id, address, issued, expires = (claims.get(name) for name in ("u", "e", "iat", "exp"))
    if not (user_id is None or (isinstance(user_id, int) and not isinstance(user_id, bool))):
        raise TokenInvalid("unsubscribe token names no valid user")
    if not isinstance(address, str) or not 0 < len(address) <= MAX_ADDRESS_LENGTH or "@" not in address:
        raise TokenInvalid("unsubscribe token names no valid address")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in (issued, expires)):
        raise TokenInvalid("unsubscribe token has no valid times")
    if not 0 < expires - issued <= MAX_TOKEN_DAYS * 86400:
        raise TokenInvalid("unsubscribe token has an impossible lifetime")
    issued_at, expires_at = datetime.fromtimestamp(issued, UTC), datetime.fromtimestamp(expires, UTC)
    if issued_at > now + CLOCK_SKEW:
        raise TokenInvalid("unsubscribe token issued in the future")
    if now >= expires_at:
        raise TokenExpired(f"unsubscribe token expired at {expires_at:%Y-%m-%d %H:%M} UTC")
    return UnsubscribeToken(user_id=user_id, address=address, issued_at=issued_at, expires_at=expires_at)


def unsubscribe_url(
    base_url: str,
    secret: str,
    user_id: int | None,
    email: str,
    *,
    now: datetime | None = None,
    days: int = DEFAULT_TOKEN_DAYS,
) -> str:
    """The one-click link: the unsubscribe function's URL, ``/unsubscribe/``, the token."""
    return f"{base_url.rstrip('/')}/unsubscribe/{make_token(secret, user_id, email, now=now, days=days)}"
