"""Bulk requests and lanes on the local stack: a request over the bulk threshold is expanded in
chunks by the expand_chunk function, every email made once and the counts reconciled, and a
1-recipient request written while it expands goes in the priority lane and is delivered
within 5 s, whatever the bulk request's backlog."""

from __future__ import annotations

import time

from dbmail.client import request_status, submit_request
from dbmail.core.statuses import RequestStatus
from dbmail.outgoing.expand import BULK_THRESHOLD, CHUNK_SIZE
from dbmail_local.demo import generate_recipients
from tests.integration.conftest import GOT_MAIL_KEY, got_mail, wait_delivered

BULK = 6000  # over BULK_THRESHOLD: 3 chunks
ADDRESSED = BULK // 4  # the others have no address (skipped, no email): the stack has less to send
PRIORITY_DELIVERY_SECONDS = 5.0


def submit(recipients: list[dict]) -> str:
    return submit_request(
        subject="Splash {{ user.first_name }}",
        msgtext="Dear {{ user.first_name }}, see you on Saturday.",
        recipients=recipients,
        sendto_fn_name="send_to_self",
        sender="Splash <splash@example.org>",
    )


def small_request(user_id: int) -> str:
    return submit([{"user_id": user_id, "email": f"urgent{user_id}@students.example.net", "first_name": "Ada"}])


def test_a_small_request_is_delivered_in_seconds_while_a_bulk_one_expands_in_chunks(local_stack, store):
    assert BULK > BULK_THRESHOLD
    # given a stack that has sent mail (its functions warm, as they are while a bulk request sends)
    assert got_mail(wait_delivered(local_stack, small_request(1_000_001), timeout=30)["emails_by_status"]) == {
        GOT_MAIL_KEY: 1
    }
    # and a bulk request, handed over by the stream to be planned and expanded in chunks
    recipients = generate_recipients(BULK)
    for n, recipient in enumerate(recipients):
        if n % 4:
            del recipient["email"]
    bulk = submit(recipients)
    local_stack.wait_for(lambda: store.get_request(bulk).status == RequestStatus.PROCESSING, timeout=10, interval=0.05)
    # when a 1-recipient request is written while it expands
    small = small_request(1_000_002)
    written = time.monotonic()
    assert store.get_request(bulk).status == RequestStatus.PROCESSING
    # then the small one is delivered within 5 s
    status = wait_delivered(local_stack, small, timeout=PRIORITY_DELIVERY_SECONDS)
    delivered = time.monotonic() - written
    assert got_mail(status["emails_by_status"]) == {GOT_MAIL_KEY: 1}, delivered
    assert delivered <= PRIORITY_DELIVERY_SECONDS
    # while the bulk request was still being expanded or sent
    assert request_status(bulk)["reconciliation"]["outstanding"] > 0 or (
        store.get_request(bulk).status == RequestStatus.PROCESSING
    )

    # and the bulk request was cut into chunks, each counted once, and finished with its counts
    request = local_stack.wait_for(
        lambda: (r := store.get_request(bulk)).status == RequestStatus.PROCESSED and r, timeout=40, interval=0.5
    )
    chunks = -(-BULK // CHUNK_SIZE)
    assert len(request.chunk_ends) == chunks and request.chunks_done == set(range(chunks))
    status = request_status(bulk)
    assert (status["recipients"], status["emails"], status["skipped_no_address"]) == (BULK, ADDRESSED, BULK - ADDRESSED)
    # every email made exactly once, each in a known state
    reconciliation = status["reconciliation"]
    assert reconciliation["emails"] == ADDRESSED and reconciliation["balanced"]
    assert status["stuck"] == []


def test_a_plan_on_dynamodb_local_counts_chunks_across_pages_cut_at_1_mb(store):
    # given 60 recipients of about 100 KB each (DynamoDB Local ends a page after 1 MB read), and
    # 50 small ones whose count is a multiple of the chunk (a page ends exactly at its Limit)
    large, small = "r-plan-large", "r-plan-small"
    big = [f"u{i:010d}" for i in range(1, 61)]
    store.put_recipients(
        store.models.EmailRequest(large, key, user_id=n, vars={"notes": "x" * 100_000}) for n, key in enumerate(big, 1)
    )
    keys = [f"u{i:010d}" for i in range(1, 51)]
    store.put_recipients(store.models.EmailRequest(small, key, user_id=n) for n, key in enumerate(keys, 1))
    # when each is planned, then every chunk holds the chunk size, the last the rest
    assert store.chunk_ends(large, 25) == ([big[24], big[49], big[59]], 60)
    assert store.chunk_ends(small, 25) == ([keys[24], keys[49]], 50)
    assert store.chunk_ends(small, 7) == ([keys[n] for n in range(6, 50, 7)] + [keys[49]], 50)
