"""Inbound mail from the real world, end to end on the session's local stack.

Every message here goes the whole way: SMTP (smtplib, CRLF bytes) to the runner's SMTP front that
plays SES receiving, which stores it in S3 and invokes the inbound function; the router reads the
rules, redirects and directory from DynamoDB Local and forwards through moto's SES, whose outbox
holds each forward as the raw .eml SES was handed. Results are read from the InboundMessage
records (by the SES message id in the 250 reply to DATA) and from the outbox.

The stack is shared by the session, so every test uses class ids, addresses and redirects of its
own (and the DIRECTORY class 1234 / the `directors` redirect exactly as test_inbound.py publishes
them). The local moto plays the SES hop (mail SES sends to a chapter address comes back in
through the SMTP front, see local/README.md): directors of our own classes are outside the
chapter domain except where a test wants the hop, and `Harness.ses_hop` is the one place that
waits for it.
"""

from __future__ import annotations

import codecs
import email
import email.utils
import os
import random
import re
import smtplib
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header
from email.message import EmailMessage
from pathlib import Path

import pytest

from dbmail import cli, wiring
from dbmail.client import add_email_list, install_default_email_lists, publish_directory, set_plain_redirect
from dbmail.core import models, settings
from dbmail.core.statuses import InboundStatus
from dbmail.inbound import forward
from dbmail.inbound.routing import EmailListRule
from dbmail.inbound.store import InboundStore
from tests.conftest import DIRECTORY
from tests.corpus import corpus_messages

pytestmark = pytest.mark.integration

DOMAIN = "example.org"  # the local stack's ChapterDomains
SES_MESSAGE_ID = re.compile(rb"Ok ([0-9a-v]{40})")
ASYNC_ATTEMPTS = 3  # one invocation and the InboundFunction's MaximumRetryAttempts (2)
MAX_SMTP_LINE = 998  # aiosmtpd refuses lines over 1,000 characters with the CRLF (RFC 5321 4.5.3.1.6)
HEADER_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+):")
AUTOMATIC_MARKERS = (
    "auto-submitted",
    "precedence",
    "x-autoreply",
    "x-autorespond",
    "x-auto-response-suppress",
    "list-id",
)


# ---- SMTP ------------------------------------------------------------------------------------


def to_crlf(raw: bytes) -> bytes:
    """Every line end as CRLF (bare CR and bare LF too), as an MTA in front of SES would send it."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", raw)


def smtp() -> smtplib.SMTP:
    client = smtplib.SMTP(os.environ["DBMAIL_LOCAL_SMTP_HOST"], int(os.environ["DBMAIL_LOCAL_SMTP_PORT"]), timeout=120)
    client.ehlo("client.outside.test")
    return client


def transmit(client: smtplib.SMTP, raw: bytes, recipients: Iterable[str], sender: str = "sender@example.net") -> str:
    """One SMTP transaction with the raw bytes as they are; returns SES's message id.

    This is smtplib's sendmail (MAIL, RCPT, DATA with bytes, which smtplib sends as they are,
    dot-stuffed) step by step, because sendmail drops the 250 reply to DATA that names the id."""
    options = ["BODY=8BITMIME"] if not raw.isascii() and client.has_extn("8bitmime") else []
    code, reply = client.mail(sender, options)
    assert code == 250, reply
    for recipient in recipients:
        code, reply = client.rcpt(recipient)
        assert code == 250, (recipient, reply)
    code, reply = client.data(raw)
    assert code == 250, reply
    match = SES_MESSAGE_ID.search(reply)
    assert match, reply
    return match.group(1).decode()


def send_one(raw: bytes, recipients: Iterable[str], sender: str = "sender@example.net") -> str:
    with smtp() as client:
        return transmit(client, raw, recipients, sender)


def message(
    to: str,
    subject: str,
    body: str = "See you Saturday.\n",
    sender: str = '"Pa Rent" <parent@example.net>',
    **headers: str,
) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = f"<{uuid.uuid4().hex}@mail.example.net>"
    for name, value in headers.items():
        m[name.replace("_", "-")] = value
    m.set_content(body)
    return m.as_bytes(policy=policy.SMTP)


def token() -> str:
    return uuid.uuid4().hex[:12]


# ---- the outbox --------------------------------------------------------------------------------


@dataclass
class Sent:
    """One .eml in the outbox: its header block, parsed once."""

    path: Path
    head: bytes
    to: tuple[str, ...]
    subject: str

    def raw(self) -> bytes:
        return self.path.read_bytes()


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = f.read(65536)
            if not chunk:
                break
            data += chunk
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


class Outbox:
    """An index of the outbox (files are written whole, then renamed in): only new files are read."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sent: dict[str, Sent] = {}

    def refresh(self) -> list[Sent]:
        for path in sorted(self.directory.glob("*.eml")):
            if path.name not in self._sent:
                head = _head(path)
                parsed = email.message_from_bytes(head + b"\r\n", policy=policy.default)
                try:
                    to = tuple(a.addr_spec.lower() for a in parsed["To"].addresses) if parsed["To"] else ()
                except Exception:
                    to = ()
                try:
                    subject = str(parsed["Subject"] or "")
                except Exception:
                    subject = ""
                self._sent[path.name] = Sent(path, head, to, subject)
        return list(self._sent.values())

    def matching(self, *, subject: str | None = None, to: Iterable[str] | None = None) -> list[Sent]:
        wanted = {a.lower() for a in to} if to is not None else None
        return [
            s
            for s in self.refresh()
            if (subject is None or subject in s.subject) and (wanted is None or wanted & set(s.to))
        ]

    def forget(self, sent: Iterable[Sent]) -> None:
        """Deletes these files (a 12 MB message to 150 people is 1.8 GB of outbox)."""
        for s in sent:
            s.path.unlink(missing_ok=True)
            self._sent.pop(s.path.name, None)


