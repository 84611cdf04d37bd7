"""forward.py: the rewrite of received mail for forwarding, over the corpus and by properties.

Every forward must be 7-bit ASCII with lines of at most 998 characters, and its header block
must hold only the original's headers (less the stripped ones) and the ones dbmail adds: no
input (encoded words, 8-bit bytes, control characters, folding) may start a header line."""

from __future__ import annotations

import base64
import email
import re
from email import policy

import boto3
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from dbmail.core.errors import DeliveryError
from dbmail.core.transports import SesTransport
from dbmail.inbound import forward
from dbmail.inbound.forward import (
    ADDED,
    BEEN_THERE,
    LOOP_HEADER,
    ORIGINAL_TO,
    STRIPPED,
    been_there,
    encode_text,
    format_addresses,
    header_text,
    is_automatic,
    is_list_mail,
    original_sender,
    parse,
    parse_mailboxes,
    rewrite,
    split_forwards,
)
from dbmail.inbound.routing import EmailListRule, Person, Route
from tests.corpus import corpus_message, corpus_messages

CLASS_RULE = EmailListRule("default-class", r"^\w(\d+)-(class|teachers|students)$", 20, "ClassList")
CC_ALL_RULE = EmailListRule(
    "cc-all",
    r"^\w(\d+)-(class)$",
    1,
    "ClassList",
    cc_all=True,
    from_email="Splash Lists <lists@example.org>",
    subject_prefix="[Splash]",
)
USER_RULE = EmailListRule("default-user", r"^(.*)$", 40, "UserEmail")
PEOPLE = (
    Person("Splash 2026 Directors", "directors@example.org"),
    Person("Tea Cher", "teacher@example.net"),
    Person("Zoë Ng, Jr.", "s1@example.net"),
    Person(None, "s2@example.net"),
)
ROUTES = {
    "class": Route(CLASS_RULE, PEOPLE, group=True, subject_tag="E1234"),
    "cc_all": Route(CC_ALL_RULE, PEOPLE, group=True, subject_tag="M77"),
    "user": Route(USER_RULE, (Person("Tea Cher", "teacher@example.net"),), group=False),
}
DOMAIN = "example.org"
LIST = "e1234-class@example.org"
NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+):")
CORPUS = list(corpus_messages())


def forwards_of(raw: bytes, route: Route, list_address: str = LIST) -> list[forward.Forward]:
    message = rewrite(raw, route, site_name="ESP Website", chapter_domain=DOMAIN, list_address=list_address)
    return split_forwards(message, route, key="rule:local")


def names(message) -> list[str]:
    return [n.lower() for n in message.keys()]


def good_names(message) -> set[str]:
    """The original's header names that a forward could carry (not empty, not absurdly long)."""
    return {n.lower() for n in message.keys() if forward._good_name(n)}


