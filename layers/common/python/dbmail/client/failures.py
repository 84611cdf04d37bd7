"""Who did not get a request's mail, and why: every email that bounced, drew a complaint, was
suppressed, failed or expired, with what the provider or dbmail said about it. This is the
original's ``tries > 3`` query done properly: every final status that is not a delivery."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dbmail.core.errors import RequestInvalid
from dbmail.core.settings import Settings, website_settings
from dbmail.core.statuses import EmailStatus
from dbmail.outgoing.store import Store

# In the order they are listed: the ones a person can do something about first.
NOT_RECEIVED = (
    EmailStatus.BOUNCED,
    EmailStatus.COMPLAINED,
    EmailStatus.SUPPRESSED,
    EmailStatus.FAILED,
    EmailStatus.EXPIRED,
)
FIELDS = [
    "email_key",
    "send_to",
    "user_id",
    "status",
    "error",
    "tries",
    "bounce_type",
    "feedback",
    "feedback_at",
    "sent",
]


@dataclass(frozen=True)
class Failure:
    """One email that did not get through. ``why`` is the sentence for a person; the other fields
    are what it is made of (``diagnostic`` is the provider's, with addresses redacted)."""

    email_key: str
    send_to: str
    user_id: int | None
    status: str
    why: str
    bounce_type: str | None = None
    diagnostic: str | None = None
    error: str | None = None
    tries: int = 0
    at: str | None = None  # when it happened: the provider's event, else the send

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _why(email) -> str:
    status, tries = email.status, int(email.tries or 0)
    if status == EmailStatus.BOUNCED:
        kind = email.bounce_type or "undetermined"
        return f"bounced ({kind})" + (f": {email.feedback}" if email.feedback else "")
    if status == EmailStatus.COMPLAINED:
        return "complained: the recipient marked it as spam" + (f" ({email.feedback})" if email.feedback else "")
    if status == EmailStatus.SUPPRESSED:
        return email.error or "suppressed: the address is on the suppression list"
    if status == EmailStatus.FAILED:
        attempts = f"after {tries} {'try' if tries == 1 else 'tries'}" if tries else "refused at once"
        return f"failed {attempts}: {email.error or 'no error recorded'}"
    return f"expired: {email.error or 'not sent before its deadline'}"


def _failure(email) -> Failure:
    when = email.feedback_at or email.sent
    return Failure(
        email_key=email.email_key,
        send_to=email.send_to,
        user_id=int(email.user_id) if email.user_id is not None else None,
        status=str(email.status),
        why=_why(email),
        bounce_type=email.bounce_type,
        diagnostic=email.feedback,
        error=email.error,
        tries=int(email.tries or 0),
        at=when.isoformat() if when else None,
    )


def request_failures(request_id: str, *, settings: Settings | None = None, store: Store | None = None) -> list[Failure]:
    """Every email of the request that did not get the mail, bounced first, then complained,
    suppressed, failed and expired, each in email_key order. Raises RequestInvalid for an unknown id."""
    settings = settings or website_settings()
    store = store or Store(settings)
    if store.get_request(request_id) is None:
        raise RequestInvalid(f"no request {request_id!r}")
    found = [_failure(email) for email in store.iter_emails(request_id, FIELDS, NOT_RECEIVED)]
    order = {status: index for index, status in enumerate(NOT_RECEIVED)}
    return sorted(found, key=lambda failure: (order[failure.status], failure.email_key))
