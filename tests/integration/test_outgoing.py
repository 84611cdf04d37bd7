"""Outgoing mail end to end on the real local stack: DynamoDB Local's stream, moto's SQS and SES,
and the runner playing Lambda. What lands in the outbox is what SES was handed."""

from __future__ import annotations

import email
import json
import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from dbmail.client import request_status, submit_request
from dbmail.core.errors import HeaderInvalid, SenderNotAllowed
from dbmail.core.settings import Settings
from dbmail.core.unsubscribe import verify_token
from dbmail.outgoing.emails import message_id_for, message_ref_for
from dbmail.outgoing.queue import QueuedEmail
from tests.conftest import recipient
from tests.integration.conftest import GOT_MAIL, GOT_MAIL_KEY, got_mail, wait_delivered

pytestmark = pytest.mark.integration


def message_id_of(path: Path) -> str | None:
    """The Message-ID of an .eml, reading its header only (the outbox also holds 12 MB forwards)."""
    head = b""
    with path.open("rb") as handle:
        while b"\r\n\r\n" not in head and b"\n\n" not in head and (chunk := handle.read(8192)):
            head += chunk
    return BytesHeaderParser().parsebytes(head)["Message-ID"]


def outbox_by_message_id(outbox: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in outbox.glob("*.eml"):
        found.setdefault(message_id_of(path), []).append(path)
    return found


def delivered_items(local_stack, store, request_id: str) -> list[tuple[object, email.message.EmailMessage]]:
    """Each email of the request with its one copy in the outbox."""
    by_id = outbox_by_message_id(local_stack.outbox)
    pairs = []
    for item in store.iter_emails(request_id):
        paths = by_id.get(message_id_for(request_id, item.email_key, item.send_from), [])
        assert len(paths) == 1, f"{item.email_key}: {len(paths)} copies in the outbox"
        pairs.append((item, email.message_from_bytes(paths[0].read_bytes(), policy=policy.default)))
    return pairs


def delivered_messages(local_stack, store, request_id: str) -> list[email.message.EmailMessage]:
    return [message for _, message in delivered_items(local_stack, store, request_id)]


def test_a_submitted_request_is_delivered_as_correct_mime(local_stack, store):
    # given an HTML request and a plain one, with non-ASCII names and subjects
    people = [
        recipient(1, first_name="Zoë", last_name="Ng"),
        recipient(2, first_name="José", last_name="García", guardian_email=None),
    ]
    html_id = submit_request(
        subject="[Splash] Wëlcome, {{ user.first_name }} ✨",
        msgtext='<html lang="en"><body><h1>Hi {{ user.first_name }}</h1><p>See <a href="https://esp.example.org/c">'
        "your classes</a></p></body></html>",
        recipients=people,
        sendto_fn_name="send_to_self_and_guardian",
        sender="Splash Dïrectors <splash@example.org>",
        special_headers={"Reply-To": " splash@example.org "},
    )
    text_id = submit_request(
        subject="Plain for {{ user.first_name }}",
        msgtext="Dear {{ user.first_name }},\nhello.\n",
        recipients=people,
        sender="splash@example.org",
    )
    # when the stack has delivered them
    assert got_mail(wait_delivered(local_stack, html_id)["emails_by_status"]) == {GOT_MAIL_KEY: 3}
    assert got_mail(wait_delivered(local_stack, text_id)["emails_by_status"]) == {GOT_MAIL_KEY: 2}
    # then each .eml is correct MIME
    for item, message in delivered_items(local_stack, store, html_id):
        assert message.get_content_type() == "multipart/alternative"
        text, html = message.get_payload()
        assert text.get_content_type() == "text/plain" and "<h1>" not in text.get_content()
        assert "your classes" in text.get_content() and "https://esp.example.org/c" in text.get_content()
        assert html.get_content_type() == "text/html" and "<h1>Hi" in html.get_content()
        assert message["From"].addresses[0].display_name == "Splash Dïrectors"
        assert message["Subject"].startswith("[Splash] Wëlcome, ") and message["Subject"].endswith("✨")
        assert message["Reply-To"] == "splash@example.org"
        # the envelope sender is the email's own VERP address: its bounces come back naming it
        verp = re.fullmatch(r"<bounces\+([0-9a-f]{32})@example\.org>", message["Return-Path"])
        assert verp is not None, message["Return-Path"]
        assert verp.group(1) == item.message_ref and message["Message-ID"] == f"<dbmail.{item.message_ref}@example.org>"
        assert (
            message["List-Unsubscribe"].startswith("<" + os.environ["DBMAIL_UNSUBSCRIBE_URL"])  # the function's URL
            and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        )
        assert message["Date"] is not None
    names = sorted(m["To"].addresses[0].display_name for m in delivered_messages(local_stack, store, html_id))
    assert names == ["José García", "Mai Ng1", "Zoë Ng"]
    for message in delivered_messages(local_stack, store, text_id):
        assert message.get_content_type() == "text/plain"
        assert message.get_content().replace("\r\n", "\n").endswith(",\nhello.\n")


def write_raw_request(
    local_stack,
    subject: str,
    msgtext: str,
    users: list[dict],
    sender: str = "Splash <splash@example.org>",
    special_headers: dict | None = None,
) -> str:
    """A request written with plain DynamoDB calls, exactly as docs/schema.md describes (so
    none of submit_request's checks ran)."""
    dynamodb = local_stack.client("dynamodb")
    env = local_stack.env
    request_id = f"raw-{uuid.uuid4().hex[:12]}"
    items = []
    for user in users:
        item = {
            "request_id": {"S": request_id},
            "recipient_key": {"S": f"u{user['user_id']:010d}"},
            "user_id": {"N": str(user["user_id"])},
            "email": {"S": user["email"]},
            "first_name": {"S": user["first_name"]},
            "last_name": {"S": user["last_name"]},
            "vars": {"S": json.dumps({"get_confirmation_link": f"https://esp.example.org/c/{user['user_id']}"})},
        }
        items.append({"PutRequest": {"Item": item}})
    dynamodb.batch_write_item(RequestItems={env["DBMAIL_RECIPIENT_TABLE"]: items})
    dynamodb.put_item(
        TableName=env["DBMAIL_REQUEST_TABLE"],
        ConditionExpression="attribute_not_exists(request_id)",
        Item={
            "request_id": {"S": request_id},
            "status": {"S": "queued"},
            "created_at": {"S": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
            "subject": {"S": subject},
            "msgtext": {"S": msgtext},
            "sendto_fn_name": {"S": "send_to_self"},
            "sender": {"S": sender},
            "message_vars": {"S": json.dumps({"program": {"name": "Splash"}})},
            "recipient_count": {"N": str(len(users))},
            **({"special_headers": {"S": json.dumps(special_headers)}} if special_headers else {}),
        },
    )
    return request_id


def test_a_request_written_straight_into_dynamodb_is_delivered(local_stack, store):
    request_id = write_raw_request(
        local_stack,
        "{{ program.name }} for {{ user.first_name }}",
        "Confirm at {{ user.get_confirmation_link }}",
        [recipient(7), recipient(8)],
    )
    assert got_mail(wait_delivered(local_stack, request_id)["emails_by_status"]) == {GOT_MAIL_KEY: 2}
    bodies = sorted(m.get_content().strip() for m in delivered_messages(local_stack, store, request_id))
    assert bodies == ["Confirm at https://esp.example.org/c/7", "Confirm at https://esp.example.org/c/8"]


def test_a_template_error_fails_its_request_and_later_requests_still_deliver(local_stack, store):
    # given a raw request whose body has a syntax error, then a good one
    bad = write_raw_request(local_stack, "ok", "Dear {{ user.first_name }", [recipient(9)])
    good = write_raw_request(local_stack, "ok", "Dear {{ user.first_name }}", [recipient(10)])
    # then the bad one ends failed, naming the error, and the good one is delivered
    status = wait_delivered(local_stack, bad)
    assert status["status"] == "failed" and "body template syntax error" in status["error"]
    assert got_mail(wait_delivered(local_stack, good)["emails_by_status"]) == {GOT_MAIL_KEY: 1}


def test_stopping_the_runner_mid_expand_delivers_every_email_exactly_once(local_stack, store):
    # given a large request whose expansion is under way
    size = 1200
    request_id = submit_request(
        subject="Hi {{ user.first_name }}",
        msgtext="Dear {{ user.first_name }}",
        recipients=[recipient(i) for i in range(1000, 1000 + size)],
        sender="splash@example.org",
    )
    local_stack.wait_for(lambda: store.get_request(request_id).expand_cursor or None, timeout=60, interval=0.05)
    # when the runner is stopped in the middle of it and started again
    local_stack.stop_runner()
    interrupted = store.get_request(request_id)
    assert interrupted.status == "processing", "the expansion finished before the runner stopped: test not meaningful"
    local_stack.start_runner()
    # then every email is delivered exactly once
    status = wait_delivered(local_stack, request_id, timeout=240)
    assert (status["status"], status["emails"], got_mail(status["emails_by_status"])) == (
        "processed",
        size,
        {GOT_MAIL_KEY: size},
    )
    assert len(delivered_messages(local_stack, store, request_id)) == size


def test_a_poison_message_goes_to_the_dead_letter_queue_and_does_not_block_the_queue(local_stack, store):
    sqs = local_stack.client("sqs")
    queue_url = local_stack.env["DBMAIL_SEND_QUEUE_URL"]
    dlq_url = local_stack.env["DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL"]
    # given a message no send can understand, queued before a real request
    sqs.send_message(QueueUrl=queue_url, MessageBody="{not json")
    request_id = submit_request(
        subject="after poison", msgtext="x", recipients=[recipient(3000)], sender="splash@example.org"
    )
    # then the real email is delivered and the poison message ends in the DLQ after 3 receives
    assert got_mail(wait_delivered(local_stack, request_id)["emails_by_status"]) == {GOT_MAIL_KEY: 1}

    def poison_in_dlq():
        messages = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, AttributeNames=["All"]).get(
            "Messages", []
        )
        return [m for m in messages if m["Body"] == "{not json"]

    dead = local_stack.wait_for(poison_in_dlq, timeout=60, interval=0.5)
    assert int(dead[0]["Attributes"]["ApproximateReceiveCount"]) >= 3


def _runner_pid(local_stack) -> int:
    from dbmail_local import stack

    return stack.running_pid(local_stack.state, stack.RUNNER)


def reset_runner_peak_rss(local_stack) -> None:
    """From now on VmHWM is the runner's peak since this call, not since the suite's first test
    (Linux: 5 written to clear_refs resets it)."""
    Path(f"/proc/{_runner_pid(local_stack)}/clear_refs").write_text("5")


def runner_peak_rss_mb(local_stack) -> float:
    pid = _runner_pid(local_stack)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM for the runner")


HOSTILE_TEMPLATES = {
    "nested loops": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "huge string": "{{ 'x' * 10**9 }}",
    "recursive macro": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}x{% endmacro %}{{ f(60) }}",
    "padding": "{{ 'x'.ljust(10**9) }}{{ 'y'|center(10**9) }}",
    "doubling": "{% set ns = namespace(x='ab') %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
    "brace width": "{{ '{:>999999999}'.format(1) }}",
}


