"""The scheduled sweep: scheduled requests expand when due; stale mail is expired, not sent."""

import email
from datetime import UTC, timedelta
from email import policy

from dbmail import wiring
from dbmail.client import request_status
from dbmail.core.clock import utcnow
from dbmail.core.errors import DeliveryError, FailureKind
from dbmail.outgoing.expand import Outcome
from dbmail.outgoing.store import Store
from tests.conftest import drain, function_settings
from tests.unit.test_expand import submit


def test_a_scheduled_request_is_expanded_once_its_time_has_come(moto_stack):
    # given a request scheduled for later that the stream left waiting
    rid = submit(n=2, sendto_fn_name="", processed_by=utcnow() + timedelta(minutes=10))
    assert (
        wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True) == Outcome.SCHEDULED
    )
    expirer = wiring.expirer(function_settings("expire"))
    # when the schedule runs before and after its time
    assert expirer.run(owner="schedule:1") == {}
    expirer.clock = wiring.expander(function_settings("expire")).clock = lambda: utcnow() + timedelta(minutes=11)
    summary = expirer.run(owner="schedule:2")
    # then it is expanded only the second time
    assert summary == {"expand_processed": 1}
    assert request_status(rid)["status"] == "processed"
    assert len(drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url)) == 2


def test_unsent_mail_older_than_seven_days_is_expired(moto_stack):
    rid = submit(n=2, sendto_fn_name="")
    wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
    store = Store(moto_stack.settings)
    email = store.get_email(rid, "u0000000001#0")
    store.mark_sent(email, utcnow(), "p", "<m@x>")
    expirer = wiring.expirer(function_settings("expire"))
    expirer.clock = lambda: utcnow() + timedelta(days=7, minutes=1)
    summary = expirer.run(owner="schedule:1")
    assert summary == {"emails_expired": 1, "requests_settled": 1}
    assert request_status(rid)["emails_by_status"] == {"expired": 1, "sent": 1}
    # and a second run has nothing left to do
    assert expirer.run(owner="schedule:2") == {}


def test_a_request_the_stream_missed_is_expanded_by_the_schedule(moto_stack):
    rid = submit(n=1, sendto_fn_name="")
    expirer = wiring.expirer(function_settings("expire"))
    expirer.clock = lambda: utcnow() + timedelta(minutes=3)  # past the stream's grace, well within the sweep's
    assert expirer.run(owner="schedule:1") == {"expand_processed": 1}
    assert request_status(rid)["status"] == "processed"


def test_an_unprocessed_request_past_seven_days_is_expired(moto_stack):
    rid = submit(n=1, sendto_fn_name="")
    expirer = wiring.expirer(function_settings("expire"))
    expirer.clock = wiring.expander(function_settings("expire")).clock = lambda: utcnow() + timedelta(days=8)
    assert expirer.run(owner="schedule:1") == {"expand_expired": 1}
    assert request_status(rid)["status"] == "expired"


def test_one_failure_report_per_request_once_every_email_is_final(moto_stack):
    # given a request whose two emails the provider refuses for good, one before and one after a sweep
    from moto.ses.models import ses_backends

    from dbmail.outgoing.queue import QueuedEmail
    from tests.unit.test_send import RecordingTransport, sender

    rid = submit(n=2, sendto_fn_name="")
    wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
    refusing = sender(
        moto_stack,
        RecordingTransport(DeliveryError("MessageRejected: Address blacklisted", kind=FailureKind.PERMANENT)),
    )
    ses = ses_backends["123456789012"]["us-east-1"]
    before = len(ses.sent_messages)
    refusing.deliver(QueuedEmail(rid, "u0000000002#0"), claim_id="m", receive_count=1)
    # when the schedule runs while the other email is still on its way, nothing is reported yet
    assert wiring.expirer(function_settings("expire")).run(owner="schedule:1") == {}
    refusing.deliver(QueuedEmail(rid, "u0000000001#0"), claim_id="m", receive_count=1)
    assert wiring.expirer(function_settings("expire")).run(owner="schedule:2") == {
        "failure_reports": 1,
        "requests_settled": 1,
    }
    assert wiring.expirer(function_settings("expire")).run(owner="schedule:3") == {}
    # then exactly one "Mail delivery failure" report went, listing both, to the sender with a copy
    # to support (not to the bounces address, which dbmail reads itself), from the plain bounces address
    reports = ses.sent_messages[before:]
    assert len(reports) == 1
    report = email.message_from_string(reports[0].raw_data, policy=policy.default)
    assert report["Subject"].startswith("Mail delivery failure")
    body = report.get_content()
    assert '"Zoë Ng2" <user2@example.net>: DeliveryError: MessageRejected' in body
    assert '"Zoë Ng1" <user1@example.net>: DeliveryError: MessageRejected' in body
    assert f"dbmail resend {rid}" in body
    assert [a.addr_spec for a in report["To"].addresses] == ["splash@example.org", "support@example.org"]
    assert function_settings("expire").support_address == "support@example.org"
    assert report["Return-Path"] == f"<{moto_stack.settings.bounces_address}>"
    assert report["Auto-Submitted"] == "auto-generated"  # RFC 3834: no auto-responder answers it