def header_block(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def leaves(message):
    return [p for p in message.walk() if not p.is_multipart()]


def canonical(data: bytes | None) -> bytes:
    return re.sub(rb"\r\n|\r", b"\n", data or b"")


def check_forward(raw: bytes, fw: forward.Forward, route: Route) -> None:
    """Everything every forward of every message must be."""
    original = parse(raw)
    out = fw.raw
    assert out.isascii(), "a forward is 7-bit"
    assert b"\0" not in out
    assert all(len(line) <= forward.MAX_LINE for line in out.split(b"\r\n")), "no line over 998"
    assert b"\r" not in out.replace(b"\r\n", b"") and b"\n" not in out.replace(b"\r\n", b""), "CRLF only"
    allowed = (good_names(original) - STRIPPED) | ADDED
    block = header_block(out)
    for line in block:
        assert re.fullmatch(rb"[\x20-\x7e\t]*", line), line
        if line[:1] in (b" ", b"\t"):
            assert line.strip(), "no whitespace-only continuation line"
            continue
        match = NAME.match(line)
        assert match, line
        assert match.group(1).decode().lower() in allowed, f"header {line[:60]!r} was not in the original"
    back = email.message_from_bytes(out, policy=policy.compat32)
    got = set(names(back))
    assert got <= allowed
    expected = good_names(original) - STRIPPED - ({"to", "cc"} if route.group else set())
    if not route.group and ORIGINAL_TO.lower() in got:
        expected -= {"cc"}
    assert expected <= got, f"lost {expected - got}"
    for single in forward.SINGLE:
        assert len(back.get_all(single) or []) <= 1, single
    assert None not in (back["Date"], back["Message-ID"], back["MIME-Version"])
    assert back.get_all(LOOP_HEADER)[-1] == DOMAIN
    assert back.get_all(BEEN_THERE)[-1] == LIST
    assert been_there(back) == list(dict.fromkeys([*been_there(original), LIST]))
    # moto and SES read the whole message as UTF-8; the modern parser reads every header
    modern = email.message_from_bytes(out, policy=policy.default)
    for name in modern.keys():
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", str(modern[name])), name
    assert [a.addr_spec for a in modern["From"].addresses] == (
        ["lists@example.org"] if route.rule.from_email else [f"noreply@{DOMAIN}"]
    )
    # attachments and bodies: the same bytes once decoded
    before, after = leaves(original), leaves(back)
    assert len(before) == len(after)
    for old, new in zip(before, after):
        old_data, new_data = old.get_payload(decode=True), new.get_payload(decode=True)
        if str(old.get("Content-Transfer-Encoding", "")).strip().lower() == "base64":
            assert old_data == new_data
        else:  # 7bit/8bit/qp text is CRLF on the wire; the CRLF before a delimiter belongs to it
            assert canonical(old_data).rstrip(b"\n") == canonical(new_data).rstrip(b"\n")
    # replies go to the original sender (or the Reply-To it chose)
    if not route.rule.from_email:
        name, address = original_sender(original)
        if original.get("Reply-To") is not None:
            assert parse_mailboxes(back["Reply-To"]) == parse_mailboxes(forward.raw_header(original, "Reply-To"))
        elif address:
            assert parse_mailboxes(back["Reply-To"]) == [(name, address)]
        else:
            assert back["Reply-To"] is None
    if fw.addressed_by_headers:
        assert route.rule.cc_all
        assert sorted(a.addr_spec.lower() for a in modern["To"].addresses) == sorted(d.lower() for d in fw.destinations)
    else:
        assert len(fw.destinations) == 1
        assert forward.header_recipients(back) + len(fw.destinations) <= forward.SES_MAX_RECIPIENTS


def test_the_corpus_is_small_and_has_every_set():
    sets = {name.split("/")[0] for name, _ in CORPUS}
    assert sets == {"cpython", "clients", "hostile"}
    assert sum(len(raw) for _, raw in CORPUS) < 3 * 2**20
    assert sum(n.startswith("clients/") for n, _ in CORPUS) >= 20


@pytest.mark.parametrize("route_name", sorted(ROUTES))
@pytest.mark.parametrize("name", [name for name, _ in CORPUS])
def test_every_corpus_message_forwards_cleanly(name, route_name):
    raw = corpus_message(name)
    route = ROUTES[route_name]
    forwards = forwards_of(raw, route)
    assert forwards
    assert sorted(d for f in forwards for d in f.destinations) == sorted(p.email for p in route.recipients)
    for fw in forwards:
        check_forward(raw, fw, route)


# -- 1. header injection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "injection-subject-q.eml",
        "injection-subject-b.eml",
        "injection-subject-nul-c1.eml",
        "injection-from-name.eml",
        "injection-reply-to-and-x-header.eml",
        "injection-filename.eml",
        "bare-cr-and-lf.eml",
        "nul-bytes.eml",
        "attached-message-8bit.eml",
    ],
)
@pytest.mark.parametrize("route_name", sorted(ROUTES))
def test_encoded_control_characters_never_make_a_header(name, route_name):
    raw = corpus_message(f"hostile/{name}")
    for fw in forwards_of(raw, ROUTES[route_name]):
        starts = [line.split(b":", 1)[0].lower() for line in header_block(fw.raw) if line[:1] not in (b" ", b"\t")]
        assert not {b"bcc", b"x-injected", b"y"} & set(starts)
        back = email.message_from_bytes(fw.raw, policy=policy.default)
        assert back["Bcc"] is None
        for part in back.walk():
            for key in part.keys():
                assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]", str(part[key])), (key, part[key])
            if part.get_filename():
                assert not re.search(r"[\x00-\x1f]", part.get_filename())


def test_the_injected_subject_is_one_line_of_text():
    raw = corpus_message("hostile/injection-subject-q.eml")
    (fw, *_) = forwards_of(raw, ROUTES["class"])
    back = email.message_from_bytes(fw.raw, policy=policy.default)
    assert back["Subject"] == "[E1234] Hi  Bcc: victim@evil.example"
    (fw,) = forwards_of(raw, ROUTES["user"])
    assert b"Subject: =?utf-8?q?Hi=0D=0ABcc:_victim@evil.example?=" not in fw.raw  # re-encoded, not copied
    assert email.message_from_bytes(fw.raw, policy=policy.default)["Subject"] == "Hi  Bcc: victim@evil.example"


