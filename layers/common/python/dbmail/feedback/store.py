"""DynamoDB access for feedback: the suppression list, the soft-bounce tally, and the feedback
fields of TextOfEmail. Every write is conditional, so a repeated event changes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from pynamodb.exceptions import DeleteError, PutError

from dbmail.core.clock import utcnow
from dbmail.core.errors import AddressInvalid, ConfigurationError
from dbmail.core.models import BoundModels, SuppressionBase, TextOfEmailBase, bind_models, get_or_none
from dbmail.core.settings import Settings
from dbmail.feedback.events import bare_address
from dbmail.outgoing.store import MAX_ERROR_CHARS, _update_if

REASONS = frozenset({"bounce", "complaint", "unsubscribe", "operator", "soft_bounce"})
SOURCES = frozenset({"ses", "sendgrid", "dsn", "unsubscribe", "cli"})
MAX_DETAIL_CHARS = 1000


def suppression_key(address: object) -> str:
    """The suppression table's key for ``address``: the bare address, lower-cased."""
    key = bare_address(address)
    if key is None:
        raise AddressInvalid(f"not an email address: {str(address)[:80]!r}")
    return key


def _conditional_failed(exc: Exception) -> bool:
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


class SuppressionStore:
    """The suppression list (SuppressionTable): one item per address nothing is sent to."""

    def __init__(self, settings: Settings, models: BoundModels | None = None):
        models = models or bind_models(settings)
        if models.Suppression is None:
            raise ConfigurationError("DBMAIL_SUPPRESSION_TABLE is not set: the suppression list is unknown")
        self.model: type[SuppressionBase] = models.Suppression

    def add(
        self,
        address: str,
        reason: str,
        source: str,
        detail: str | None = None,
        user_id: int | None = None,
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Suppress ``address``; True when newly added, False when it already was (the first
        entry, with its reason, is kept)."""
        if reason not in REASONS or source not in SOURCES:
            raise ValueError(f"unknown suppression reason {reason!r} or source {source!r}")
        item = self.model(
            suppression_key(address),
            reason=reason,
            source=source,
            detail=detail[:MAX_DETAIL_CHARS] if detail else None,
            created_at=now or utcnow(),
            user_id=user_id,
            request_id=request_id,
        )
        try:
            item.save(condition=self.model.address.does_not_exist())
        except PutError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def remove(self, address: str) -> bool:
        """Take ``address`` off the list; False if it was not on it."""
        try:
            self.model(suppression_key(address)).delete(condition=self.model.address.exists())
        except DeleteError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def get(self, address: str) -> SuppressionBase | None:
        return get_or_none(self.model, suppression_key(address))

    def get_many(self, addresses: Iterable[str]) -> dict[str, SuppressionBase]:
        """The entries of those of ``addresses`` on the list, by the address as given: strongly
        consistent, one BatchGetItem per 100 (the concurrent deliveries' lookups, made at once)."""
        wanted: dict[str, list[str]] = {}
        for address in addresses:
            wanted.setdefault(suppression_key(address), []).append(address)
        found = {}
        for entry in self.model.batch_get(list(wanted), consistent_read=True):
            found.update(dict.fromkeys(wanted[entry.address], entry))
        return found

    def is_suppressed(self, address: str) -> bool:
        return self.get(address) is not None

    def iter_all(self) -> Iterator[SuppressionBase]:
        return self.model.scan(page_size=500)


class FeedbackStore:
    """The email side of feedback: finding an email by its message_ref, recording an event on
    it, and the soft-bounce tally."""

    def __init__(self, settings: Settings, models: BoundModels | None = None):
        self.models = models or bind_models(settings)
        if self.models.SoftBounce is None:
            raise ConfigurationError("DBMAIL_SOFT_BOUNCE_TABLE is not set: soft bounces cannot be counted")

    def find_email(self, message_ref: str) -> TextOfEmailBase | None:
        """The email whose Message-ID holds ``message_ref`` (the index is eventually
        consistent: a just-claimed email may not be found yet), read in full."""
        Email = self.models.TextOfEmail
        for keys in Email.by_message_ref.query(message_ref, limit=1):
            return self.get_email(keys.request_id, keys.email_key)
        return None

    def get_email(self, request_id: str, email_key: str) -> TextOfEmailBase | None:
        return get_or_none(self.models.TextOfEmail, request_id, email_key)

    def apply_event(
        self,
        email: TextOfEmailBase,
        event_id: str,
        expected_status: str,
        occurred_at: datetime,
        *,
        status: str | None = None,
        delivered: bool = False,
        bounce_type: str | None = None,
        feedback: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Record event ``event_id`` on ``email`` (moving it to ``status``, if given) unless it
        was recorded already or the email's status is no longer ``expected_status``: False then."""
        Email = self.models.TextOfEmail
        actions = [Email.feedback_events.add({event_id})]
        if status is not None:
            actions += [Email.status.set(status), Email.feedback_at.set(occurred_at)]
        if delivered:
            actions.append(Email.delivered_at.set(occurred_at))
        if bounce_type is not None:
            actions.append(Email.bounce_type.set(bounce_type))
        if feedback is not None:
            actions.append(Email.feedback.set(feedback[:MAX_ERROR_CHARS]))
        if error is not None:
            actions.append(Email.error.set(error[:MAX_ERROR_CHARS]))
        condition = (Email.status == expected_status) & ~Email.feedback_events.contains(event_id)
        return _update_if(email, actions, condition)

    def count_soft_bounce(self, address: str, event_id: str, occurred_at: datetime, window: timedelta) -> int:
        """Tally one soft bounce of ``address`` (once per event id) and return how many it had
        within ``window`` before ``occurred_at``, this one included."""
        SoftBounce = self.models.SoftBounce
        key = suppression_key(address)
        item = SoftBounce(
            key, event_id, occurred_at=occurred_at, expires_at=int((occurred_at + window).timestamp()) + 1
        )
        try:
            item.save(condition=SoftBounce.event_id.does_not_exist())
        except PutError as exc:
            if not _conditional_failed(exc):
                raise
        since = occurred_at - window
        return sum(
            1
            for bounce in SoftBounce.query(key, consistent_read=True, filter_condition=SoftBounce.occurred_at > since)
            if bounce.occurred_at <= occurred_at
        )
