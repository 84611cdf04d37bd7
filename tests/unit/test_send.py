"""Sending a queued email: exactly once, expiry before sending, retries counted, permanent failures recorded."""

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import pytest

from dbmail import wiring
from dbmail.core.clock import utcnow
from dbmail.core.compose import OutgoingEmail
from dbmail.core.errors import DeliveryError, FailureKind
from dbmail.core.unsubscribe import verify_token
from dbmail.feedback.events import message_ref_of
from dbmail.outgoing.emails import message_ref_for
from dbmail.outgoing.queue import QueuedEmail
from dbmail.outgoing.send import CLAIM_LEASE, SEND_TIME_RESERVE_SECONDS, EmailSender, SendOutcome
from dbmail.outgoing.send_rate import Unlimited
from dbmail.outgoing.store import Store
from tests.conftest import function_settings
from tests.unit.test_expand import submit


class RecordingTransport:
    """A provider stand-in for the retry paths only; real SES is exercised through moto."""

    def __init__(self, failure: Exception | None = None):
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
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    return QueuedEmail(rid, "u0000000001#0")


def sender(moto_stack, transport):
    settings = function_settings("send")
    return EmailSender(
        store=Store(settings),
        transport=transport,
        queue=wiring.send_queue(settings),
        settings=settings,
        suppressions=wiring.suppression_store(settings),
    )


def test_delivery_through_ses_records_sent_and_clears_the_body(moto_stack, expanded):
    # when the real (moto) SES transport delivers the email
    assert (
        wiring.email_sender(function_settings("send")).deliver(expanded, claim_id="m1", receive_count=1)
        == SendOutcome.SENT
    )
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
    assert (
        sender(moto_stack, transport).deliver(expanded, claim_id="receipt-2", receive_count=1) == SendOutcome.DUPLICATE
    )
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
    # the link is the unsubscribe function's URL with a token good for DBMAIL_UNSUBSCRIBE_TOKEN_DAYS
    settings = function_settings("send")
    base, _, token = headers["List-Unsubscribe"].strip("<>").rpartition("/unsubscribe/")
    assert base + "/" == os.environ["DBMAIL_UNSUBSCRIBE_URL"] and base.startswith("https://")
    verified = verify_token(settings.unsubscribe_secret, token)
    assert (verified.user_id, verified.address) == (1, "user1@example.net")
    assert verified.expires_at - verified.issued_at == timedelta(days=settings.unsubscribe_token_days)
    assert message.reply_to[0].addr_spec == "splash@example.org"
    # and its envelope sender is the bounces address tagged with the email's message_ref (VERP)
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    local, _, domain = moto_stack.settings.bounces_address.rpartition("@")
    assert message.envelope_sender == f"{local}+{email.message_ref}@{domain}"
    assert message_ref_of(message.envelope_sender) == message_ref_of(message.message_id) == email.message_ref


def queued_messages(moto_stack) -> int:
    """Messages on the send queue's two lanes, delayed ones included."""
    return wiring.send_queue(function_settings("send")).backlog()


def purge_send_queues(moto_stack) -> None:
    """Empty both lanes (an expanded small request's emails are on the priority lane)."""
    for url in (moto_stack.settings.send_queue_url, moto_stack.settings.priority_send_queue_url):
        moto_stack.sqs.purge_queue(QueueUrl=url)


def test_a_transient_failure_counts_a_try_and_queues_the_email_again_later(moto_stack, expanded):
    purge_send_queues(moto_stack)
    service = sender(moto_stack, RecordingTransport(DeliveryError("SES InternalFailure")))
    # when the provider fails once
    assert service.deliver(expanded, claim_id="m1", receive_count=1) == SendOutcome.RETRYING
    # then one try is spent, the claim is released and a new message is queued for it
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.tries, email.claimed_until) == ("queued", 1, None) and "InternalFailure" in email.error
    assert queued_messages(moto_stack) == 1


def test_the_third_transient_failure_leaves_the_email_failed_and_out_of_the_queue(moto_stack, expanded):
    purge_send_queues(moto_stack)
    service = sender(moto_stack, RecordingTransport(DeliveryError("SES InternalFailure")))
    outcomes = [service.deliver(expanded, claim_id=f"m{attempt}", receive_count=1) for attempt in (1, 2, 3)]
    assert outcomes == [SendOutcome.RETRYING, SendOutcome.RETRYING, SendOutcome.FAILED]
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.tries) == ("failed", 3)
    assert queued_messages(moto_stack) == 2  # the two retries; nothing after the final failure


