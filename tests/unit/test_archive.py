"""The public archive: a public request's page, rendered for the placeholder user; one 404 for the rest."""

from __future__ import annotations

import html
import re

import pytest

from dbmail import wiring
from dbmail.client import submit_request
from dbmail.outgoing.archive import PLACEHOLDER_USER
from tests.conftest import function_settings, recipient

HTML_BODY = (
    "<html><body><p>Dear {{ user.first_name }},</p><p>{{ program }} opens on Saturday."
    '<script>alert(1)</script></p><p><a href="{{ user.get_confirmation_link }}">confirm</a></p></body></html>'
)


def submit(msgtext: str, public: bool) -> str:
    return submit_request(
        subject="{{ program }} for {{ user.first_name }} <b>",
        msgtext=msgtext,
        recipients=[recipient(1, vars={"get_confirmation_link": "https://esp.example.org/confirm/secret1"})],
        sender="Splash <splash@example.org>",
        var_dict={"program": "Splash 2026"},
        public=public,
    )


@pytest.fixture
def archive(moto_stack):
    return wiring.archive(function_settings("archive"))


def test_a_public_html_request_is_shown_for_the_placeholder_user_in_a_sandboxed_frame(archive):
    # given a public HTML request whose only recipient is Zoë, with her own confirmation link
    rid = submit(HTML_BODY, public=True)
    # when its archive page is asked for
    reply = archive.show(rid)
    # then the subject and body are rendered for the placeholder, never for Zoë, and escaped
    assert reply.status == 200 and reply.content_type == "text/html; charset=utf-8"
    assert "<h1>Splash 2026 for Reader &lt;b&gt;</h1>" in reply.body
    frame = re.search(
        r'<iframe sandbox="allow-popups allow-popups-to-escape-sandbox"[^>]* srcdoc="([^"]*)"', reply.body
    )
    shown = html.unescape(frame.group(1))
    assert "<p>Dear Reader,</p><p>Splash 2026 opens on Saturday." in shown
    assert "Zoë" not in reply.body and "secret1" not in reply.body and "user1@example.net" not in reply.body
    assert "<script>" not in reply.body.replace(frame.group(1), "")  # the email's script is only inside srcdoc
    policy = reply.headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'") and "script-src" not in policy and "frame-ancestors 'none'" in policy
    assert reply.headers["X-Content-Type-Options"] == "nosniff" and reply.headers["Referrer-Policy"] == "no-referrer"
    assert PLACEHOLDER_USER["user_id"] is None


def test_a_public_text_request_is_shown_in_pre_escaped(archive):
    rid = submit("Hi {{ user.first_name }} <3\nBring {{ program }} & a lunch.", public=True)
    reply = archive.show(rid)
    assert reply.status == 200
    assert "<pre>Hi Reader &lt;3\nBring Splash 2026 &amp; a lunch.</pre>" in reply.body


def test_private_and_unknown_ids_get_the_same_404_and_a_malformed_id_400(archive):
    private = archive.show(submit(HTML_BODY, public=False))
    unknown = archive.show("0" * 32)
    assert private.status == unknown.status == 404 and private.body == unknown.body
    assert "Splash" not in private.body
    for bad in ("x" * 200, "../etc", "a b", ""):
        assert archive.show(bad).status == 400