def recipients(sent: Iterable[Sent]) -> list[str]:
    return sorted(a for s in sent for a in s.to)


# ---- the stack ---------------------------------------------------------------------------------


@dataclass
class Harness:
    local_stack: object
    store: InboundStore
    bucket: str
    outbox: Outbox

    def s3(self):
        return self.local_stack.client("s3")

    def stored(self, message_id: str) -> bytes:
        """The message as SES stored it (its trace headers on top): what dbmail received."""
        item = self.store.get(message_id)
        return self.s3().get_object(Bucket=self.bucket, Key=item.s3_key)["Body"].read()

    def settle(self, message_ids: Iterable[str], timeout: float = 60.0) -> dict[str, object]:
        """Waits until each message is final (a failure counts once Lambda's retries are spent)."""
        pending = list(dict.fromkeys(message_ids))
        done: dict[str, object] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for message_id in list(pending):
                item = self.store.get(message_id)
                if settled(item):
                    done[message_id] = item
                    pending.remove(message_id)
            if not pending:
                break
            if time.monotonic() > deadline:
                states = {m: getattr(self.store.get(m), "status", None) for m in pending[:10]}
                pytest.fail(f"{len(pending)} inbound messages not final within {timeout} s: {states}")
            time.sleep(0.1)
        return done

    def settle_one(self, message_id: str, timeout: float = 60.0):
        return self.settle([message_id], timeout)[message_id]

    def inbound_for(self, address: str, text: str, exclude: Iterable[str] = ()) -> list:
        """InboundMessage records whose recipients include ``address`` and whose subject has ``text``."""
        address, exclude = address.lower(), set(exclude)
        return [
            item
            for status in ALL_STATUSES
            for item in self.store.with_status(status)
            if item.message_id not in exclude
            and text in (item.subject or "")
            and address in [r.lower() for r in item.recipients]
        ]

    def ses_hop(self, sent: Sent, chapter_address: str, text: str, exclude: Iterable[str] = (), timeout: float = 30.0):
        """What SES does, once deployed, with a forward it sends to one of our own addresses: the
        forward comes back in through SES receiving. The local stack's moto relays such sends into
        the SMTP front (SesHop); this waits for the one InboundMessage the relay made of ``sent``
        (found by the address and ``text`` in its subject) and returns it once final. On a stack
        without that relay, this is where the forward's bytes would be sent over SMTP instead."""
        assert chapter_address.lower() in sent.to
        deadline = time.monotonic() + timeout
        while True:
            found = [item for item in self.inbound_for(chapter_address, text, exclude) if settled(item)]
            if found:
                assert len(found) == 1, [(i.message_id, i.status) for i in found]
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"the forward to {chapter_address} did not come back through the SES hop in {timeout} s")
            time.sleep(0.1)

    def settle_with_hops(self, message_ids: Iterable[str], text: str, timeout: float = 60.0) -> dict[str, object]:
        """settle(), and then every forward with ``text`` in its subject that went to a chapter
        address has come back through the SES hop and is final too (again while hops make more)."""
        message_ids = list(message_ids)
        done = self.settle(message_ids, timeout)
        while True:
            hops = Counter(a for s in self.outbox.matching(subject=text) for a in s.to if a.endswith(f"@{DOMAIN}"))
            deadline = time.monotonic() + timeout
            while True:
                found = {a: self.inbound_for(a, text, exclude=message_ids) for a in hops}
                if all(len(items) >= hops[a] and all(settled(i) for i in items) for a, items in found.items()):
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"forwards to chapter addresses did not come back through the SES hop: {dict(hops)}")
                time.sleep(0.1)
            new = {i.message_id: i for items in found.values() for i in items if i.message_id not in done}
            if not new:
                return done
            done.update(new)


ALL_STATUSES = (InboundStatus.RECEIVED, InboundStatus.FAILED, *sorted(InboundStatus.FINAL))


def settled(item) -> bool:
    if item is None:
        return False
    if item.status in InboundStatus.FINAL:
        return True
    return item.status == InboundStatus.FAILED and int(item.attempts or 0) >= ASYNC_ATTEMPTS


def clear_caches() -> None:
    settings.website_settings.cache_clear()
    models.bind_models.cache_clear()
    wiring.inbound_router.cache_clear()


@pytest.fixture(scope="module")
def harness(local_stack):
    clear_caches()
    config = settings.website_settings().require_inbound()
    store = InboundStore(config)
    install_default_email_lists(store=store)
    publish_directory(**DIRECTORY, store=store)  # the same data test_inbound.py publishes
    if store.redirect("directors") is None:
        set_plain_redirect("directors", "Dir One <dir1@example.net>, dir2@example.net", store=store)
    yield Harness(local_stack, store, config.inbound_bucket, Outbox(local_stack.outbox))
    clear_caches()


