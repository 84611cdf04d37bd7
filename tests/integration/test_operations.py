"""What an operator meets, end to end on the session's local stack: `dbmail status`, `render`,
`resend` and `redrive` on real requests; emails whose send messages were lost or dead-lettered;
inbound mail SES judged spam or a virus, held for a moderator and released; mail too large to
forward. The CLI runs in this process (``dbmail.cli.main``) with the stack's environment, as
`source .local/stack.env; dbmail ...` would.
"""

from __future__ import annotations

import email
import json
import os
import re
import smtplib
import time
import uuid
from datetime import timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from dbmail import cli
from dbmail.client import (
    install_default_email_lists,
    publish_directory,
    request_status,
    set_plain_redirect,
    submit_request,
)
from dbmail.outgoing.emails import message_id_for
from dbmail.outgoing.queue import QueuedEmail
from dbmail_local import stack
from tests.conftest import DIRECTORY, recipient
from tests.integration.conftest import GOT_MAIL, GOT_MAIL_KEY, got_mail, wait_delivered
from tests.integration.test_outgoing import delivered_messages, outbox_by_message_id

pytestmark = pytest.mark.integration

STRANDED_AFTER = timedelta(seconds=20)  # local/parameters.json's StrandedAfterSeconds


def dbmail(capsys, *args: str) -> str:
    """`dbmail ARGS...`: what it printed; the test fails, with its error line, unless it exits 0."""
    capsys.readouterr()
    code = cli.main(list(args))
    printed = capsys.readouterr()
    assert code == 0, f"dbmail {' '.join(args)} exited {code}: {printed.err}"
    return printed.out


def copies(local_stack, request_id: str, item) -> int:
    return len(
        outbox_by_message_id(local_stack.outbox).get(message_id_for(request_id, item.email_key, item.send_from), [])
    )


# ---- outgoing -------------------------------------------------------------------------


def test_dbmail_status_reconciles_a_delivered_request_and_render_gives_back_what_was_sent(local_stack, store, capsys):
    # given a request to three students and, where they have one, their guardians
    people = [recipient(6000), recipient(6001), recipient(6002, guardian_email=None)]
    request_id = submit_request(
        subject="Welcome, {{ user.first_name }}",
        msgtext="Dear {{ user.first_name }}, see you on {{ program.date }}.",
        recipients=people,
        sendto_fn_name="send_to_self_and_guardian",
        sender="splash@example.org",
        var_dict={"program": {"date": "Saturday"}},
    )
    # when it has been delivered and the expire schedule has settled it
    wait_delivered(local_stack, request_id)
    local_stack.wait_for(lambda: request_status(request_id)["reconciliation"]["settled"], timeout=30)
    # then `dbmail status` shows every count reconciled and nothing stuck
    out = dbmail(capsys, "status", "--json", request_id)
    status = json.loads(out)
    assert (status["status"], status["recipients"], status["emails"]) == ("processed", 3, 5)
    assert (status["skipped_no_address"], status["render_failed"], status["resent"]) == (0, 0, 0)
    assert got_mail(status["emails_by_status"]) == {GOT_MAIL_KEY: 5}
    assert status["reconciliation"] == {
        "emails": 5,
        "final": 5,
        "outstanding": 0,
        "balanced": True,
        "settled": True,
        "failure_report_sent": False,
    }
    assert status["stuck"] == []
    # and `dbmail render` gives back each sent email (whose body was cleared) as it went out
    delivered = {m["Message-ID"]: m for m in delivered_messages(local_stack, store, request_id)}
    for item in store.iter_emails(request_id):
        assert item.msgtext is None
        out = dbmail(capsys, "render", request_id, item.email_key)
        rendered = json.loads(out)
        message = delivered[message_id_for(request_id, item.email_key, item.send_from)]
        assert rendered["send_to"] == item.send_to
        assert rendered["subject"] == message["Subject"]
        assert rendered["msgtext"].strip() == message.get_content().strip()


