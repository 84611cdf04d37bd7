"""The send handler delivers a batch's records at once, and still reports exactly the records
that failed (partial batch response) and sends each email once."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dbmail import wiring
from dbmail.outgoing.queue import QueuedEmail
from dbmail.outgoing.send import CONCURRENT_SENDS, EmailSender
from dbmail.outgoing.store import Store
from tests.conftest import drain, function_settings
from tests.handlers.conftest import load_handler
from tests.unit.test_expand import submit
from tests.unit.test_send import BlockingTransport

REFUSED_KEYS = {"u0000000003#0", "u0000000007#0"}
BATCH = CONCURRENT_SENDS - 1  # emails, and a poison record besides


@pytest.fixture
def transport(moto_stack, monkeypatch):
    """The send function's EmailSender with a BlockingTransport."""
    # every send waits until the whole batch's sends are in progress at once
    transport = BlockingTransport(refuse={"user3@example.net", "user7@example.net"}, release_at=BATCH)
    settings = function_settings("send")
    store = Store(settings)
    # DynamoDB applies conditional writes to one item one at a time; moto in-process does not
    # (two threads may both pass the condition), so its claims are made one at a time here
    claiming, claim = threading.Lock(), store.claim_email

    def atomic_claim(*args):
        with claiming:
            return claim(*args)

    store.claim_email = atomic_claim
    sender = EmailSender(
        store=store,
        transport=transport,
        queue=wiring.send_queue(settings),
        settings=settings,
        suppressions=wiring.suppression_store(settings),
    )
    monkeypatch.setattr(wiring, "email_sender", lambda _settings: sender)
    return transport


def sqs_event(messages: list[dict]) -> dict:
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:dbmail-PrioritySendQueue",
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


def queued_batch(moto_stack, n: int) -> tuple[str, list[dict]]:
    rid = submit(n=n, sendto_fn_name="")
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    messages = drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url)  # a small request's lane
    assert len(messages) == n
    return rid, messages


def test_a_batch_is_delivered_at_once_and_exactly_the_failed_records_are_reported(moto_stack, context, transport):
    # given a batch of 9 queued emails, and a provider that fails two of them unforeseen, and
    # a record whose body is not a send message at all
    rid, messages = queued_batch(moto_stack, BATCH)
    poison = {**messages[0], "MessageId": "poison", "ReceiptHandle": "poison-receipt", "Body": "not json"}
    event = sqs_event([*messages, poison])
    # when the send function gets the batch
    response = load_handler("send")(event, context)
    # then every email's send was in progress at the same time
    assert transport.most_in_flight == BATCH
    # and exactly the poison record and the two refused emails' records are batch item failures
    refused = {m["MessageId"] for m in messages if QueuedEmail.from_body(m["Body"]).email_key in REFUSED_KEYS}
    assert len(refused) == 2
    assert {f["itemIdentifier"] for f in response["batchItemFailures"]} == {"poison", *refused}
    # and every other email was sent once, the refused ones are queued for their retry
    counts = Store(moto_stack.settings).email_status_counts(rid)
    assert counts == {"sent": BATCH - 2, "queued": 2}
    assert sorted(e.to[0].addr_spec for e in transport.sent) == sorted(
        f"user{i}@example.net" for i in range(1, BATCH + 1) if i not in (3, 7)
    )


def test_two_messages_of_one_email_in_one_batch_send_it_once(moto_stack, context, transport):
    # given a batch holding the same email twice (SQS delivers at least once), delivered at once
    _, messages = queued_batch(moto_stack, 1)
    twice = [messages[0], {**messages[0], "MessageId": "again", "ReceiptHandle": "another-receipt"}]
    transport.release.set()
    # when the send function gets it
    response = load_handler("send")(sqs_event(twice), context)
    # then both records succeed, and the email was sent once
    assert response == {"batchItemFailures": []}
    assert [e.to[0].addr_spec for e in transport.sent] == ["user1@example.net"]


def test_a_bulk_batch_is_delivered_at_once_with_at_most_ten_sends_in_flight(moto_stack, context, transport):
    # given a batch of 50 queued emails, as the bulk lane's BatchSize gives them
    rid, messages = queued_batch(moto_stack, 50)
    transport.release_at, transport.refuse = CONCURRENT_SENDS, set()
    # when the send function gets it
    response = load_handler("send")(sqs_event(messages), context)
    # then no more than CONCURRENT_SENDS emails were with the provider at once, and that many were
    assert transport.most_in_flight == CONCURRENT_SENDS
    # and all 50 were sent, once each
    assert response == {"batchItemFailures": []}
    assert Store(moto_stack.settings).email_status_counts(rid) == {"sent": 50}
    assert len({e.to[0].addr_spec for e in transport.sent}) == len(transport.sent) == 50


def test_the_next_wave_is_claimed_while_the_first_is_with_the_provider(moto_stack, context, transport):
    # given a batch of 20 queued emails, two waves, and a provider that holds every send
    rid, messages = queued_batch(moto_stack, 2 * CONCURRENT_SENDS)
    transport.release_at, transport.refuse = None, set()
    store = wiring.email_sender(None).store
    claimed, claim, counting = [], store.claim_email, threading.Lock()

    def counted_claim(*args):
        held = claim(*args)
        with counting:
            claimed.append(held)
        return held

    store.claim_email = counted_claim  # (moto's tables are read by the handler's threads only)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # when the send function gets it
        delivering = pool.submit(load_handler("send"), sqs_event(messages), context)
        # then while the first wave's ten sends are held, the second wave's emails are claimed too
        deadline = time.monotonic() + 5
        while (transport.in_flight, claimed.count(True)) != (CONCURRENT_SENDS, 2 * CONCURRENT_SENDS):
            assert time.monotonic() < deadline, (transport.in_flight, claimed)
            time.sleep(0.01)
        transport.release.set()
        response = delivering.result(timeout=10)
    # and once the provider answers, all twenty are sent, never more than ten at once
    assert response == {"batchItemFailures": []}
    assert Store(moto_stack.settings).email_status_counts(rid) == {"sent": 20}
    assert transport.most_in_flight == CONCURRENT_SENDS