def a_class(
    class_id: int, *, directors: str, teachers: Iterable[str] = (), sections: Iterable[Iterable[str]] = ()
) -> dict:
    return {
        "class_id": class_id,
        "emailcode": f"E{class_id}",
        "program_name": "Real World",
        "directors_email": directors,
        "teachers": [{"name": "Tea Cher", "email": t} for t in teachers],
        "sections": [
            {
                "index": i,
                "emailcode": f"E{class_id}s{i}",
                "students": [{"name": "Stu Dent", "email": s} for s in students],
            }
            for i, students in enumerate(sections, start=1)
        ],
    }


def people_of(cls: dict) -> list[str]:
    found = [
        cls["directors_email"],
        *(t["email"] for t in cls["teachers"]),
        *(s["email"] for section in cls["sections"] for s in section["students"]),
    ]
    return sorted(dict.fromkeys(a.lower() for a in found))


# ---- checking a forward ------------------------------------------------------------------------


def header_lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n")


def header_names(head: bytes) -> list[str]:
    """The field name of every header line of a forward; a line that is neither a field nor a
    continuation fails the test."""
    names = []
    for line in header_lines(head):
        if line[:1] in (b" ", b"\t"):
            assert names and line.strip(), f"continuation line without a field, or blank: {line[:80]!r}"
            continue
        match = HEADER_NAME.match(line)
        assert match, f"not a header line: {line[:80]!r}"
        names.append(match.group(1).decode("ascii").lower())
    return names


def assert_wire_clean(raw: bytes) -> None:
    """7-bit ASCII, CRLF line ends only, lines of at most 998 characters."""
    assert raw.isascii(), "forward is not 7-bit ASCII"
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", raw) is None, "bare CR or LF in the forward"
    longest = max(len(line) for line in raw.split(b"\r\n"))
    assert longest <= 998, f"a line of {longest} characters"


def expected_reply_to(original) -> list[str]:
    """The sender's own Reply-To if there is one, else the From address (dbmail's reading of the
    raw header: the address in angle brackets)."""
    own = forward.raw_header(original, "Reply-To")
    if own is not None:
        return [a.lower() for _, a in forward.parse_mailboxes(own)]
    if forward.been_there(original):  # one of our forwards come back: X-ESP-SENDER names its writer
        earlier = forward.parse_mailboxes(forward.raw_header(original, "X-ESP-SENDER") or "")
        if earlier:
            return [earlier[0][1].lower()]
    _, address = forward.original_sender(original)
    return [address.lower()] if address else []


def leaves(msg) -> list:
    return [part for part in msg.walk() if not part.is_multipart()]


def is_attachment(part) -> bool:
    try:
        if part.get_filename():
            return True
    except Exception:
        return True
    disposition = str(part.get("Content-Disposition") or "").strip().lower()
    return disposition.startswith("attachment") or part.get_content_maintype() not in ("text", "multipart", "message")


def assert_same_parts(original_raw: bytes, forward_raw: bytes) -> int:
    """Each attachment (and each other leaf) decodes to the same bytes; returns the attachments compared."""
    original, forwarded = leaves(forward.parse(original_raw)), leaves(forward.parse(forward_raw))
    assert len(original) == len(forwarded), "the forward's MIME structure differs"
    attachments = 0
    for i, (a, b) in enumerate(zip(original, forwarded)):
        before, after = a.get_payload(decode=True) or b"", b.get_payload(decode=True) or b""
        if is_attachment(a):
            attachments += 1
            assert after == before, f"attachment {i} ({a.get_content_type()}) is not byte-identical after decoding"
        else:  # text: the same bytes, allowing for the line end before a boundary
            assert after.replace(b"\r\n", b"\n").rstrip(b"\n") == before.replace(b"\r\n", b"\n").rstrip(b"\n"), (
                f"text part {i} changed"
            )
    return attachments


def check_group_forward(sent: Sent, original_raw: bytes, people: Iterable[str], list_address: str) -> None:
    """One per-person forward of a class list: on the wire, its headers, its addressing, its body."""
    raw = sent.raw()
    assert_wire_clean(raw)
    names = header_names(sent.head)
    original = forward.parse(original_raw)
    allowed = {name.strip().lower() for name in original.keys()} | forward.ADDED
    assert set(names) <= allowed, f"headers neither in the original nor dbmail's: {sorted(set(names) - allowed)}"
    assert not set(names) & forward.STRIPPED, f"stripped headers present: {sorted(set(names) & forward.STRIPPED)}"
    assert "cc" not in names and "bcc" not in names
    assert names.count("to") == 1 and len(sent.to) == 1 and sent.to[0] in people, sent.to
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["From"].addresses[0].addr_spec == f"noreply@{DOMAIN}"
    reply_to = [a.addr_spec.lower() for a in parsed["Reply-To"].addresses] if parsed["Reply-To"] else []
    assert reply_to == expected_reply_to(original)
    assert list_address in [a.lower() for a in parsed.get_all(forward.BEEN_THERE, [])]
    assert_same_parts(original_raw, raw)


# ---- 1 and 3: the corpus -----------------------------------------------------------------------


