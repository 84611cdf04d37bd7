"""Sending a queued email: exactly once, expiry before sending, retries counted, permanent failures recorded."""

from datetime import timedelta

import pytest

from dbmail import wiring
from dbmail.compose import OutgoingEmail
from dbmail.errors import DeliveryError, FailureKind
from dbmail.models import utcnow
from dbmail.queue import QueuedEmail
from dbmail.send import CLAIM_LEASE, EmailSender, RetryableDeliveryError, SendOutcome
from dbmail.store import Store
from tests.conftest import recipient
from tests.unit.test_expand import submit


class RecordingTransport:
    """A provider stand-in for the retry paths only; real SES is exercised through moto."""

    def __init__(self, failure: DeliveryError | None = None):
        self.failure = failure
        self.sent: list[OutgoingEmail] = []

    def send(self, email: OutgoingEmail) -> str:
        if self.failure:
            raise self.failure
        self.sent.append(email)
        return f"p-{len(self.sent)}"


@pytest.fixture
def expanded(moto_stack):
    rid = submit(n=1, sendto_fn_name="", special_headers={"Reply-To": "splash@example.org"})
    wiring.expander().expand(rid, owner="stream:t", takeover=True)
    return QueuedEmail(rid, "u0000000001#0")


def sender(moto_stack, transport):
    return EmailSender(store=Store(moto_stack.settings), transport=transport, settings=moto_stack.settings)


def test_delivery_through_ses_records_sent_and_clears_the_body(moto_stack, expanded):
    # when the real (moto) SES transport delivers the email
    assert wiring.email_sender().deliver(expanded, claim_id="m1", receive_count=1) == SendOutcome.SENT
    # then it is sent, its body is cleared and its Message-ID kept
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert email.status == "sent" and email.sent is not None and email.msgtext is None
    assert email.message_id.startswith("<dbmail.") and email.provider_message_id


def test_a_duplicate_message_sends_nothing_more(moto_stack, expanded):
    transport = RecordingTransport()
    service = sender(moto_stack, transport)
    service.deliver(expanded, claim_id="m1", receive_count=1)
    # when a second message for the same email arrives (duplicate queueing)
    assert service.deliver(expanded, claim_id="m2", receive_count=1) == SendOutcome.DUPLICATE
    assert len(transport.sent) == 1


def test_an_email_claimed_by_another_live_receive_is_not_sent_twice(moto_stack, expanded):
    # given an email another receive holds right now
    store = Store(moto_stack.settings)
    email = store.get_email(expanded.request_id, expanded.email_key)
    assert store.claim_email(email, "receipt-1", utcnow(), utcnow() + CLAIM_LEASE)
    transport = RecordingTransport()
    # when a second receive (a duplicate delivery) tries it, it is dropped
    assert sender(moto_stack, transport).deliver(expanded, claim_id="receipt-2", receive_count=1) == SendOutcome.DUPLICATE
    assert transport.sent == []
    # but once the holder's lease has lapsed (it died), a redelivery sends it
    late = sender(moto_stack, transport)
    late.clock = lambda: utcnow() + CLAIM_LEASE + timedelta(seconds=1)
    assert late.deliver(expanded, claim_id="receipt-3", receive_count=2) == SendOutcome.SENT


def test_the_message_carries_headers_and_unsubscribe(moto_stack, expanded):
    transport = RecordingTransport()
    sender(moto_stack, transport).deliver(expanded, claim_id="m1", receive_count=1)
    message = transport.sent[0]
    headers = dict(message.headers)
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Unsubscribe"].startswith("<https://")
    assert message.reply_to[0].addr_spec == "splash@example.org"
    assert message.envelope_sender == moto_stack.settings.bounces_address


def test_a_transient_failure_counts_a_try_and_asks_sqs_to_retry(moto_stack, expanded):
    service = sender(moto_stack, RecordingTransport(DeliveryError("Throttling")))
    with pytest.raises(RetryableDeliveryError):
        service.deliver(expanded, claim_id="m1", receive_count=1)
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.tries) == ("queued", 1) and "Throttling" in email.error


def test_the_third_failed_try_leaves_the_email_failed(moto_stack, expanded):
    service = sender(moto_stack, RecordingTransport(DeliveryError("Throttling")))
    for attempt in (1, 2, 3):
        with pytest.raises(RetryableDeliveryError):
            service.deliver(expanded, claim_id="m1", receive_count=attempt)
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.tries) == ("failed", 3)


def test_a_permanent_refusal_is_recorded_without_retrying(moto_stack, expanded):
    service = sender(moto_stack, RecordingTransport(DeliveryError("MessageRejected", kind=FailureKind.PERMANENT)))
    assert service.deliver(expanded, claim_id="m1", receive_count=1) == SendOutcome.FAILED
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert email.status == "failed" and "MessageRejected" in email.error


def test_an_email_past_its_sent_by_is_expired_not_sent(moto_stack):
    rid = submit(n=1, sendto_fn_name="", sent_by=utcnow() + timedelta(seconds=1))
    wiring.expander().expand(rid, owner="stream:t", takeover=True)
    transport = RecordingTransport()
    service = sender(moto_stack, transport)
    service.clock = lambda: utcnow() + timedelta(minutes=1)
    assert service.deliver(QueuedEmail(rid, "u0000000001#0"), claim_id="m1", receive_count=1) == SendOutcome.EXPIRED
    assert transport.sent == []
    assert Store(moto_stack.settings).get_email(rid, "u0000000001#0").status == "expired"


def test_a_message_naming_no_email_is_dropped_with_an_error_logged(moto_stack):
    transport = RecordingTransport()
    assert sender(moto_stack, transport).deliver(QueuedEmail("nope", "u1#0"), claim_id="m", receive_count=1) == SendOutcome.UNKNOWN




def test_redrive_moves_dead_letters_back_and_they_are_sent(moto_stack, expanded, capsys):
    # given an email whose message failed 3 times and sits in the DLQ
    from dbmail.cli import main

    service = sender(moto_stack, RecordingTransport(DeliveryError("Throttling")))
    for attempt in (1, 2, 3):
        with pytest.raises(RetryableDeliveryError):
            service.deliver(expanded, claim_id=f"r{attempt}", receive_count=attempt)
    moto_stack.sqs.purge_queue(QueueUrl=moto_stack.settings.send_queue_url)
    moto_stack.sqs.send_message(QueueUrl=moto_stack.dlq_url, MessageBody=expanded.to_body())
    # when the operator redrives the DLQ
    assert main(["redrive", "--dlq-url", moto_stack.dlq_url]) == 0
    assert "1 messages moved" in capsys.readouterr().out
    (message,) = moto_stack.sqs.receive_message(QueueUrl=moto_stack.settings.send_queue_url,
                                                AttributeNames=["All"])["Messages"]
    # then the failed email is sent on its next delivery
    transport = RecordingTransport()
    outcome = sender(moto_stack, transport).deliver(QueuedEmail.from_body(message["Body"]), claim_id="r4",
                                                    receive_count=int(message["Attributes"]["ApproximateReceiveCount"]))
    assert outcome == SendOutcome.SENT and len(transport.sent) == 1
    assert moto_stack.sqs.receive_message(QueueUrl=moto_stack.dlq_url).get("Messages") is None
