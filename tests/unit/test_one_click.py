"""One-click unsubscribe over HTTP (feedback/one_click.py): the RFC 8058 POST, the page and its
button, and every refusal, against a list that records what was added."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from dbmail.core.unsubscribe import MIN_SECRET_LENGTH, make_token
from dbmail.feedback.one_click import MAX_BODY_BYTES, SECURITY_HEADERS, OneClickUnsubscribe

SECRET = "k" * MIN_SECRET_LENGTH
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FORM = "application/x-www-form-urlencoded"


class Suppressions:
    def __init__(self) -> None:
        self.added: list[dict] = []

    def add(self, address, reason, source, detail=None, user_id=None, request_id=None) -> bool:
        new = all(entry["address"] != address for entry in self.added)
        if new:
            self.added.append(
                {"address": address, "reason": reason, "source": source, "detail": detail, "user_id": user_id}
            )
        return new


@pytest.fixture
def suppressions():
    return Suppressions()


@pytest.fixture
def endpoint(suppressions):
    return OneClickUnsubscribe(suppressions, SECRET, clock=lambda: NOW)


def token(address="zoe@example.net", user_id=7, now=NOW, days=60) -> str:
    return make_token(SECRET, user_id, address, now=now, days=days)


class Page(HTMLParser):
    """What a browser would see: the html lang, the title, text, forms and their fields."""

    def __init__(self, body: str) -> None:
        super().__init__()
        self.lang = self.title = None
        self.text: list[str] = []
        self.forms: list[dict] = []
        self.scripts = 0
        self._in_title = False
        self.feed(body)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html":
            self.lang = attrs.get("lang")
        elif tag == "title":
            self._in_title = True
        elif tag == "form":
            self.forms.append({"method": attrs.get("method"), "action": attrs.get("action"), "fields": {}})
        elif tag == "input" and self.forms:
            self.forms[-1]["fields"][attrs["name"]] = attrs.get("value")
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title = data
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def test_the_rfc_8058_post_unsubscribes_at_once_with_a_one_line_answer(endpoint, suppressions):
    # when a mail client posts the one-click body
    reply = endpoint.submit(token(), "List-Unsubscribe=One-Click", base64_encoded=False, content_type=FORM)
    # then the address is on the list at once, as an unsubscribe by its user, and the answer is no page
    assert suppressions.added == [
        {
            "address": "zoe@example.net",
            "reason": "unsubscribe",
            "source": "unsubscribe",
            "detail": "one-click (RFC 8058)",
            "user_id": 7,
        }
    ]
    assert (reply.status, reply.content_type, reply.body) == (200, "text/plain; charset=utf-8", "unsubscribed\n")
    assert not any(name.lower() == "set-cookie" for name in reply.headers)
    # and posting it again (a client's retry) changes nothing and answers the same
    assert endpoint.submit(token(), "List-Unsubscribe=One-Click", base64_encoded=False, content_type=FORM) == reply
    assert len(suppressions.added) == 1


def test_a_multipart_or_base64_one_click_post_works_too(endpoint, suppressions):
    multipart = b'--XyZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--XyZ--\r\n'
    reply = endpoint.submit(
        token("a@example.net"),
        base64.b64encode(multipart).decode(),
        base64_encoded=True,
        content_type="multipart/form-data; boundary=XyZ",
    )
    assert reply.status == 200 and [entry["address"] for entry in suppressions.added] == ["a@example.net"]


def test_the_get_page_changes_nothing_and_offers_a_real_form_button(endpoint, suppressions):
    # when the link is opened (by a person, or a scanner that fetches links)
    reply = endpoint.show(token())
    # then nothing is added, and the page is a small accessible one whose button posts to the same URL
    assert suppressions.added == []
    page = Page(reply.body)
    assert reply.status == 200 and reply.content_type == "text/html; charset=utf-8"
    assert page.lang == "en" and page.title == "Unsubscribe"
    assert page.forms == [{"method": "post", "action": None, "fields": {"confirm": "unsubscribe"}}]
    assert '<button type="submit">Unsubscribe</button>' in reply.body and 'aria-label="Unsubscribe"' in reply.body
    assert "zoe@example.net" in page.all_text and page.scripts == 0
    # when its button is pressed
    reply = endpoint.submit(token(), "confirm=unsubscribe", base64_encoded=False, content_type=FORM)
    # then the address is unsubscribed and a page says so
    assert Page(reply.body).title == "You are unsubscribed" and reply.status == 200
    assert [entry["detail"] for entry in suppressions.added] == ["confirmation page"]


def test_every_page_has_the_security_headers_and_a_csp_that_allows_only_its_own_style(endpoint):
    style = re.search(r"<style>(.*?)</style>", endpoint.show(token()).body).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    for reply in (endpoint.show(token()), endpoint.show("garbage"), endpoint.show(token(now=NOW - timedelta(days=90)))):
        assert reply.headers == SECURITY_HEADERS
    assert SECURITY_HEADERS["Content-Security-Policy"].startswith(f"default-src 'none'; style-src 'sha256-{digest}';")
    assert "form-action 'self'" in SECURITY_HEADERS["Content-Security-Policy"]
    assert SECURITY_HEADERS["Cache-Control"] == "no-store"
    assert SECURITY_HEADERS["Referrer-Policy"] == "no-referrer"
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"


def test_the_address_on_the_page_is_escaped(endpoint):
    hostile = '"><script>alert(1)</script>@example.net'
    reply = endpoint.show(token(hostile))
    assert "<script>" not in reply.body and "&lt;script&gt;" in reply.body and Page(reply.body).scripts == 0


@pytest.mark.parametrize(
    "make, status, title",
    [
        (lambda: token(now=NOW - timedelta(days=61)), 410, "This unsubscribe link has expired"),
        (lambda: token()[:-3] + "AAA", 403, "This unsubscribe link is not valid"),
        (
            lambda: make_token("z" * MIN_SECRET_LENGTH, 7, "zoe@example.net", now=NOW),
            403,
            "This unsubscribe link is not valid",
        ),
        (lambda: "not-a-token", 400, "This unsubscribe link is broken"),
        (lambda: "A" * 5000, 400, "This unsubscribe link is broken"),
    ],
)
def test_a_bad_token_gets_a_clear_page_and_changes_nothing(endpoint, suppressions, make, status, title):
    bad = make()
    for reply in (
        endpoint.show(bad),
        endpoint.submit(bad, "List-Unsubscribe=One-Click", base64_encoded=False, content_type=FORM),
        endpoint.submit(bad, "confirm=unsubscribe", base64_encoded=False, content_type=FORM),
    ):
        page = Page(reply.body)
        assert (reply.status, page.title, page.lang) == (status, title, "en")
        assert "Nothing was changed." in page.all_text and page.forms == []
    assert suppressions.added == []


@pytest.mark.parametrize(
    "body, content_type",
    [
        ("", FORM),
        ("List-Unsubscribe=Something-Else", FORM),
        ('{"List-Unsubscribe": "One-Click"}', "application/json"),
        ("confirm=no", FORM),
        ("confirm=unsubscribé", FORM),
        ("&".join(["List-Unsubscribe=One-Click"] * 9), FORM),
        ("--b--\r\n", "multipart/form-data; boundary=b"),
    ],
)
def test_a_post_that_is_neither_form_is_400_and_changes_nothing(endpoint, suppressions, body, content_type):
    reply = endpoint.submit(token(), body, base64_encoded=False, content_type=content_type)
    assert reply.status == 400 and Page(reply.body).title == "Nothing to do" and suppressions.added == []


def test_a_body_that_claims_base64_but_is_not_is_400(endpoint, suppressions):
    reply = endpoint.submit(token(), "%%not base64%%", base64_encoded=True, content_type=FORM)
    assert reply.status == 400 and Page(reply.body).title == "Nothing to do" and suppressions.added == []


def test_an_oversized_body_is_413_and_changes_nothing(endpoint, suppressions):
    body = "List-Unsubscribe=One-Click&" + "x" * MAX_BODY_BYTES
    for text, encoded in ((body, False), (base64.b64encode(body.encode()).decode(), True)):
        reply = endpoint.submit(token(), text, base64_encoded=encoded, content_type=FORM)
        assert reply.status == 413 and suppressions.added == []
