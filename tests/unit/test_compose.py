import email
from datetime import datetime, timezone
from email import policy

from dbmail.compose import compose, to_mime
from dbmail.unsubscribe import TokenInvalid, make_token, unsubscribe_url, verify_token

import pytest

SECRET = "s" * 40
WHEN = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def build(body, **overrides):
    kwargs = dict(
        send_from='"Splash Dïrectors" <splash@example.org>',
        send_to=['"Zoë Ng" <zoe@example.net>'],
        subject="Wëlcome to Splash ✨",
        body=body,
        message_id="<dbmail.abc@example.org>",
        date=WHEN,
        envelope_sender="bounces@example.org",
        special_headers={"Reply-To": " directors@example.org ", "X-Program-ID": "42"},
        unsubscribe_url=unsubscribe_url("https://site.org", SECRET, 7, "zoe@example.net"),
    )
    kwargs.update(overrides)
    return email.message_from_bytes(to_mime(compose(**kwargs)), policy=policy.default)


def test_an_html_body_becomes_multipart_alternative_with_a_readable_text_part():
    # given an HTML body with attributes on the html tag
    message = build('<html lang="en"><body><h1>Hi Zoë</h1><p>See <a href="https://x.org/c">classes</a></p></body></html>')
    # then it is multipart/alternative: text first, html second
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.get_payload()
    assert text.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    assert "Hi Zoë" in text.get_content() and "<" not in text.get_content().replace("(https", "")
    assert "https://x.org/c" in text.get_content()
    assert '<html lang="en">' in html.get_content()


def test_a_plain_body_is_a_single_text_part():
    message = build("Dear Zoë,\nsee you Saturday.\n")
    assert message.get_content_type() == "text/plain"
    assert message.get_content().replace("\r\n", "\n") == "Dear Zoë,\nsee you Saturday.\n"


def test_headers_match_the_original_and_non_ascii_is_encoded():
    raw = to_mime(compose(send_from='"Splash Dïrectors" <splash@example.org>', send_to=['"Zoë Ng" <zoe@example.net>'],
                          subject="Wëlcome", body="x", message_id="<m@example.org>", date=WHEN,
                          envelope_sender="bounces@example.org"))
    # then the wire form is 7-bit with encoded words and CRLF line ends
    assert raw.isascii() and b"\r\n" in raw and b"=?utf-8?" in raw
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == "Wëlcome"
    assert message["From"].addresses[0].display_name == "Splash Dïrectors"
    assert message["To"].addresses[0].display_name == "Zoë Ng"
    assert message["Return-Path"] == "<bounces@example.org>"
    assert message["Message-ID"] == "<m@example.org>"


def test_special_headers_and_one_click_unsubscribe_are_added():
    message = build("x")
    assert message["Reply-To"] == "directors@example.org"
    assert message["X-Program-ID"] == "42"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = message["List-Unsubscribe"].strip("<>")
    assert url.startswith("https://site.org/unsubscribe/")
    assert verify_token(SECRET, url.rsplit("/", 1)[1]) == {"v": 1, "u": 7, "e": "zoe@example.net"}


def test_no_unsubscribe_headers_when_not_sent_to_a_user():
    message = build("x", unsubscribe_url=None)
    assert message["List-Unsubscribe"] is None and message["List-Unsubscribe-Post"] is None


def test_duplicate_recipient_addresses_are_dropped():
    message = build("x", send_to=["zoe@example.net", '"Zoë" <ZOE@example.net>', "mai@example.net"])
    assert [a.addr_spec for a in message["To"].addresses] == ["zoe@example.net", "mai@example.net"]


def test_a_tampered_unsubscribe_token_is_refused():
    token = make_token(SECRET, 7, "zoe@example.net")
    payload, signature = token.split(".")
    forged = make_token(SECRET, 8, "zoe@example.net").split(".")[0] + "." + signature
    with pytest.raises(TokenInvalid):
        verify_token(SECRET, forged)
    with pytest.raises(TokenInvalid):
        verify_token("t" * 40, token)
