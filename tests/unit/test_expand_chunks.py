"""A bulk request expanded in chunks: handed over by the stream, planned once with its count
checked first, each chunk expanded under its own lease and counted once, finished by the last
chunk; a chunk or plan that dies is done again (carefully) without losing or duplicating an
email. The thresholds are made small here, so that a request of 10 is bulk (chunks 3, 3, 3, 1)."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from dbmail import wiring
from dbmail.client import request_status
from dbmail.core.clock import utcnow
from dbmail.core.errors import ExpansionIncomplete
from dbmail.core.statuses import RequestStatus
from dbmail.outgoing import expand
from dbmail.outgoing.expand import ExpandTask, Outcome, is_priority
from dbmail.outgoing.queue import QueuedEmail, SendQueue
from dbmail.outgoing.store import Store
from tests.conftest import drain, function_settings
from tests.unit.test_expand import submit

N = 10
KEYS = [f"u{i:010d}" for i in range(1, N + 1)]
ENDS = [KEYS[2], KEYS[5], KEYS[8], KEYS[9]]


@pytest.fixture
def bulk(moto_stack, monkeypatch):
    """The moto stack with a bulk threshold of 4 recipients and chunks of 3."""
    monkeypatch.setattr(expand, "BULK_THRESHOLD", 4)
    monkeypatch.setattr(expand, "CHUNK_SIZE", 3)
    return moto_stack


def chunk_expander():
    return wiring.expander(function_settings("expand_chunk"))


def queued_tasks(stack) -> list[ExpandTask]:
    """The expand-chunk queue's messages (taken off it)."""
    return [ExpandTask.from_body(m["Body"]) for m in drain(stack.sqs, stack.settings.expand_chunk_queue_url)]


def queued_emails(stack) -> list[QueuedEmail]:
    return [QueuedEmail.from_body(m["Body"]) for m in drain(stack.sqs, stack.settings.send_queue_url)]


def planned(stack) -> str:
    """A bulk request of N handed over by the stream and planned; its chunk messages taken off the queue."""
    rid = submit(n=N, sendto_fn_name="")
    assert wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True) == Outcome.CHUNKED
    (plan,) = queued_tasks(stack)
    assert chunk_expander().run_task(plan) == Outcome.PLANNED
    assert sorted(task.chunk for task in queued_tasks(stack)) == [0, 1, 2, 3]
    return rid


def run_queued(stack) -> list[str]:
    """Run every queued task, and those they queue, as the expand_chunk function would."""
    outcomes = []
    while tasks := queued_tasks(stack):
        outcomes += [chunk_expander().run_task(task) for task in tasks]
    return outcomes


def test_a_bulk_request_is_handed_over_by_the_stream_and_planned_before_any_email_exists(bulk):
    # given a request over the bulk threshold
    rid = submit(n=N, sendto_fn_name="")
    # when the stream's expansion sees it, then it only queues its plan
    assert wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True) == Outcome.CHUNKED
    store = Store(bulk.settings)
    assert store.get_request(rid).status == RequestStatus.PROCESSING
    assert queued_tasks(bulk) == [ExpandTask(rid)]
    # when the plan runs, then the keys are cut into chunks of 3, stored, and one message queued per chunk
    assert chunk_expander().run_task(ExpandTask(rid)) == Outcome.PLANNED
    request = store.get_request(rid)
    assert request.chunk_ends == ENDS and request.lease_until is None
    assert queued_tasks(bulk) == [ExpandTask(rid, chunk) for chunk in range(4)]
    # and still no email exists
    assert list(store.iter_emails(rid)) == []


def test_every_chunk_expanded_finishes_the_request_with_the_counts_reconciled(bulk):
    rid = planned(bulk)
    # when each chunk runs (in any order)
    outcomes = [chunk_expander().run_task(ExpandTask(rid, chunk)) for chunk in (2, 0, 3, 1)]
    # then the last one finishes the request, and each email was written and queued once
    assert outcomes == [Outcome.CHUNK_DONE] * 3 + [Outcome.PROCESSED]
    status = request_status(rid)
    assert (status["status"], status["recipients"], status["emails"]) == ("processed", N, N)
    assert status["reconciliation"]["balanced"] and status["emails_by_status"] == {"queued": N}
    emails = queued_emails(bulk)
    assert sorted(e.email_key for e in emails) == [f"{key}#0" for key in KEYS]
    # in the bulk lane, each carrying its rendered email
    assert {(e.priority, e.subject, e.msgtext) for e in emails} == {(False, "Hi Zoë", "Dear Zoë Splash")}
    assert drain(bulk.sqs, bulk.settings.priority_send_queue_url) == []