def test_hostile_templates_fail_alone_within_seconds_and_the_next_request_is_on_time(local_stack, store):
    # given hostile requests written straight into DynamoDB (no dry render), then an ordinary one
    reset_runner_peak_rss(local_stack)  # the peak is theirs, not the earlier tests'
    hostile = {
        name: write_raw_request(local_stack, "s", body, [recipient(4000 + n), recipient(4100 + n)])
        for n, (name, body) in enumerate(HOSTILE_TEMPLATES.items())
    }
    started = time.monotonic()
    normal = write_raw_request(local_stack, "after the attacks", "Dear {{ user.first_name }}", [recipient(4500)])
    # then the ordinary one is delivered promptly
    assert got_mail(wait_delivered(local_stack, normal, timeout=60)["emails_by_status"]) == {GOT_MAIL_KEY: 1}
    elapsed = time.monotonic() - started
    # and each hostile one failed on its own, naming the limit it broke, with no email
    for name, request_id in hostile.items():
        status = wait_delivered(local_stack, request_id, timeout=30)
        assert status["status"] == "failed" and "limit" in status["error"], (name, status)
        assert status["emails_by_status"] == {}, name
    assert elapsed < 30, f"the ordinary request waited {elapsed:.1f} s behind the hostile ones"
    assert runner_peak_rss_mb(local_stack) < 512
    print(
        f"\nhostile templates: ordinary request delivered {elapsed:.1f} s after {len(hostile)} attacks; "
        f"runner peak RSS {runner_peak_rss_mb(local_stack):.0f} MB"
    )


