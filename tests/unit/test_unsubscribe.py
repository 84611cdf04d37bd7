"""Unsubscribe tokens (RFC 8058): what verifies, what is malformed, and the secret's minimum length."""

from __future__ import annotations

import pytest

from dbmail.core.errors import ConfigurationError
from dbmail.core.unsubscribe import MIN_SECRET_LENGTH, TokenInvalid, make_token, unsubscribe_url, verify_token

SECRET = "s" * MIN_SECRET_LENGTH


def test_a_token_verifies_to_the_user_and_the_normalised_address():
    # given a token made for a user's guardian's address, written with capitals and spaces
    token = make_token(SECRET, 7, "  Mai.Ng@Example.NET ")
    # then it verifies to the user and the lower-cased address
    assert verify_token(SECRET, token) == {"v": 1, "u": 7, "e": "mai.ng@example.net"}
    # and a token for no user (a guardian-only send) keeps u null
    assert verify_token(SECRET, make_token(SECRET, None, "x@example.net"))["u"] is None


def test_the_url_is_the_sites_unsubscribe_path_with_the_token():
    url = unsubscribe_url("https://esp.example.org/", SECRET, 7, "zoe@example.net")
    assert url == "https://esp.example.org/unsubscribe/" + make_token(SECRET, 7, "zoe@example.net")


@pytest.mark.parametrize("token", ["no-dot-at-all", "a.b.c", ""])
def test_a_malformed_token_is_refused_as_malformed(token):
    with pytest.raises(TokenInvalid, match="malformed unsubscribe token"):
        verify_token(SECRET, token)


def test_a_secret_shorter_than_the_minimum_is_a_configuration_error():
    short = "s" * (MIN_SECRET_LENGTH - 1)
    with pytest.raises(ConfigurationError, match=f"at least {MIN_SECRET_LENGTH} characters"):
        make_token(short, 7, "zoe@example.net")
    with pytest.raises(ConfigurationError, match=f"at least {MIN_SECRET_LENGTH} characters"):
        verify_token(short, make_token(SECRET, 7, "zoe@example.net"))