def test_header_text_sanitises_and_never_raises():
    message = parse(corpus_message("hostile/injection-subject-nul-c1.eml"))
    text = header_text(message, "Subject")
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", text)
    assert "Bcc: v1@evil.example" in text
    assert header_text(message, "No-Such-Header") == ""

    class Broken:
        def get(self, *args):
            raise RuntimeError("boom")

    assert header_text(Broken(), "Subject") == ""


CHARSETS = [
    "utf-8",
    "iso-8859-1",
    "windows-1252",
    "gb2312",
    "gbk",
    "big5",
    "shift_jis",
    "euc-jp",
    "iso-2022-jp",
    "koi8-r",
    "windows-1251",
    "ks_c_5601-1987",
    "euc-kr",
    "utf-16",
    "utf-7",
    "x-unknown",
    "unknown-8bit",
    "us-ascii",
    "rot13",
    "unicode_escape",
    "idna",
    "undefined",
]
CONTROL_TEXT = st.text(alphabet=st.sampled_from(list('aZ é中\r\n\t\0\x1c\x85\u2028:<>,@"()=?_;\\')), max_size=30)
ANY_TEXT = st.one_of(CONTROL_TEXT, st.text(max_size=40))


@st.composite
def encoded_word(draw) -> bytes:
    charset = draw(st.sampled_from(CHARSETS))
    text = draw(ANY_TEXT)
    try:
        data = text.encode(forward._codec(charset) or "utf-8")
    except (UnicodeError, LookupError):
        data = text.encode("utf-8")
    data = draw(st.one_of(st.just(data), st.binary(max_size=20)))
    if draw(st.booleans()):
        return b"=?" + charset.encode() + b"?B?" + base64.b64encode(data) + b"?="
    q = b"".join(bytes([c]) if 0x21 <= c <= 0x7E and c not in b"=?_ " else b"=%02X" % c for c in data)
    return b"=?" + charset.encode() + b"?Q?" + q + b"?="


RAW_PIECE = st.one_of(
    encoded_word(),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(str.encode),
    st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),  # raw 8-bit and controls
    st.sampled_from(
        [
            b" ",
            b"\r\n ",
            b"\r\n\t",
            b", ",
            b"<a@example.net>",
            b'"quoted, name"',
            b"(comment)",
            b"boss@example.org",
            b"<attacker@evil.example>",
            b"\r\n",
            b"\r",
            b"\n",
        ]
    ),  # folds and breaks
)
RAW_VALUE = st.lists(RAW_PIECE, max_size=8).map(b"".join)
HEADER_NAME = st.sampled_from(
    [
        "Subject",
        "From",
        "Reply-To",
        "To",
        "Cc",
        "X-Custom",
        "Comments",
        "Keywords",
        "References",
        "List-Id",
        "Thread-Topic",
        "Organization",
        "X-BeenThere",
        "Content-Type",
        "Content-Disposition",
        "Date",
        "Message-ID",
        "Sender",
        "Bcc",
    ]
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(st.tuples(HEADER_NAME, RAW_VALUE), min_size=1, max_size=6),
    body=st.binary(max_size=60),
    route_name=st.sampled_from(sorted(ROUTES)),
)
@example(headers=[("Subject", b"=?utf-8?q?Hi=0D=0ABcc:_victim@evil.example?=")], body=b"x", route_name="class")
@example(headers=[("From", b"=?iso-8859-1?Q?M=FCller=2C_Hans?= <hans@example.net>")], body=b"", route_name="user")
@example(
    headers=[("Content-Disposition", b'attachment; filename="=?utf-8?q?a=0D=0AB:_c?="')], body=b"", route_name="cc_all"
)
@example(headers=[("Message-ID", b"<")], body=b"", route_name="user")
@example(headers=[("Message-ID", b"<a@[x>")], body=b"", route_name="user")
def test_no_header_input_starts_a_header_line(headers, body, route_name):
    raw = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body
    route = ROUTES[route_name]
    for fw in forwards_of(raw, route):
        check_forward(raw, fw, route)


