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
    ``failed`` is final too, until an operator resends it (``dbmail resend``).

    After ``sent`` the provider's feedback moves an email on, never back: sent < delivered <
    bounced < complained (``FEEDBACK_RANK``). ``suppressed``: never sent, the address is on the
    suppression list (the reason is in ``error``)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    SUPPRESSED = "suppressed"
    FAILED = "failed"
    EXPIRED = "expired"


EmailStatus.FINAL = frozenset(
    {
        EmailStatus.SENT,
        EmailStatus.DELIVERED,
        EmailStatus.BOUNCED,
        EmailStatus.COMPLAINED,
        EmailStatus.SUPPRESSED,
        EmailStatus.FAILED,
        EmailStatus.EXPIRED,
    }
)
EmailStatus.OUTSTANDING = frozenset({EmailStatus.QUEUED, EmailStatus.PROCESSING})
# The statuses feedback may move a sent email through, lowest first: an event that would not
# move an email up (a delivery after its bounce, a repeat) leaves its status alone.
EmailStatus.FEEDBACK_RANK = {
    EmailStatus.SENT: 0,
    EmailStatus.DELIVERED: 1,
    EmailStatus.BOUNCED: 2,
    EmailStatus.COMPLAINED: 3,
}


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
    FEEDBACK = "feedback"  # a DSN to the bounces address, recorded on the emails it reports on
    NOT_FEEDBACK = "not_feedback"  # to the bounces address, but no DSN we can read (an auto-reply): dropped
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
        InboundStatus.FEEDBACK,
        InboundStatus.NOT_FEEDBACK,
    }
)