def smtp_ready(raw: bytes) -> tuple[bytes | None, str]:
    """The message as it can cross SMTP (CRLF), and what had to be adjusted; None when it cannot.

    aiosmtpd refuses lines over 1,000 characters, as RFC 5321 lets it. Body lines over 998 are
    broken where nothing changes: base64 at 76 characters (decoders skip line ends) and HTML
    between tags (so clients/talon-outlook.eml and hostile/base64-junk.eml are sent adjusted). A
    message with such a header line, or another long body line, is skipped:
    hostile/overlong-lines.eml (a 3,000-character Subject and References, a 5,000-character body
    line) is forwarded by tests/unit/test_forward.py instead. Line ends become CRLF, bare CR
    included, so hostile/bare-cr-and-lf.eml arrives with its Bcc as a real header line (which
    dbmail strips: STRIPPED)."""
    raw = to_crlf(raw)
    end = raw.find(b"\r\n\r\n")
    head, body = (raw, b"") if end < 0 else (raw[: end + 4], raw[end + 4 :])
    if any(len(line) > MAX_SMTP_LINE for line in head.split(b"\r\n")):
        return None, "a header line over 998 characters cannot cross SMTP (aiosmtpd refuses it)"
    lines, adjusted = [], []
    for line in body.split(b"\r\n"):
        if len(line) <= MAX_SMTP_LINE:
            lines.append(line)
        elif re.fullmatch(rb"[A-Za-z0-9+/=]+", line):
            lines.extend(line[i : i + 76] for i in range(0, len(line), 76))
            adjusted.append("a long base64 line wrapped at 76")
        elif b"><" in line:
            pieces, current = [], b""
            for piece in re.split(rb"(?<=>)(?=<)", line):
                if current and len(current) + len(piece) > MAX_SMTP_LINE:
                    pieces.append(current)
                    current = b""
                current += piece
            pieces.append(current)
            if any(len(p) > MAX_SMTP_LINE for p in pieces):
                return None, "a body line over 998 characters cannot cross SMTP"
            lines.extend(pieces)
            adjusted.append("a long HTML line broken between tags")
        else:
            return None, "a body line over 998 characters cannot cross SMTP (aiosmtpd refuses it)"
    return head + b"\r\n".join(lines), "; ".join(sorted(set(adjusted)))


CORPUS = list(corpus_messages())
CORPUS_NAMES = [name for name, _ in CORPUS]
CORPUS_CLASS_BASE = 710000  # class 710000 + i for corpus message i
AUTOMATIC_RULE = "rw-corpus-automatic"
_CHARSET = re.compile(rb'(?i)charset\*?=\s*"?([A-Za-z0-9_\-:.]+)|=\?([A-Za-z0-9_\-]+)(?:\*[^?]*)?\?[bqBQ]\?')


def legacy_charsets(raw: bytes) -> set[str]:
    """The charsets a message declares (parameters and encoded words) other than ASCII and UTF-8."""
    found = set()
    for param, word in _CHARSET.findall(raw):
        name = (param or word).decode("ascii").lower()
        try:
            codec = codecs.lookup(name).name
        except LookupError:
            continue
        if codec not in ("ascii", "utf-8"):
            found.add(name)
    return found


LEGACY = [name for name, raw in CORPUS if legacy_charsets(raw)]


@dataclass
class CorpusCase:
    name: str
    index: int
    sent: bytes | None
    note: str
    people: list[str]
    first: str | None = None  # SES id of the message to the default class list
    second: str | None = None  # ...and, for automatic mail the default list refused, to one that takes it
    items: dict[str, object] = field(default_factory=dict)

    @property
    def class_id(self) -> int:
        return CORPUS_CLASS_BASE + self.index

    def address(self, wave: int) -> str:
        return f"{'E' if wave == 1 else 'rwauto'}{self.class_id}-class@{DOMAIN}"

    @property
    def forwarded(self) -> str | None:
        """The SES id whose record says forwarded."""
        for message_id in (self.first, self.second):
            if message_id and self.items[message_id].status == InboundStatus.FORWARDED:
                return message_id
        return None


def has_automatic_marker(raw: bytes) -> bool:
    msg = forward.parse(raw)
    for name in AUTOMATIC_MARKERS:
        value = forward.header_text(msg, name).lower()
        if forward.raw_header(msg, name) is None:
            continue
        if name == "auto-submitted" and value.split(";")[0].strip() in ("", "no"):
            continue
        if name == "precedence" and value.split(";")[0].strip() not in ("bulk", "junk", "list", "auto_reply"):
            continue
        return True
    return False


