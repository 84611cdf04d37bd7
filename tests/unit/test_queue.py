"""The send queue's messages (keys, lane, inlined content) and its two lanes, against moto's SQS."""

import json

from dbmail import wiring
from dbmail.outgoing.queue import BATCH_MAX_BYTES, INLINE_MAX_BYTES, QueuedEmail, SendQueue, SqsQueue
from tests.conftest import drain


def test_a_body_written_by_older_code_still_parses_as_a_bulk_email_without_content():
    # given a keys-only body, as queued before the content travelled in the message
    queued = QueuedEmail.from_body('{"request_id":"r1","email_key":"u1#0"}')
    # then it names the email, in the bulk lane, with nothing to send from
    assert queued == QueuedEmail("r1", "u1#0")
    assert (queued.subject, queued.msgtext, queued.priority) == (None, None, False)


def test_content_and_lane_survive_the_round_trip():
    # given an email with its rendered content, in the priority lane
    queued = QueuedEmail("r1", "u1#0", subject="Hi Zoë", msgtext="<html>Dear Zoë,</html>", priority=True)
    body = queued.to_body()
    # then the body is compact JSON with the content as UTF-8, and parses back to the same email
    assert json.loads(body) == {
        "request_id": "r1",
        "email_key": "u1#0",
        "priority": True,
        "subject": "Hi Zoë",
        "msgtext": "<html>Dear Zoë,</html>",
    }
    assert "Zoë" in body
    assert QueuedEmail.from_body(body) == queued


def test_a_bulk_email_without_content_is_keys_only():
    assert json.loads(QueuedEmail("r1", "u1#0").to_body()) == {"request_id": "r1", "email_key": "u1#0"}


def test_an_empty_body_is_content_too():
    # an empty message is a rendered message: it must not be re-rendered at send
    queued = QueuedEmail.from_body(QueuedEmail("r1", "u1#0", subject="", msgtext="").to_body())
    assert (queued.subject, queued.msgtext) == ("", "")


def test_content_over_the_inline_limit_is_left_out():
    # given a body that would make the message larger than INLINE_MAX_BYTES (UTF-8 bytes count)
    big = "é" * (INLINE_MAX_BYTES // 2)
    body = QueuedEmail("r1", "u1#0", subject="s", msgtext=big, priority=True).to_body()
    # then only the keys (and the lane) travel: the send renders the email again
    assert json.loads(body) == {"request_id": "r1", "email_key": "u1#0", "priority": True}
    # and just under the limit it is inlined
    fits = "x" * (INLINE_MAX_BYTES - 200)
    assert QueuedEmail.from_body(QueuedEmail("r1", "u1#0", msgtext=fits).to_body()).msgtext == fits


def test_a_character_sqs_refuses_is_escaped_not_sent_raw():
    # given a body with a lone surrogate and U+FFFF (SQS refuses both in a message body)
    queued = QueuedEmail("r1", "u1#0", subject="s", msgtext="a\ud800b\uffff")
    body = queued.to_body()
    # then the JSON escapes them, and the body still encodes and parses back
    assert body.isascii()
    assert QueuedEmail.from_body(body) == queued


class RecordingSqs:
    """Just enough of an SQS client to see the calls."""

    def __init__(self):
        self.batches: list[tuple[str, list[str]]] = []
        self.singles: list[dict] = []

    def send_message_batch(self, QueueUrl, Entries):
        self.batches.append((QueueUrl, [e["MessageBody"] for e in Entries]))
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    def send_message(self, **kwargs):
        self.singles.append(kwargs)


def test_batches_hold_at_most_ten_messages_and_250_000_bytes():
    # given 25 bodies of 60,000 bytes and 15 small ones
    sqs = RecordingSqs()
    bodies = ["x" * 60_000] * 25 + ["y"] * 15
    # when they are sent
    assert SqsQueue(sqs, "q").send_bodies(bodies) == 40
    # then every call is within SQS's limits, and every body is sent once, in order
    for _, batch in sqs.batches:
        assert len(batch) <= 10
        assert sum(len(b.encode()) for b in batch) <= BATCH_MAX_BYTES
    assert [b for _, batch in sqs.batches for b in batch] == bodies
    assert [len(batch) for _, batch in sqs.batches] == [4, 4, 4, 4, 4, 4, 10, 6]


def test_enqueue_routes_each_email_by_its_lane():
    # given a mix of bulk and priority emails
    sqs = RecordingSqs()
    queue = SendQueue(sqs, "bulk", "priority")
    emails = [QueuedEmail("r", f"u{i}#0", priority=i % 3 == 0) for i in range(12)]
    # when they are queued
    assert queue.enqueue(emails) == 12
    # then each went to its lane's queue
    by_url: dict[str, list[QueuedEmail]] = {}
    for url, batch in sqs.batches:
        by_url.setdefault(url, []).extend(QueuedEmail.from_body(b) for b in batch)
    assert by_url == {"bulk": [e for e in emails if not e.priority], "priority": [e for e in emails if e.priority]}


def test_a_retry_keeps_its_lane_and_its_content():
    # given a priority email with its content
    sqs = RecordingSqs()
    queued = QueuedEmail("r", "u1#0", subject="s", msgtext="body", priority=True)
    # when it is queued again later
    SendQueue(sqs, "bulk", "priority").enqueue_later(queued, 5000)
    # then it goes to the priority lane, with its content, within SQS's delay limit
    (call,) = sqs.singles
    assert call["QueueUrl"] == "priority" and call["DelaySeconds"] == 900
    assert QueuedEmail.from_body(call["MessageBody"]) == queued


def test_wiring_builds_both_lanes_from_the_settings(moto_stack):
    # given the stack's two send queues
    from dbmail.core.settings import Settings

    settings = Settings.for_function("send")
    queue = wiring.send_queue(settings)
    # when an email of each lane is queued
    queue.enqueue([QueuedEmail("r", "bulk#0"), QueuedEmail("r", "urgent#0", priority=True)])
    # then each is on its own queue, and the backlog counts both
    assert queue.backlog() == 2
    (bulk,) = drain(moto_stack.sqs, settings.send_queue_url)
    (urgent,) = drain(moto_stack.sqs, settings.priority_send_queue_url)
    assert QueuedEmail.from_body(bulk["Body"]).email_key == "bulk#0"
    assert QueuedEmail.from_body(urgent["Body"]).priority
