"""The local moto server's fault injection (stack.write_faults), which the fault campaign
(test_chaos.py) uses, and its SQS locking (serialize_sqs_queues), on the real stack and in-process.

Faults are switched off again at the end of every test (the stack is the whole session's).
Clients here make one attempt only, so each injected fault reaches the test as it left moto
(botocore's ``max_attempts`` counts retries in its legacy mode: 1 would still retry once).
"""

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from dbmail_local import stack

pytestmark = pytest.mark.integration

NO_RETRIES = Config(retries={"total_max_attempts": 1}, max_pool_connections=16)
SENDER = "info@example.org"  # a verified domain of local/parameters.json


def _client(local_stack, service: str) -> Any:
    env = local_stack.env
    suffix = service.upper()
    return boto3.session.Session().client(
        service,
        endpoint_url=env[f"AWS_ENDPOINT_URL_{suffix}"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=NO_RETRIES,
    )


@pytest.fixture
def faults(local_stack) -> Iterator[Any]:
    """``faults(spec)`` switches the stack's faults; they are off again after the test, whatever happened."""
    try:
        yield lambda spec: stack.write_faults(local_stack.state, spec)
    finally:
        stack.write_faults(local_stack.state, None)


@pytest.fixture
def queue(local_stack) -> Iterator[str]:
    """A fresh queue of this test's own (no runner polls it), deleted afterwards."""
    sqs = _client(local_stack, "sqs")
    url = sqs.create_queue(QueueName=f"faults-{uuid.uuid4().hex[:12]}", Attributes={"VisibilityTimeout": "60"})[
        "QueueUrl"
    ]
    try:
        yield url
    finally:
        sqs.delete_queue(QueueUrl=url)


def _raw(marker: str) -> bytes:
    return (
        f"From: ESP <{SENDER}>\r\nTo: student@example.net\r\nSubject: fault test {marker}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"
    ).encode()


def _in_outbox(local_stack, marker: str) -> list[str]:
    return [path.name for path in local_stack.outbox.glob("*.eml") if marker.encode() in path.read_bytes()]


def _send_v2(sesv2, marker: str) -> str:
    return sesv2.send_email(
        FromEmailAddress=SENDER,
        Destination={"ToAddresses": ["student@example.net"]},
        Content={"Raw": {"Data": _raw(marker)}},
    )["MessageId"]


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_each_ses_fault_fails_a_send_as_ses_v2_does_and_nothing_is_sent_until_faults_are_off(local_stack, faults):
    sesv2 = _client(local_stack, "sesv2")
    marker = uuid.uuid4().hex
    expected = {
        "throttle": ("TooManyRequestsException", 429, "Maximum sending rate exceeded."),
        "transient": ("InternalFailure", 500, None),
        "permanent": ("MessageRejected", 400, None),
    }
    for kind, (code, status, message) in expected.items():
        faults({"ses_send": {kind: 1.0}})
        with pytest.raises(ClientError) as failed:
            _send_v2(sesv2, marker)
        assert _error(failed) == (code, status), kind
        assert message is None or failed.value.response["Error"]["Message"] == message
    assert _in_outbox(local_stack, marker) == []

    faults(None)
    assert _send_v2(sesv2, marker)
    assert len(_in_outbox(local_stack, marker)) == 1
    for spec in (
        {"ses_send": {"throttle": 1.5}},
        {"ses_send": {"throttle": 0.6, "permanent": 0.6}},
        {"sqs_dupes": 0.1},
    ):
        with pytest.raises(ValueError, match="faults"):
            stack.write_faults(local_stack.state, spec)
    assert not (local_stack.state_dir / stack.FAULTS_FILE).exists()


def test_a_received_message_is_duplicated_in_its_queue(local_stack, faults, queue):
    sqs = _client(local_stack, "sqs")
    attributes = {"kind": {"DataType": "String", "StringValue": "fault-test"}}
    sent = sqs.send_message(QueueUrl=queue, MessageBody="at least once", MessageAttributes=attributes)
    faults({"sqs_duplicate": 1.0, "seed": 7})
    received = []
    for _ in range(2):
        received += sqs.receive_message(
            QueueUrl=queue,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["SentTimestamp"],
        )["Messages"]
    assert len(received) == 2
    original, duplicate = received
    assert original["MessageId"] == sent["MessageId"] != duplicate["MessageId"]
    assert original["Body"] == duplicate["Body"] == "at least once"
    assert original["MessageAttributes"] == duplicate["MessageAttributes"] == attributes
    assert original["MD5OfMessageAttributes"] == duplicate["MD5OfMessageAttributes"]
    assert original["Attributes"]["SentTimestamp"] == duplicate["Attributes"]["SentTimestamp"]


def test_concurrent_senders_receivers_and_deleters_lose_nothing_and_get_nothing_back(local_stack, queue):
    """moto's delete rebuilt the message list unlocked: deleted messages came back, sends got lost."""
    sqs = _client(local_stack, "sqs")
    senders, receivers, per_sender = 2, 4, 1000
    lock = threading.Lock()
    received: Counter[str] = Counter()
    deleted: set[str] = set()
    received_after_delete: list[str] = []
    sent_all = threading.Event()
    failures: list[BaseException] = []

    def send(sender: int) -> None:
        for start in range(0, per_sender, 10):
            entries = [{"Id": str(n), "MessageBody": f"{sender}-{start + n}"} for n in range(10)]
            assert not sqs.send_message_batch(QueueUrl=queue, Entries=entries).get("Failed")

    def receive() -> None:
        while True:
            messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            if not messages:
                if sent_all.is_set():
                    return
                continue
            with lock:
                received.update(message["Body"] for message in messages)
                received_after_delete.extend(message["Body"] for message in messages if message["Body"] in deleted)
            result = sqs.delete_message_batch(
                QueueUrl=queue,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": message["ReceiptHandle"]} for n, message in enumerate(messages)
                ],
            )
            assert not result.get("Failed"), result["Failed"]
            with lock:
                deleted.update(messages[int(entry["Id"])]["Body"] for entry in result["Successful"])

    def run(target: Any, *args: Any) -> threading.Thread:
        def guarded() -> None:
            try:
                target(*args)
            except BaseException as error:
                failures.append(error)

        thread = threading.Thread(target=guarded)
        thread.start()
        return thread

    sending = [run(send, n) for n in range(senders)]
    receiving = [run(receive) for _ in range(receivers)]
    for thread in sending:
        thread.join()
    sent_all.set()
    for thread in receiving:
        thread.join()

    assert not failures, failures
    assert received_after_delete == []
    assert sorted(received) == sorted(f"{s}-{n}" for s in range(senders) for n in range(per_sender))  # none lost
    assert set(received.values()) == {1}  # the visibility timeout (60 s) never ended
    # A deleted message that came back would still be in the queue, in flight until its timeout ends.
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) == (
        "0",
        "0",
    )