def test_a_failed_email_is_sent_again_once_by_dbmail_resend_with_its_message_id(local_stack, store, capsys):
    # given an email SES refused for good (a sender identity not verified, say)
    try:
        stack.write_faults(local_stack.state, {"ses_send": {"permanent": 1.0}})
        request_id = submit_request(
            subject="Refused", msgtext="Hello", recipients=[recipient(6100)], sender="splash@example.org"
        )
        status = wait_delivered(local_stack, request_id)
    finally:
        stack.write_faults(local_stack.state, None)
    assert status["emails_by_status"] == {"failed": 1}
    (failed,) = store.iter_emails(request_id)
    assert "MessageRejected" in failed.error and copies(local_stack, request_id, failed) == 0
    # when the cause is fixed and the operator resends the request, twice by mistake
    out = dbmail(capsys, "resend", request_id)
    assert out.strip() == f"1 emails of request {request_id} queued again"
    # then it is delivered once, with the Message-ID it always had, and counted as resent
    status = wait_delivered(local_stack, request_id)
    assert (got_mail(status["emails_by_status"]), status["resent"]) == ({GOT_MAIL_KEY: 1}, 1)
    out = dbmail(capsys, "resend", request_id)
    assert out.strip() == f"0 emails of request {request_id} queued again"
    (sent,) = store.iter_emails(request_id)
    assert sent.message_id == message_id_for(request_id, sent.email_key, sent.send_from)
    assert copies(local_stack, request_id, sent) == 1


def test_emails_whose_send_messages_were_lost_or_dead_lettered_are_each_delivered_once(local_stack, store, capsys):
    sqs, env = local_stack.client("sqs"), local_stack.env
    # (a two-recipient request's emails take the priority lane)
    queue_url, dlq_url = env["DBMAIL_PRIORITY_SEND_QUEUE_URL"], env["DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL"]
    # given a request expanded into two queued emails whose send messages never arrive: their
    # send queue holds them back (DelaySeconds), then loses them (purged)
    try:
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"DelaySeconds": "60"})
        request_id = submit_request(
            subject="Lost", msgtext="Hello", recipients=[recipient(6200), recipient(6201)], sender="splash@example.org"
        )
        local_stack.wait_for(lambda: request_status(request_id)["status"] == "processed", timeout=30)
        sqs.purge_queue(QueueUrl=queue_url)
    finally:
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"DelaySeconds": "0"})
    expanded = {item.recipient_key: item for item in store.iter_emails(request_id)}
    assert [item.status for item in expanded.values()] == ["queued", "queued"]
    redriven, swept = expanded["u0000006200"], expanded["u0000006201"]
    # and the first one's message sits in the dead-letter queue, as after three failed receives
    sqs.send_message(QueueUrl=dlq_url, MessageBody=QueuedEmail(request_id, redriven.email_key).to_body())

    # when the operator runs `dbmail redrive`
    out = dbmail(capsys, "redrive")
    assert re.fullmatch(r"[1-9]\d* messages moved back to the send queue", out.strip()), out
    # then that email is delivered at once, long before the sweep would have queued it again
    local_stack.wait_for(lambda: copies(local_stack, request_id, redriven), timeout=15)
    (first,) = [item for item in store.iter_emails(request_id) if item.email_key == redriven.email_key]
    assert first.status in GOT_MAIL and first.sent < redriven.queued_at + STRANDED_AFTER
    # and the other, stranded without any message, is queued again by the expire sweep and delivered
    status = wait_delivered(local_stack, request_id, timeout=90)
    assert got_mail(status["emails_by_status"]) == {GOT_MAIL_KEY: 2}
    (second,) = [item for item in store.iter_emails(request_id) if item.email_key == swept.email_key]
    assert second.queued_at >= swept.queued_at + STRANDED_AFTER  # the sweep's requeue, not the expansion's
    # and each went exactly once
    assert [copies(local_stack, request_id, item) for item in (first, second)] == [1, 1]


# ---- inbound --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routing(local_stack):
    """The default EmailList rules and the directory and redirect test_inbound.py publishes."""
    install_default_email_lists()
    publish_directory(**DIRECTORY)
    set_plain_redirect("directors", "Dir One <dir1@example.net>, dir2@example.net")
    return local_stack


def receive(local_stack, to: str, subject: str, body: str = "See you Saturday.\n", **headers: str) -> str:
    """Mail from a known parent over SMTP to the stack's SES front; returns SES's message id."""
    message = EmailMessage()
    message["From"] = '"Pa Rent" <parent@example.net>'
    message["To"] = to
    message["Subject"] = subject
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    env = local_stack.env
    with smtplib.SMTP(env["DBMAIL_LOCAL_SMTP_HOST"], int(env["DBMAIL_LOCAL_SMTP_PORT"]), timeout=120) as smtp:
        smtp.ehlo()
        smtp.mail("parent@example.net")
        smtp.rcpt(to)
        code, reply = smtp.data(message.as_bytes(policy=policy.SMTP))
    assert code == 250, reply
    return reply.decode().split()[1]