def test_throttles_never_use_up_the_tries(moto_stack, expanded):
    # given a provider that throttles the email ten times in a row, then accepts it
    transport = RecordingTransport(DeliveryError("SES TooManyRequestsException", kind=FailureKind.THROTTLED))
    service = sender(moto_stack, transport)
    outcomes = [service.deliver(expanded, claim_id=f"t{n}", receive_count=1) for n in range(10)]
    transport.failure = None
    outcomes.append(service.deliver(expanded, claim_id="t10", receive_count=1))
    # then it is queued again each time without spending a try, and finally sent
    assert outcomes == [SendOutcome.THROTTLED] * 10 + [SendOutcome.SENT]
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.tries, email.throttles) == ("sent", 0, 10)


def test_a_throttle_with_a_retry_after_waits_at_least_as_long_as_the_provider_asked(moto_stack, expanded):
    # given a provider that throttles with Retry-After: 120, then with one asking for an hour
    purge_send_queues(moto_stack)
    transport = RecordingTransport(DeliveryError("SendGrid HTTP 429", kind=FailureKind.THROTTLED, retry_after=119.6))
    service = sender(moto_stack, transport)
    delays = []
    later = service.queue.enqueue_later
    service.queue.enqueue_later = lambda email, delay: delays.append(delay) or later(email, delay)
    # when the email is throttled twice (its own delay would be a few seconds)
    assert service.deliver(expanded, claim_id="r1", receive_count=1) == SendOutcome.THROTTLED
    transport.failure = DeliveryError("SendGrid HTTP 429", kind=FailureKind.THROTTLED, retry_after=3599.6)
    assert service.deliver(expanded, claim_id="r2", receive_count=1) == SendOutcome.THROTTLED
    # then it was queued again each time for the wait asked (rounded up), within SQS's 15 minutes
    assert delays == [120, 900]
    assert queued_messages(moto_stack) == 2


def test_retry_delays_grow_and_stay_within_the_cap():
    from dbmail.outgoing.send import retry_delay

    throttles = [retry_delay(FailureKind.THROTTLED, n, 900) for n in range(12)]
    assert all(1 <= delay <= 900 for delay in throttles) and throttles[-1] > throttles[0]
    assert retry_delay(FailureKind.TRANSIENT, 5, cap=20) <= 20


def test_an_unforeseen_error_releases_the_claim_and_lets_sqs_retry(moto_stack, expanded):
    # given a transport that fails in a way nobody classified
    service = sender(moto_stack, RecordingTransport(KeyError("surprise")))
    with pytest.raises(KeyError):
        service.deliver(expanded, claim_id="m1", receive_count=1)
    # then the email is not left processing: the redelivered message can claim it at once
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.claimed_until, email.tries) == ("queued", None, 1)
    assert (
        sender(moto_stack, RecordingTransport()).deliver(expanded, claim_id="m2", receive_count=2) == SendOutcome.SENT
    )


def test_a_permanent_refusal_is_recorded_without_retrying(moto_stack, expanded):
    service = sender(moto_stack, RecordingTransport(DeliveryError("MessageRejected", kind=FailureKind.PERMANENT)))
    assert service.deliver(expanded, claim_id="m1", receive_count=1) == SendOutcome.FAILED
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert email.status == "failed" and "MessageRejected" in email.error


def test_an_email_past_its_sent_by_is_expired_not_sent(moto_stack):
    rid = submit(n=1, sendto_fn_name="", sent_by=utcnow() + timedelta(seconds=1))
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    transport = RecordingTransport()
    service = sender(moto_stack, transport)
    service.clock = lambda: utcnow() + timedelta(minutes=1)
    assert service.deliver(QueuedEmail(rid, "u0000000001#0"), claim_id="m1", receive_count=1) == SendOutcome.EXPIRED
    assert transport.sent == []
    assert Store(moto_stack.settings).get_email(rid, "u0000000001#0").status == "expired"


def test_a_message_naming_no_email_is_dropped_with_an_error_logged(moto_stack):
    transport = RecordingTransport()
    assert (
        sender(moto_stack, transport).deliver(QueuedEmail("nope", "u1#0"), claim_id="m", receive_count=1)
        == SendOutcome.UNKNOWN
    )


