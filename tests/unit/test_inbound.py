"""Inbound mail through the router with S3, DynamoDB and SES in moto (tables from template.yaml)."""

from __future__ import annotations

import email
import uuid
from email import policy
from email.message import EmailMessage
from pathlib import Path

import boto3
import pytest

from dbmail import wiring
from dbmail.client import add_email_list, publish_directory, set_plain_redirect
from dbmail.core.statuses import InboundStatus
from tests.conftest import DIRECTORY, function_settings
from tests.conftest import inbound_message as message

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "cpython"


def receive(stack, raw: bytes, recipients=("E1234-class@example.org",), spam="PASS", virus="PASS"):
    """What SES's receipt rule does: store the raw mail in S3, then invoke the router."""
    message_id = uuid.uuid4().hex
    boto3.client("s3", region_name="us-east-1").put_object(
        Bucket=stack.settings.inbound_bucket, Key=f"{stack.settings.inbound_prefix}{message_id}", Body=raw
    )
    status = wiring.inbound_router(function_settings("inbound")).handle(message_id, list(recipients), spam, virus)
    return message_id, status


class Outbox:
    """Every SES SendEmail call the router makes from now on: (envelope destinations, parsed MIME).
    Read from the call's parameters, since moto mixes header addresses into its own record."""

    def __init__(self):
        self.calls = []
        ses = wiring.inbound_router(function_settings("inbound")).transport._ses
        ses.meta.events.register("provide-client-params.sesv2.SendEmail", self._capture)

    def _capture(self, params, **_):
        message = email.message_from_bytes(params["Content"]["Raw"]["Data"], policy=policy.default)
        if "Destination" in params:
            destinations = list(params["Destination"]["ToAddresses"])
        else:  # SES takes them from the headers
            destinations = [
                a.addr_spec for h in ("To", "Cc", "Bcc") for a in (message[h].addresses if message[h] else ())
            ]
        self.calls.append((destinations, message))

    def sent(self):
        return list(self.calls)


def recipients_of(sent):
    return sorted(d for destinations, _ in sent for d in destinations)


def test_a_class_list_forward_gets_the_originals_header_treatment(inbound):
    outbox = Outbox()
    _, status = receive(inbound, message(subject="Fïeld trip"))
    assert status == InboundStatus.FORWARDED
    sent = outbox.sent()
    # one message per recipient (cc_all off), directors + teacher + both sections' students
    assert recipients_of(sent) == ["directors@example.org", "s1@example.net", "s2@example.net", "teacher@example.net"]
    for destinations, forwarded in sent:
        assert forwarded["Subject"] == "[E1234] Fïeld trip"
        assert [a.addr_spec for a in forwarded["To"].addresses] == destinations
        assert forwarded["Cc"] is None
        assert forwarded["X-ESP-SENDER"] == "Pa Rent <parent@example.net>"
        # DMARC-safe From, replies go to the original sender
        assert forwarded["From"].addresses[0].addr_spec == "noreply@example.org"
        assert forwarded["From"].addresses[0].display_name == "Pa Rent via ESP Website"
        assert forwarded["Reply-To"] == "Pa Rent <parent@example.net>"
        assert forwarded["DKIM-Signature"] is None and forwarded["Return-Path"] is None
        assert forwarded["X-DBMail-Forwarded"] == "example.org"
        assert forwarded["Message-ID"].endswith("@example.org>")
        assert forwarded.get_content().strip() == "Hello all"


def test_a_section_list_and_a_redirect_and_a_teacher(inbound):
    outbox = Outbox()
    receive(inbound, message(to="E1234s2-students@example.org"), recipients=["E1234s2-students@example.org"])
    assert recipients_of(outbox.sent()) == ["directors@example.org", "s2@example.net"]
    assert {m["Subject"] for _, m in outbox.sent()} == {"[E1234s2] Field trip"}

    outbox = Outbox()
    receive(inbound, message(to="Directors@example.org"), recipients=["Directors@example.org"])
    assert recipients_of(outbox.sent()) == ["dir1@example.net", "dir2@example.net"]

    outbox = Outbox()
    raw = message(to="tcher@example.org", Cc="someone@example.net")
    receive(inbound, raw, recipients=["tcher@example.org"])
    ((destinations, forwarded),) = outbox.sent()
    assert destinations == ["teacher@example.net"]
    # UserEmail keeps the headers (To, Cc, Subject, Message-ID) unchanged
    original = email.message_from_bytes(raw, policy=policy.default)
    for header in ("To", "Cc", "Subject", "Message-ID"):
        assert forwarded[header] == original[header]
    assert forwarded["X-ESP-SENDER"] is None