def test_a_chunk_delivered_twice_is_expanded_and_counted_once(bulk):
    rid = planned(bulk)
    assert chunk_expander().run_task(ExpandTask(rid, 0)) == Outcome.CHUNK_DONE
    # when its message comes again
    assert chunk_expander().run_task(ExpandTask(rid, 0)) == Outcome.BUSY
    # then its counts and its messages are there once
    assert request_status(rid)["emails"] == 3
    assert len(queued_emails(bulk)) == 3


def test_a_short_recipient_count_fails_the_plan_and_no_email_is_made(bulk):
    rid = submit(n=N, sendto_fn_name="")
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    Request = Store(bulk.settings).models.MessageRequest
    Request(rid).update(actions=[Request.recipient_count.set(N + 1)])  # as a raw writer could
    # when the plan counts the keys
    assert run_queued(bulk) == [Outcome.FAILED]
    # then the request failed, saying why, before any email or chunk existed
    request = Store(bulk.settings).get_request(rid)
    assert request.status == RequestStatus.FAILED and "write every recipient before the request item" in request.error
    assert request.chunk_ends is None and list(Store(bulk.settings).iter_emails(rid)) == []


def test_a_chunk_stopped_part_way_is_done_again_carefully_and_a_sent_email_stays_sent(bulk, monkeypatch):
    monkeypatch.setattr(expand, "BATCH_RECIPIENTS", 1)
    rid = planned(bulk)
    store = Store(bulk.settings)
    # given chunk 0 stopped after its first email (out of time), which was then sent
    time_left = iter([float("inf"), 0.0])
    with pytest.raises(ExpansionIncomplete):
        chunk_expander().expand_chunk(rid, 0, time_left=lambda: next(time_left))
    (first,) = queued_emails(bulk)
    store.mark_sent(store.email_ref(rid, first.email_key), utcnow(), "p-1", "<m@x>")
    # when its message comes back at once (the lease was let go)
    assert chunk_expander().run_task(ExpandTask(rid, 0)) == Outcome.CHUNK_DONE
    # then the sent email stays sent and is not queued again; the rest are written and queued once
    assert store.email_status_counts(rid) == {"sent": 1, "queued": 2}
    assert sorted(e.email_key for e in queued_emails(bulk)) == [f"{KEYS[1]}#0", f"{KEYS[2]}#0"]
    # and the chunk is counted once, whole
    assert request_status(rid)["emails"] == 3


def test_a_chunk_whose_queueing_failed_behind_its_next_batch_is_not_counted_and_is_done_again(bulk, monkeypatch):
    monkeypatch.setattr(expand, "BATCH_RECIPIENTS", 1)
    rid = planned(bulk)
    # given SQS that refuses the second batch's emails (queued while the third renders and writes)
    enqueue, calls = SendQueue.enqueue, []

    def refusing_the_second(self, emails):
        calls.append(len(emails))
        if len(calls) == 2:
            raise ConnectionError("SQS refused the batch")
        return enqueue(self, emails)

    monkeypatch.setattr(SendQueue, "enqueue", refusing_the_second)
    # when chunk 0 is expanded, then it fails, uncounted, with no queueing left in flight
    with pytest.raises(ConnectionError):
        chunk_expander().expand_chunk(rid, 0, time_left=lambda: float("inf"))
    assert calls == [1, 1] and request_status(rid)["emails"] == 0
    assert [e.email_key for e in queued_emails(bulk)] == [f"{KEYS[0]}#0"]
    # when its message comes back (the lease was let go), then every email of the chunk is
    # queued and the chunk counted once, whole
    monkeypatch.setattr(SendQueue, "enqueue", enqueue)
    assert chunk_expander().run_task(ExpandTask(rid, 0)) == Outcome.CHUNK_DONE
    assert sorted(e.email_key for e in queued_emails(bulk)) == [f"{key}#0" for key in KEYS[:3]]
    assert request_status(rid)["emails"] == 3


