"""The scheduled sweep's less travelled paths: an expansion resumed after its lease lapsed or its
time ran out, a sweep cut short by the invocation's time, one request's sweep failing, a failure
report that cannot be sent (tried again next run), and a request that failed as a whole."""

from __future__ import annotations

import email
from datetime import timedelta
from email import policy

from moto.ses.models import ses_backends

from dbmail import wiring
from dbmail.client import request_status
from dbmail.core.clock import utcnow
from dbmail.core.errors import DeliveryError, FailureKind
from dbmail.outgoing.queue import QueuedEmail
from dbmail.outgoing.store import Store
from tests.conftest import drain, function_settings
from tests.unit.test_expand import submit
from tests.unit.test_send import RecordingTransport, sender


def expirer_at(moment):
    """The expire function's sweep, its clock (and its expander's) at ``moment``."""
    expirer = wiring.expirer(function_settings("expire"))
    expirer.clock = expirer.expander.clock = lambda: moment
    return expirer


def ses_sent():
    return ses_backends["123456789012"]["us-east-1"].sent_messages


def refuse_every_email(moto_stack, rid, n):
    refusing = sender(
        moto_stack,
        RecordingTransport(DeliveryError("MessageRejected: Address blacklisted", kind=FailureKind.PERMANENT)),
    )
    for i in range(1, n + 1):
        refusing.deliver(QueuedEmail(rid, f"u{i:010d}#0"), claim_id="m", receive_count=1)


def test_an_expansion_whose_lease_lapsed_is_resumed_by_the_schedule(moto_stack):
    # given a request an expansion claimed and then died holding (processing, lease one minute)
    rid = submit(n=2, sendto_fn_name="")
    now = utcnow()
    assert Store(moto_stack.settings).claim_request(rid, "stream:dead", now, now + timedelta(minutes=1), takeover=True)
    # when the schedule runs under the lease, then it is left alone
    assert expirer_at(now + timedelta(seconds=30)).run(owner="schedule:1") == {}
    assert request_status(rid)["status"] == "processing"
    # when it runs after the lease, then the expansion is resumed and finished
    assert expirer_at(now + timedelta(minutes=2)).run(owner="schedule:2") == {"resume_processed": 1}
    assert request_status(rid)["status"] == "processed"
    assert len(drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url)) == 2


def test_an_expansion_out_of_time_is_counted_incomplete_and_resumed_next_run(moto_stack, monkeypatch):
    # given a request the stream missed, expanded one recipient a chunk (each invocation always
    # finishes its first chunk)
    monkeypatch.setattr("dbmail.outgoing.expand.BATCH_RECIPIENTS", 1)
    rid = submit(n=2, sendto_fn_name="")
    start = utcnow() + timedelta(minutes=3)
    # when the schedule runs with no time left, then the expansion stops after the first chunk
    # (counted incomplete), one email made
    assert expirer_at(start).run(owner="schedule:1", time_left=lambda: 0.0) == {"expand_incomplete": 1}
    assert request_status(rid)["emails_by_status"] == {"queued": 1}
    assert request_status(rid)["status"] == "processing"
    # and a later run, past the expansion's lease, finishes it with the other
    from dbmail.outgoing.expand import LEASE

    later = start + LEASE + timedelta(minutes=1)
    # (the first email, queued a lease ago, far past the stack's stranded_after, is queued again
    # too: a duplicate message, which the send's exclusive claim makes harmless)
    assert expirer_at(later).run(owner="schedule:2") == {"resume_processed": 1, "emails_requeued": 1}
    assert request_status(rid)["status"] == "processed"
    assert request_status(rid)["emails_by_status"] == {"queued": 2}
    bodies = [
        QueuedEmail.from_body(m["Body"]) for m in drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url)
    ]
    assert sorted({b.email_key for b in bodies}) == ["u0000000001#0", "u0000000002#0"]


def test_a_sweep_short_of_time_stops_and_settles_on_the_next_run(moto_stack):
    # given a request whose only email was sent (so it can be settled)
    rid = submit(n=1, sendto_fn_name="")
    wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
    store = Store(moto_stack.settings)
    store.mark_sent(store.get_email(rid, "u0000000001#0"), utcnow(), "p", "<m@x>")
    # when the sweep has less than its safety margin left, then it stops before the request
    from dbmail.outgoing.expire import SAFETY_MARGIN_SECONDS

    expirer = expirer_at(utcnow())
    assert expirer.run(owner="schedule:1", time_left=lambda: SAFETY_MARGIN_SECONDS - 1) == {"sweep_incomplete": 1}
    assert request_status(rid)["reconciliation"]["settled"] is False
    # and the next run, with time, settles it
    assert expirer.run(owner="schedule:2") == {"requests_settled": 1}
    assert request_status(rid)["reconciliation"]["settled"] is True


