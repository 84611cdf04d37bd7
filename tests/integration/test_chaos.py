"""The fault campaign: outgoing mail on the real local stack while the provider fails a share of
sends (throttled, transient, permanent), SQS delivers duplicates, and the runner is SIGKILLed at
random points of expand and send (and stopped gracefully once), each time started again with
new clients. It asserts that nothing is lost: every email ends final, the counts reconcile,
duplicates only come from the documented crash window and carry the same Message-ID, and the
permanently refused emails are delivered once each by `dbmail resend` after the cause is gone.

`make test` runs it small; `make chaos` at full size (DBMAIL_CHAOS_RECIPIENTS=20000). It prints
its figures. DBMAIL_CHAOS_SEED replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import pytest

from dbmail.client import request_status, submit_request
from dbmail.core.clock import utcnow
from dbmail.outgoing.emails import message_id_for
from dbmail.outgoing.resend import resend
from dbmail_local import stack
from dbmail_local.cfn import LocalTarget, Template
from dbmail_local.sqs import MAX_LOCAL_POLLERS
from tests.conftest import recipient
from tests.integration.conftest import GOT_MAIL_KEY, got_mail
from tests.integration.test_outgoing import outbox_by_message_id

pytestmark = pytest.mark.integration

RECIPIENTS = int(os.environ.get("DBMAIL_CHAOS_RECIPIENTS", "500"))
KILLS = int(os.environ.get("DBMAIL_CHAOS_KILLS", "3"))
SEED = int(os.environ.get("DBMAIL_CHAOS_SEED", str(random.SystemRandom().randrange(10**6))))
# botocore's adaptive mode slows the client after each throttle (as it should against a real
# quota), so random throttles are kept rare here; test_half_of_all_sends_throttled has its own.
FAULTS = {"ses_send": {"throttle": 0.03, "transient": 0.05, "permanent": 0.01}, "sqs_duplicate": 0.05, "seed": SEED}


def largest_send_batch() -> int:
    """The largest BatchSize of the send function's events (the bulk lane's)."""
    template = Template.load(target=LocalTarget(sqs_url="https://sqs.us-east-1.amazonaws.com"))
    return max(
        int(event["Properties"]["BatchSize"]) for event in template.properties("SendFunction")["Events"].values()
    )


# each of the runner's SQS pollers for the send function (MAX_LOCAL_POLLERS) runs an invocation that
# delivers its batch (up to the send queue's BatchSize) and records a wave's sends together once
# they are made, so a SIGKILL can catch up to a batch per poller accepted by SES but not yet recorded
CRASH_WINDOW = MAX_LOCAL_POLLERS * largest_send_batch()


def kill_runner(local_stack) -> None:
    """SIGKILL, like a crashed Lambda: no time to save anything."""
    pid = stack.running_pid(local_stack.state, stack.RUNNER)
    assert pid is not None, "the runner is not running"
    os.killpg(pid, signal.SIGKILL)
    local_stack.wait_for(lambda: stack.running_pid(local_stack.state, stack.RUNNER) is None, timeout=10)


def expanding(request) -> bool:
    """The request's expansion is under way: its cursor (inline) or a chunk's lease (bulk) is saved."""
    return bool(request.expand_cursor or request.chunk_leases)


def sent_count(local_stack) -> int:
    """Emails SES accepted so far (the outbox; cheap enough to poll, unlike counting 30,000 items)."""
    return sum(1 for _ in os.scandir(local_stack.outbox))


def all_settled(request_ids):
    def check():
        statuses = [request_status(rid) for rid in request_ids]
        return statuses if all(s["reconciliation"]["settled"] for s in statuses) else None

    return check


def test_fault_campaign(local_stack, store):
    rng = random.Random(SEED)
    print(f"\nfault campaign: {RECIPIENTS} recipients, {KILLS} kills, seed {SEED}, faults {FAULTS}")
    started = time.monotonic()
    stack.write_faults(local_stack.state, FAULTS)
    events = []
    try:
        # given two requests, one to students and guardians, one to students only
        big = RECIPIENTS * 3 // 5
        request_ids = [
            submit_request(
                subject="Chaos {{ user.first_name }}",
                msgtext="<html><body>Dear {{ user.first_name }}</body></html>",
                recipients=[recipient(i) for i in range(100_000, 100_000 + big)],
                sendto_fn_name="send_to_self_and_guardian",
                sender="splash@example.org",
            ),
            submit_request(
                subject="Chaos two",
                msgtext="Dear {{ user.first_name }}",
                recipients=[recipient(i, guardian_email=None) for i in range(200_000, 200_000 + RECIPIENTS - big)],
                sender="splash@example.org",
            ),
        ]
        # when the runner is killed mid-expand ...
        # (an inline expansion has saved a cursor, or a bulk one, above BULK_THRESHOLD, has started a chunk)
        local_stack.wait_for(lambda: expanding(store.get_request(request_ids[0])), timeout=120, interval=0.02)
        time.sleep(rng.uniform(0, 0.5))
        events.append(f"SIGKILL while the first request was {store.get_request(request_ids[0]).status}")
        kill_runner(local_stack)
        local_stack.start_runner()
        # ... then at random points of sending, and stopped gracefully once
        for kill in range(KILLS):
            target = sent_count(local_stack) + rng.randint(5, max(6, RECIPIENTS // (KILLS + 2)))
            local_stack.wait_for(lambda target=target: sent_count(local_stack) >= target, timeout=3600, interval=0.2)
            if kill == KILLS // 2:
                events.append(f"graceful stop after {sent_count(local_stack)} sent: {local_stack.stop_runner()}")
            else:
                events.append(f"SIGKILL after {sent_count(local_stack)} sent")
                kill_runner(local_stack)
            local_stack.start_runner()
        # then every request settles: every email final, through retries and the sweep
        # (moto's SQS walks its whole queue on every call: at 30,000 queued emails it sends about
        # 8 a second on 2 cores, so the full-size campaign takes about an hour)
        statuses = local_stack.wait_for(
            all_settled(request_ids), timeout=900 + RECIPIENTS // 4, interval=max(2, RECIPIENTS // 2000)
        )
    finally:
        stack.write_faults(local_stack.state, None)
    settled_after = time.monotonic() - started
    by_status = Counter()
    for status in statuses:
        by_status.update(got_mail(status["emails_by_status"]))
        assert status["status"] == "processed" and status["reconciliation"]["balanced"], status
        assert status["reconciliation"]["outstanding"] == 0 and not status["stuck"], status
    expected = big * 2 + (RECIPIENTS - big)
    assert sum(by_status.values()) == expected
    assert set(by_status) <= {GOT_MAIL_KEY, "failed"}, by_status
    # and what failed was refused for good or ran out of tries, never a throttle
    failed = [email for rid in request_ids for email in store.failed_emails(rid)]
    assert all(
        "Throttl" not in (email.error or "") and "TooManyRequests" not in (email.error or "") for email in failed
    )
    # and once the cause is gone, `dbmail resend` delivers each failed email once
    resent = sum(resend(store, _send_queue(), rid, utcnow()) for rid in request_ids)
    assert resent == len(failed)
    statuses = local_stack.wait_for(
        lambda: (
            (s := [request_status(rid) for rid in request_ids])
            and all(got_mail(x["emails_by_status"]) == {GOT_MAIL_KEY: x["reconciliation"]["emails"]} for x in s)
            and s
        ),
        timeout=300 + RECIPIENTS // 20,
        interval=max(1, RECIPIENTS // 2000),
    )
    # and every email is in the outbox, duplicates only from the crash window, with the same Message-ID
    copies = Counter()
    by_id = outbox_by_message_id(local_stack.outbox)
    for rid in request_ids:
        for email in store.iter_emails(rid, ["email_key", "send_from", "message_id"]):
            message_id = message_id_for(rid, email.email_key, email.send_from)
            assert email.message_id == message_id
            copies[len(by_id.get(message_id, []))] += 1
    assert copies[0] == 0, f"{copies[0]} emails never reached SES"
    duplicated = sum(count for n, count in copies.items() if n > 1)
    sigkills = sum(1 for e in events if e.startswith("SIGKILL"))
    assert duplicated <= CRASH_WINDOW * sigkills, copies
    print(
        "\n".join(
            [
                "fault campaign figures:",
                *(f"  {e}" for e in events),
                f"  emails: {expected}, settled after {settled_after:.0f} s with {dict(by_status)}",
                f"  failed then resent once each: {resent}",
                f"  copies in the outbox per email: {dict(sorted(copies.items()))} "
                f"(duplicates {duplicated}, allowed {CRASH_WINDOW * sigkills} for {sigkills} SIGKILLs)",
                f"  total {time.monotonic() - started:.0f} s, seed {SEED}",
            ]
        )
    )


def _send_queue():
    from dbmail import wiring
    from dbmail.core.settings import Settings

    wiring.send_queue.cache_clear()
    return wiring.send_queue(Settings.for_function("send"))


def test_half_of_all_sends_throttled_still_delivers_everything_and_fails_nothing(local_stack, store):
    # given a provider that throttles half of all calls
    stack.write_faults(local_stack.state, {"ses_send": {"throttle": 0.5}, "seed": SEED})
    try:
        request_id = submit_request(
            subject="Throttled",
            msgtext="Dear {{ user.first_name }}",
            recipients=[recipient(i, guardian_email=None) for i in range(300_000, 300_020)],
            sender="splash@example.org",
        )
        # then every email is eventually sent, none failed, none in the DLQ
        status = local_stack.wait_for(
            lambda: got_mail((s := request_status(request_id))["emails_by_status"]) == {GOT_MAIL_KEY: 20} and s,
            timeout=600,
            interval=1,
        )
    finally:
        stack.write_faults(local_stack.state, None)
    sqs = local_stack.client("sqs")
    dlq = sqs.get_queue_attributes(
        QueueUrl=local_stack.env["DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL"], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert dlq["ApproximateNumberOfMessages"] == "0"
    throttles = sum(int(e.throttles or 0) for e in store.iter_emails(request_id, ["throttles"]))
    tries = sum(int(e.tries or 0) for e in store.iter_emails(request_id, ["tries"]))
    print(
        f"\nhalf throttled: 20 sent, {throttles} throttles reached dbmail (after botocore's retries), {tries} tries spent"
    )
    assert tries == 0 and status["reconciliation"]["balanced"]