def test_a_student_username_is_not_forwarded_without_a_list_id(inbound):
    outbox = Outbox()
    _, status = receive(inbound, message(to="kid@example.org"), recipients=["kid@example.org"])
    assert status == InboundStatus.UNDELIVERABLE
    assert all("kid@example.net" not in d for d, _ in outbox.sent())
    outbox = Outbox()
    _, status = receive(
        inbound, message(to="kid@example.org", List_Id="<news.example.net>"), recipients=["kid@example.org"]
    )
    assert status == InboundStatus.FORWARDED and recipients_of(outbox.sent()) == ["kid@example.net"]


def test_cc_all_sends_one_message_with_everyone_in_to_in_batches_of_50(inbound):
    students = [{"name": f"S{i}", "email": f"s{i}@example.net"} for i in range(120)]
    publish_directory(
        classes=[
            {
                **DIRECTORY["classes"][0],
                "class_id": 77,
                "emailcode": "M77",
                "sections": [{"index": 1, "emailcode": "M77s1", "students": students}],
            }
        ]
    )
    add_email_list(
        r"^\w(\d+)-(class|teachers|students)$",
        "ClassList",
        seq=1,
        cc_all=True,
        from_email="lists@example.org",
        subject_prefix="[Splash]",
        list_id="cc-all-classes",
    )
    outbox = Outbox()
    receive(inbound, message(to="M77-students@example.org"), recipients=["M77-students@example.org"])
    sent = outbox.sent()
    assert sorted(len(d) for d, _ in sent) == [21, 50, 50]  # sent concurrently
    assert len({m["Message-ID"] for _, m in sent}) == 1  # the same message, split for SES's 50-recipient limit
    assert sorted(len(m["To"].addresses) for _, m in sent) == [21, 50, 50]
    assert sorted(a.addr_spec for _, m in sent for a in m["To"].addresses) == recipients_of(sent)
    assert sent[0][1]["From"].addresses[0].addr_spec == "lists@example.org"
    assert sent[0][1]["Subject"] == "[M77] [Splash] Field trip"


def test_an_unknown_address_from_a_known_sender_gets_one_notice(inbound):
    outbox = Outbox()
    _, status = receive(inbound, message(to="nobody@example.org"), recipients=["nobody@example.org"])
    assert status == InboundStatus.UNDELIVERABLE
    ((destinations, notice),) = outbox.sent()
    assert destinations == ["parent@example.net"]
    assert notice["Subject"] == "Undeliverable mail" and notice["Auto-Submitted"] == "auto-replied"
    assert "nobody@example.org" in notice.get_content()


@pytest.mark.parametrize("sender", ['"Stranger" <stranger@example.com>', "support@example.org", None])
def test_no_notice_to_strangers_the_support_address_or_a_missing_sender(inbound, sender):
    outbox = Outbox()
    _, status = receive(inbound, message(sender=sender, to="nobody@example.org"), recipients=["nobody@example.org"])
    assert status == InboundStatus.UNDELIVERABLE and outbox.sent() == []


def test_no_notice_in_reply_to_automatic_mail(inbound):
    outbox = Outbox()
    receive(inbound, message(to="nobody@example.org", Auto_Submitted="auto-replied"), recipients=["nobody@example.org"])
    assert outbox.sent() == []


def forwarded_copy(outbox, to: str) -> bytes:
    """One of our forwards, as SES would hand it back to us when it is addressed to a chapter address."""
    (forward,) = [m for d, m in outbox.sent() if to in d]
    return forward.as_bytes(policy=policy.SMTP)


def test_our_own_forward_coming_back_to_the_same_list_is_dropped_as_a_loop(inbound):
    # given a class forward
    outbox = Outbox()
    receive(inbound, message())
    looped = forwarded_copy(outbox, "directors@example.org")
    # when the copy comes back to the same list
    outbox = Outbox()
    message_id, status = receive(inbound, looped, recipients=["E1234-class@example.org"])
    # then it stops after one pass
    assert status == InboundStatus.DROPPED and outbox.sent() == []
    assert "loop" in wiring.inbound_router(function_settings("inbound")).store.get(message_id).detail