def test_one_requests_sweep_failing_does_not_stop_the_others(moto_stack, monkeypatch):
    # given two settled-to-be requests, and a table that fails reading the first one's emails
    first, second = submit(n=1, sendto_fn_name=""), submit(n=1, sendto_fn_name="")
    store = Store(moto_stack.settings)
    for rid in (first, second):
        wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
        store.mark_sent(store.get_email(rid, "u0000000001#0"), utcnow(), "p", f"<{rid}@x>")
    expirer = expirer_at(utcnow())
    real = expirer.store.iter_emails

    def flaky(request_id, *args, **kwargs):
        if request_id == first:
            raise ConnectionError("DynamoDB throttled")
        return real(request_id, *args, **kwargs)

    monkeypatch.setattr(expirer.store, "iter_emails", flaky)
    # when the sweep runs, then the other is settled and the failure counted
    assert expirer.run(owner="schedule:1") == {"sweep_error": 1, "requests_settled": 1}
    assert request_status(second)["reconciliation"]["settled"] is True
    # and once the table is back, the first is settled on the next run
    monkeypatch.undo()
    assert expirer.run(owner="schedule:2") == {"requests_settled": 1}
    assert request_status(first)["reconciliation"]["settled"] is True


def test_a_failure_report_that_cannot_be_sent_is_tried_again_next_run(moto_stack):
    # given a request whose emails were all refused, and a provider that refuses the report too
    rid = submit(n=1, sendto_fn_name="")
    wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
    drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url)
    refuse_every_email(moto_stack, rid, 1)
    expirer = expirer_at(utcnow())
    working = expirer.transport
    expirer.transport = RecordingTransport(DeliveryError("Throttling", kind=FailureKind.TRANSIENT))
    # when the sweep runs, then no report is counted and the request is not settled
    assert expirer.run(owner="schedule:1") == {}
    status = request_status(rid)["reconciliation"]
    assert (status["settled"], status["failure_report_sent"]) == (False, False)
    # when the provider is back, then the report goes, once, and the request settles
    expirer.transport = working
    before = len(ses_sent())
    assert expirer.run(owner="schedule:2") == {"failure_reports": 1, "requests_settled": 1}
    assert expirer.run(owner="schedule:3") == {}
    assert len(ses_sent()) - before == 1
    status = request_status(rid)["reconciliation"]
    assert (status["settled"], status["failure_report_sent"]) == (True, True)


def test_a_request_that_failed_as_a_whole_is_reported_to_the_site_default_sender(moto_stack):
    # given a request whose sender's domain is no longer allowed by the time it is expanded
    # (written by the website's own code path, or the allowed domains changed since)
    rid = submit(n=1, sendto_fn_name="", subject="Trip")
    store = Store(moto_stack.settings)
    request = store.get_request(rid)
    request.update(actions=[type(request).sender.set("someone@gmail.com")])
    wiring.expander(function_settings("expire")).expand(rid, owner="stream:t", takeover=True)
    assert request_status(rid)["status"] == "failed"
    # when the sweep runs
    before = len(ses_sent())
    assert expirer_at(utcnow()).run(owner="schedule:1") == {"failure_reports": 1, "requests_settled": 1}
    # then one report says the message could not be sent as written, to the site's default sender
    # (the request's own is refused) with a copy to support, and offers no resend
    (raw,) = ses_sent()[before:]
    report = email.message_from_string(raw.raw_data, policy=policy.default)
    settings = moto_stack.settings
    body = report.get_content()
    assert report["Subject"] == "Mail delivery failure: Trip"
    assert 'The message "Trip" could not be sent as written' in body and "gmail.com" in body
    assert "dbmail resend" not in body
    to = {a.addr_spec for a in report["To"].addresses}
    assert to == {email.utils.parseaddr(settings.default_sender)[1], settings.support_address}
    assert settings.bounces_address not in to and settings.support_address