def test_redrive_moves_dead_letters_back_and_they_are_sent(moto_stack, expanded, capsys):
    # given an email whose message kept failing unforeseen and sits in the DLQ
    from dbmail.cli import main

    with pytest.raises(KeyError):
        sender(moto_stack, RecordingTransport(KeyError("surprise"))).deliver(expanded, claim_id="r1", receive_count=3)
    moto_stack.sqs.purge_queue(QueueUrl=moto_stack.settings.send_queue_url)
    moto_stack.sqs.send_message(QueueUrl=moto_stack.dlq_url, MessageBody=expanded.to_body())
    # when the operator redrives the DLQ
    assert main(["redrive", "--dlq-url", moto_stack.dlq_url]) == 0
    assert "1 messages moved" in capsys.readouterr().out
    (message,) = moto_stack.sqs.receive_message(QueueUrl=moto_stack.settings.send_queue_url, AttributeNames=["All"])[
        "Messages"
    ]
    # then the email is sent on its next delivery
    transport = RecordingTransport()
    outcome = sender(moto_stack, transport).deliver(
        QueuedEmail.from_body(message["Body"]),
        claim_id="r4",
        receive_count=int(message["Attributes"]["ApproximateReceiveCount"]),
    )
    assert outcome == SendOutcome.SENT and len(transport.sent) == 1
    assert moto_stack.sqs.receive_message(QueueUrl=moto_stack.dlq_url).get("Messages") is None


def test_a_sendgrid_connection_dropped_mid_request_is_retried_then_sent(moto_stack, expanded, hostile, httpserver):
    from dbmail.core.transports import SendGridTransport
    from tests.sendgrid_contract import v3_mail_send_problems
    from tests.unit.test_transports import posted, serve_sendgrid

    # given SendGrid hanging up in the middle of its answer
    dropping = SendGridTransport("SG.key", hostile("truncate"), timeout=5)
    # when the email is sent, it is not left processing: one try spent, queued again
    assert sender(moto_stack, dropping).deliver(expanded, claim_id="m1", receive_count=1) == SendOutcome.RETRYING
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.tries, email.claimed_until) == ("queued", 1, None) and "IncompleteRead" in email.error
    # and the retry, once SendGrid answers again, sends it: one request, within the v3 contract
    working = SendGridTransport("SG.key", serve_sendgrid(httpserver, key="SG.key"))
    assert sender(moto_stack, working).deliver(expanded, claim_id="m2", receive_count=1) == SendOutcome.SENT
    (body,) = posted(httpserver)
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.tries, email.provider_message_id) == ("sent", 1, "sg-msg-1")
    # with the Message-ID the dropped attempt carried
    ((method, path, headers, dropped),) = hostile.requests
    assert v3_mail_send_problems(method, path, headers, dropped) == []
    assert (
        body["custom_args"]
        == json.loads(dropped)["custom_args"]
        == {"dbmail_message_id": email.message_id, "message_ref": email.message_ref}
    )


def test_an_invocation_nearly_out_of_time_hands_the_email_back_untried(moto_stack, expanded):
    purge_send_queues(moto_stack)
    transport = RecordingTransport()
    # when the invocation has only a few seconds left
    outcome = sender(moto_stack, transport).deliver(expanded, claim_id="m1", receive_count=1, time_left=lambda: 3.0)
    # then nothing is sent or claimed, no try is spent, and the email is queued again
    assert outcome == SendOutcome.DEFERRED and transport.sent == []
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.tries, email.claim_id) == ("queued", 0, None)
    assert queued_messages(moto_stack) == 1


def test_a_suppressed_address_is_recorded_suppressed_with_its_reason_and_nothing_is_sent(moto_stack, expanded):
    from dbmail.client import request_status

    # given the recipient's address on the suppression list, spelled another way
    settings = function_settings("send")
    assert Store(settings).get_email(expanded.request_id, expanded.email_key).send_to.endswith("<user1@example.net>")
    wiring.suppression_store(settings).add(" User1@Example.NET ", "complaint", "ses")
    transport = RecordingTransport()
    # when the email's message is delivered
    outcome = sender(moto_stack, transport).deliver(expanded, claim_id="m1", receive_count=1)
    # then nothing is sent and the email is final, suppressed, with the reason
    assert outcome == SendOutcome.SUPPRESSED and transport.sent == []
    email = Store(settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.msgtext, email.claimed_until) == ("suppressed", None, None)
    assert email.error.startswith("suppressed: complaint (by ses, ")
    # and a second message for it sends nothing either
    assert sender(moto_stack, transport).deliver(expanded, claim_id="m2", receive_count=1) == SendOutcome.DUPLICATE
    assert transport.sent == []
    # and the reconciliation counts it: nothing outstanding, and the sweep settles the request
    reconciliation = request_status(expanded.request_id, settings=moto_stack.settings)["reconciliation"]
    assert (reconciliation["final"], reconciliation["outstanding"], reconciliation["balanced"]) == (1, 0, True)
    summary = wiring.expirer(function_settings("expire")).run(owner="test")
    assert summary.get("requests_settled") == 1 and "failure_reports" not in summary


