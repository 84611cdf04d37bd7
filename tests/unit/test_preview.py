"""Preview (one recipient's email of an unsubmitted request, with spam-safety hints), the test send,
and the `dbmail preview` / `dbmail send-test` commands."""

from __future__ import annotations

import email
import json
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import pytest

from dbmail.cli import main
from dbmail.core.errors import AddressInvalid, RequestInvalid, SenderNotAllowed
from dbmail.core.settings import Settings
from dbmail.outgoing.preview import BULK_RECIPIENTS, preview
from tests.conftest import ROOT, recipient

SETTINGS = Settings(
    allowed_sender_domains=("example.org",),
    default_sender="ESP <info@example.org>",
    bounces_address="bounces@example.org",
    site_url="https://esp.example.org",
    email_host_sender="info@example.org",
)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EXAMPLE = json.loads((ROOT / "examples" / "request.json").read_text(encoding="utf-8"))
IMAGE = '<img src="https://esp.example.org/{n}.png" alt="">'


def request(msgtext: str, recipients=None, **fields) -> dict:
    return {
        "subject": "Splash news for {{ user.first_name }}",
        "msgtext": msgtext,
        "recipients": recipients if recipients is not None else [recipient(1)],
        "sender": "Splash <splash@example.org>",
        **fields,
    }


def parts(mime: bytes) -> dict[str, str]:
    message = email.message_from_bytes(mime, policy=policy.default)
    return {part.get_content_type(): part.get_content() for part in message.walk() if not part.is_multipart()}


def test_an_html_request_previews_as_a_mime_email_whose_text_part_reads_as_text():
    # when the example request is previewed for its second recipient
    shown = preview(EXAMPLE, SETTINGS, NOW, recipient=1)
    # then the subject and both parts are José's, the text part readable words with the link kept
    assert shown.subject == "[Splash 2026] Welcome, José!"
    assert shown.send_to == ("José García <jose@example.net>",)
    body = parts(shown.mime)
    text = body["text/plain"]
    assert "Dear José," in text and "https://esp.example.org/confirm/def" in text
    assert "<p>" not in text and "<a " not in text
    assert '<a href="https://esp.example.org/confirm/def">' in body["text/html"]
    message = email.message_from_bytes(shown.mime, policy=policy.default)
    assert message["Subject"] == shown.subject and message["Reply-To"] == "splash@example.org"
    # and the only hint is the size, which is the .eml's
    assert shown.hints == (f"The email is {len(shown.mime):,} bytes.",)


def test_the_default_recipient_is_the_first_and_a_user_can_stand_in():
    assert preview(EXAMPLE, SETTINGS, NOW).subject.endswith("Zoë!")
    shown = preview(EXAMPLE, SETTINGS, NOW, user={"first_name": "Ann", "email": "ann@example.net"})
    assert shown.subject.endswith("Ann!") and shown.send_to == ("Ann <ann@example.net>",)


def test_a_missing_recipient_and_a_refused_sender_are_errors_naming_them():
    with pytest.raises(RequestInvalid, match=r"recipient 5 does not exist: the request has 2 \(0 to 1\)"):
        preview(EXAMPLE, SETTINGS, NOW, recipient=5)
    with pytest.raises(SenderNotAllowed):
        preview({**EXAMPLE, "sender": "x@elsewhere.net"}, SETTINGS, NOW)


def test_an_all_image_html_gets_the_empty_text_part_hint():
    # given an HTML body that is nothing but pictures
    shown = preview(request("<html><body>" + IMAGE.format(n=1) + IMAGE.format(n=2) + "</body></html>"), SETTINGS, NOW)
    # then the admin is told the text part is empty, and why
    assert "The text part is empty because the HTML is all images" in " ".join(shown.hints)