def test_every_raw_list_unsubscribe_header_is_a_plain_url_on_the_wire(local_stack, store):
    # given a delivered request whose recipients are website users
    request_id = submit_request(
        subject="Hi",
        msgtext="Dear {{ user.first_name }}",
        recipients=[recipient(4600), recipient(4601)],
        sender="splash@example.org",
    )
    assert got_mail(wait_delivered(local_stack, request_id)["emails_by_status"]) == {GOT_MAIL_KEY: 2}
    # then the raw bytes of each .eml carry the URL itself, not an encoded word
    by_id = outbox_by_message_id(local_stack.outbox)
    for item in store.iter_emails(request_id):
        (path,) = by_id[message_id_for(request_id, item.email_key, item.send_from)]
        raw = path.read_bytes()
        (line,) = [line for line in raw.split(b"\r\n") if line.lower().startswith(b"list-unsubscribe:")]
        unsubscribe_url = os.environ["DBMAIL_UNSUBSCRIBE_URL"].encode()  # the unsubscribe function's URL
        assert line.startswith(b"List-Unsubscribe: <" + unsubscribe_url) and line.endswith(b">") and b"=?" not in line
        assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw


def unsubscribe_secret() -> str:
    """The stack's unsubscribe secret, as the unsubscribe function (and the website) reads it."""
    return Settings.for_function("unsubscribe").unsubscribe_secret


