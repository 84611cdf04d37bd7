"""The states a MessageRequest, a TextOfEmail and an inbound message move through (stored as strings)."""

from enum import StrEnum


class RequestStatus(StrEnum):
    """States of a MessageRequest. ``queued`` covers both 'new' and 'scheduled for later'."""

    QUEUED = "queued"
    PROCESSING = "processing"
    PROCESSED = "processed"
    FAILED = "failed"
    EXPIRED = "expired"


RequestStatus.FINAL = frozenset({RequestStatus.PROCESSED, RequestStatus.FAILED, RequestStatus.EXPIRED})


class EmailStatus(StrEnum):
    """States of a TextOfEmail. ``processing`` means a send holds the claim right now.
    ``failed`` is final too, until an operator resends it (``dbmail resend``)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"


EmailStatus.FINAL = frozenset({EmailStatus.SENT, EmailStatus.FAILED, EmailStatus.EXPIRED})
EmailStatus.OUTSTANDING = frozenset({EmailStatus.QUEUED, EmailStatus.PROCESSING})


class InboundStatus(StrEnum):
    """What became of one inbound message."""

    RECEIVED = "received"
    FORWARDED = "forwarded"
    HELD = "held"
    RELEASED = "released"
    REJECTED = "rejected"
    DROPPED = "dropped"  # virus, spam (when dropping), or a forwarding loop
    UNDELIVERABLE = "undeliverable"  # no rule sent it
    TOO_LARGE = "too_large"
    FAILED = "failed"  # an error; the raw message is in S3 and `dbmail inbound reprocess` retries it


InboundStatus.FINAL = frozenset(
    {
        InboundStatus.FORWARDED,
        InboundStatus.HELD,
        InboundStatus.RELEASED,
        InboundStatus.REJECTED,
        InboundStatus.DROPPED,
        InboundStatus.UNDELIVERABLE,
        InboundStatus.TOO_LARGE,
    }
)
