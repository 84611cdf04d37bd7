"""SQS queues written 10 messages a call: the send queue (one small message per TextOfEmail) and
the feedback queue (SendGrid's webhook events, queued for the feedback function)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dbmail.core.errors import DbmailError

SQS_BATCH = 10
ATTEMPTS = 3


@dataclass(frozen=True)
class QueuedEmail:
    """What a send message names: the email's key, never its content or address."""

    request_id: str
    email_key: str

    def to_body(self) -> str:
        return json.dumps({"request_id": self.request_id, "email_key": self.email_key}, separators=(",", ":"))

    @classmethod
    def from_body(cls, body: str) -> QueuedEmail:
        data = json.loads(body)
        return cls(request_id=str(data["request_id"]), email_key=str(data["email_key"]))


class SqsQueue:
    """An SQS queue written up to 10 messages a call; entries SQS refuses are retried, then it
    raises (the caller retries)."""

    def __init__(self, sqs_client, queue_url: str):
        self._sqs = sqs_client
        self._url = queue_url

    def send_bodies(self, bodies: Iterable[str]) -> int:
        batch: list[str] = []
        count = 0
        for body in bodies:
            batch.append(body)
            if len(batch) == SQS_BATCH:
                count += self._send_batch(batch)
                batch = []
        if batch:
            count += self._send_batch(batch)
        return count

    def _send_batch(self, batch: Sequence[str]) -> int:
        pending = {str(i): body for i, body in enumerate(batch)}
        for _ in range(ATTEMPTS):
            response = self._sqs.send_message_batch(
                QueueUrl=self._url,
                Entries=[{"Id": entry_id, "MessageBody": body} for entry_id, body in pending.items()],
            )
            failed = {f["Id"] for f in response.get("Failed", [])}
            pending = {entry_id: body for entry_id, body in pending.items() if entry_id in failed}
            if not pending:
                return len(batch)
        raise DbmailError(f"SQS refused {len(pending)} of {len(batch)} messages after {ATTEMPTS} attempts")


class SendQueue(SqsQueue):
    """The send queue: one small message per TextOfEmail."""

    def enqueue(self, emails: Iterable[QueuedEmail]) -> int:
        """Queue every email (10 to a call)."""
        return self.send_bodies(email.to_body() for email in emails)

    def enqueue_later(self, email: QueuedEmail, delay_seconds: int) -> None:
        """Queue one email again after a delay (a retry): a new message, so the failed try does
        not count toward the queue's maxReceiveCount."""
        self._sqs.send_message(
            QueueUrl=self._url, MessageBody=email.to_body(), DelaySeconds=max(0, min(int(delay_seconds), 900))
        )

    def backlog(self) -> int:
        """Messages waiting, delayed or in flight: while there are any, a queued email may simply
        not have had its turn yet."""
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        attributes = self._sqs.get_queue_attributes(QueueUrl=self._url, AttributeNames=names)["Attributes"]
        return sum(int(attributes.get(name, 0)) for name in names)


def redrive(sqs_client, dead_letter_url: str, queue_url: str) -> int:
    """Move every message from the dead-letter queue back to the send queue (after fixing the
    cause): received, re-sent, then deleted, so a crash in between duplicates but never loses."""
    moved = 0
    while True:
        messages = sqs_client.receive_message(
            QueueUrl=dead_letter_url, MaxNumberOfMessages=SQS_BATCH, WaitTimeSeconds=1
        ).get("Messages", [])
        if not messages:
            return moved
        entries = [{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)]
        failed = sqs_client.send_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed", [])
        if failed:
            raise DbmailError(f"SQS refused {len(failed)} redriven messages; they stay in the dead-letter queue")
        sqs_client.delete_message_batch(
            QueueUrl=dead_letter_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
        moved += len(messages)