def test_another_address_on_the_list_does_not_stop_the_email(moto_stack, expanded):
    settings = function_settings("send")
    wiring.suppression_store(settings).add("user10@example.net", "bounce", "ses")
    transport = RecordingTransport()
    assert sender(moto_stack, transport).deliver(expanded, claim_id="m1", receive_count=1) == SendOutcome.SENT
    assert len(transport.sent) == 1


def test_an_ses_send_names_the_configuration_set_the_message_ref_tag_and_the_verp_feedback_address(
    moto_stack, expanded
):
    from botocore.stub import ANY

    from dbmail.core.transports import SesTransport
    from tests.unit.test_transports import stubbed_ses

    # given the send function's settings and SES (stubbed, to see the call's parameters)
    settings = function_settings("send")
    assert settings.configuration_set == moto_stack.template.physical_name("SendingConfigurationSet")
    client, stubber = stubbed_ses()
    store = Store(settings)
    ref = message_ref_for(expanded.request_id, expanded.email_key)
    local, _, domain = settings.bounces_address.rpartition("@")
    stubber.add_response(
        "send_email",
        {"MessageId": "ses-1"},
        expected_params={
            "FromEmailAddress": ANY,
            "Destination": {"ToAddresses": ["user1@example.net"]},
            "Content": ANY,
            "FeedbackForwardingEmailAddress": f"{local}+{ref}@{domain}",
            "ConfigurationSetName": settings.configuration_set,
            "EmailTags": [{"Name": "message_ref", "Value": ref}],
        },
    )
    # when the email is sent through SES
    with stubber:
        outcome = sender(moto_stack, SesTransport(client, settings.configuration_set)).deliver(
            expanded, claim_id="m1", receive_count=1
        )
    # then SES was told all three, and the email carries the same message_ref, written at claim time
    assert outcome == SendOutcome.SENT
    stubber.assert_no_pending_responses()
    assert store.get_email(expanded.request_id, expanded.email_key).message_ref == ref


def test_every_function_that_sends_through_ses_names_the_configuration_set(moto_stack):
    # given the functions' own settings, when wiring builds their SES transports
    for function, transport in (
        ("send", lambda s: wiring.email_sender(s).transport),
        ("expire", lambda s: wiring.expirer(s).transport),
        ("inbound", lambda s: wiring.inbound_router(s).transport),
    ):
        settings = function_settings(function)
        # then each names the stack's configuration set
        assert settings.configuration_set == moto_stack.template.physical_name("SendingConfigurationSet")
        assert transport(settings)._configuration_set == settings.configuration_set, function


def without_body(moto_stack, queued: QueuedEmail, body: str | None = None) -> None:
    """The email's item as expansion writes it now (no body), or as older code wrote it (``body``)."""
    Email = Store(moto_stack.settings).models.TextOfEmail
    action = Email.msgtext.set(body) if body is not None else Email.msgtext.remove()
    Email(queued.request_id, queued.email_key).update(actions=[action])


def test_the_message_carries_the_content_the_item_does_not_keep(moto_stack, expanded):
    # given an item without a body, and a message with the rendered subject and body
    without_body(moto_stack, expanded)
    queued = QueuedEmail(
        expanded.request_id, expanded.email_key, subject="Hi Zoë", msgtext="<html><p>Dear Zoë</p></html>"
    )
    transport = RecordingTransport()
    # when it is delivered
    assert sender(moto_stack, transport).deliver(queued, claim_id="m1", receive_count=1) == SendOutcome.SENT
    # then what was sent is the message's content
    (sent,) = transport.sent
    assert (sent.subject, sent.html) == ("Hi Zoë", "<html><p>Dear Zoë</p></html>")
    assert "Dear Zoë" in sent.text


