import email
import email.utils
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import Address

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from dbmail.core.compose import OutgoingEmail, compose, to_mime
from dbmail.core.unsubscribe import TokenInvalid, make_token, unsubscribe_url, verify_token

SECRET = "s" * 40
WHEN = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def wire(body, **overrides) -> bytes:
    """The MIME of a composed email (a typical one, with ``overrides``)."""
    kwargs = {
        "send_from": '"Splash Dïrectors" <splash@example.org>',
        "send_to": ['"Zoë Ng" <zoe@example.net>'],
        "subject": "Wëlcome to Splash ✨",
        "body": body,
        "message_id": "<dbmail.abc@example.org>",
        "date": WHEN,
        "envelope_sender": "bounces@example.org",
        "special_headers": {"Reply-To": " directors@example.org ", "X-Program-ID": "42"},
        "unsubscribe_url": unsubscribe_url("https://site.org", SECRET, 7, "zoe@example.net"),
    }
    kwargs.update(overrides)
    return to_mime(compose(**kwargs))


def build(body, **overrides):
    return email.message_from_bytes(wire(body, **overrides), policy=policy.default)


def test_an_html_body_becomes_multipart_alternative_with_a_readable_text_part():
    # given an HTML body with attributes on the html tag
    message = build(
        '<html lang="en"><body><h1>Hi Zoë</h1><p>See <a href="https://x.org/c">classes</a></p></body></html>'
    )
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
    raw = to_mime(
        compose(
            send_from='"Splash Dïrectors" <splash@example.org>',
            send_to=['"Zoë Ng" <zoe@example.net>'],
            subject="Wëlcome",
            body="x",
            message_id="<m@example.org>",
            date=WHEN,
            envelope_sender="bounces@example.org",
        )
    )
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
    token = verify_token(SECRET, url.rsplit("/", 1)[1])
    assert (token.user_id, token.address) == (7, "zoe@example.net")


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


def raw_headers(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def test_a_long_unsubscribe_url_is_written_verbatim_on_the_wire():
    # given an unsubscribe URL far longer than 78 columns, and a non-ASCII subject
    url = "https://site.org/unsubscribe/" + "t" * 250 + ".sig"
    assert len(url) >= 200
    raw = to_mime(
        compose(
            send_from='"Splash Dïrectors" <splash@example.org>',
            send_to=['"Zoë Ng" <zoe@example.net>'],
            subject="Wëlcome to Splash ✨",
            body="<p>Hi</p>",
            message_id="<m@example.org>",
            date=WHEN,
            envelope_sender="bounces@example.org",
            unsubscribe_url=url,
        )
    )
    lines = raw_headers(raw).split(b"\r\n")
    # then the raw bytes carry the header as written, on one line, not as an encoded word
    assert f"List-Unsubscribe: <{url}>".encode() in lines
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in lines
    assert b"=?utf-8?q?=3Chttps" not in raw
    # and the non-ASCII subject and names are still RFC 2047 encoded words
    assert next(line for line in lines if line.startswith(b"Subject: ")).startswith(b"Subject: =?utf-8?")
    assert b"From: Splash =?utf-8?q?D=C3=AFrectors?= <splash@example.org>" in lines
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == "Wëlcome to Splash ✨"
    assert message["List-Unsubscribe"] == f"<{url}>"
    # and the whole message is ASCII with no line over 998 octets
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_long_headers_fold_only_at_whitespace_and_stay_within_998_octets():
    # given a long ASCII special header with spaces and one with a 300-character word,
    # a very long non-ASCII subject and many recipients with non-ASCII names
    words = " ".join(f"word{i}" for i in range(60))
    token = "k" * 300
    raw = to_mime(
        compose(
            send_from="splash@example.org",
            send_to=[f'"Zoë Ng {i}" <zoe{i}@example.net>' for i in range(40)],
            subject="Wëlcome ✨ " * 40,
            body="x",
            message_id="<m@example.org>",
            date=WHEN,
            envelope_sender="bounces@example.org",
            special_headers={"X-Words": words, "X-Token": f"ref {token}"},
        )
    )
    header_block = raw_headers(raw)
    # then every line is ASCII and at most 998 octets (and the non-ASCII ones at most 78)
    assert raw.isascii()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert all(len(line) <= 78 for line in header_block.split(b"\r\n") if b"=?utf-8?" in line)
    # and the ASCII headers were folded only before existing spaces, never encoded
    assert b"X-Token: ref\r\n " + token.encode() + b"\r\n" in header_block
    assert b"X-Words: word0 word1" in header_block and b"=?utf-8?q?word" not in header_block
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["X-Words"] == words
    assert message["X-Token"] == f"ref {token}"
    assert message["Subject"] == " ".join(("Wëlcome ✨ " * 40).split())
    assert len(message["To"].addresses) == 40


def test_long_non_ascii_subjects_survive_the_wire_exactly():
    # given non-ASCII subjects of every length up to several lines (the stdlib's own folding
    # dropped the space between "✨" and "Wëlcome" when a fold fell there)
    for count in range(1, 41):
        subject = " ".join(["Wëlcome ✨"] * count)
        raw = to_mime(
            compose(
                send_from="splash@example.org",
                send_to=["zoe@example.net"],
                subject=subject,
                body="x",
                message_id="<m@example.org>",
                date=WHEN,
                envelope_sender="bounces@example.org",
            )
        )
        subject_lines = [line for line in raw_headers(raw).split(b"\r\n") if b"=?utf-8?" in line]
        # then it is written as encoded words of at most 75 characters on lines of at most 78
        assert raw.isascii() and subject_lines[0].startswith(b"Subject: =?utf-8?")
        assert all(len(line) <= 78 for line in subject_lines)
        assert all(len(word) <= 75 for line in subject_lines for word in line.split() if word.startswith(b"=?"))
        # and decodes to exactly the subject, every space kept
        assert email.message_from_bytes(raw, policy=policy.default)["Subject"] == subject


def test_short_headers_are_written_as_the_stdlib_writes_them():
    # given an ordinary message
    raw = to_mime(
        compose(
            send_from="splash@example.org",
            send_to=["zoe@example.net"],
            subject="Hello there",
            body="x",
            message_id="<m@example.org>",
            date=WHEN,
            envelope_sender="bounces@example.org",
            special_headers={"X-Program-ID": "42"},
        )
    )
    # then the header lines are the familiar ones
    assert raw_headers(raw).split(b"\r\n")[:7] == [
        b"Return-Path: <bounces@example.org>",
        b"From: splash@example.org",
        b"To: zoe@example.net",
        b"Subject: Hello there",
        b"Date: Mon, 23 Nov 2026 12:00:00 +0000",
        b"Message-ID: <m@example.org>",
        b"X-Program-ID: 42",
    ]


NAME_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)))


