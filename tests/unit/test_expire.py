"""The scheduled sweep: scheduled requests expand when due; stale mail is expired, not sent."""

import email
from datetime import timedelta
from email import policy

from dbmail import wiring
from dbmail.client import request_status
from dbmail.errors import DeliveryError, FailureKind
from dbmail.expand import Outcome
from dbmail.models import utcnow
from dbmail.store import Store
from tests.conftest import drain
from tests.unit.test_expand import submit


def test_a_scheduled_request_is_expanded_once_its_time_has_come(moto_stack):
    # given a request scheduled for later that the stream left waiting
    rid = submit(n=2, sendto_fn_name="", processed_by=utcnow() + timedelta(minutes=10))
    assert wiring.expander().expand(rid, owner="stream:t", takeover=True) == Outcome.SCHEDULED
    expirer = wiring.expirer()
    # when the schedule runs before and after its time
    assert expirer.run(owner="schedule:1") == {}
    expirer.clock = wiring.expander().clock = lambda: utcnow() + timedelta(minutes=11)
    summary = expirer.run(owner="schedule:2")
    # then it is expanded only the second time
    assert summary == {"expand_processed": 1}
    assert request_status(rid)["status"] == "processed"
    assert len(drain(moto_stack.sqs, moto_stack.settings.send_queue_url)) == 2


def test_unsent_mail_older_than_seven_days_is_expired(moto_stack):
    rid = submit(n=2, sendto_fn_name="")
    wiring.expander().expand(rid, owner="stream:t", takeover=True)
    store = Store(moto_stack.settings)
    email = store.get_email(rid, "u0000000001#0")
    store.mark_sent(email, utcnow(), "p", "<m@x>")
    expirer = wiring.expirer()
    expirer.clock = lambda: utcnow() + timedelta(days=7, minutes=1)
    summary = expirer.run(owner="schedule:1")
    assert summary == {"emails_expired": 1, "requests_swept": 1}
    assert request_status(rid)["emails_by_status"] == {"expired": 1, "sent": 1}
    # and a second run has nothing left to do
    assert expirer.run(owner="schedule:2") == {}


def test_a_request_the_stream_missed_is_expanded_by_the_schedule(moto_stack):
    rid = submit(n=1, sendto_fn_name="")
    expirer = wiring.expirer()
    expirer.clock = lambda: utcnow() + timedelta(minutes=5)
    assert expirer.run(owner="schedule:1") == {"expand_processed": 1}
    assert request_status(rid)["status"] == "processed"


def test_an_unprocessed_request_past_seven_days_is_expired(moto_stack):
    rid = submit(n=1, sendto_fn_name="")
    expirer = wiring.expirer()
    expirer.clock = wiring.expander().clock = lambda: utcnow() + timedelta(days=8)
    assert expirer.run(owner="schedule:1") == {"expand_expired": 1}
    assert request_status(rid)["status"] == "expired"


def test_failed_emails_are_reported_once_to_the_sender_and_bounces(moto_stack):
    # given a request one of whose emails the provider refused for good
    from moto.ses.models import ses_backends

    from dbmail.errors import DeliveryError
    from dbmail.queue import QueuedEmail
    from tests.unit.test_send import RecordingTransport, sender

    rid = submit(n=2, sendto_fn_name="")
    wiring.expander().expand(rid, owner="stream:t", takeover=True)
    sender(moto_stack, RecordingTransport(DeliveryError("MessageRejected: Address blacklisted", kind=FailureKind.PERMANENT))) \
        .deliver(QueuedEmail(rid, "u0000000002#0"), claim_id="m", receive_count=1)
    ses = ses_backends["123456789012"]["us-east-1"]
    before = len(ses.sent_messages)
    # when the schedule runs twice
    assert wiring.expirer().run(owner="schedule:1") == {"failure_reports": 1}
    assert wiring.expirer().run(owner="schedule:2") == {}
    # then exactly one "Mail delivery failure" report went to the sender and the bounces address
    reports = ses.sent_messages[before:]
    assert len(reports) == 1
    report = email.message_from_string(reports[0].raw_data, policy=policy.default)
    assert report["Subject"].startswith("Mail delivery failure")
    body = report.get_content()
    assert '"Zoë Ng2" <user2@example.net>: DeliveryError: MessageRejected' in body and "user1@" not in body
    assert {a.addr_spec for a in report["To"].addresses} == {"splash@example.org", moto_stack.settings.bounces_address}


def test_one_broken_request_does_not_stop_the_sweep(moto_stack, monkeypatch):
    # given two requests the stream missed, the first of which fails to expand (e.g. a throttled table)
    first = submit(n=1, sendto_fn_name="")
    second = submit(n=1, sendto_fn_name="")
    expander = wiring.expander()
    real = expander.expand

    def flaky(request_id, **kwargs):
        if request_id == first:
            raise ConnectionError("DynamoDB unreachable")
        return real(request_id, **kwargs)

    monkeypatch.setattr(expander, "expand", flaky)
    expirer = wiring.expirer()
    expirer.clock = lambda: utcnow() + timedelta(minutes=5)
    # then the other is still expanded, and the failure is counted for the next run
    assert expirer.run(owner="schedule:1") == {"expand_error": 1, "expand_processed": 1}
    assert request_status(second)["status"] == "processed"
    assert request_status(first)["status"] == "queued"