def test_a_bounce_of_a_failure_report_is_recorded_unmatched_and_answered_by_nothing(inbound):
    # given a failure report for a request whose only email was refused for good
    from moto.ses.models import ses_backends

    from dbmail.core.statuses import InboundStatus
    from dbmail.outgoing.queue import QueuedEmail
    from tests.unit.test_dsn import dsn
    from tests.unit.test_inbound import Outbox, receive
    from tests.unit.test_send import RecordingTransport, sender

    rid = submit(n=1, sendto_fn_name="")
    wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
    refusing = sender(inbound, RecordingTransport(DeliveryError("MessageRejected", kind=FailureKind.PERMANENT)))
    refusing.deliver(QueuedEmail(rid, "u0000000001#0"), claim_id="m", receive_count=1)
    ses = ses_backends["123456789012"]["us-east-1"]
    before = len(ses.sent_messages)
    assert wiring.expirer(function_settings("expire")).run(owner="schedule:1")["failure_reports"] == 1
    (sent,) = ses.sent_messages[before:]
    report = email.message_from_string(sent.raw_data, policy=policy.default)
    bounces = inbound.settings.bounces_address
    assert report["Return-Path"] == f"<{bounces}>"
    # when the report bounces: a DSN to its envelope sender, quoting its headers
    outbox = Outbox()
    raw = dsn(
        recipients=(("splash@example.org", "failed", "5.1.1", "smtp; 550 5.1.1 unknown"),),
        original_message_id=report["Message-ID"],
    )
    message_id, status = receive(inbound, raw, recipients=[bounces])
    # then it is recorded as a DSN naming no email of ours, and nothing is sent: no loop
    assert status == InboundStatus.FEEDBACK
    item = wiring.inbound_router(function_settings("inbound")).store.get(message_id)
    assert item.detail == "DSN for 1 recipients: 1 unmatched"
    assert outbox.sent() == []
    assert len(ses.sent_messages) == before + 1


def lose_queue_messages(moto_stack):
    for url in (moto_stack.settings.send_queue_url, moto_stack.settings.priority_send_queue_url):
        moto_stack.sqs.purge_queue(QueueUrl=url)


def test_emails_whose_messages_were_lost_are_queued_again_after_the_grace_period(moto_stack):
    # given an expanded request whose SQS messages were all lost
    rid = submit(n=3, sendto_fn_name="")
    wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
    lose_queue_messages(moto_stack)
    expirer = wiring.expirer(function_settings("expire"))
    # when the sweep runs within the grace period, nothing is queued again
    assert expirer.run(owner="schedule:1") == {}
    # and after it, each email is queued again exactly once
    grace = moto_stack.settings.stranded_after
    expirer.clock = lambda: utcnow() + grace + timedelta(seconds=1)
    assert expirer.run(owner="schedule:2") == {"emails_requeued": 3}
    keys = sorted(m["Body"] for m in drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url))
    assert len(keys) == 3 and len(set(keys)) == 3
    # and a second run right after queues nothing more (the sweep is idempotent)
    assert expirer.run(owner="schedule:3") == {}


def test_a_busy_queue_delays_the_sweep_but_never_forever(moto_stack):
    # given emails still waiting in a long queue (their messages are there)
    rid = submit(n=2, sendto_fn_name="")
    wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
    expirer = wiring.expirer(function_settings("expire"))
    grace = moto_stack.settings.stranded_after
    # then a sweep past the grace period leaves them alone while the queue is busy
    expirer.clock = lambda: utcnow() + grace + timedelta(seconds=1)
    assert expirer.run(owner="schedule:1") == {}
    # but queues them again once they have waited many grace periods
    expirer.clock = lambda: utcnow() + grace * 12 + timedelta(seconds=1)
    assert expirer.run(owner="schedule:2") == {"emails_requeued": 2}