@pytest.mark.parametrize(
    ("original", "kept"),
    [("<a.b@example.net>", True), ("<local-only>", True), ("<", False), ("<@b>", False), ("<a@[x>", False)],
)
def test_a_personal_forward_keeps_a_readable_message_id_and_replaces_one_readers_choke_on(original, kept):
    # given a message to one user whose Message-ID is well formed, or one Python's parser raises on
    raw = b"From: a@example.net\r\nSubject: hi\r\nMessage-ID: " + original.encode() + b"\r\n\r\nbody"
    # when it is forwarded
    (fw,) = forwards_of(raw, ROUTES["user"])
    # then the well-formed one is kept and the other replaced by a fresh one of the chapter's
    message = email.message_from_bytes(fw.raw, policy=policy.default)
    message_id = str(message["Message-ID"])
    assert (message_id == original) is kept
    if not kept:
        assert re.fullmatch(r"<[0-9a-f]{32}@[^>]+>", message_id)


@settings(max_examples=300, deadline=None, database=None)
@given(text=ANY_TEXT, used=st.integers(0, 40))
@example(text="Hi\r\nBcc: victim@evil.example", used=9)
@example(text="a" * 3000, used=9)
@example(text="  spaced   out  ", used=0)
def test_encoded_text_decodes_to_the_sanitised_text(text, used):
    value = encode_text(text, used)
    assert value.isascii() and all(len(line) + used <= 78 or len(line) <= 78 for line in value.split("\r\n"))
    assert all(line[:1] == " " and line.strip() for line in value.split("\r\n")[1:])
    expected = forward.sanitize(text).strip(" ")
    parsed = email.message_from_bytes(b"Subject: " + value.encode() + b"\r\n\r\n", policy=policy.default)
    assert str(parsed["Subject"]) == expected
    assert header_text(parse(b"Subject: " + value.encode() + b"\r\n\r\n"), "Subject") == expected.strip()


@settings(max_examples=300, deadline=None, database=None)
@given(
    name=ANY_TEXT,
    charset=st.sampled_from(["utf-8", "iso-8859-1", "gb18030", "shift_jis"]),
    encoding=st.sampled_from("QB"),
)
@example(name="Müller, Hans", charset="iso-8859-1", encoding="Q")
@example(name="boss@example.org <boss@example.org>", charset="utf-8", encoding="Q")
def test_original_sender_is_the_angle_address_whatever_the_encoded_name(name, charset, encoding):
    if charset == "iso-8859-1":
        assume(not re.search("[\x80-\x9f]", name))  # read as cp1252, as mislabelled mail needs
    try:
        data = name.encode(charset)
    except UnicodeError:
        data = name.encode("utf-8")
        charset = "utf-8"
    if encoding == "B":
        word = b"=?" + charset.encode() + b"?B?" + base64.b64encode(data) + b"?="
    else:
        word = (
            b"=?"
            + charset.encode()
            + b"?Q?"
            + b"".join(bytes([c]) if c < 128 and chr(c).isalnum() else b"=%02X" % c for c in data)
            + b"?="
        )
    message = parse(b"From: " + word + b" <hans@example.net>\r\n\r\n")
    got_name, address = original_sender(message)
    assert address == "hans@example.net"
    assert got_name == " ".join(forward.sanitize(name).split())
    (fw, *_) = forwards_of(b"From: " + word + b" <hans@example.net>\r\nSubject: x\r\n\r\nbody\r\n", ROUTES["class"])
    assert parse_mailboxes(parse(fw.raw)["Reply-To"]) == [(got_name, "hans@example.net")]
    back = email.message_from_bytes(fw.raw, policy=policy.default)
    ((python_name, python_address),) = [(a.display_name, a.addr_spec) for a in back["Reply-To"].addresses]
    assert python_address == "hans@example.net"
    # Python's address parser puts a space between adjacent encoded words (RFC 2047 drops it)
    assert python_name == got_name or python_name.replace(" ", "") == got_name.replace(" ", "")
    assert "hans@example.net" in back["X-ESP-SENDER"] and "\n" not in back["X-ESP-SENDER"]