def unsubscribe_token(message: email.message.EmailMessage) -> dict:
    """What the unsubscribe function (or the website) reads from the email's one-click link."""
    url = message["List-Unsubscribe"].strip("<>")
    assert url.startswith(os.environ["DBMAIL_UNSUBSCRIBE_URL"].rstrip("/") + "/unsubscribe/")
    token = verify_token(unsubscribe_secret(), url.rpartition("/")[2])
    return {"u": token.user_id, "e": token.address}


def failure_report(local_stack, request_id: str) -> email.message.EmailMessage:
    """The request's one "Mail delivery failure" report, once the expire schedule has sent it."""
    report_id = f"<dbmail.outgoing.report.{request_id}@example.org>"
    (path,) = local_stack.wait_for(lambda: outbox_by_message_id(local_stack.outbox).get(report_id), timeout=30)
    return email.message_from_bytes(path.read_bytes(), policy=policy.default)


def test_every_unsubscribe_link_verifies_with_the_sites_secret_for_its_user_and_address(local_stack, store):
    # given a request to a student and, through send_to_self_and_guardian, their guardian
    request_id = submit_request(
        subject="Hi",
        msgtext="Dear {{ user.first_name }}",
        recipients=[recipient(4700)],
        sendto_fn_name="send_to_self_and_guardian",
        sender="splash@example.org",
    )
    # when both are delivered
    assert got_mail(wait_delivered(local_stack, request_id)["emails_by_status"]) == {GOT_MAIL_KEY: 2}
    # then the website can verify each link, and it names the student and the address it went to
    tokens = sorted(
        (unsubscribe_token(m)["u"], unsubscribe_token(m)["e"])
        for m in delivered_messages(local_stack, store, request_id)
    )
    assert tokens == [(4700, "guardian4700@example.net"), (4700, "user4700@example.net")]
    # and a link that was tampered with does not verify
    message = delivered_messages(local_stack, store, request_id)[0]
    payload, _, signature = message["List-Unsubscribe"].strip("<>").rpartition("/")[2].partition(".")
    with pytest.raises(Exception, match="signature"):
        verify_token(unsubscribe_secret(), f"{payload}x.{signature}")


def test_send_to_guardian_writes_to_each_guardian_about_their_student_and_skips_users_without_one(local_stack, store):
    # given a guardians-only request for a student with a guardian and one without
    request_id = submit_request(
        subject="About {{ user.first_name }}",
        msgtext="Dear {{ user.guardian_name }}, {{ user.first_name }} is enrolled.",
        recipients=[recipient(4800, first_name="Ada"), recipient(4801, guardian_email=None)],
        sendto_fn_name="send_to_guardian",
        sender="Splash <splash@example.org>",
    )
    # when it has been delivered
    status = wait_delivered(local_stack, request_id)
    # then only the guardian got mail, addressed by name, about the right student
    assert (status["recipients"], status["emails"], status["skipped_no_address"]) == (2, 1, 1)
    assert got_mail(status["emails_by_status"]) == {GOT_MAIL_KEY: 1}
    (message,) = delivered_messages(local_stack, store, request_id)
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [
        ("Mai Ng4800", "guardian4800@example.net")
    ]
    assert message["Subject"] == "About Ada"
    assert message.get_content().strip() == "Dear Mai Ng4800, Ada is enrolled."
    # and the guardian's unsubscribe link names the guardian's own address
    assert unsubscribe_token(message)["e"] == "guardian4800@example.net"