def test_a_picture_heavy_html_with_a_few_words_gets_the_short_text_hint():
    body = "<html><body><p>See below!</p>" + "".join(IMAGE.format(n=n) for n in range(6)) + "</body></html>"
    hints = " ".join(preview(request(body), SETTINGS, NOW).hints)
    assert "The text part has only 10 characters beside 6 images" in hints
    # and a real message with one logo is not
    worded = "<html><body>" + IMAGE.format(n=0) + "<p>" + "Splash is on Saturday. " * 4 + "</p></body></html>"
    assert not any("characters beside" in hint for hint in preview(request(worded), SETTINGS, NOW).hints)


def test_links_the_text_part_loses_or_shows_without_words_are_named():
    # given a banner picture that is a link, and a link the text part cannot keep as written
    body = (
        "<html><body><p>Registration for Splash is open until Friday; sign up soon.</p>"
        '<a href="https://esp.example.org/reg"><img src="https://esp.example.org/banner.png" alt="Register"></a>'
        '<p><a href="https://esp.example.org/faq(2026)">FAQ</a></p></body></html>'
    )
    hints = " ".join(preview(request(body), SETTINGS, NOW).hints)
    assert "1 link is a picture with no words (https://esp.example.org/reg)" in hints
    assert "1 link of the HTML is missing from the text part (https://esp.example.org/faq(2026))" in hints


def test_plain_http_links_are_named():
    body = '<html><body><p>Register <a href="http://esp.example.org/reg">here</a>.</p></body></html>'
    hints = preview(request(body), SETTINGS, NOW).hints
    assert "1 link is not https (http://esp.example.org/reg)" in " ".join(hints)
    text_hints = preview(request("Register at http://esp.example.org/reg today."), SETTINGS, NOW).hints
    assert any("not https (http://esp.example.org/reg)" in h for h in text_hints)


def test_bulk_mail_without_an_unsubscribe_link_reaching_people_without_an_account_gets_the_hint():
    # given more than BULK_RECIPIENTS recipients, some with no website account (no user_id), and no link
    people = [recipient(i) for i in range(1, BULK_RECIPIENTS)] + [
        {"email": f"parent{i}@example.net", "first_name": "Pa"} for i in range(5)
    ]
    body = "<html><body><p>Splash is coming.</p></body></html>"
    hints = " ".join(preview(request(body, people), SETTINGS, NOW).hints)
    assert f"This bulk mail ({len(people)} recipients) has no unsubscribe link, and 5 of its recipients" in hints
    # when the body links to an unsubscribe page, or everyone has an account (the List-Unsubscribe header)
    linked = body.replace("</p>", ' <a href="https://esp.example.org/unsubscribe">Unsubscribe</a></p>')
    assert "bulk mail" not in " ".join(preview(request(linked, people), SETTINGS, NOW).hints)
    members = [recipient(i) for i in range(1, BULK_RECIPIENTS + 5)]
    assert "bulk mail" not in " ".join(preview(request(body, members), SETTINGS, NOW).hints)
    # and a small mail is not bulk
    assert "bulk mail" not in " ".join(preview(request(body, people[-5:]), SETTINGS, NOW).hints)


# ---- the SDK and the test send (moto's in-process SES) -----------------------------------------
def test_the_sdk_preview_returns_the_parts_the_eml_and_the_hints(moto_stack):
    from dbmail.client import preview as sdk_preview

    shown = sdk_preview(EXAMPLE)
    assert shown["subject"] == "[Splash 2026] Welcome, Zoë!" and shown["size"] == len(shown["eml"])
    assert shown["hints"] == [f"The email is {shown['size']:,} bytes."]
    assert "Dear Zoë," in shown["text"] and shown["html"].startswith("<html>")


def ses_sent():
    from moto.ses.models import ses_backends

    return ses_backends["123456789012"]["us-east-1"].sent_messages