@settings(max_examples=300, deadline=None, database=None)
@given(filename=st.one_of(st.text(min_size=1, max_size=80), CONTROL_TEXT), raw8=st.booleans())
@example(filename="résumé 履歴書.pdf", raw8=True)
@example(filename="a\r\nBcc: x.pdf", raw8=False)
@example(filename="x" * 300 + "é", raw8=True)
def test_attachment_names_survive_as_rfc2231(filename, raw8):
    """Raw 8-bit (UTF-8) or RFC 2231 names come out as RFC 2231 UTF-8, sanitised, whole."""
    assume("=?" not in filename and filename.strip())
    data = filename.encode("utf-8", "surrogatepass")
    assume(_utf8(data) and not (raw8 and re.search(rb"[\r\n]", data)))
    if raw8:
        quoted = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        header = (b'attachment; filename="' + quoted + b'"').decode("ascii", "surrogateescape")
    else:
        header = "attachment; filename*=utf-8''" + "".join(f"%{b:02X}" for b in data)
    out = forward.safe_header("Content-Disposition", header)
    assert out.isascii() and all(len(line) <= 998 for line in out.split("\r\n"))
    raw = b"Content-Disposition: " + out.encode() + b"\r\n\r\n"
    readers = {
        forward.sanitize(email.message_from_bytes(raw, policy=p).get_filename() or "").strip()
        for p in (policy.default, policy.compat32)
    }
    # the stdlib's readers differ on names in <...> or quotes (and strip white space): one of them must agree
    assert forward.sanitize(filename).strip() in readers or re.search('[<>"]', filename)
    if not forward.sanitize(filename).isascii():
        assert "filename*" in out


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- 2. real charsets -------------------------------------------------------------------------------


def test_a_gbk_subject_in_folded_gb2312_words_forwards_as_utf8():
    raw = corpus_message("hostile/gbk-folded-subject.eml")
    assert header_text(parse(raw), "Subject") == "朱镕基与喆堃的会议通知"
    (fw, *_) = forwards_of(raw, ROUTES["class"])
    back = email.message_from_bytes(fw.raw, policy=policy.default)
    assert back["Subject"] == "[E1234] 朱镕基与喆堃的会议通知"
    attachment = next(p for p in back.walk() if p.get_filename())
    assert attachment.get_filename() == "通知.pdf"
    (fw,) = forwards_of(raw, ROUTES["user"])  # carried as it came: the declared charset, not re-encoded
    assert b"Subject: =?gb2312?B?" in fw.raw


def test_a_raw_utf8_filename_becomes_rfc2231_utf8():
    raw = corpus_message("hostile/raw-utf8-filename.eml")
    for route in ROUTES.values():
        for fw in forwards_of(raw, route):
            assert b"filename*=utf-8''r%C3%A9sum%C3%A9%20%E5%B1%A5%E6%AD%B4%E6%9B%B8.pdf" in fw.raw
            assert b"unknown-8bit" not in fw.raw
            back = email.message_from_bytes(fw.raw, policy=policy.default)
            attachment = next(p for p in back.walk() if p.get_filename())
            assert attachment.get_filename() == "résumé 履歴書.pdf"
            assert (
                attachment.get_content()
                == email.message_from_bytes(raw, policy=policy.default).get_payload()[1].get_content()
            )


@pytest.mark.parametrize(
    ("name", "subject", "filenames"),
    [
        ("hostile/japanese-iso-2022-jp.eml", "会議のお知らせ", ["資料.pdf", "議事録.pdf"]),
        ("hostile/korean-ks_c_5601.eml", "똠방각하 회의", []),
        ("hostile/raw-8bit-filename-latin1.eml", "latin-1 name", ["café menü.bin"]),
        ("hostile/rfc2231-continuations.eml", "continued filename", ["文件名….pdf"]),
        # white space between encoded words is no text (RFC 2047 6.2)
        ("hostile/mislabelled-charsets.eml", "\u201cQuoted\u201d \u2013 café✓ okcafé", []),
        ("hostile/raw-8bit-headers.eml", "Réunion – café", []),
        (
            "clients/django-mailbox-message_with_utf8_attachment.eml",
            None,
            ["piłkochwyty.jpg", "odpowiedź Burmistrza.jpg"],
        ),
    ],
)
def test_legacy_and_mislabelled_charsets_are_read(name, subject, filenames):
    raw = corpus_message(name)
    if subject is not None:
        assert header_text(parse(raw), "Subject") == subject
    original = forward.raw_header(parse(raw), "Subject")
    for route in ROUTES.values():
        for fw in forwards_of(raw, route):
            back = email.message_from_bytes(fw.raw, policy=policy.default)
            if subject is not None:
                # re-encoded as UTF-8 when tagged or unsafe, else carried as it came (Python reads
                # ks_c_5601-1987 as EUC-KR, not as the CP949 Outlook sends, so compare raw then)
                kept = forward.raw_header(parse(fw.raw), "Subject") == original
                assert kept or str(back["Subject"]).endswith(subject)
                assert header_text(parse(fw.raw), "Subject").endswith(subject)
            assert [p.get_filename() for p in back.walk() if p.get_filename()] == filenames