def rfc2047_display_name(raw: bytes) -> str:
    """The display name of a raw message's single To mailbox, decoded as RFC 2047 6.2 says
    (whitespace between adjacent encoded words is not part of the text: the stdlib's address
    parser keeps it, so it cannot judge names long enough to need several words)."""
    value = email.message_from_bytes(raw, policy=policy.compat32)["To"].replace("\r\n", "")
    phrase = value[: value.rindex(" <")]
    if phrase.startswith('"'):
        return email.utils.unquote(phrase)
    return str(make_header(decode_header(phrase)))


@hypothesis_settings(max_examples=200, deadline=None)
@given(body=TEXT, subject=TEXT, name=st.text(NAME_CHARS, min_size=1, max_size=60), html=st.booleans())
def test_any_body_subject_and_display_name_survive_the_wire_exactly(body, subject, name, html):
    # given any body (as plain text or as the HTML part), subject and recipient's name
    outgoing = OutgoingEmail(
        sender=Address(display_name="Splash", addr_spec="splash@example.org"),
        to=(Address(display_name=name.strip() or "x", addr_spec="zoe@example.net"),),
        subject=" ".join(subject.split()),
        text=body,
        html=f"<html>{body}</html>" if html else None,
        message_id="<m@example.org>",
        date=WHEN,
        envelope_sender="bounces@example.org",
    )
    # when it is written as MIME
    raw = to_mime(outgoing)
    # then the message is 7-bit with CRLF line ends, each within 998 octets
    assert raw.isascii() and all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    # and a standard parser reads back exactly what was written (line ends as CRLF)
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == outgoing.subject
    assert message["To"].addresses[0].addr_spec == "zoe@example.net"
    assert rfc2047_display_name(raw) == outgoing.to[0].display_name
    parts = message.get_payload() if html else [message]
    contents = [outgoing.text, outgoing.html] if html else [outgoing.text]
    assert [part.get_content() for part in parts] == [crlf(content) for content in contents]


def test_a_name_is_encoded_word_by_word_and_reads_back_for_the_stdlib_parser_too():
    # given a name of non-ASCII and ASCII words: its ASCII words stay as written, and each
    # non-ASCII word is one encoded word, which any parser reads alike
    raw = wire("x", send_to=['"Zoë Ng Núñez" <zoe@example.net>'])
    assert email.message_from_bytes(raw, policy=policy.default)["To"].addresses[0].display_name == "Zoë Ng Núñez"
    assert b"To: =?utf-8?q?Zo=C3=AB?= Ng =?utf-8?" in raw


def crlf(text: str) -> str:
    """``text`` with the line ends the wire has: CRLF for each of CR, LF and CRLF, and one at the end."""
    return "\r\n".join(line.decode() for line in text.encode().splitlines()) + "\r\n"


def test_an_html_message_has_the_two_parts_and_the_boundary_occurs_nowhere_else():
    raw = wire("<html><p>--=_ a boundary-like line</p>\n--=_\n=_=_</html>")
    boundary = email.message_from_bytes(raw, policy=policy.default).get_boundary()
    assert boundary.startswith("=_")
    assert raw.count(boundary.encode()) == 4  # the parameter, two delimiters and the close


def test_display_names_with_specials_are_quoted_and_non_ascii_ones_encoded():
    raw = wire(
        "x", send_from='"Splash, the Directors" <splash@example.org>', send_to=['"Ng, Zoë \\"Z\\"" <zoe@example.net>']
    )
    lines = raw_headers(raw).split(b"\r\n")
    assert b'From: "Splash, the Directors" <splash@example.org>' in lines
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["To"].addresses[0].display_name == 'Ng, Zoë "Z"'