def test_a_recipient_with_a_broken_address_fails_alone_and_the_sender_gets_one_failure_report(local_stack, store):
    # given a request written straight into DynamoDB whose second recipient's address is broken
    users = [recipient(4900), recipient(4901, email="not an address"), recipient(4902)]
    request_id = write_raw_request(local_stack, "Trip {{ user.first_name }}", "Bring lunch.", users)
    # when the stack has handled it
    status = wait_delivered(local_stack, request_id)
    # then the two good emails went, the broken one failed for good (no retries), naming why
    assert status["status"] == "processed" and got_mail(status["emails_by_status"]) == {"failed": 1, GOT_MAIL_KEY: 2}
    emails = {item.recipient_key: item for item in store.iter_emails(request_id)}
    broken = emails["u0000004901"]
    assert broken.status == "failed" and "not a single valid email address" in broken.error and broken.tries == 1
    sent = sorted(m["To"].addresses[0].addr_spec for m in messages_that_got_mail(local_stack, store, request_id))
    assert sent == ["user4900@example.net", "user4902@example.net"]
    # and, once every email is final, the sender gets one report naming it, with a copy to support
    # (not to the bounces address: dbmail reads that one itself, for DSNs)
    report = failure_report(local_stack, request_id)
    assert [a.addr_spec for a in report["To"].addresses] == ["splash@example.org", os.environ["DBMAIL_SUPPORT_ADDRESS"]]
    assert report["Return-Path"] == "<bounces@example.org>"  # its own bounce names no email: recorded unmatched
    assert report["Subject"] == "Mail delivery failure: Trip {{ user.first_name }}"
    assert "not an address" in report.get_content() and f"dbmail resend {request_id}" in report.get_content()
    local_stack.wait_for(lambda: request_status(request_id)["reconciliation"]["settled"], timeout=30)
    assert len(outbox_by_message_id(local_stack.outbox)[report["Message-ID"]]) == 1


def messages_that_got_mail(local_stack, store, request_id: str):
    """The outbox copy of each email of the request that got the mail (sent or delivered)."""
    by_id = outbox_by_message_id(local_stack.outbox)
    for item in store.iter_emails(request_id):
        if item.status in GOT_MAIL:
            (path,) = by_id[message_id_for(request_id, item.email_key, item.send_from)]
            yield email.message_from_bytes(path.read_bytes(), policy=policy.default)


def test_requests_written_past_submits_checks_fail_whole_send_nothing_and_the_sender_is_told(local_stack):
    # given two requests written straight into DynamoDB: one From a domain the site may not
    # send from, one with a header that smuggles in a Bcc
    victim = f"victim-{uuid.uuid4().hex[:8]}@example.net"
    foreign = write_raw_request(local_stack, "From afar", "Hello", [recipient(5000)], sender="Boss <boss@evil.example>")
    injected = write_raw_request(
        local_stack, "Injected", "Hello", [recipient(5001)], special_headers={"X-Note": f"hi\r\nBcc: {victim}"}
    )
    # when the stack has handled them
    # then each failed as a whole, saying why, and no email exists for its recipients
    for request_id, why in ((foreign, "SenderNotAllowed: From domain 'evil.example'"), (injected, "HeaderInvalid")):
        status = wait_delivered(local_stack, request_id)
        assert status["status"] == "failed" and status["error"].startswith(why), status
        assert status["emails_by_status"] == {}
    # and each sender gets the request's failure report: the foreign From never, the site's
    # default sender instead
    for request_id, sender in ((foreign, "info@example.org"), (injected, "splash@example.org")):
        report = failure_report(local_stack, request_id)
        assert [a.addr_spec for a in report["To"].addresses] == [sender, os.environ["DBMAIL_SUPPORT_ADDRESS"]]
        assert "could not be sent as written" in report.get_content()
    assert not any(victim.encode() in path.read_bytes() for path in local_stack.outbox.glob("*.eml"))