def test_a_chunk_whose_invocation_died_is_queued_again_by_the_sweep_once_its_lease_lapsed(bulk):
    rid = planned(bulk)
    for chunk in (0, 2, 3):
        chunk_expander().run_task(ExpandTask(rid, chunk))
    # given chunk 1 taken by an invocation that died (its lease held, its message gone)
    now = utcnow()
    assert Store(bulk.settings).claim_chunk(rid, 1, now, now + expand.CHUNK_LEASE)
    expirer = wiring.expirer(function_settings("expire"))
    # when the sweep runs under the lease, then nothing is queued again
    expirer.clock = expirer.expander.clock = lambda: now + timedelta(minutes=1)
    assert expirer.run(owner="schedule:1") == {"resume_busy": 1}
    assert queued_tasks(bulk) == []
    # when it runs after the lease, then that chunk alone is queued again
    later = now + expand.CHUNK_LEASE + timedelta(seconds=1)
    expirer.clock = expirer.expander.clock = lambda: later
    assert expirer.run(owner="schedule:2") == {"resume_chunked": 1}
    assert queued_tasks(bulk) == [ExpandTask(rid, 1)]
    # and once it runs (carefully), the request is processed with every email once
    chunk_expander().clock = lambda: later
    assert chunk_expander().run_task(ExpandTask(rid, 1)) == Outcome.PROCESSED
    assert request_status(rid)["emails_by_status"] == {"queued": N}


def test_lost_chunk_messages_are_reported_and_queued_again_after_the_grace_period(bulk):
    rid = planned(bulk)  # its chunk messages are gone
    expirer = wiring.expirer(function_settings("expire"))
    # within the grace period nothing is queued again (the messages may be waiting their turn)
    assert expirer.run(owner="schedule:1") == {"resume_busy": 1}
    assert request_status(rid)["stuck"] == []
    # given the grace period passed (as if the chunks had been queued that long ago)
    Request = Store(bulk.settings).models.MessageRequest
    long_ago = utcnow() - bulk.settings.stranded_after - timedelta(seconds=1)
    Request(rid).update(actions=[Request.chunks_queued_at.set(long_ago)])
    # then the status says so, and the sweep queues every chunk again
    (stuck,) = request_status(rid)["stuck"]
    assert stuck.startswith("4 of the 4 chunks of the expansion stopped part-way or were never picked up")
    assert expirer.run(owner="schedule:2") == {"resume_chunked": 1}
    # and the chunks run and the request finishes
    assert run_queued(bulk).count(Outcome.PROCESSED) == 1
    assert request_status(rid)["emails"] == N


def test_a_plan_that_died_queueing_its_chunks_queues_them_all_when_delivered_again(bulk, monkeypatch):
    rid = submit(n=N, sendto_fn_name="")
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    (plan,) = queued_tasks(bulk)
    # given a plan stored, whose invocation died before its chunks were queued
    queue = chunk_expander().chunk_queue
    send_bodies = queue.send_bodies
    monkeypatch.setattr(queue, "send_bodies", lambda bodies: (_ for _ in ()).throw(TimeoutError("died")))
    with pytest.raises(TimeoutError):
        chunk_expander().run_task(plan)
    monkeypatch.setattr(queue, "send_bodies", send_bodies)
    assert Store(bulk.settings).get_request(rid).chunk_ends == ENDS
    # when its message comes again, then every chunk is queued
    assert chunk_expander().run_task(plan) == Outcome.CHUNKED
    assert sorted(task.chunk for task in queued_tasks(bulk)) == [0, 1, 2, 3]


def test_a_plan_that_died_is_queued_again_by_the_sweep(bulk):
    # given a bulk request handed over by the stream, whose plan message was lost
    rid = submit(n=N, sendto_fn_name="")
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    queued_tasks(bulk)
    # when the sweep runs after the stream's lease, then the plan is queued again
    expirer = wiring.expirer(function_settings("expire"))
    expirer.clock = expirer.expander.clock = lambda: utcnow() + expand.LEASE + timedelta(seconds=1)
    assert expirer.run(owner="schedule:1") == {"resume_chunked": 1}
    assert queued_tasks(bulk) == [ExpandTask(rid)]


