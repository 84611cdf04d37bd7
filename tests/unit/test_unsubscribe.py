"""Unsubscribe tokens (RFC 8058): what verifies, what is tampered with, malformed, expired or too old a version."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest

from dbmail.core.errors import ConfigurationError
from dbmail.core.unsubscribe import (
    DEFAULT_TOKEN_DAYS,
    MAX_ADDRESS_LENGTH,
    MAX_TOKEN_LENGTH,
    MIN_SECRET_LENGTH,
    TokenExpired,
    TokenForged,
    TokenInvalid,
    UnsubscribeToken,
    make_token,
    unsubscribe_url,
    verify_token,
)

SECRET = "s" * MIN_SECRET_LENGTH
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict:
    payload = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def signed(claims: dict, secret: str = SECRET) -> str:
    """A token with these claims, signed as the website would sign one (docs/schema.md)."""
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{payload}.{b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())}"


def test_a_token_verifies_to_the_user_the_normalised_address_and_its_times():
    # given a token made for a user's guardian's address, written with capitals and spaces
    token = make_token(SECRET, 7, "  Mai.Ng@Example.NET ", now=NOW)
    # then it verifies to the user and the lower-cased address, issued now, good for the default days
    assert verify_token(SECRET, token, now=NOW + timedelta(days=59)) == UnsubscribeToken(
        user_id=7, address="mai.ng@example.net", issued_at=NOW, expires_at=NOW + timedelta(days=DEFAULT_TOKEN_DAYS)
    )
    # and a token for no user (a guardian-only send) names no user
    assert verify_token(SECRET, make_token(SECRET, None, "x@example.net", now=NOW), now=NOW).user_id is None


def test_the_documented_format_is_what_the_code_makes_and_reads():
    # given a token the website made by the documented recipe
    claims = {"v": 2, "u": 42, "e": "zoe@example.net", "iat": int(NOW.timestamp()), "exp": int(NOW.timestamp()) + 86400}
    # then dbmail reads it, and makes the same one byte for byte
    assert verify_token(SECRET, signed(claims), now=NOW).address == "zoe@example.net"
    assert make_token(SECRET, 42, "zoe@example.net", now=NOW, days=1) == signed(claims)


def test_a_token_expires_after_its_days_and_not_before():
    token = make_token(SECRET, 7, "zoe@example.net", now=NOW, days=60)
    assert verify_token(SECRET, token, now=NOW + timedelta(days=60) - timedelta(seconds=1)).user_id == 7
    with pytest.raises(TokenExpired, match="expired at 2027-01-30 12:00 UTC"):
        verify_token(SECRET, token, now=NOW + timedelta(days=60))


@pytest.mark.parametrize(
    "claim, value",
    [("u", 8), ("u", None), ("e", "zoe@example.com"), ("iat", 1), ("exp", 4_000_000_000), ("v", 3)],
)
def test_changing_any_signed_claim_breaks_the_signature(claim, value):
    # given a genuine token whose payload is re-encoded with one claim changed (another user or
    # address, other times) and the old signature kept
    token = make_token(SECRET, 7, "zoe@example.net", now=NOW)
    claims = {**claims_of(token), claim: value}
    forged = b64(json.dumps(claims, separators=(",", ":")).encode()) + "." + token.split(".")[1]
    # then it is refused as forged
    with pytest.raises(TokenForged, match="signature does not match"):
        verify_token(SECRET, forged, now=NOW)


def test_a_changed_signature_or_another_secret_is_refused_as_forged():
    token = make_token(SECRET, 7, "zoe@example.net", now=NOW)
    payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for forged in (f"{payload}.{flipped}", make_token("t" * MIN_SECRET_LENGTH, 7, "zoe@example.net", now=NOW)):
        with pytest.raises(TokenForged):
            verify_token(SECRET, forged, now=NOW)


def test_a_signature_spelled_with_other_unused_bits_is_refused():
    # given a genuine token, and its signature's last character changed only in its 2 unused bits
    # (base64url: 43 characters carry 256 bits and 2 spare), so it decodes to the same bytes
    token = make_token(SECRET, 7, "zoe@example.net", now=NOW)
    payload, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    for spare in (1, 2, 3):
        respelled = f"{payload}.{signature[:-1]}{alphabet[(last & ~3) | spare]}"
        if respelled == token:
            continue
        # when it is verified, then it is not the link: only make_token's spelling is
        with pytest.raises(TokenForged):
            verify_token(SECRET, respelled, now=NOW)
    assert verify_token(SECRET, token, now=NOW).user_id == 7


def test_a_version_1_token_is_refused_even_with_a_good_signature():
    # given the old format (no version 2, no expiry), properly signed
    old = signed({"v": 1, "u": 7, "e": "zoe@example.net"})
    with pytest.raises(TokenInvalid, match="version 1 is not accepted"):
        verify_token(SECRET, old, now=NOW)


@pytest.mark.parametrize(
    "claims, message",
    [
        ({"u": "7", "e": "zoe@example.net"}, "no valid user"),
        ({"u": True, "e": "zoe@example.net"}, "no valid user"),
        ({"u": 7, "e": "no-at-sign"}, "no valid address"),
        ({"u": 7, "e": "zoe@example.net", "iat": "now"}, "no valid times"),
        ({"u": 7, "e": "zoe@example.net", "exp": 1}, "impossible lifetime"),
        ({"u": 7, "e": "zoe@example.net", "exp": int(NOW.timestamp()) + 400 * 86400}, "impossible lifetime"),
        (
            {"u": 7, "e": "zoe@example.net", "iat": int(NOW.timestamp()) + 3600, "exp": int(NOW.timestamp()) + 7200},
            "issued in the future",
        ),
    ],
)
def test_a_signed_token_with_impossible_claims_is_refused(claims, message):
    base = {"v": 2, "iat": int(NOW.timestamp()), "exp": int(NOW.timestamp()) + 86400}
    with pytest.raises(TokenInvalid, match=message):
        verify_token(SECRET, signed({**base, **claims}), now=NOW)


@pytest.mark.parametrize(
    "token", ["no-dot-at-all", "a.b.c", "", ".", "ab." + "A" * 42, "a+b/." + "A" * 43, "é." + "A" * 43]
)
def test_a_malformed_token_is_refused_as_malformed(token):
    with pytest.raises(TokenInvalid, match="malformed unsubscribe token"):
        verify_token(SECRET, token, now=NOW)


def test_an_oversized_token_is_refused_before_anything_is_decoded():
    with pytest.raises(TokenInvalid, match="too long"):
        verify_token(SECRET, "A" * (MAX_TOKEN_LENGTH + 100) + "." + "A" * 43, now=NOW)
    # while the longest address makes a token within the limit
    longest = "a" * (MAX_ADDRESS_LENGTH - len("@example.net")) + "@example.net"
    token = make_token(SECRET, 10**19, longest, now=NOW)
    assert len(token) <= MAX_TOKEN_LENGTH and verify_token(SECRET, token, now=NOW).address == longest
    with pytest.raises(ValueError, match="address of 1 to 254"):
        make_token(SECRET, 7, "a" + longest, now=NOW)


def test_the_url_is_the_unsubscribe_functions_path_with_the_token():
    url = unsubscribe_url("https://abc.lambda-url.us-east-1.on.aws/", SECRET, 7, "zoe@example.net", now=NOW)
    assert url == "https://abc.lambda-url.us-east-1.on.aws/unsubscribe/" + make_token(
        SECRET, 7, "zoe@example.net", now=NOW
    )


def test_a_secret_shorter_than_the_minimum_is_a_configuration_error():
    short = "s" * (MIN_SECRET_LENGTH - 1)
    with pytest.raises(ConfigurationError, match=f"at least {MIN_SECRET_LENGTH} characters"):
        make_token(short, 7, "zoe@example.net")
    with pytest.raises(ConfigurationError, match=f"at least {MIN_SECRET_LENGTH} characters"):
        verify_token(short, make_token(SECRET, 7, "zoe@example.net"))


@pytest.mark.parametrize("days", [0, 367])
def test_a_lifetime_outside_one_day_to_a_year_is_refused_when_making(days):
    with pytest.raises(ValueError, match="1 to 366 days"):
        make_token(SECRET, 7, "zoe@example.net", days=days)


def test_a_signed_payload_that_is_not_json_is_refused_as_malformed():
    # given a payload the secret's holder signed by mistake (say, the website's bug)
    payload = b64(b"not json")
    token = f"{payload}.{b64(hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest())}"
    with pytest.raises(TokenInvalid, match="malformed unsubscribe token payload"):
        verify_token(SECRET, token, now=NOW)
