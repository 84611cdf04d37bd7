"""SQS trigger: Lambda's SQS event source mapping, against moto.

Pollers long-poll the queue (WAIT_SECONDS: short, so stopping is quick; moto answers a long
poll as soon as a message arrives, as SQS does, so an idle queue adds no latency), gather up to
BatchSize messages within MaximumBatchingWindowInSeconds (none without one: the first receive is
the batch), invoke, and delete the messages that succeeded:
all of them, or all but the reported batchItemFailures, or none when the handler raised. Failed
messages stay in the queue, so its redrive policy moves them to the DLQ after maxReceiveCount
receives. Standard queues without FilterCriteria only, as template.yaml has them.

The one local acceleration: Lambda leaves a failed message invisible until the queue's
visibility timeout ends (minutes); the runner makes it visible again after
DBMAIL_LOCAL_RETRY_DELAY seconds (default 1) so retries and dead-lettering happen while a test
waits.
"""

import base64
import logging
import math
import time
from typing import Any

from .cfn import TemplateError
from .lambda_runtime import LocalFunction
from .triggers import Runtime, queue_url

log = logging.getLogger(__name__)

MAX_LOCAL_POLLERS = 4  # ScalingConfig.MaximumConcurrency, capped: one machine runs everything
WAIT_SECONDS = 1  # long-poll wait; also the longest a stop waits for a poller
BATCH_CALL_LIMIT = 10  # SQS's limit for ReceiveMessage, DeleteMessageBatch, ChangeMessageVisibilityBatch

Record = dict[str, Any]


def _message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    """A message attribute as Lambda spells it (camelCase, binary as base64)."""
    attribute: dict[str, Any] = {}
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode("ascii")
    attribute["stringListValues"] = value.get("StringListValues", [])
    attribute["binaryListValues"] = [
        base64.b64encode(item).decode("ascii") for item in value.get("BinaryListValues", [])
    ]
    attribute["dataType"] = value["DataType"]
    return attribute


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[start : start + BATCH_CALL_LIMIT] for start in range(0, len(items), BATCH_CALL_LIMIT)]


def lambda_record(message: dict[str, Any], queue_arn: str, region: str) -> Record:
    """A received message as Lambda hands it to the function (one of the event's Records)."""
    record: Record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {
            name: _message_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message["MD5OfBody"],
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    record |= {
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    return record


class SqsTrigger:
    """One SQS event of a function, polled by ``concurrency`` threads."""

    def __init__(self, function: LocalFunction, event_name: str, properties: dict[str, Any], runtime: Runtime) -> None:
        self.name = f"{function.logical_id}.{event_name}"
        self.function = function
        self.runtime = runtime
        self.queue_arn: str = properties["Queue"]
        self.queue_url = queue_url(runtime, self.queue_arn)
        self.batch_size = int(properties.get("BatchSize", 10))
        self.window = float(properties.get("MaximumBatchingWindowInSeconds", 0))
        self.partial_responses = "ReportBatchItemFailures" in properties.get("FunctionResponseTypes", [])
        if properties.get("FilterCriteria"):
            raise TemplateError(f"{self.name}: FilterCriteria on an SQS event is not supported locally")
        maximum = properties.get("ScalingConfig", {}).get("MaximumConcurrency")
        self.concurrency = min(int(maximum), MAX_LOCAL_POLLERS) if maximum else MAX_LOCAL_POLLERS
        self._sqs = runtime.client("sqs")
        self._retry_visibility = math.ceil(runtime.settings.retry_delay)  # SQS takes whole seconds

    def run(self) -> None:
        log.info("polling queue", extra={"trigger": self.name, "queue": self.queue_url, "pollers": self.concurrency})
        stopping = self.runtime.stopping
        while not stopping.is_set():
            messages = self._receive()
            if not messages:
                continue
            if stopping.is_set():  # received but not handled: hand them straight back
                self._change_visibility([m["ReceiptHandle"] for m in messages], 0)
                return
            region = self.runtime.template.target.region
            self._handle([lambda_record(message, self.queue_arn, region) for message in messages])

    def _receive_some(self, wait: int, count: int) -> list[dict[str, Any]]:
        return self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=min(BATCH_CALL_LIMIT, count),
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])

    def _receive(self) -> list[dict[str, Any]]:
        """Up to BatchSize messages, waiting at most the batching window for more than the first."""
        messages = self._receive_some(WAIT_SECONDS, self.batch_size)
        deadline = time.monotonic() + self.window
        while messages and len(messages) < self.batch_size and time.monotonic() < deadline:
            more = self._receive_some(0, self.batch_size - len(messages))
            messages += more
            if not more and self.runtime.stopping.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                break
        return messages

    def _handle(self, records: list[Record]) -> None:
        invocation = self.function.invoke({"Records": records})
        failed = set(invocation.failed_positions([r["messageId"] for r in records], self.partial_responses))
        self._delete([record for position, record in enumerate(records) if position not in failed])
        if failed:
            handles = [records[position]["receiptHandle"] for position in sorted(failed)]
            self._change_visibility(handles, self._retry_visibility)
            log.warning(
                "messages failed; they go back to the queue",
                extra={
                    "trigger": self.name,
                    "failed": len(failed),
                    "of": len(records),
                    "retry_in_s": self._retry_visibility,
                },
            )

    def _delete(self, records: list[Record]) -> None:
        for chunk in _chunks(records):
            entries = [{"Id": str(n), "ReceiptHandle": record["receiptHandle"]} for n, record in enumerate(chunk)]
            result = self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            if result.get("Failed"):
                log.error("could not delete handled messages", extra={"trigger": self.name, "failed": result["Failed"]})

    def _change_visibility(self, handles: list[str], seconds: int) -> None:
        for chunk in _chunks(handles):
            entries = [
                {"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": seconds} for n, handle in enumerate(chunk)
            ]
            result = self._sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
            if result.get("Failed"):
                log.error(
                    "could not return failed messages to the queue",
                    extra={"trigger": self.name, "failed": result["Failed"]},
                )