def test_a_request_counted_whole_but_not_finished_is_finished_when_the_chunk_comes_again(bulk, monkeypatch):
    rid = planned(bulk)
    for chunk in (0, 1, 2):
        chunk_expander().run_task(ExpandTask(rid, chunk))
    # given the last chunk counted, and its invocation dead before it finished the request
    store = chunk_expander().store
    finish = store.finish_chunks
    monkeypatch.setattr(store, "finish_chunks", lambda *a: (_ for _ in ()).throw(TimeoutError("died")))
    with pytest.raises(TimeoutError):
        chunk_expander().run_task(ExpandTask(rid, 3))
    assert Store(bulk.settings).get_request(rid).status == RequestStatus.PROCESSING
    # when its message comes again, then the request is finished (and nothing counted twice)
    monkeypatch.setattr(store, "finish_chunks", finish)
    assert chunk_expander().run_task(ExpandTask(rid, 3)) == Outcome.PROCESSED
    status = request_status(rid)
    assert (status["status"], status["emails"]) == ("processed", N)
    assert status["reconciliation"]["balanced"]


def test_a_template_broken_in_one_chunk_fails_the_request_and_the_other_chunks_stop(bulk, monkeypatch):
    rid = planned(bulk)
    # given a render budget already spent by the chunks before
    Request = Store(bulk.settings).models.MessageRequest
    Request(rid).update(actions=[Request.render_seconds.set(expand.request_render_budget(N))])
    # when a chunk runs, then the request fails saying why, and the next chunk does nothing
    assert chunk_expander().run_task(ExpandTask(rid, 0)) == Outcome.FAILED
    request = Store(bulk.settings).get_request(rid)
    assert request.status == RequestStatus.FAILED and "the request's time limit" in request.error
    assert chunk_expander().run_task(ExpandTask(rid, 1)) == Outcome.ALREADY_DONE
    assert list(Store(bulk.settings).iter_emails(rid)) == []


def test_a_task_survives_its_message_body():
    for task in (ExpandTask("r1"), ExpandTask("r1", 0), ExpandTask("r1", 41)):
        assert ExpandTask.from_body(task.to_body()) == task


@pytest.mark.parametrize(("recipients", "size"), [(0, 3), (2, 3), (3, 3), (7, 3), (9, 3), (10, 1)])
def test_a_plan_ends_a_chunk_every_size_recipients_and_at_the_last(moto_stack, recipients, size):
    # given a request's recipients stored (no request item is needed to count them)
    rid = "r-plan"
    keys = [f"u{i:010d}" for i in range(1, recipients + 1)]
    store = Store(moto_stack.settings)
    store.put_recipients(
        store.models.EmailRequest(rid, key, user_id=n, email=f"user{n}@example.net") for n, key in enumerate(keys, 1)
    )
    # when the plan counts them, then each chunk ends at every size-th key and at the last
    expected = [keys[n] for n in range(size - 1, recipients, size)]
    if recipients % size:
        expected.append(keys[-1])
    assert store.chunk_ends(rid, size) == (expected, recipients)


def test_a_plan_counts_on_where_a_page_of_large_recipients_stopped_at_1_mb(moto_stack):
    # given 30 recipients of about 100 KB each: DynamoDB stops a page after 1 MB read, mid-chunk
    rid = "r-large"
    keys = [f"u{i:010d}" for i in range(1, 31)]
    store = Store(moto_stack.settings)
    store.put_recipients(
        store.models.EmailRequest(rid, key, user_id=n, vars={"notes": "x" * 100_000}) for n, key in enumerate(keys, 1)
    )
    # when the plan counts them in chunks of 25, then the chunks are still 25 and 5
    assert store.chunk_ends(rid, 25) == ([keys[24], keys[29]], 30)


@pytest.mark.parametrize(
    ("recipients", "priority_level", "priority"),
    [
        (1, None, True),
        (100, None, True),
        (101, None, False),
        (101, 1, True),
        (5000, 2, True),
        (5001, 2, False),  # bulk: never the priority lane
        (None, 1, False),  # an item without recipient_count: its size is unknown
    ],
)
def test_the_lane_is_priority_for_small_or_urgent_requests_that_are_not_bulk(recipients, priority_level, priority):
    request = SimpleNamespace(recipient_count=recipients, priority_level=priority_level)
    assert is_priority(request) is priority