def inbound_outcome(local_stack, message_id: str, timeout: float = 30) -> dict[str, str]:
    """The InboundMessage's status and detail, once the inbound function has finished with it."""

    def finished():
        item = (
            local_stack.client("dynamodb")
            .get_item(TableName=local_stack.env["DBMAIL_INBOUND_TABLE"], Key={"message_id": {"S": message_id}})
            .get("Item")
        )
        if item and item["status"]["S"] not in ("received", "failed"):
            return {"status": item["status"]["S"], "detail": item.get("detail", {}).get("S", "")}
        return None

    return local_stack.wait_for(finished, timeout=timeout)


def outbox_with(local_stack, text: str) -> list[email.message.EmailMessage]:
    """Messages in the outbox written in the last few minutes that contain ``text`` (older ones
    are skipped unread: the outbox also holds earlier tests' 12 MB forwards)."""
    recent = time.time() - 300
    found = []
    for entry in os.scandir(local_stack.outbox):
        if entry.name.endswith(".eml") and entry.stat().st_mtime > recent:
            raw = Path(entry.path).read_bytes()
            if text.encode() in raw:
                found.append(email.message_from_bytes(raw, policy=policy.default))
    return found


def test_mail_ses_judged_spam_is_held_for_the_moderator_until_dbmail_held_release(routing, capsys):
    # given mail to a teacher that SES judged spam (SpamAction: hold)
    token = uuid.uuid4().hex[:10]
    message_id = receive(routing, "tcher@example.org", f"Offer {token}", X_Dbmail_Local_Spam_Verdict="FAIL")
    # then it is held, not forwarded, and the moderator is told how to release it
    assert inbound_outcome(routing, message_id) == {
        "status": "held",
        "detail": "spam verdict FAIL: held for moderation",
    }
    # (directors@ is itself a redirect, so the outbox also holds the notice as forwarded on to
    # the directors: the moderator's own copy is the one addressed to directors@)
    (notice,) = routing.wait_for(
        lambda: [
            m
            for m in outbox_with(routing, token)
            if m["Subject"].startswith("Held") and m["To"] == "directors@example.org"
        ]
    )
    assert notice["Subject"] == f"Held for moderation: Offer {token}"
    assert f"dbmail held release {message_id}" in notice.get_content()
    assert [m for m in outbox_with(routing, token) if m["To"] == "tcher@example.org"] == []
    out = dbmail(capsys, "held", "list")
    assert message_id in [json.loads(line)["message_id"] for line in out.splitlines()]
    # when the moderator releases it
    out = dbmail(capsys, "held", "release", message_id)
    assert out.strip() == "released"
    # then the teacher gets it, once
    (forward,) = routing.wait_for(lambda: [m for m in outbox_with(routing, token) if m["To"] == "tcher@example.org"])
    assert forward["Subject"] == f"Offer {token}"
    assert inbound_outcome(routing, message_id)["status"] == "released"
    out = dbmail(capsys, "held", "list")
    assert message_id not in out


def test_mail_ses_judged_a_virus_is_dropped_with_no_forward_and_no_notice(routing):
    # given mail to a class list that SES judged a virus
    token = uuid.uuid4().hex[:10]
    message_id = receive(routing, "E1234-class@example.org", f"Photos {token}", X_Dbmail_Local_Virus_Verdict="FAIL")
    # then it is dropped, and nobody (not the class, not the sender) gets anything
    assert inbound_outcome(routing, message_id) == {"status": "dropped", "detail": "virus verdict FAIL"}
    time.sleep(2)  # what a forward or a notice would have taken
    assert outbox_with(routing, token) == []


def test_mail_over_40_mb_is_not_forwarded_and_its_known_sender_is_told(routing):
    # given a 41 MB message (SES receives up to 40 MB; the local front takes more, to test this)
    token = uuid.uuid4().hex[:10]
    line = "x" * 76 + "\n"
    message_id = receive(routing, "tcher@example.org", f"Huge {token}", body=line * (41 * 1024 * 1024 // len(line)))
    # then it is not forwarded, and the parent who sent it is told why
    outcome = inbound_outcome(routing, message_id, timeout=90)
    assert outcome["status"] == "too_large" and outcome["detail"].endswith("notice sent")
    (notice,) = routing.wait_for(
        lambda: [m for m in outbox_with(routing, token) if m["Subject"] == "Message too large"]
    )
    assert [a.addr_spec for a in notice["To"].addresses] == ["parent@example.net"]
    assert "over the 40 MB limit" in notice.get_content() and "tcher@example.org" in notice.get_content()
    assert [m for m in outbox_with(routing, token) if m["To"] == "tcher@example.org"] == []