def test_the_directors_copy_of_class_mail_coming_back_through_ses_is_delivered(inbound):
    # given class mail whose directors' copy goes to a chapter address (a PlainRedirect)
    outbox = Outbox()
    receive(inbound, message())
    copy = forwarded_copy(outbox, "directors@example.org")
    # when SES hands that copy back to us for directors@
    outbox = Outbox()
    _, status = receive(inbound, copy, recipients=["directors@example.org"])
    # then the redirect delivers it, as a legitimate next hop
    assert status == InboundStatus.FORWARDED
    assert recipients_of(outbox.sent()) == ["dir1@example.net", "dir2@example.net"]
    (_, forward), _ = outbox.sent()
    assert forward["Subject"].count("[E1234]") == 1


def test_a_message_through_too_many_lists_is_dropped(inbound):
    hops = {"X_BeenThere": "a@example.org"}
    raw = message(**hops)
    for extra in ("b", "c", "d", "e"):
        raw = raw.replace(b"X-BeenThere:", f"X-BeenThere: {extra}@example.org\r\nX-BeenThere:".encode(), 1)
    outbox = Outbox()
    _, status = receive(inbound, raw)
    assert status == InboundStatus.DROPPED and outbox.sent() == []


def test_virus_is_dropped_and_spam_is_held_then_released_by_a_moderator(inbound):
    outbox = Outbox()
    _, status = receive(inbound, message(), virus="FAIL")
    assert status == InboundStatus.DROPPED and outbox.sent() == []
    message_id, status = receive(inbound, message(), spam="FAIL")
    assert status == InboundStatus.HELD
    ((destinations, note),) = outbox.sent()
    assert destinations == [inbound.settings.moderator_address] and message_id in note.get_content()
    router = wiring.inbound_router(function_settings("inbound"))
    assert [i.message_id for i in router.store.with_status(InboundStatus.HELD)] == [message_id]
    outbox = Outbox()
    assert router.release(message_id) == InboundStatus.RELEASED
    assert len(outbox.sent()) == 4


def test_admin_hold_keeps_the_raw_message_and_reject_ends_it(inbound):
    add_email_list(r"^(all-announce)$", "PlainList", seq=1, admin_hold=True, list_id="announce")
    set_plain_redirect("all-announce", "everyone@example.net")
    outbox = Outbox()
    message_id, status = receive(
        inbound, message(to="all-announce@example.org"), recipients=["all-announce@example.org"]
    )
    assert status == InboundStatus.HELD
    assert recipients_of(outbox.sent()) == [inbound.settings.moderator_address]
    router = wiring.inbound_router(function_settings("inbound"))
    assert router.reject(message_id) == InboundStatus.REJECTED
    item = router.store.get(message_id)
    assert boto3.client("s3", region_name="us-east-1").get_object(
        Bucket=inbound.settings.inbound_bucket, Key=item.s3_key
    )


def test_mail_over_40_mb_gets_a_notice_to_a_known_sender_only(inbound):
    big = EmailMessage()
    big["From"] = "parent@example.net"
    big["To"] = "E1234-class@example.org"
    big["Subject"] = "photos"
    big.set_content("see attached")
    big.add_attachment(b"\0" * (31 * 1024 * 1024), maintype="application", subtype="octet-stream", filename="a.bin")
    raw = big.as_bytes(policy=policy.SMTP)
    assert len(raw) > 40 * 1024 * 1024
    outbox = Outbox()
    _, status = receive(inbound, raw)
    assert status == InboundStatus.TOO_LARGE
    ((destinations, notice),) = outbox.sent()
    assert destinations == ["parent@example.net"] and notice["Subject"] == "Message too large"


def ses_down(monkeypatch):
    """Every forward fails as if SES were unreachable, until monkeypatch.undo()."""

    def broken(*args, **kwargs):
        raise ConnectionError("SES unreachable")

    monkeypatch.setattr(wiring.inbound_router(function_settings("inbound")).transport, "send_raw", broken)


def test_a_handler_error_leaves_the_message_recorded_and_reprocessable(inbound, monkeypatch):
    router = wiring.inbound_router(function_settings("inbound"))
    ses_down(monkeypatch)
    with pytest.raises(ConnectionError):
        receive(inbound, message())
    (failed,) = list(router.store.with_status(InboundStatus.FAILED))
    assert "SES unreachable" in failed.detail
    monkeypatch.undo()
    outbox = Outbox()
    assert router.reprocess(failed.message_id) == InboundStatus.FORWARDED
    assert len(outbox.sent()) == 4