def test_raw_8bit_header_names_are_decoded_for_reply_to_and_x_esp_sender():
    raw = corpus_message("hostile/raw-8bit-headers.eml")
    assert original_sender(parse(raw)) == ("José García", "jose@example.net")
    (fw, *_) = forwards_of(raw, ROUTES["class"])
    back = email.message_from_bytes(fw.raw, policy=policy.default)
    assert back["X-ESP-SENDER"] == "José García <jose@example.net>"
    assert back["From"].addresses[0].display_name == "José García via ESP Website"
    (fw,) = forwards_of(raw, ROUTES["user"])
    to = email.message_from_bytes(fw.raw, policy=policy.default)["To"]
    assert [(a.display_name, a.addr_spec) for a in to.addresses] == [
        ("Zoë", "zoe@example.org"),
        ("Ærø", "aero@example.org"),
    ]


# -- 3. addresses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sender"),
    [
        ("hostile/from-comma-in-encoded-name.eml", ("Müller, Hans", "hans@example.net")),
        ("hostile/from-address-as-display-name.eml", ("boss@example.org", "attacker@evil.example")),
        ("hostile/from-angle-in-encoded-name.eml", ("boss@example.org <boss@example.org>", "attacker@evil.example")),
        ("hostile/injection-from-name.eml", ("Evil Bcc: victim@evil.example", "evil@example.net")),
        ("clients/mail-parser-mail_test_18.eml", None),
        ("clients/mail-parser-mail_test_19.eml", None),
    ],
)
def test_original_sender_reads_the_raw_header(name, sender):
    message = parse(corpus_message(name))
    got = original_sender(message)
    if sender is not None:
        assert got == sender
    else:  # whatever the name says, the address is the one in angle brackets
        angle = re.search(r"<([^<>]+@[^<>]+)>\s*$", str(message["From"]).strip())
        assert angle and got[1] == angle.group(1)
    (fw, *_) = forwards_of(corpus_message(name), ROUTES["class"])
    reply_to = email.message_from_bytes(fw.raw, policy=policy.default)["Reply-To"]
    chosen = forward.raw_header(message, "Reply-To")  # the sender's own Reply-To, if any, is kept
    assert [(a.display_name, a.addr_spec) for a in reply_to.addresses] == (parse_mailboxes(chosen) if chosen else [got])


def test_addresses_round_trip_through_format_and_parse():
    people = [
        ("Müller, Hans", "hans@example.net"),
        ('Say "hi"', "a@example.net"),
        ("", "b@example.net"),
        ("x" * 300, "c@example.net"),
        ("中文 名字", "d@example.net"),
        ("Bad", "not an address"),
    ]
    value = format_addresses(people, len("To: "))
    assert value.isascii() and all(len(line) <= 78 for line in value.split("\r\n"))
    assert parse_mailboxes(value) == people[:5]
    assert format_addresses([("", "nope")]) == "undisclosed-recipients:;"


# -- 4. Date, Message-ID and the SES recipient limit -------------------------------------------------


def test_every_forward_has_a_date_and_a_message_id():
    raw = corpus_message("hostile/no-date-no-message-id.eml")
    for route in ROUTES.values():
        for fw in forwards_of(raw, route):
            back = email.message_from_bytes(fw.raw, policy=policy.default)
            assert back["Date"].datetime is not None
            assert back["Message-ID"].endswith(f"@{DOMAIN}>")
    kept = corpus_message("hostile/to-60-addresses.eml")
    (fw,) = forwards_of(kept, ROUTES["user"])
    back = email.message_from_bytes(fw.raw, policy=policy.default)
    assert back["Message-ID"] == "<hostile.60@mail.example.net>"  # a non-group forward keeps its id and Date
    assert back["Date"] == "Mon, 02 Mar 2026 10:00:00 +0000"
    (fw, *_) = forwards_of(kept, ROUTES["class"])
    assert email.message_from_bytes(fw.raw, policy=policy.default)["Message-ID"] != "<hostile.60@mail.example.net>"


def test_only_cc_all_copies_are_addressed_by_headers():
    raw = corpus_message("clients/talon-gmail.eml")
    assert all(f.addressed_by_headers for f in forwards_of(raw, ROUTES["cc_all"]))
    assert not any(f.addressed_by_headers for f in forwards_of(raw, ROUTES["class"]) + forwards_of(raw, ROUTES["user"]))