@pytest.fixture(scope="module")
def corpus_run(harness):
    """Every corpus message to a class list of its own (directors, a teacher, a student), one SMTP
    transaction each, back to back on one connection; then the automatic ones the list refused
    again to a class rule that takes automatic mail, so that every message has forwards to check."""
    cases = {}
    for i, (name, raw) in enumerate(CORPUS):
        sent, note = smtp_ready(raw)
        people = [f"rwc{i}-dirs@example.net", f"rwc{i}-t@example.net", f"rwc{i}-s@example.net"]
        cases[name] = CorpusCase(name, i, sent, note, people)
    publish_directory(
        classes=[
            a_class(c.class_id, directors=c.people[0], teachers=[c.people[1]], sections=[[c.people[2]]])
            for c in cases.values()
        ],
        store=harness.store,
    )
    add_email_list(
        r"^rwauto(\d+)-(class|teachers|students)$",
        "ClassList",
        seq=12,
        accept_automatic=True,
        list_id=AUTOMATIC_RULE,
        description="real-world tests: a class list that takes automatic mail",
    )
    started = time.monotonic()
    with smtp() as client:
        for case in cases.values():
            if case.sent is not None:
                case.first = transmit(client, case.sent, [case.address(1)])
    sent_at = time.monotonic()
    first = harness.settle([c.first for c in cases.values() if c.first], timeout=150)
    refused = [
        c
        for c in cases.values()
        if c.first
        and first[c.first].status == InboundStatus.DROPPED
        and "automatic mail is not broadcast" in (first[c.first].detail or "")
    ]
    with smtp() as client:
        for case in refused:
            case.second = transmit(client, case.sent, [case.address(2)])
    second = harness.settle([c.second for c in refused], timeout=60)
    for case in cases.values():
        case.items = {k: v for k, v in {**first, **second}.items() if k in (case.first, case.second)}
    sent = sum(1 for c in cases.values() if c.first)
    statuses = Counter(item.status for item in first.values())
    print(
        f"\ncorpus: {len(CORPUS)} messages, {sent} sent over SMTP ({len(CORPUS) - sent} skipped), "
        f"sent in {sent_at - started:.1f} s, all final {time.monotonic() - started:.1f} s after the first; "
        f"default class list: {dict(statuses)}; {len(refused)} automatic ones again to a list that takes them"
    )
    return cases


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_message_forwards_hold_only_original_or_dbmail_headers_and_reach_exactly_the_class(
    harness, corpus_run, name
):
    # given a real-world or hostile message sent over SMTP to a class list of three people
    case = corpus_run[name]
    if case.sent is None:
        pytest.skip(case.note)
    # when the inbound function has handled it
    first = case.items[case.first]
    # then the default class list forwarded it, or refused it as automatic mail (and it is)
    if first.status == InboundStatus.DROPPED:
        assert "automatic mail is not broadcast" in first.detail
        assert has_automatic_marker(case.sent), f"dropped as automatic without a marker: {first.detail}"
    else:
        assert first.status == InboundStatus.FORWARDED, (first.status, first.detail)
    message_id = case.forwarded
    assert message_id, {k: (v.status, v.detail) for k, v in case.items.items()}
    list_address = case.address(1 if message_id == case.first else 2).lower()
    # and each of the class's people got exactly one forward, and nobody else did
    tag = f"[E{case.class_id}]"
    sent = harness.outbox.matching(to=case.people)
    tagged = harness.outbox.matching(subject=tag)
    assert sorted(s.path.name for s in tagged) == sorted(s.path.name for s in sent)
    assert recipients(sent) == sorted(case.people)
    # and every forward is clean on the wire, has only the original's headers and dbmail's, the
    # right Reply-To, and its attachments decode to the same bytes
    original = harness.stored(message_id)
    for s in sent:
        check_group_forward(s, original, case.people, list_address)


def independent_subject(raw: bytes) -> str | None:
    """The Subject decoded without dbmail (the standard library's RFC 2047 split, adjacent words in
    one charset joined, each charset read as the superset senders really use), or None when the
    Subject is not plain encoded words."""
    supersets = {
        "gb2312": "gb18030",
        "gbk": "gb18030",
        "ks_c_5601-1987": "cp949",
        "iso-8859-1": "cp1252",
        "shift_jis": "cp932",
        "iso-2022-jp": "iso2022_jp_ext",
        "us-ascii": "ascii",
    }
    value = forward.raw_header(forward.parse(raw), "Subject")
    if value is None or not value.isascii() or "=?" not in value:
        return None
    joined: list[tuple[bytes, str | None]] = []
    for data, charset in decode_header(re.sub(r"\r?\n", "", value)):
        data = data.encode("ascii") if isinstance(data, str) else data
        if joined and joined[-1][1] == charset:
            joined[-1] = (joined[-1][0] + data, charset)
        else:
            joined.append((data, charset))
    try:
        return "".join(
            data.decode(supersets.get(charset or "us-ascii", charset or "ascii")) for data, charset in joined
        )
    except (LookupError, UnicodeDecodeError):
        return None


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_charset_mail_is_forwarded_to_the_class_with_attachments_intact(harness, corpus_run, name):
    # given real-world mail in a legacy charset (gb2312/gbk, koi8-r, cp1251, iso-2022-jp, ks_c_5601, iso-8859-x, ...)
    case = corpus_run[name]
    if case.sent is None:
        pytest.skip(case.note)
    # when it was sent to a class list (automatic mail: to one that takes it)
    message_id = case.forwarded
    # then it was forwarded, not failed
    assert message_id, {k: (v.status, v.detail) for k, v in case.items.items()}
    assert all(item.status != InboundStatus.FAILED for item in case.items.values())
    sent = harness.outbox.matching(to=case.people)
    assert recipients(sent) == sorted(case.people)
    original = harness.stored(message_id)
    for s in sent:
        # and its attachments decode to the same bytes
        assert_same_parts(original, s.raw())
        # and its subject reads as the sender wrote it
        expected = independent_subject(original)
        if expected is not None:
            assert "".join(expected.split()) in "".join(s.subject.split()), (expected, s.subject)


# ---- 2: address case and subaddresses ----------------------------------------------------------