def test_an_email_under_a_lapsed_claim_is_queued_again_and_sent_once(moto_stack):
    from dbmail.outgoing.queue import QueuedEmail
    from dbmail.outgoing.send import CLAIM_LEASE
    from tests.unit.test_send import RecordingTransport, sender

    # given an email whose sender died holding its claim, and whose message is gone
    rid = submit(n=1, sendto_fn_name="")
    wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
    lose_queue_messages(moto_stack)
    store = Store(moto_stack.settings)
    assert store.claim_email(store.email_ref(rid, "u0000000001#0"), "dead-receive", utcnow(), utcnow() + CLAIM_LEASE)
    # when the sweep runs past the claim's lease and the grace period
    expirer = wiring.expirer(function_settings("expire"))
    later = utcnow() + CLAIM_LEASE + moto_stack.settings.stranded_after + timedelta(seconds=1)
    expirer.clock = lambda: later
    assert expirer.run(owner="schedule:1") == {"emails_requeued": 1}
    # then the new message, in the request's lane (a small request: priority), delivers it, once
    (message,) = drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url)
    transport = RecordingTransport()
    assert sender(moto_stack, transport).deliver(QueuedEmail.from_body(message["Body"]), "r2", 1) == "sent"
    assert sender(moto_stack, transport).deliver(QueuedEmail.from_body(message["Body"]), "r3", 1) == "duplicate"
    assert len(transport.sent) == 1


def test_resend_delivers_each_failed_email_once_with_the_same_message_id(moto_stack, capsys):
    from dbmail.cli import main
    from dbmail.outgoing.queue import QueuedEmail
    from tests.unit.test_send import RecordingTransport, sender

    # given a request both of whose emails were refused (an unverified identity, since fixed)
    rid = submit(n=2, sendto_fn_name="")
    wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
    lose_queue_messages(moto_stack)
    refusing = sender(
        moto_stack, RecordingTransport(DeliveryError("MessageRejected: not verified", kind=FailureKind.PERMANENT))
    )
    for key in ("u0000000001#0", "u0000000002#0"):
        refusing.deliver(QueuedEmail(rid, key), claim_id="m", receive_count=1)
    assert wiring.expirer(function_settings("expire")).run(owner="schedule:1") == {
        "failure_reports": 1,
        "requests_settled": 1,
    }
    # when the operator resends, twice by mistake
    assert main(["resend", rid]) == 0
    assert main(["resend", rid]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"2 emails of request {rid} queued again",
        f"0 emails of request {rid} queued again",
    ]
    # then each email is queued once and delivered once, with its original Message-ID
    messages = drain(moto_stack.sqs, moto_stack.settings.send_queue_url)
    assert len(messages) == 2
    transport = RecordingTransport()
    for message in messages + messages:  # every message delivered twice
        sender(moto_stack, transport).deliver(QueuedEmail.from_body(message["Body"]), message["MessageId"] + "x", 1)
    assert len(transport.sent) == 2
    from dbmail.outgoing.emails import message_id_for

    assert {m.message_id for m in transport.sent} == {
        message_id_for(rid, key, "Splash <splash@example.org>") for key in ("u0000000001#0", "u0000000002#0")
    }
    status = request_status(rid)
    assert status["emails_by_status"] == {"sent": 2} and status["resent"] == 2
    # and the request settles again without a second report
    assert wiring.expirer(function_settings("expire")).run(owner="schedule:2") == {"requests_settled": 1}


def test_one_broken_request_does_not_stop_the_sweep(moto_stack, monkeypatch):
    # given two requests the stream missed, the first of which fails to expand (e.g. a throttled table)
    first = submit(n=1, sendto_fn_name="")
    second = submit(n=1, sendto_fn_name="")
    expander = wiring.expander(function_settings("expire"))
    real = expander.expand

    def flaky(request_id, **kwargs):
        if request_id == first:
            raise ConnectionError("DynamoDB unreachable")
        return real(request_id, **kwargs)

    monkeypatch.setattr(expander, "expand", flaky)
    expirer = wiring.expirer(function_settings("expire"))
    expirer.clock = lambda: utcnow() + timedelta(minutes=3)
    # then the other is still expanded, and the failure is counted for the next run
    assert expirer.run(owner="schedule:1") == {"expand_error": 1, "expand_processed": 1}
    assert request_status(second)["status"] == "processed"
    assert request_status(first)["status"] == "queued"


def test_a_report_of_many_failures_lists_a_thousand_and_counts_the_rest():
    from datetime import datetime

    from dbmail.outgoing.report import MAX_LISTED, failure_report

    failures = [(f"user{i}@example.net", "DeliveryError: MessageRejected") for i in range(MAX_LISTED + 250)]
    report = failure_report(
        request_id="r1",
        request_subject="Big",
        failures=failures,
        report_from="info@example.org",
        report_to=["splash@example.org"],
        site_url="https://esp.example.org",
        date=datetime(2026, 12, 1, tzinfo=UTC),
        envelope_sender="bounces@example.org",
    )
    assert report.text.startswith(f"{MAX_LISTED + 250} email(s)")
    assert "user999@example.net" in report.text and "user1000@example.net" not in report.text
    assert "... and 250 more (dbmail status r1)" in report.text