def test_send_test_sends_one_marked_copy_through_ses_and_writes_nothing(moto_stack):
    from dbmail.client import send_test
    from dbmail.outgoing.store import Store

    before = len(ses_sent())
    # when a test copy of recipient 1's email is sent to the admin
    sent = send_test(EXAMPLE, "Ada <admin@example.org>", recipient=1)
    # then exactly one message went, to the admin only, marked [TEST], with José's content
    (raw,) = ses_sent()[before:]
    message = email.message_from_string(raw.raw_data, policy=policy.default)
    assert message["Subject"] == "[TEST] [Splash 2026] Welcome, José!" == sent["subject"]
    assert [a.addr_spec for a in message["To"].addresses] == ["admin@example.org"]
    assert set(raw.destinations) == {"admin@example.org"}  # moto lists the To header and the envelope
    assert message["From"].addresses[0].addr_spec == "splash@example.org"
    assert "https://esp.example.org/confirm/def" in parts(raw.raw_data.encode())["text/plain"]
    assert sent["provider_id"] and sent["message_id"] == message["Message-ID"]
    # and no request or email item exists
    models = Store(moto_stack.settings).models
    assert list(models.MessageRequest.scan()) == [] and list(models.TextOfEmail.scan()) == []


def test_send_test_refuses_a_bad_address_and_a_sender_outside_the_allowed_domains(moto_stack):
    from dbmail.client import send_test

    before = len(ses_sent())
    with pytest.raises(AddressInvalid, match="to: not a single valid email address"):
        send_test(EXAMPLE, "a@b.org, c@d.org")
    with pytest.raises(SenderNotAllowed):
        send_test({**EXAMPLE, "sender": "Spoof <x@elsewhere.net>"}, "admin@example.org")
    assert len(ses_sent()) == before


# ---- the commands ------------------------------------------------------------------------------
@pytest.fixture
def request_file(tmp_path) -> Path:
    path = tmp_path / "welcome.json"
    path.write_text(json.dumps(EXAMPLE), encoding="utf-8")
    return path


def test_dbmail_preview_writes_the_eml_and_html_and_prints_their_paths(moto_stack, request_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["preview", str(request_file), "--recipient", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    eml, page = out / "welcome-1.eml", out / "welcome-1.html"
    assert str(eml) in printed and str(page) in printed
    assert "subject: [Splash 2026] Welcome, José!" in printed
    assert any(line.startswith("hint: The email is ") for line in printed)
    assert "Dear José," in parts(eml.read_bytes())["text/plain"]
    assert 'href="https://esp.example.org/confirm/def"' in page.read_text(encoding="utf-8")


def test_dbmail_preview_with_a_user_file(moto_stack, request_file, tmp_path, capsys):
    user = tmp_path / "ann.json"
    user.write_text(json.dumps({"first_name": "Ann", "email": "ann@example.net"}), encoding="utf-8")
    assert main(["preview", str(request_file), "--user-json", str(user), "--out", str(tmp_path)]) == 0
    assert "subject: [Splash 2026] Welcome, Ann!" in capsys.readouterr().out
    assert (tmp_path / "welcome-user.eml").is_file()


def test_dbmail_preview_open_renders_a_png_with_chromium(moto_stack, request_file, tmp_path, capsys):
    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("chromium is not installed")
    assert main(["preview", str(request_file), "--out", str(tmp_path), "--open"]) == 0
    png = tmp_path / "welcome-0.png"
    assert str(png) in capsys.readouterr().out.splitlines()
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000


def test_dbmail_send_test_sends_and_a_missing_recipient_is_bad_input(moto_stack, request_file, capsys):
    before = len(ses_sent())
    assert main(["send-test", str(request_file), "--to", "admin@example.org"]) == 0
    assert "sent '[TEST] [Splash 2026] Welcome, Zoë!' to admin@example.org" in capsys.readouterr().out
    assert len(ses_sent()) == before + 1
    assert main(["send-test", str(request_file), "--to", "admin@example.org", "--recipient", "9"]) == 2
    assert "recipient 9 does not exist" in capsys.readouterr().err
    assert main(["send-test", str(request_file), "--to", "not an address"]) == 2
    assert len(ses_sent()) == before + 1