def test_case_and_plus_variants_route_like_their_canonical_addresses(harness):
    # given class 1234 (DIRECTORY), a class of our own and the directors redirect
    cls = a_class(
        7201,
        directors="rw72-dirs@example.net",
        teachers=["rw72-t@example.net"],
        sections=[["rw72-s1@example.net"], ["rw72-s2@example.net"]],
    )
    publish_directory(classes=[cls], store=harness.store)
    pairs = [
        ("e1234-students@example.org", "E1234-Students@example.org"),
        ("directors@example.org", "directors+x@example.org"),
        ("directors@example.org", "DIRECTORS@example.org"),
        ("e7201-class@example.org", "E7201-CLASS+trip@EXAMPLE.ORG"),
        ("e7201s2-students@example.org", "E7201s2-Students@example.org"),
    ]
    # when each address gets a message of its own
    sent = {}
    with smtp() as client:
        for address in dict.fromkeys(a for pair in pairs for a in pair):
            subject = f"Variant {token()}"
            sent[address] = (subject, transmit(client, message(address, subject), [address]))
    items = harness.settle([m for _, m in sent.values()])
    # then a variant goes to the same people by the same rule as its canonical form (class 1234's
    # directors' copy, to directors@, comes back through the SES hop to the directors redirect)
    routed = {}
    for address, (subject, message_id) in sent.items():
        item = items[message_id]
        assert item.status == InboundStatus.FORWARDED, (address, item.status, item.detail)
        harness.settle_with_hops([message_id], subject)
        routed[address] = (item.list_id, recipients(harness.outbox.matching(subject=subject)))
    for canonical, variant in pairs:
        assert routed[canonical][1], canonical
        assert routed[variant] == routed[canonical], (variant, routed[variant], canonical, routed[canonical])
    assert routed["e7201-class@example.org"][1] == people_of(cls)


# ---- 4: one copy per person --------------------------------------------------------------------


def test_one_transaction_to_a_class_its_section_and_a_redirect_gives_each_person_one_copy(harness):
    # given a class, one of its sections and a redirect that share people
    cls = a_class(
        7401,
        directors="rw74-dirs@example.net",
        teachers=["rw74-t@example.net"],
        sections=[["rw74-s1@example.net"], ["rw74-s2@example.net"]],
    )
    publish_directory(classes=[cls], store=harness.store)
    set_plain_redirect(
        "rw74-desk", "Tea Cher <rw74-t@example.net>, rw74-x@example.net, rw74-s1@example.net", store=harness.store
    )
    subject = f"Shared {token()}"
    # when one SMTP transaction reaches all three
    message_id = send_one(
        message("e7401-class@example.org", subject),
        ["E7401-class@example.org", "e7401s1-students@example.org", "rw74-desk@example.org"],
    )
    item = harness.settle_one(message_id)
    # then everyone on any of them got exactly one copy
    assert item.status == InboundStatus.FORWARDED, item.detail
    everyone = sorted({*people_of(cls), "rw74-x@example.net"})
    copies = Counter(a for s in harness.outbox.matching(subject=subject) for a in s.to)
    assert dict(copies) == dict.fromkeys(everyone, 1)


# ---- 5: a large message to a large list ----------------------------------------------------------