def test_submit_refuses_header_injection_and_a_foreign_from_before_writing_anything(local_stack):
    # given requests with an injected header, an overridden dbmail header and a foreign From
    token = uuid.uuid4().hex
    attempts = {
        "a CRLF in a header": ({"special_headers": {"X-Note": "hi\r\nBcc: victim@example.net"}}, HeaderInvalid),
        "a CRLF in Reply-To": ({"special_headers": {"Reply-To": "a@example.org\nBcc: v@example.net"}}, HeaderInvalid),
        "dbmail's own header": ({"special_headers": {"List-Unsubscribe": "<https://evil.example>"}}, HeaderInvalid),
        "a foreign From": ({"sender": "Boss <boss@evil.example>"}, SenderNotAllowed),
        "a look-alike domain": ({"sender": "x@example.org.evil.example"}, SenderNotAllowed),
    }
    for name, (fields, refusal) in attempts.items():
        # when the website submits it
        with pytest.raises(refusal, match=".") as refused:
            submit_request(
                subject=f"refused {token}",
                msgtext="x",
                recipients=[recipient(5100, email=f"{token}@example.net")],
                **{"sender": "splash@example.org", **fields},
            )
        assert refused.type is refusal, name
    # then neither a request nor a recipient was written
    dynamodb, env = local_stack.client("dynamodb"), local_stack.env
    for table, attribute in ((env["DBMAIL_REQUEST_TABLE"], "subject"), (env["DBMAIL_RECIPIENT_TABLE"], "email")):
        value = f"refused {token}" if attribute == "subject" else f"{token}@example.net"
        found = dynamodb.scan(
            TableName=table,
            FilterExpression="#a = :v",
            ExpressionAttributeNames={"#a": attribute},
            ExpressionAttributeValues={":v": {"S": value}},
        )
        assert found["Count"] == 0, table


def test_a_scheduled_request_waits_for_its_time_and_the_expire_schedule_sends_it(local_stack, store):
    # given a request scheduled a few seconds ahead (the stream sees it at once)
    processed_by = datetime.now(UTC) + timedelta(seconds=8)
    request_id = submit_request(
        subject="Reminder",
        msgtext="Class starts soon",
        recipients=[recipient(5200)],
        sender="splash@example.org",
        processed_by=processed_by,
    )
    # then before its time nothing is expanded or sent
    time.sleep(3)
    early = request_status(request_id)
    assert (early["status"], early["emails"], early["emails_by_status"]) == ("queued", 0, {})
    # when its time has come, the expire schedule expands it and it is delivered once
    status = wait_delivered(local_stack, request_id, timeout=60)
    assert got_mail(status["emails_by_status"]) == {GOT_MAIL_KEY: 1}
    assert datetime.fromisoformat(status["processed_at"]) >= processed_by
    (item,) = store.iter_emails(request_id)
    assert item.sent >= processed_by
    assert (
        len(outbox_by_message_id(local_stack.outbox)[message_id_for(request_id, item.email_key, item.send_from)]) == 1
    )


def test_a_second_message_for_an_email_already_sent_sends_nothing_again(local_stack, store):
    # given a delivered email
    request_id = submit_request(
        subject="Once", msgtext="Only once", recipients=[recipient(5300)], sender="splash@example.org"
    )
    assert got_mail(wait_delivered(local_stack, request_id)["emails_by_status"]) == {GOT_MAIL_KEY: 1}
    (item,) = store.iter_emails(request_id)
    # when its send message arrives again (SQS delivers at least once; the sweep may requeue)
    sqs, queue_url = local_stack.client("sqs"), local_stack.env["DBMAIL_SEND_QUEUE_URL"]
    body = QueuedEmail(request_id, item.email_key).to_body()
    sqs.send_message_batch(QueueUrl=queue_url, Entries=[{"Id": str(n), "MessageBody": body} for n in range(3)])

    def drained():
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        counts = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
        return all(counts[name] == "0" for name in names)

    local_stack.wait_for(drained, timeout=30)
    # then the send function could not claim it again: one copy only, the email still sent once
    assert (
        len(outbox_by_message_id(local_stack.outbox)[message_id_for(request_id, item.email_key, item.send_from)]) == 1
    )
    (again,) = store.iter_emails(request_id)
    assert again.status in GOT_MAIL and (again.sent, again.tries) == (item.sent, item.tries)


