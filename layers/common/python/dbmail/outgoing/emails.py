"""What every TextOfEmail carries wherever it is handled (expansion, send, feedback, the CLI):
its reference and Message-ID, and the rule for when mail may no longer go out. Apart from
expansion so that the send path never loads the template engine to compute them."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta


def message_ref_for(request_id: str, key: str) -> str:
    """The email's 32-hex reference: in its Message-ID, its VERP envelope sender and the
    provider's feedback (TextOfEmail.message_ref)."""
    return hashlib.sha256(f"{request_id}/{key}".encode()).hexdigest()[:32]


def message_id_for(request_id: str, key: str, send_from: str) -> str:
    """A stable RFC 5322 Message-ID, so a receiver can recognise a repeated delivery."""
    domain = send_from.rpartition("@")[2].rstrip(">").strip() or "dbmail.invalid"
    return f"<dbmail.{message_ref_for(request_id, key)}@{domain}>"


def expiry_reason(item, now: datetime, max_age: timedelta) -> str | None:
    """Why mail (a request or one of its emails: both carry created_at and sent_by) must not go
    out any more, or None. The original's rule: never late (sent_by), never older than the
    window (``max_age``, which is settings.max_age)."""
    if item.sent_by is not None and item.sent_by < now:
        return "sent_by deadline passed"
    return too_old(item, now, max_age)


def too_old(item, now: datetime, max_age: timedelta) -> str | None:
    """The window half of ``expiry_reason``: why ``item`` is past it, or None."""
    if item.created_at < now - max_age:
        return f"older than {max_age.days} days"
    return None