def test_the_sweep_processes_again_what_failed_once_it_has_been_quiet_and_gives_up_after_five(inbound, monkeypatch):
    from datetime import timedelta

    from dbmail.core.clock import utcnow
    from dbmail.inbound.router import SWEEP_MAX_ATTEMPTS, SWEEP_NOT_BEFORE

    router = wiring.inbound_router(function_settings("inbound"))
    # given a message that failed, and one that failed for good (its attempts used up)
    ses_down(monkeypatch)
    with pytest.raises(ConnectionError):
        receive(inbound, message())
    (fixable,) = [i.message_id for i in router.store.with_status(InboundStatus.FAILED)]
    with pytest.raises(ConnectionError):
        receive(inbound, message(subject="hopeless"))
    (hopeless,) = [i for i in router.store.with_status(InboundStatus.FAILED) if i.message_id != fixable]
    for _ in range(SWEEP_MAX_ATTEMPTS):
        with pytest.raises(ConnectionError):
            router.reprocess(hopeless.message_id)
    monkeypatch.undo()
    # when the sweep runs right away, nothing is tried (the last attempt may still be running)
    assert router.sweep(utcnow()) == {}
    # and once they have been quiet long enough, the first is forwarded, the other left for a person
    outbox = Outbox()
    later = utcnow() + max(router.settings.stranded_after, SWEEP_NOT_BEFORE) + timedelta(seconds=1)
    assert router.sweep(later) == {InboundStatus.FORWARDED: 1}
    assert len(outbox.sent()) == 4
    assert [i.message_id for i in router.unfinished(later)] == [hopeless.message_id]


def test_a_retry_after_a_partial_forward_does_not_send_twice(inbound, monkeypatch):
    router = wiring.inbound_router(function_settings("inbound"))
    real = router.transport.send_raw
    calls = []

    def fail_third(raw, sender, destinations, **kwargs):
        calls.append(destinations)
        if len(calls) == 3:
            raise ConnectionError("network blip")
        return real(raw, sender, destinations, **kwargs)

    monkeypatch.setattr(router.transport, "send_raw", fail_third)
    outbox = Outbox()
    with pytest.raises(ConnectionError):
        receive(inbound, message())
    (failed,) = list(router.store.with_status(InboundStatus.FAILED))
    router.reprocess(failed.message_id)
    assert recipients_of(outbox.sent()) == [
        "directors@example.org",
        "s1@example.net",
        "s2@example.net",
        "teacher@example.net",
    ]


@pytest.mark.parametrize("sample", sorted(p.name for p in CORPUS.glob("msg_*.txt")))
def test_real_world_mime_samples_route_without_a_crash(inbound, sample):
    outbox = Outbox()
    message_id, status = receive(inbound, (CORPUS / sample).read_bytes(), recipients=["Directors@example.org"])
    item = wiring.inbound_router(function_settings("inbound")).store.get(message_id)
    assert item.status == status
    if status == InboundStatus.FORWARDED:
        assert recipients_of(outbox.sent()) == ["dir1@example.net", "dir2@example.net"]
    else:
        assert status == InboundStatus.DROPPED and item.detail  # recorded with the reason, never silently lost


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: no from at all\r\nTo: directors@example.org\r\n\r\nbody\r\n",
        b"From: =?utf-8?b?Wm/Dqw==?= <zoe@example.net>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nTo: directors@example.org\r\n\r\nbody\r\n",
        b"From: Jos\xe9 <jose@example.net>\r\nSubject: 8-bit \xff\xfe junk\r\n: empty name\r\nTo: directors@example.org\r\n\r\n\xff\r\n",
        b"From: a@example.net\r\nSubject: injected\r\n\tBcc: victim@example.com\r\nDelivered-To: x@example.org\r\nDelivered-To: y@example.org\r\n\r\nbody\r\n",
        b"not a mime message at all",
    ],
)
def test_malformed_and_hostile_mail_is_forwarded_cleanly_or_recorded(inbound, raw):
    outbox = Outbox()
    message_id, status = receive(inbound, raw, recipients=["Directors@example.org"])
    assert status == InboundStatus.FORWARDED
    for _, forwarded in outbox.sent():
        assert forwarded["Bcc"] is None
        assert len(forwarded.get_all("Delivered-To") or []) <= 1
        assert all(name.strip() for name in forwarded.keys())
        assert [a.addr_spec for a in forwarded["From"].addresses] == ["noreply@example.org"]