WRITES = ("BatchWriteItem", "PutItem", "UpdateItem", "DeleteItem")


def test_an_email_of_a_3_kb_body_costs_at_most_5_write_units(local_stack, store):
    """DynamoDB Local reports the capacity each call consumed (PynamoDB asks for it): expansion
    and sends run here, in-process with the runner stopped, so that every write is counted."""
    from dbmail import wiring
    from dbmail.core.settings import Settings

    # given a request of 10 recipients with a body of over 3 KB each
    body = (
        "<html><body>" + "<p>Dear {{ user.first_name }}, your classes are ready at Splash.</p>" * 60 + "</body></html>"
    )
    local_stack.stop_runner()
    try:
        request_id = submit_request(
            subject="Hi {{ user.first_name }}",
            msgtext=body,
            recipients=[recipient(6000 + i) for i in range(10)],
            sendto_fn_name="send_to_self",
            sender="splash@example.org",
        )
        expander = wiring.expander(Settings.for_function("expand"))
        sender = wiring.email_sender(Settings.for_function("send"))
        written: list[tuple[str, float]] = []

        def count_writes(model, parsed, **_):
            consumed = parsed.get("ConsumedCapacity")
            for entry in [consumed] if isinstance(consumed, dict) else consumed or []:
                if entry["TableName"] == store.models.TextOfEmail.Meta.table_name and model.name in WRITES:
                    written.append((model.name, entry["CapacityUnits"]))  # the table's and its index's

        for model in (expander.store.models.TextOfEmail, sender.store.models.TextOfEmail):
            model._get_connection().connection.client.meta.events.register("after-call.dynamodb", count_writes)
        # when it is expanded and its emails sent from their messages
        expander.expand(request_id, owner="stream:wcu", takeover=True)
        sqs = local_stack.client("sqs")
        for url in (local_stack.env["DBMAIL_SEND_QUEUE_URL"], local_stack.env["DBMAIL_PRIORITY_SEND_QUEUE_URL"]):
            while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
                for message in messages:
                    queued = QueuedEmail.from_body(message["Body"])
                    if queued.request_id == request_id:
                        assert len(queued.msgtext.encode()) > 3000  # the body travels in the message
                        assert sender.deliver(queued, message["ReceiptHandle"], 1) == "sent"
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    finally:
        local_stack.start_runner()
    assert got_mail(request_status(request_id)["emails_by_status"]) == {GOT_MAIL_KEY: 10}
    # then each email cost 4 write units: its put and index entry (1 + 1), the claim, the record
    assert {name for name, _ in written} == {"BatchWriteItem", "UpdateItem"}
    assert sum(units for _, units in written) / 10 == 4


def queued_items(store, count: int, **fields) -> list:
    """``count`` queued TextOfEmail items of a request of their own (written as expansion writes them)."""
    request_id = uuid.uuid4().hex
    items = []
    for n in range(count):
        item = store.models.TextOfEmail(
            request_id,
            f"u{n:010d}#0",
            recipient_key=f"u{n:010d}",
            send_to=f"user{n}@example.net",
            send_from="splash@example.org",
            created_at=datetime.now(UTC),
            message_ref=f"{n:032x}",
            **fields,
        )
        item.save()
        items.append(item)
    return items