def ses_destinations(harness, subject: str) -> list[str]:
    """Every destination of the SES calls whose message has ``subject``, as moto recorded them
    (moto adds the To header's addresses to the explicit ones)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{os.environ['DBMAIL_LOCAL_MOTO_URL']}/moto-api/data.json", timeout=30) as response:
        data = json.load(response)
    found = []
    for raw in data["ses"]["RawMessage"]:
        if subject in raw["raw_data"][:20000]:
            found += [email.utils.parseaddr(d)[1].lower() for d in raw["destinations"]]
    return found


def test_a_12_mb_message_to_150_people_is_forwarded_well_inside_the_function_timeout(harness, capsys):
    # given a class list of 150 students (and its directors)
    students = [f"rw75-s{n:03d}@example.net" for n in range(150)]
    cls = a_class(7501, directors="rw75-dirs@example.net", sections=[students[:50], students[50:100], students[100:]])
    publish_directory(classes=[cls], store=harness.store)
    people = people_of(cls)
    assert len(people) == 151
    # and a 12 MB message: a 9 MiB attachment, base64
    attachment = random.Random(7501).randbytes(9 * 2**20)
    subject = f"Photos {token()}"
    m = EmailMessage()
    m["From"] = '"Pa Rent" <parent@example.net>'
    m["To"] = "e7501-class@example.org"
    m["Subject"] = subject
    m.set_content("All the photos from Saturday.\n")
    m.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="photos.zip")
    raw = m.as_bytes(policy=policy.SMTP)
    assert 12_000_000 < len(raw) < 13_500_000
    sent = []
    try:
        # when it is sent over SMTP
        with smtp() as client:
            smtp_started = time.monotonic()
            message_id = transmit(client, raw, ["e7501-class@example.org"])
            accepted = time.monotonic()
        item = harness.settle_one(message_id, timeout=150)
        elapsed = time.monotonic() - accepted
        with capsys.disabled():
            print(
                f"\n12 MB ({len(raw) / 1e6:.1f} MB) to {len(people)}: SMTP {accepted - smtp_started:.1f} s, "
                f"accepted to {item.status} in {elapsed:.1f} s (InboundFunction Timeout: 120 s)"
            )
        # then it is forwarded as a few copies (To naming the list), each of the 151 an envelope
        # recipient of exactly one, the attachment intact
        assert item.status == InboundStatus.FORWARDED, item.detail
        sent = harness.outbox.matching(subject=subject)
        assert len(sent) == 4 and all(s.to == ("e7501-class@example.org",) for s in sent)
        envelope = Counter(d for d in ses_destinations(harness, subject) if d != "e7501-class@example.org")
        assert sorted(envelope) == people and set(envelope.values()) == {1}
        original = harness.stored(message_id)
        for s in (sent[0], sent[-1]):
            assert assert_same_parts(original, s.raw()) == 1
        # and well inside the function's 120 s
        assert elapsed < 60, f"{elapsed:.1f} s from SMTP accept to forwarded"
    finally:
        harness.outbox.forget(sent or harness.outbox.matching(subject=subject))


# ---- 6: reprocessing failures ------------------------------------------------------------------


def test_reprocess_delivers_the_fixable_failures_and_reports_the_rest_one_line_each(harness, capsys):
    # given a redirect whose rule sends From a domain SES has not verified (a rule written before
    # AllowedSenderDomains changed, so SES refuses every forward: MessageRejected)
    rule = EmailListRule(
        "rw-reprocess-desk",
        r"^(rw76-desk)$",
        25,
        "PlainList",
        from_email="Front Desk <desk@unverified.example>",
        description="real-world tests",
    )
    harness.store.put_rule(rule)
    set_plain_redirect("rw76-desk", "Ann <rw76-a@example.net>, rw76-b@example.net", store=harness.store)
    subjects = {"fixable": f"Desk {token()}", "expired": f"Desk {token()}"}
    with smtp() as client:
        ids = {
            kind: transmit(client, message("rw76-desk@example.org", subject), ["rw76-desk@example.org"])
            for kind, subject in subjects.items()
        }
    # and two messages to it that failed after Lambda's retries
    items = harness.settle(ids.values())
    for message_id in ids.values():
        assert items[message_id].status == InboundStatus.FAILED
        assert int(items[message_id].attempts) == ASYNC_ATTEMPTS
        assert "MessageRejected" in items[message_id].detail
    assert not any(harness.outbox.matching(subject=subject) for subject in subjects.values())
    # and `dbmail inbound failed` lists them
    assert cli.main(["inbound", "failed"]) == 0
    out, err = capsys.readouterr()
    listed = {line for line in out.splitlines() if any(i in line for i in ids.values())}
    assert len(listed) == 2 and all('"status": "failed"' in line for line in listed)
    # when the rule is corrected, but the other message's raw copy has expired from S3 meanwhile
    add_email_list(rule.regex, "PlainList", seq=25, from_email="Front Desk <desk@example.org>", list_id=rule.list_id)
    key = harness.store.get(ids["expired"]).s3_key
    kept = harness.s3().get_object(Bucket=harness.bucket, Key=key)["Body"].read()
    harness.s3().delete_object(Bucket=harness.bucket, Key=key)
    code = cli.main(["inbound", "reprocess"])
    out, err = capsys.readouterr()
    # then the fixable one is delivered and the other reported, one line per message, exit 1
    lines = out.splitlines()
    by_id = Counter(line.split()[0] for line in lines)
    assert all(count == 1 for count in by_id.values()), lines
    mine = {line.split()[0]: line for line in lines}
    assert mine[ids["fixable"]] == f"{ids['fixable']} forwarded"
    assert mine[ids["expired"]].startswith(f"{ids['expired']} failed again: ") and "NoSuchKey" in mine[ids["expired"]]
    assert code == 1
    assert "Traceback" not in out + err
    assert recipients(harness.outbox.matching(subject=subjects["fixable"])) == [
        "rw76-a@example.net",
        "rw76-b@example.net",
    ]
    assert harness.outbox.matching(subject=subjects["expired"]) == []
    assert harness.store.get(ids["fixable"]).status == InboundStatus.FORWARDED
    assert harness.store.get(ids["expired"]).status == InboundStatus.FAILED
    # when the raw copy is restored (from a backup) and reprocess runs again
    harness.s3().put_object(Bucket=harness.bucket, Key=key, Body=kept)
    code = cli.main(["inbound", "reprocess"])
    out, err = capsys.readouterr()
    # then it is delivered too, and with nothing failing again the exit status is 0
    lines = out.splitlines()
    assert f"{ids['expired']} forwarded" in lines and not any(ids["fixable"] in line for line in lines)
    others_failed = [line for line in lines if "failed again" in line]
    assert code == (1 if others_failed else 0), lines
    assert "Traceback" not in out + err
    assert recipients(harness.outbox.matching(subject=subjects["expired"])) == [
        "rw76-a@example.net",
        "rw76-b@example.net",
    ]
    assert cli.main(["inbound", "failed"]) == 0
    out, err = capsys.readouterr()
    assert not any(i in out for i in ids.values())


# ---- 7: chapter addresses through the SES hop, and a real loop ----------------------------------


def test_a_forward_to_a_chapter_address_comes_back_and_is_delivered_and_a_real_loop_stops(harness):
    # given a class whose directors address is a redirect of ours, which also names the class list
    cls = a_class(
        7701, directors="rw77-dirs@example.org", teachers=["rw77-t@example.net"], sections=[["rw77-s@example.net"]]
    )
    publish_directory(classes=[cls], store=harness.store)
    set_plain_redirect("rw77-dirs", "Dee Rector <rw77-d@example.net>, e7701-class@example.org", store=harness.store)
    subject = f"Loop {token()}"
    # when a message goes to the class list
    first = harness.settle_one(send_one(message("e7701-class@example.org", subject), ["e7701-class@example.org"]))
    assert first.status == InboundStatus.FORWARDED, first.detail
    (to_directors,) = harness.outbox.matching(subject=subject, to=["rw77-dirs@example.org"])
    # and SES hands its forward to the directors address back to us
    second = harness.ses_hop(to_directors, "rw77-dirs@example.org", subject, exclude=[first.message_id])
    # then the redirect delivers it to its destinations
    assert second.status == InboundStatus.FORWARDED, second.detail
    assert second.list_id == "default-redirect"
    (to_list,) = harness.outbox.matching(subject=subject, to=["e7701-class@example.org"])
    assert len(harness.outbox.matching(subject=subject, to=["rw77-d@example.net"])) == 1
    # when the redirect's forward to the class list comes back through SES too
    third = harness.ses_hop(to_list, "e7701-class@example.org", subject, exclude=[first.message_id])
    # then the class list drops it as a loop: everyone has had exactly one copy
    assert third.status == InboundStatus.DROPPED, third.detail
    assert "loop" in third.detail
    time.sleep(2)  # and nothing more comes back
    assert len(harness.inbound_for("e7701-class@example.org", subject)) == 2
    assert len(harness.inbound_for("rw77-dirs@example.org", subject)) == 1
    copies = Counter(a for s in harness.outbox.matching(subject=subject) for a in s.to)
    assert dict(copies) == {
        "rw77-dirs@example.org": 1,
        "rw77-t@example.net": 1,
        "rw77-s@example.net": 1,
        "rw77-d@example.net": 1,
        "e7701-class@example.org": 1,
    }


# ---- 8: header injection -------------------------------------------------------------------------

INJECTED_LINE = re.compile(rb"(?im)^(bcc|x-injected)[ \t]*:")


def test_encoded_crlf_in_headers_never_becomes_a_header_line_for_a_list_a_redirect_or_cc_all(harness):
    # given a class list, a redirect and a cc_all class list
    cls = a_class(
        7801, directors="rw78-dirs@example.net", teachers=["rw78-t@example.net"], sections=[["rw78-s@example.net"]]
    )
    publish_directory(classes=[cls], store=harness.store)
    set_plain_redirect("rw78-desk", "rw78-a@example.net, Bee <rw78-b@example.net>", store=harness.store)
    add_email_list(
        r"^rwcc(\d+)-(class|teachers|students)$",
        "ClassList",
        seq=13,
        cc_all=True,
        list_id="rw-injection-cc-all",
        description="real-world tests: a cc_all class list",
    )
    addresses = {
        "e7801-class@example.org": people_of(cls),
        "rw78-desk@example.org": ["rw78-a@example.net", "rw78-b@example.net"],
        "rwcc7801-class@example.org": people_of(cls),
    }
    attacks = {
        "subject-q-bcc": ("=?utf-8?q?Hi=0D=0ABcc:_victim@evil.example?=", {}),
        "subject-q-x-injected": ("=?utf-8?q?Hi=0D=0AX-Injected:_yes?=", {}),
        "subject-b-bcc": ("=?utf-8?b?SGkNCkJjYzogdmljdGltQGV2aWwuZXhhbXBsZQ==?=", {}),
        "x-header": ("Hello", {"X-Note": "=?utf-8?q?a=0D=0AX-Injected:_yes=0D=0ABcc:_victim@evil.example?="}),
    }
    runs = []
    # when each attack is sent to each of them (the Subject raw, as an attacker writes it)
    with smtp() as client:
        for address in addresses:
            for attack, (subject, extra) in attacks.items():
                mark = token()
                lines = [
                    "From: Pa Rent <parent@example.net>",
                    f"To: {address}",
                    f"Subject: {subject}",
                    f"Message-ID: <{mark}@mail.example.net>",
                    f"X-Run: {mark}",
                    *(f"{k}: {v}" for k, v in extra.items()),
                    "",
                    "Hello all",
                    "",
                ]
                raw = "\r\n".join(lines).encode("ascii")
                runs.append((address, attack, mark, transmit(client, raw, [address])))
    items = harness.settle([r[3] for r in runs])
    # then each is forwarded, and no forward has a Bcc or X-Injected line, or the victim in To
    for address, attack, mark, message_id in runs:
        item = items[message_id]
        assert item.status == InboundStatus.FORWARDED, (address, attack, item.detail)
        sent = [s for s in harness.outbox.refresh() if f"X-Run: {mark}".encode() in s.head]
        assert sent, (address, attack)
        assert recipients(sent) == sorted(addresses[address]), (address, attack)
        if address.startswith("rwcc"):
            assert len(sent) == 1, "cc_all: one message naming everyone"
        for s in sent:
            raw = s.raw()
            assert_wire_clean(raw)
            assert INJECTED_LINE.search(raw) is None, (address, attack, s.head)
            assert b"victim@evil.example>" not in raw and "victim@evil.example" not in s.to
            parsed = email.message_from_bytes(raw, policy=policy.default)
            assert parsed["Bcc"] is None and parsed["X-Injected"] is None