def test_a_message_without_content_is_rendered_again_as_expansion_rendered_it(moto_stack):
    from dbmail.client import render_again

    # given an email expansion rendered, whose item no longer holds the body and whose message
    # names only its keys (too large to inline, or queued again by the sweep)
    rid = submit(n=1, sendto_fn_name="")
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    store = Store(moto_stack.settings)
    (rendered,) = store.iter_emails(rid)
    queued = QueuedEmail(rid, rendered.email_key)
    expected = render_again(rid, rendered.email_key, settings=moto_stack.settings)
    assert expected["msgtext"] == "Dear Zoë Splash"
    without_body(moto_stack, queued)
    transport = RecordingTransport()
    # when it is delivered
    assert sender(moto_stack, transport).deliver(queued, claim_id="m1", receive_count=1) == SendOutcome.SENT
    # then the request and recipient made the same subject and body again
    (sent,) = transport.sent
    assert (sent.subject, sent.text) == (expected["subject"], expected["msgtext"])


def test_an_item_written_with_its_body_by_older_code_is_sent_with_it(moto_stack, expanded):
    without_body(moto_stack, expanded, body="Dear Zoë, from the old item")
    transport = RecordingTransport()
    assert sender(moto_stack, transport).deliver(expanded, claim_id="m1", receive_count=1) == SendOutcome.SENT
    assert transport.sent[0].text == "Dear Zoë, from the old item"
    # and the body is cleared once sent
    assert Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key).msgtext is None


def test_an_email_whose_request_is_gone_fails_for_good_when_it_must_be_rendered_again(moto_stack, expanded):
    without_body(moto_stack, expanded)
    Store(moto_stack.settings).models.MessageRequest(expanded.request_id).delete()
    transport = RecordingTransport()
    assert sender(moto_stack, transport).deliver(expanded, claim_id="m1", receive_count=1) == SendOutcome.FAILED
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert email.status == "failed" and "gone" in email.error and transport.sent == []


class BlockingTransport(RecordingTransport):
    """Holds every send until ``release`` is set (by the test, or once ``release_at`` sends are
    in progress at once), counting the sends in progress; a send to an address in ``refuse``
    then raises an error nobody classified."""

    def __init__(self, refuse=(), release_at: int | None = None):
        super().__init__()
        self.refuse = set(refuse)
        self.release_at = release_at
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0

    def send(self, email: OutgoingEmail) -> str:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.in_flight == self.release_at:
                self.release.set()
        try:
            assert self.release.wait(5), "never released"
            if email.to[0].addr_spec in self.refuse:
                raise KeyError("surprise")
            with self.lock:
                return super().send(email)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_two_concurrent_deliveries_of_one_email_send_it_once(moto_stack, expanded):
    # given one sender shared by two threads, each delivering the same email (a duplicate
    # message), the first one's send still in progress when the second claims
    transport = BlockingTransport()
    service = sender(moto_stack, transport)
    claims = threading.Semaphore(0)
    claim = service.store.claim_email

    def counted_claim(*args):
        try:
            return claim(*args)
        finally:
            claims.release()

    service.store.claim_email = counted_claim
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(service.deliver, expanded, "receipt-1", 1)
        assert claims.acquire(timeout=10)  # the first holds the claim
        second = pool.submit(service.deliver, expanded, "receipt-2", 1)
        assert claims.acquire(timeout=10)  # the second tried it
        transport.release.set()
        outcomes = sorted([first.result(), second.result()])
    # then the email was sent once, and the other delivery dropped as a duplicate
    assert outcomes == [SendOutcome.DUPLICATE, SendOutcome.SENT]
    assert len(transport.sent) == 1
    assert Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key).status == "sent"


class NoTokens:
    """A send budget that never grants a token in time."""

    def take(self, priority: bool, time_left) -> bool:
        self.asked = (priority, time_left())
        return False


def test_no_send_token_in_time_hands_the_email_back_untried_in_its_lane(moto_stack, expanded):
    # given a send rate with no token to spare before the invocation must stop
    purge_send_queues(moto_stack)
    queued = QueuedEmail(expanded.request_id, expanded.email_key, subject="s", msgtext="b", priority=True)
    transport, budget = RecordingTransport(), NoTokens()
    service = sender(moto_stack, transport)
    service.budget = budget
    again = []
    enqueue_later = service.queue.enqueue_later
    service.queue.enqueue_later = lambda email, delay: again.append(email) or enqueue_later(email, delay)
    # when the email is delivered with 25 s of the invocation left
    assert service.deliver(queued, claim_id="m1", receive_count=1, time_left=lambda: 25.0) == SendOutcome.DEFERRED
    # then the budget was asked for the priority lane, with what is left beyond the send reserve
    assert budget.asked == (True, 25.0 - SEND_TIME_RESERVE_SECONDS)
    # and nothing was sent, no try spent, the claim released, and the message queued again as it was
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert transport.sent == [] and (email.status, email.tries, email.claimed_until) == ("queued", 0, None)
    assert again == [queued] and (service.queue.priority.backlog(), service.queue.bulk.backlog()) == (1, 0)
    # so the next delivery, with a token, sends it
    service.budget = Unlimited()
    assert service.deliver(queued, claim_id="m2", receive_count=1) == SendOutcome.SENT


