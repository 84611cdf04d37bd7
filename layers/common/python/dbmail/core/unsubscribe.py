"""Signed one-click unsubscribe tokens (RFC 8058). The website verifies them with the same secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from dbmail.core.errors import ConfigurationError, DbmailError

MIN_SECRET_LENGTH = 32


class TokenInvalid(DbmailError):
    """The token was not made with this secret, or was altered."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_secret(secret: str) -> bytes:
    """The secret as key bytes; a short one is a configuration error."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigurationError(f"the unsubscribe secret must be at least {MIN_SECRET_LENGTH} characters")
    return secret.encode()


def make_token(secret: str, user_id: int | None, email: str) -> str:
    """A token naming the user and the address that receives the mail (a guardian may opt out too)."""
    payload = json.dumps({"v": 1, "u": user_id, "e": email.strip().lower()}, separators=(",", ":")).encode()
    signature = hmac.new(check_secret(secret), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(signature)}"


def verify_token(secret: str, token: str) -> dict:
    """The token's {'u': user_id, 'e': email}; raises TokenInvalid when it does not verify."""
    try:
        payload_b64, signature_b64 = token.split(".")
        payload, signature = _unb64(payload_b64), _unb64(signature_b64)
    except ValueError as exc:
        raise TokenInvalid("malformed unsubscribe token") from exc
    expected = hmac.new(check_secret(secret), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise TokenInvalid("unsubscribe token signature does not match")
    return json.loads(payload)


def unsubscribe_url(site_url: str, secret: str, user_id: int | None, email: str) -> str:
    return f"{site_url.rstrip('/')}/unsubscribe/{make_token(secret, user_id, email)}"