def test_a_user_forward_of_mail_to_60_people_keeps_them_out_of_the_ses_count():
    raw = corpus_message("hostile/to-60-addresses.eml")
    (fw,) = forwards_of(raw, ROUTES["user"])
    back = email.message_from_bytes(fw.raw, policy=policy.default)
    assert str(back["To"]) == "undisclosed-recipients:;" and back["Cc"] is None
    kept = email.message_from_bytes(raw, policy=policy.default)
    assert [a for _, a in parse_mailboxes(back[ORIGINAL_TO])] == [a.addr_spec for a in kept["To"].addresses]
    assert len(parse_mailboxes(back["X-DBMail-Original-Cc"])) == 5
    # a short To stays as it was
    (fw,) = forwards_of(corpus_message("clients/talon-gmail.eml"), ROUTES["user"])
    assert (
        email.message_from_bytes(fw.raw, policy=policy.compat32)["To"]
        == parse(corpus_message("clients/talon-gmail.eml"))["To"]
    )


def test_moto_counts_header_recipients_even_with_explicit_destinations(monkeypatch):
    """What moto 5 does (moto/ses/models.py send_raw_email): it adds every address in the To, Cc
    and Bcc headers to the explicit destinations and refuses more than 50. So a forward that
    kept a 60-address To would fail there with "Too many recipients"; ours goes through."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    raw = corpus_message("hostile/to-60-addresses.eml")
    with mock_aws():
        boto3.client("ses", region_name="us-east-1").verify_domain_identity(Domain=DOMAIN)
        transport = SesTransport(boto3.client("sesv2", region_name="us-east-1"))
        with pytest.raises(DeliveryError, match="Too many recipients"):
            transport.send_raw(raw, f"noreply@{DOMAIN}", ["teacher@example.net"])
        (fw,) = forwards_of(raw, ROUTES["user"])
        assert transport.send_raw(fw.raw, f"noreply@{DOMAIN}", list(fw.destinations))
        for fw in forwards_of(raw, ROUTES["cc_all"]):  # headers only, at most 50
            assert transport.send_raw(fw.raw, "lists@example.org", None)
        for fw in forwards_of(raw, ROUTES["class"]):
            assert transport.send_raw(fw.raw, f"noreply@{DOMAIN}", list(fw.destinations))


# -- 5. loops -----------------------------------------------------------------------------------------


def test_x_beenthere_is_added_after_the_ones_already_there():
    raw = corpus_message("hostile/been-there.eml")
    assert been_there(parse(raw)) == ["e1234-class@example.org", "other-list@lists.example.net"]
    (fw, *_) = forwards_of(raw, ROUTES["class"], list_address="E1234-Teachers@example.org")
    back = parse(fw.raw)
    assert back.get_all(BEEN_THERE) == [
        "E1234-class@example.org",
        "<other-list@lists.example.net>",
        "E1234-Teachers@example.org",
    ]
    assert been_there(back) == ["e1234-class@example.org", "other-list@lists.example.net", "e1234-teachers@example.org"]
    assert back.get_all(LOOP_HEADER) == [DOMAIN]
    assert been_there(parse(corpus_message("clients/talon-gmail.eml"))) == []


def test_rewrite_without_a_list_address_adds_no_x_beenthere():
    message = rewrite(
        corpus_message("clients/talon-gmail.eml"), ROUTES["class"], site_name="ESP", chapter_domain=DOMAIN
    )
    assert message.get_all(BEEN_THERE) is None and message[LOOP_HEADER] == DOMAIN


# -- 6. subject tags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "route_name", "expected"),
    [
        (b"Re: [E1234] Trip", "class", "Re: [E1234] Trip"),
        (b"Re: [e1234]   Trip", "class", "Re: [e1234]   Trip"),
        (b"=?utf-8?q?RE=3A_=5Be1234=5D_Fahrt_nach_M=C3=BCnchen?=", "class", "RE: [e1234] Fahrt nach München"),
        (b"Trip", "class", "[E1234] Trip"),
        (b"Re: [M77] Trip", "cc_all", "[Splash] Re: [M77] Trip"),
        (b"Re: [M77] [splash] Trip", "cc_all", "Re: [M77] [splash] Trip"),
        (b"Trip", "cc_all", "[M77] [Splash] Trip"),
    ],
)
def test_a_tag_already_in_the_subject_is_not_added_again(subject, route_name, expected):
    raw = b"From: a@example.net\r\nSubject: " + subject + b"\r\n\r\nbody\r\n"
    (fw, *_) = forwards_of(raw, ROUTES[route_name])
    assert email.message_from_bytes(fw.raw, policy=policy.default)["Subject"] == expected


def test_an_untouched_subject_keeps_its_raw_value():
    raw = corpus_message("hostile/re-tag-subject-encoded.eml")
    (fw, *_) = forwards_of(raw, ROUTES["class"])
    assert b"Subject: =?utf-8?q?RE=3A_=5Be1234=5D_Fahrt_nach_M=C3=BCnchen?=\r\n" in fw.raw


# -- 7. automatic mail ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "automatic", "listed"),
    [
        (corpus_message("hostile/auto-reply.eml"), True, False),
        (corpus_message("hostile/auto-response-suppress.eml"), True, False),
        (corpus_message("hostile/list-mail.eml"), True, True),
        (corpus_message("clients/talon-gmail.eml"), False, False),
        (b"Auto-Submitted: no\r\n\r\nx", False, False),
        (b"Auto-Submitted: auto-generated\r\n\r\nx", True, False),
        (b"Precedence: BULK\r\n\r\nx", True, False),
        (b"Precedence: junk (spam)\r\n\r\nx", True, False),
        (b"Precedence: first-class\r\n\r\nx", False, False),
        (b"X-Autoreply: yes\r\n\r\nx", True, False),
        (b"List-Id: <x.example.net>\r\n\r\nx", True, True),
    ],
)
def test_automatic_mail_is_recognised(raw, automatic, listed):
    message = parse(raw)
    assert is_automatic(message) is automatic
    assert is_list_mail(message) is listed


# -- bodies -------------------------------------------------------------------------------------------


def test_overlong_and_8bit_bodies_are_base64_with_the_same_bytes():
    raw = corpus_message("hostile/overlong-lines.eml")
    (fw,) = forwards_of(raw, ROUTES["user"])
    back = email.message_from_bytes(fw.raw, policy=policy.compat32)
    assert back["Content-Transfer-Encoding"] == "base64"
    assert back.get_payload(decode=True) == parse(raw).get_payload(decode=True)
    assert str(email.message_from_bytes(fw.raw, policy=policy.default)["Subject"]) == "A" * 3000


def test_a_multipart_without_its_boundary_goes_as_text():
    raw = corpus_message("hostile/boundary-missing.eml")
    (fw,) = forwards_of(raw, ROUTES["user"])
    back = email.message_from_bytes(fw.raw, policy=policy.default)
    assert back.get_content_type() == "text/plain" and "non-ascii ü body" in back.get_content()


@pytest.mark.parametrize("name", ["clients/talon-gmail.eml", "hostile/gbk-folded-subject.eml"])
def test_per_person_forwards_share_one_serialised_body_and_differ_only_in_to(name):
    # given a group route to several people
    people = tuple(Person(f"Pérson {i}", f"p{i}@example.net") for i in range(5))
    group = Route(EmailListRule("c", r"^(x)$", 1, "ClassList"), people, group=True, subject_tag="E1")
    raw = dict(CORPUS)[name]
    forwards = forwards_of(raw, group)
    # then every forward is the same message but for its To line, naming only its person
    assert len({id(fw.body) for fw in forwards}) == 1
    for fw, person in zip(forwards, people):
        back = email.message_from_bytes(fw.raw, policy=policy.default)
        assert [a.addr_spec for a in back["To"].addresses] == [person.email]
        assert back["To"].addresses[0].display_name == person.name
        check_forward(raw, fw, group)
    strip_to = [re.sub(rb"\r\nTo: [^\r]*(\r\n[ \t][^\r]*)*", b"", fw.head) for fw in forwards]
    assert len(set(strip_to)) == 1


def test_a_large_message_to_many_goes_as_a_few_copies_to_the_list_address():
    # given a 1.4 MB message to a class of 100
    from dataclasses import replace

    people = tuple(Person(None, f"s{i}@example.net") for i in range(100))
    big = replace(ROUTES["class"], recipients=people, list_address=LIST)
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "Pa <pa@example.net>", LIST, "Photos"
    message.set_content("All the photos.\n")
    message.add_attachment(bytes(range(256)) * 4096, maintype="application", subtype="zip", filename="photos.zip")
    raw = message.as_bytes(policy=policy.SMTP)
    forwards = forwards_of(raw, big)
    # then it goes as three copies of at most 49 envelope recipients (To, naming the list, counts too)
    assert [len(fw.destinations) for fw in forwards] == [49, 49, 2]
    assert sorted(d for fw in forwards for d in fw.destinations) == sorted(p.email for p in people)
    for fw in forwards:
        back = email.message_from_bytes(fw.raw, policy=policy.default)
        assert [a.addr_spec for a in back["To"].addresses] == [LIST]
    assert len({fw.part for fw in forwards}) == 3 and len({id(fw.body) for fw in forwards}) == 1
