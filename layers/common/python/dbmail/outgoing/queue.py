"""SQS queues written 10 messages a call: the send queue's two lanes (one message per
TextOfEmail, its rendered content inlined when it fits) and the feedback queue (SendGrid's
webhook events, queued for the feedback function)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dbmail.core.errors import DbmailError
from dbmail.core.parallel import each_at_once

SQS_BATCH = 10
ATTEMPTS = 3
# SQS takes 256 KiB (262,144 bytes) per message and per SendMessageBatch call. Content is
# inlined in a body of at most INLINE_MAX_BYTES; a call carries at most BATCH_MAX_BYTES of
# bodies, the rest of SQS's limit left to the entries' ids and the request's framing.
INLINE_MAX_BYTES = 200_000
BATCH_MAX_BYTES = 250_000
_SQS_REFUSES = re.compile("[\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class QueuedEmail:
    """What a send message carries: the email's key, its lane and, when it fits, its rendered
    subject and body (so that the send needs no read of the body, and the item holds none).
    Never the address: the send reads that from the item it claims."""

    request_id: str
    email_key: str
    subject: str | None = None
    msgtext: str | None = None
    priority: bool = False

    def to_body(self) -> str:
        """The message body: keys (and the lane), plus the content when the body stays within
        INLINE_MAX_BYTES; otherwise keys only (the send renders it again)."""
        keys: dict = {"request_id": self.request_id, "email_key": self.email_key}
        if self.priority:
            keys["priority"] = True
        if self.msgtext is not None:
            body = _json({**keys, "subject": self.subject or "", "msgtext": self.msgtext})
            if len(body.encode()) <= INLINE_MAX_BYTES:
                return body
        return _json(keys)

    @classmethod
    def from_body(cls, body: str) -> QueuedEmail:
        data = json.loads(body)
        msgtext = data.get("msgtext")
        return cls(
            request_id=str(data["request_id"]),
            email_key=str(data["email_key"]),
            subject=str(data.get("subject") or "") if msgtext is not None else None,
            msgtext=None if msgtext is None else str(msgtext),
            priority=bool(data.get("priority", False)),
        )


def _json(data: dict) -> str:
    """Compact JSON, non-ASCII as UTF-8 (a third of ``\\uXXXX``'s bytes for most scripts) unless
    the text holds a character SQS refuses in a body (a lone surrogate, U+FFFE, U+FFFF)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(data, separators=(",", ":")) if _SQS_REFUSES.search(text) else text


class SqsQueue:
    """An SQS queue written up to 10 messages (and BATCH_MAX_BYTES) a call; entries SQS refuses
    are retried, then it raises (the caller retries)."""

    def __init__(self, sqs_client, queue_url: str):
        self._sqs = sqs_client
        self.url = queue_url

    def send_bodies(self, bodies: Iterable[str]) -> int:
        """Sends every body, the batches' calls a few at a time (each_at_once)."""
        batches: list[list[str]] = []
        batch: list[str] = []
        size = 0
        for body in bodies:
            length = len(body.encode())
            if batch and (len(batch) == SQS_BATCH or size + length > BATCH_MAX_BYTES):
                batches.append(batch)
                batch, size = [], 0
            batch.append(body)
            size += length
        if batch:
            batches.append(batch)
        return sum(each_at_once(self._send_batch, batches))

    def send_later(self, body: str, delay_seconds: int) -> None:
        self._sqs.send_message(QueueUrl=self.url, MessageBody=body, DelaySeconds=max(0, min(int(delay_seconds), 900)))

    def backlog(self) -> int:
        """Messages waiting, delayed or in flight."""
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        attributes = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        return sum(int(attributes.get(name, 0)) for name in names)

    def _send_batch(self, batch: Sequence[str]) -> int:
        pending = {str(i): body for i, body in enumerate(batch)}
        for _ in range(ATTEMPTS):
            response = self._sqs.send_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": entry_id, "MessageBody": body} for entry_id, body in pending.items()],
            )
            failed = {f["Id"] for f in response.get("Failed", [])}
            pending = {entry_id: body for entry_id, body in pending.items() if entry_id in failed}
            if not pending:
                return len(batch)
        raise DbmailError(f"SQS refused {len(pending)} of {len(batch)} messages after {ATTEMPTS} attempts")


class SendQueue:
    """The send queue's two lanes: bulk and priority (small or urgent requests), each its own SQS
    queue and event source, so that no priority email waits behind a bulk send's backlog."""

    def __init__(self, sqs_client, queue_url: str, priority_url: str):
        self.bulk = SqsQueue(sqs_client, queue_url)
        self.priority = SqsQueue(sqs_client, priority_url)

    def lane(self, email: QueuedEmail) -> SqsQueue:
        return self.priority if email.priority else self.bulk

    def enqueue(self, emails: Iterable[QueuedEmail]) -> int:
        """Queue every email in its lane (10 to a call)."""
        by_lane: dict[bool, list[str]] = {False: [], True: []}
        for email in emails:
            by_lane[email.priority].append(email.to_body())
        return self.bulk.send_bodies(by_lane[False]) + self.priority.send_bodies(by_lane[True])

    def enqueue_later(self, email: QueuedEmail, delay_seconds: int) -> None:
        """Queue one email again after a delay (a retry), in its lane and with its content: a new
        message, so the failed try does not count toward the queue's maxReceiveCount."""
        self.lane(email).send_later(email.to_body(), delay_seconds)

    def backlog(self) -> int:
        """Messages waiting, delayed or in flight in either lane: while there are any, a queued
        email may simply not have had its turn yet."""
        return self.bulk.backlog() + self.priority.backlog()


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