def test_a_delivery_left_without_time_while_waiting_for_its_slot_hands_the_email_back(moto_stack, expanded):
    # given a delivery with 25 s left when it starts, which waits for its batch's send slot
    # until only 5 s are left (the batch's other sends met a slow provider)
    purge_send_queues(moto_stack)
    transport, left = RecordingTransport(), [25.0]

    @contextmanager
    def slot():
        left[0] = 5.0
        yield

    service = sender(moto_stack, transport)
    # when it gets the slot
    outcome = service.deliver(expanded, claim_id="m1", receive_count=1, time_left=lambda: left[0], sending=slot())
    # then it does not call the provider: the claim is released and the email queued again, no try spent
    assert outcome == SendOutcome.DEFERRED and transport.sent == []
    email = Store(moto_stack.settings).get_email(expanded.request_id, expanded.email_key)
    assert (email.status, email.tries, email.claimed_until) == ("queued", 0, None)
    assert queued_messages(moto_stack) == 1


def test_a_retry_goes_back_to_its_lane_with_its_content(moto_stack, expanded):
    purge_send_queues(moto_stack)
    queued = QueuedEmail(expanded.request_id, expanded.email_key, subject="s", msgtext="b", priority=True)
    service = sender(moto_stack, RecordingTransport(DeliveryError("SES InternalFailure")))
    again = []
    enqueue_later = service.queue.enqueue_later
    service.queue.enqueue_later = lambda email, delay: again.append(email) or enqueue_later(email, delay)
    # when a transient failure sends it back to the queue
    assert service.deliver(queued, claim_id="m1", receive_count=1) == SendOutcome.RETRYING
    # then it is queued again as it came (lane and content), on the priority lane, delayed
    assert again == [queued]
    assert (service.queue.priority.backlog(), service.queue.bulk.backlog()) == (1, 0)


def test_what_is_read_per_request_is_read_once_when_a_batch_asks_at_once():
    from dbmail.outgoing.send import PerRequest

    # given a slow load, and ten threads asking for one request at the same moment
    loads = []
    started = threading.Barrier(10)

    def load(request_id):
        loads.append(request_id)
        threading.Event().wait(0.1)
        return {"Reply-To": request_id}

    cache = PerRequest(load, maxsize=2)

    def ask():
        started.wait()
        return cache("r1")

    with ThreadPoolExecutor(10) as pool:
        values = list(pool.map(lambda _: ask(), range(10)))
    # then it was loaded once and every thread got it
    assert loads == ["r1"] and values == [{"Reply-To": "r1"}] * 10
    # and the cache stays bounded: the least recently used request is read again
    cache("r2"), cache("r3"), cache("r1")
    assert loads == ["r1", "r2", "r3", "r1"]


def test_a_failed_load_per_request_is_not_remembered():
    from dbmail.outgoing.send import PerRequest

    outcomes = iter([RuntimeError("DynamoDB unreachable"), "headers"])

    def load(request_id):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    cache = PerRequest(load, maxsize=4)
    with pytest.raises(RuntimeError):
        cache("r1")
    assert cache("r1") == "headers"


def test_the_senders_clients_are_ready_for_a_whole_batch_at_once(moto_stack):
    from dbmail.outgoing.send import CONCURRENT_SENDS

    # given the send function's EmailSender as wiring builds it (before any delivery)
    service = wiring.email_sender(function_settings("send"))
    models = (service.store.models.TextOfEmail, service.store.models.MessageRequest, service.suppressions.model)
    clients = [model._get_connection().connection._client for model in models]
    clients.append(service.transport._ses)
    # then its DynamoDB clients exist already (threads would each create one), and every client
    # has a connection for each of a batch's sends in flight and a fixed User-Agent (no per-request build)
    for client in clients:
        assert client is not None
        assert client.meta.config.max_pool_connections >= CONCURRENT_SENDS
        assert client._user_agent_creator.to_string().startswith("dbmail")
