"""SendGrid's signed Event Webhook (feedback/sendgrid_webhook.py): a real P-256 key signs each
request as SendGrid does; bad, missing and stale signatures are refused; a good batch's events are
queued for the feedback function, and one posted twice is recorded once."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dbmail import wiring
from dbmail.core.errors import ConfigurationError, DbmailError
from dbmail.feedback.events import from_queue_body
from dbmail.feedback.sendgrid_webhook import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridEvents,
    SignatureVerifier,
    load_public_key,
)
from dbmail.outgoing.queue import QueuedEmail, SqsQueue
from dbmail.outgoing.store import Store
from tests.conftest import function_settings
from tests.unit.test_expand import submit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class SendGrid:
    """SendGrid's side: a key pair, and requests signed the way the Event Webhook signs them."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.verification_key = base64.b64encode(der).decode()  # what SendGrid's settings page shows

    def sign(self, body: bytes, timestamp: str) -> str:
        signature = self.private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()

    def headers(self, body: bytes, at: datetime = NOW) -> dict[str, str]:
        timestamp = str(int(at.timestamp()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": self.sign(body, timestamp),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }


class FeedbackQueue:
    """FeedbackQueue as the webhook writes it; ``events`` reads the bodies back as the feedback function does."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def send_bodies(self, bodies) -> int:
        bodies = list(bodies)
        self.bodies += bodies
        return len(bodies)

    @property
    def events(self):
        return [from_queue_body(json.loads(body)) for body in self.bodies]


@pytest.fixture
def sendgrid():
    return SendGrid()


@pytest.fixture
def queue():
    return FeedbackQueue()


@pytest.fixture
def webhook(sendgrid, queue):
    return SendGridEvents(SignatureVerifier(sendgrid.verification_key, clock=lambda: NOW), queue)


def batch(*events: dict) -> bytes:
    return json.dumps(list(events)).encode()


def delivered(ref="0123456789abcdef0123456789abcdef", event_id="ev-1", email="zoe@example.net") -> dict:
    return {
        "email": email,
        "timestamp": int(NOW.timestamp()) - 5,
        "event": "delivered",
        "sg_event_id": event_id,
        "sg_message_id": "sg-1",
        "message_ref": ref,
    }


def post(webhook, body: bytes, headers: dict[str, str]):
    return webhook.handle(headers, body.decode(), base64_encoded=False)


def test_a_signed_batch_is_verified_and_each_recordable_event_queued(webhook, sendgrid, queue):
    # given a batch SendGrid signed: a delivery (with fields dbmail does not read), and an open (a type we do not record)
    extra = {"ip": "203.0.113.9", "useragent": "Mail/1.0", "category": ["splash"]}
    body = batch(
        {**delivered(), **extra}, {"email": "zoe@example.net", "event": "open", "sg_event_id": "o", "timestamp": 1}
    )
    reply = post(webhook, body, sendgrid.headers(body))
    # then it is accepted and the delivery queued for the feedback function, without the fields it does not read
    assert reply.status == 200
    assert json.loads(reply.body) == {"events": 2, "outcomes": {"queued": 1, "skipped": 1}}
    assert not any(name in queue.bodies[0] for name in ("203.0.113.9", "useragent", "category"))
    assert [(e.kind, e.recipients, e.event_id) for e in queue.events] == [
        ("delivered", ("zoe@example.net",), "sendgrid:ev-1")
    ]


def test_a_base64_body_is_verified_over_its_decoded_bytes(webhook, sendgrid, queue):
    body = batch(delivered())
    reply = webhook.handle(sendgrid.headers(body), base64.b64encode(body).decode(), base64_encoded=True)
    assert reply.status == 200 and len(queue.events) == 1


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda body, headers: (body.replace(b"zoe@", b"eve@"), headers), id="body changed"),
        pytest.param(
            lambda body, headers: (body, {**headers, TIMESTAMP_HEADER: str(int(NOW.timestamp()) - 1)}),
            id="timestamp changed",
        ),
        pytest.param(
            lambda body, headers: (
                body,
                {**headers, SIGNATURE_HEADER: SendGrid().sign(body, headers[TIMESTAMP_HEADER])},
            ),
            id="another key",
        ),
        pytest.param(lambda body, headers: (body, {**headers, SIGNATURE_HEADER: "bm90IGEgc2lnbmF0dXJl"}), id="garbage"),
        pytest.param(lambda body, headers: (body, {**headers, SIGNATURE_HEADER: "%%%"}), id="not base64"),
        pytest.param(lambda body, headers: (body, {**headers, SIGNATURE_HEADER: "A" * 400}), id="oversized"),
    ],
)
def test_a_bad_signature_is_refused_with_403_and_records_nothing(webhook, sendgrid, queue, tamper):
    body = batch(delivered())
    body, headers = tamper(body, {k.lower(): v for k, v in sendgrid.headers(body).items()})
    reply = post(webhook, body, headers)
    assert reply.status == 403 and "does not verify" in json.loads(reply.body)["error"]
    assert queue.events == []


@pytest.mark.parametrize(
    "missing", ["X-Twilio-Email-Event-Webhook-Signature", "X-Twilio-Email-Event-Webhook-Timestamp"]
)
def test_an_unsigned_request_is_refused_with_401(webhook, sendgrid, queue, missing):
    body = batch(delivered())
    headers = {name: value for name, value in sendgrid.headers(body).items() if name != missing}
    reply = post(webhook, body, headers)
    assert reply.status == 401 and "unsigned" in json.loads(reply.body)["error"] and queue.events == []


def test_a_timestamp_that_is_not_unix_seconds_is_refused(webhook, sendgrid, queue):
    body = batch(delivered())
    headers = {**sendgrid.headers(body), "X-Twilio-Email-Event-Webhook-Timestamp": "2026-12-01T12:00:00Z"}
    reply = post(webhook, body, headers)
    assert reply.status == 403 and "not Unix seconds" in reply.body and queue.events == []


def test_a_body_that_claims_base64_but_is_not_is_400(webhook, sendgrid, queue):
    reply = webhook.handle(sendgrid.headers(b"x"), "%%%", base64_encoded=True)
    assert reply.status == 400 and queue.events == []


@pytest.mark.parametrize("offset", [timedelta(minutes=-11), timedelta(minutes=11), timedelta(days=-3)])
def test_a_stale_or_replayed_timestamp_is_refused_even_when_signed(webhook, sendgrid, queue, offset):
    # given a genuinely signed request, but signed too long ago (a replay) or in the future
    body = batch(delivered())
    reply = post(webhook, body, sendgrid.headers(body, at=NOW + offset))
    assert reply.status == 403 and "stale or replayed" in json.loads(reply.body)["error"]
    assert queue.events == []
    # while 9 minutes of skew is accepted
    assert post(webhook, body, sendgrid.headers(body, at=NOW - timedelta(minutes=9))).status == 200


@pytest.mark.parametrize(
    "body, status",
    [
        (b"not json", 400),
        (b'{"event": "delivered"}', 400),
        (b"[1, 2]", 400),
        (b"[" + b" " * MAX_BODY_BYTES + b"]", 413),
    ],
)
def test_a_signed_body_that_is_not_a_batch_is_refused(webhook, sendgrid, queue, body, status):
    assert post(webhook, body, sendgrid.headers(body)).status == status and queue.events == []


def test_a_malformed_event_is_skipped_and_the_rest_queued(webhook, sendgrid, queue):
    body = batch({"event": "delivered", "email": "zoe@example.net", "timestamp": 1}, delivered())
    reply = post(webhook, body, sendgrid.headers(body))
    assert json.loads(reply.body)["outcomes"] == {"invalid": 1, "queued": 1} and len(queue.events) == 1


def test_a_large_batch_is_queued_ten_events_to_a_call(moto_stack, sendgrid):
    # given a large batch (SendGrid posts up to 768 KB, about 2,500 events; moto's SQS is slow with thousands)
    url = function_settings("sendgrid_events").feedback_queue_url
    calls = []

    class CountingSqs:
        def __init__(self, sqs):
            self.sqs = sqs

        def send_message_batch(self, **request):
            calls.append(len(request["Entries"]))
            return self.sqs.send_message_batch(**request)

    webhook = SendGridEvents(
        SignatureVerifier(sendgrid.verification_key, clock=lambda: NOW), SqsQueue(CountingSqs(moto_stack.sqs), url)
    )
    body = batch(*(delivered(event_id=f"ev-{n}", email=f"s{n}@example.net") for n in range(500)))
    # when it is posted
    reply = post(webhook, body, sendgrid.headers(body))
    # then every event is on FeedbackQueue, in 50 calls of 10
    assert json.loads(reply.body)["outcomes"] == {"queued": 500}
    assert calls == [10] * 50
    attributes = moto_stack.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "500"


def test_a_batch_sqs_refuses_asks_sendgrid_to_retry(sendgrid):
    class Refusing:
        def send_bodies(self, bodies):
            raise DbmailError("SQS refused 1 of 1 messages after 3 attempts")

    webhook = SendGridEvents(SignatureVerifier(sendgrid.verification_key, clock=lambda: NOW), Refusing())
    body = batch(delivered())
    assert post(webhook, body, sendgrid.headers(body)).status == 503


def test_without_a_configured_key_every_request_is_refused(sendgrid, queue):
    webhook = SendGridEvents(SignatureVerifier("", clock=lambda: NOW), queue)
    body = batch(delivered())
    assert post(webhook, body, sendgrid.headers(body)).status == 403 and queue.events == []


def test_the_key_may_be_pem_and_must_be_p256(sendgrid):
    pem = sendgrid.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert load_public_key(pem.decode()).curve.name == "secp256r1"
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigurationError, match="P-256"):
        load_public_key(base64.b64encode(der).decode())
    with pytest.raises(ConfigurationError, match="not a public key"):
        load_public_key("bm90IGEga2V5")


def test_a_batch_delivered_twice_is_recorded_once_on_the_email(moto_stack, sendgrid):
    # given an email of ours sent through SES (moto), with its message_ref
    rid = submit(n=1, sendto_fn_name="")
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    queued = QueuedEmail(rid, "u0000000001#0")
    wiring.email_sender(function_settings("send")).deliver(queued, claim_id="m1", receive_count=1)
    store = Store(moto_stack.settings)
    email = store.get_email(queued.request_id, queued.email_key)
    now = datetime.now(UTC)
    webhook = wiring.sendgrid_events(function_settings("sendgrid_events"))
    webhook.verifier = SignatureVerifier(sendgrid.verification_key)
    event = {**delivered(ref=email.message_ref, email="user1@example.net"), "timestamp": int(now.timestamp())}
    body = batch(event)
    # when SendGrid posts the signed batch, and (its retry) the same batch again, and the
    # feedback function records what was queued
    first = post(webhook, body, sendgrid.headers(body, at=now))
    second = post(webhook, body, sendgrid.headers(body, at=now))
    url = function_settings("sendgrid_events").feedback_queue_url
    messages = moto_stack.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    recorder = wiring.feedback_recorder(function_settings("feedback"))
    outcomes = [recorder.record(from_queue_body(json.loads(message["Body"]))) for message in messages]
    # then both posts were queued, the first records the delivery and the second changes nothing
    assert json.loads(first.body)["outcomes"] == json.loads(second.body)["outcomes"] == {"queued": 1}
    assert sorted(outcomes) == ["duplicate", "recorded"]
    email = store.get_email(queued.request_id, queued.email_key)
    assert email.status == "delivered" and email.feedback_events == {"sendgrid:ev-1"}