@pytest.fixture
def in_process_sqs(monkeypatch) -> Iterator[Any]:
    """moto's SQS backend in this process with serialize_sqs_queues and cheap_standard_sends
    applied, all undone afterwards."""
    from moto import mock_aws
    from moto.sqs.models import Queue, SQSBackend, sqs_backends

    from dbmail_local.moto_server import cheap_standard_sends, serialize_sqs_queues

    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name)
    for cls, names in ((Queue, ("add_message", "delete_message")), (SQSBackend, PATCHED_BACKEND_METHODS)):
        for name in names:
            monkeypatch.setattr(cls, name, getattr(cls, name))  # restored after the test
    with mock_aws():
        serialize_sqs_queues()
        cheap_standard_sends()
        yield sqs_backends["123456789012"]["us-east-1"]


PATCHED_BACKEND_METHODS = (
    "send_message",
    "receive_message",
    "send_message_batch",
    "delete_message_batch",
    "change_message_visibility",
    "change_message_visibility_batch",
    "purge_queue",
    "is_message_valid_based_on_retention_period",
)


def test_moto_hands_each_message_to_one_receiver(monkeypatch, in_process_sqs):
    """Widens moto's race window (receiving marks messages late) to show the lock closes it."""
    from moto.sqs.models import Message

    mark_received = Message.mark_received

    def slow_mark_received(self, *args, **kwargs):
        time.sleep(0.002)
        return mark_received(self, *args, **kwargs)

    monkeypatch.setattr(Message, "mark_received", slow_mark_received)
    backend = in_process_sqs
    backend.create_queue("race", VisibilityTimeout="60")
    for n in range(100):
        backend.send_message("race", str(n))
    received: list[str] = []

    def receive() -> None:
        while messages := backend.receive_message("race", 10, 0, 60):
            received.extend(message.body for message in messages)

    threads = [threading.Thread(target=receive) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(received, key=int) == [str(n) for n in range(100)]


def test_concurrent_deletes_and_sends_with_a_wide_race_window(monkeypatch, in_process_sqs):
    """Slows moto's delete (it checks each queued message's receipt handles while it rebuilds the
    list) so that, unlocked, concurrent deletes overwrite each other's list and sends are lost."""
    from moto.sqs.models import Message

    had_receipt_handle = Message.had_receipt_handle

    def slow_had_receipt_handle(self, receipt_handle):
        time.sleep(0.00002)  # lets another thread run in the middle of a rebuild
        return had_receipt_handle(self, receipt_handle)

    backend = in_process_sqs
    backend.create_queue("wide", VisibilityTimeout="60")
    for n in range(120):
        backend.send_message("wide", f"old-{n}")
    handles = [message.receipt_handle for message in backend.receive_message("wide", 120, 0, 60)]
    assert len(handles) == 120
    monkeypatch.setattr(Message, "had_receipt_handle", slow_had_receipt_handle)

    def delete(share: list[str]) -> None:
        for handle in share:
            backend.delete_message("wide", handle)

    def send(sender: int) -> None:
        for n in range(20):
            backend.send_message("wide", f"new-{sender}-{n}")

    threads = [threading.Thread(target=delete, args=(handles[n::6],)) for n in range(6)]
    threads += [threading.Thread(target=send, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    left = sorted(message.body for message in backend.get_queue("wide")._messages)
    assert left == sorted(f"new-{s}-{n}" for s in range(2) for n in range(20))


def test_a_standard_queue_send_never_counts_the_queue(monkeypatch, in_process_sqs):
    """moto's send reads queue.attributes, which counts every queued message three times: at a
    depth of 100,000 that made each send slow. A standard queue's send keeps SQS's semantics
    (delay, message attributes, the size limit) without that read; a FIFO queue's is moto's own."""
    from moto.sqs.exceptions import InvalidParameterValue
    from moto.sqs.models import Queue

    backend = in_process_sqs
    backend.create_queue("deep", VisibilityTimeout="60", MaximumMessageSize="1024")
    backend.create_queue("ordered.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    reads = Counter()
    attributes = Queue.attributes

    def counted(self):
        reads[self.name] += 1
        return attributes.fget(self)

    monkeypatch.setattr(Queue, "attributes", property(counted))
    # given a standard queue a few hundred messages deep
    for n in range(300):
        backend.send_message("deep", f"m{n}")
    # when more are sent, one delayed and one with message attributes
    backend.send_message("deep", "later", delay_seconds=600)
    attribute = {"priority": {"data_type": "String", "string_value": "1"}}
    backend.send_message("deep", "tagged", message_attributes=attribute)
    # then no send read the queue's attributes, and each message is what SQS would hand out
    assert reads["deep"] == 0
    received = {}
    while batch := backend.receive_message("deep", 10, 0, 60):
        received.update((m.body, m) for m in batch)
    assert "later" not in received and len(received) == 301
    queued = {m.body: m for m in backend.get_queue("deep")._messages}
    assert queued["tagged"].message_attributes == attribute
    later = queued["later"]
    assert later.delayed
    # and the queue's limits still hold
    with pytest.raises(InvalidParameterValue):
        backend.send_message("deep", "x" * 1025)
    with pytest.raises(InvalidParameterValue):
        backend.send_message("deep", "x", delay_seconds=901)
    # and a FIFO queue still deduplicates by content
    for _ in range(2):
        backend.send_message("ordered.fifo", "same", group_id="g")
    assert len(backend.get_queue("ordered.fifo")._messages) == 1


def test_a_receive_checks_retention_without_computing_the_queues_attributes(monkeypatch, in_process_sqs):
    """Given a queue of messages, one past its retention period, with cheap_retention_checks:
    a receive returns the others and never computes the queue's attributes (its message counts
    scan the whole queue, once per message received in moto's own check)."""
    from moto.sqs.models import Queue

    from dbmail_local.moto_server import cheap_retention_checks

    cheap_retention_checks()
    backend = in_process_sqs
    backend.create_queue("kept", VisibilityTimeout="60", MessageRetentionPeriod="60")
    for n in range(3):
        backend.send_message("kept", f"fresh-{n}")
    backend.send_message("kept", "stale")  # last: moto stops receiving at an expired message
    stale = next(message for message in backend.get_queue("kept")._messages if message.body == "stale")
    stale.sent_timestamp -= 120_000  # ms: sent two minutes ago, kept for one

    def no_attributes(self):
        raise AssertionError("a receive computed the queue's attributes")

    monkeypatch.setattr(Queue, "attributes", property(no_attributes))
    received = backend.receive_message("kept", 10, 0, 60)
    assert sorted(message.body for message in received) == ["fresh-0", "fresh-1", "fresh-2"]