def test_a_batch_of_claims_is_one_statement_call_and_each_email_is_held_by_one_claim(store):
    """The send function's batch path (Store.claim_emails and mark_sent_many): PartiQL statements
    on DynamoDB Local (moto's parser cannot run them)."""
    # given eight queued emails, one already sent, one held by a live claim, one whose lease lapsed
    items = queued_items(store, 8)
    now = datetime.now(UTC)
    lapsed, live, sent = items[5], items[6], items[7]
    lapsed.update(
        actions=[type(lapsed).status.set("processing"), type(lapsed).claimed_until.set(now - timedelta(seconds=1))]
    )
    live.update(
        actions=[
            type(live).status.set("processing"),
            type(live).claim_id.set("other"),
            type(live).claimed_until.set(now + timedelta(seconds=60)),
        ]
    )
    sent.update(actions=[type(sent).status.set("sent")])
    calls: list[str] = []
    client = store.models.TextOfEmail._get_connection().connection.client
    client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    # when nine deliveries claim them at once, two of them the same email (a duplicate message)
    lease = now + timedelta(seconds=60)
    asks = {
        f"receipt-{n}": (store.email_ref(item.request_id, item.email_key), now, lease) for n, item in enumerate(items)
    }
    asks["receipt-dup"] = (store.email_ref(items[0].request_id, items[0].email_key), now, lease)
    claimed = store.claim_emails(asks)
    # then the queued and lapsed ones are claimed, each by one claim only, and come back whole
    holders = {claim_id: item.email_key for claim_id, item in claimed.items() if item is not None}
    assert sorted(holders.values()) == sorted(item.email_key for item in items[:6])
    assert ("receipt-0" in holders) != ("receipt-dup" in holders)
    for claim_id, email_key in holders.items():
        item = claimed[claim_id]
        assert (item.status, item.claim_id, item.send_to) == (
            "processing",
            claim_id,
            f"user{int(email_key[1:11])}@example.net",
        )
    assert claimed["receipt-6"] is None and claimed["receipt-7"] is None
    # and it took two statement calls (no email twice in one), each returning its claimed items:
    # no read, not nine updates
    assert calls == ["BatchExecuteStatement", "BatchExecuteStatement"]
    # and a claim the same receipt makes again (its outcome lost) still holds
    assert store.claim_emails({"receipt-1": asks["receipt-1"]})["receipt-1"] is not None
    # when their sends are recorded at once
    calls.clear()
    marks = {claim_id: (claimed[claim_id], now, f"ses-{claim_id}", f"<{claim_id}@example.org>") for claim_id in holders}
    assert store.mark_sent_many(marks) == {}
    # then in one call, each is sent with its ids and no claim left
    assert calls == ["BatchExecuteStatement"]
    for claim_id, email_key in holders.items():
        item = store.get_email(items[0].request_id, email_key)
        assert (item.status, item.provider_message_id, item.message_id, item.claimed_until, item.msgtext) == (
            "sent",
            f"ses-{claim_id}",
            f"<{claim_id}@example.org>",
            None,
            None,
        )
    # and the email held by another live claim was left alone
    assert store.get_email(live.request_id, live.email_key).claim_id == "other"


def test_claimed_items_a_batch_statement_does_not_return_are_read(store, monkeypatch):
    from dbmail.outgoing import store as store_module

    # given a DynamoDB whose batch statements return no items (the claim without RETURNING)
    monkeypatch.setattr(
        store_module, "CLAIM_STATEMENT", store_module.CLAIM_STATEMENT.removesuffix(" RETURNING ALL NEW *")
    )
    items = queued_items(store, 3)
    items[2].update(actions=[type(items[2]).status.set("sent")])
    calls: list[str] = []
    client = store.models.TextOfEmail._get_connection().connection.client
    client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    now = datetime.now(UTC)
    # when they are claimed at once
    claimed = store.claim_emails(
        {
            f"r{n}": (store.email_ref(i.request_id, i.email_key), now, now + timedelta(seconds=60))
            for n, i in enumerate(items)
        }
    )
    # then the two queued ones are claimed and read whole in one BatchGetItem; the sent one is not claimed
    assert calls == ["BatchExecuteStatement", "BatchGetItem"]
    assert claimed["r2"] is None
    for n in (0, 1):
        assert (claimed[f"r{n}"].status, claimed[f"r{n}"].claim_id, claimed[f"r{n}"].send_to) == (
            "processing",
            f"r{n}",
            f"user{n}@example.net",
        )


def test_a_claim_of_an_item_written_without_message_ref_gives_it_one(store):
    # given two queued items written by older code (no message_ref)
    items = queued_items(store, 2)
    for item in items:
        item.update(actions=[type(item).message_ref.remove()])
    now = datetime.now(UTC)
    # when both are claimed at once
    claimed = store.claim_emails(
        {
            f"r{n}": (store.email_ref(i.request_id, i.email_key), now, now + timedelta(seconds=60))
            for n, i in enumerate(items)
        }
    )
    # then each has its message_ref before the provider is called
    for n, item in enumerate(items):
        assert claimed[f"r{n}"].message_ref == message_ref_for(item.request_id, item.email_key)
        assert store.get_email(item.request_id, item.email_key).message_ref == message_ref_for(
            item.request_id, item.email_key
        )
