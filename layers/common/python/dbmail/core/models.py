"""PynamoDB models: the contract the website writes against (see docs/schema.md).

Table names come from settings, so the model classes here are unbound bases and
``bind_models`` makes concrete subclasses for one deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from botocore.config import Config
from pynamodb.attributes import (
    Attribute,
    BooleanAttribute,
    JSONAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    NumberSetAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
)
from pynamodb.constants import STRING
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model

from dbmail.core.aws import POOL_CONNECTIONS, USER_AGENT
from dbmail.core.clock import format_datetime, parse_datetime
from dbmail.core.settings import Settings
from dbmail.core.statuses import EmailStatus, InboundStatus, RequestStatus


class ISODateTimeAttribute(Attribute[datetime]):
    """A datetime stored as an ISO 8601 string; accepts any ISO form a raw writer uses."""

    attr_type = STRING

    def serialize(self, value: datetime) -> str:
        return format_datetime(value)

    def deserialize(self, value: str) -> datetime:
        return parse_datetime(value)


class Person(MapAttribute):
    """A user as the website knows them (the request's creator)."""

    user_id = NumberAttribute(null=True)
    username = UnicodeAttribute(null=True)
    email = UnicodeAttribute(null=True)
    first_name = UnicodeAttribute(null=True)
    last_name = UnicodeAttribute(null=True)


def status_index(name: str, time_attribute: str, doc: str) -> type[GlobalSecondaryIndex]:
    """A ``ByStatus`` index class: items by ``status``, then by the time in ``time_attribute``
    (every attribute projected). The request and inbound tables each have one."""
    meta = type("Meta", (), {"index_name": "ByStatus", "projection": AllProjection()})
    attributes = {"status": UnicodeAttribute(hash_key=True), time_attribute: ISODateTimeAttribute(range_key=True)}
    return type(name, (GlobalSecondaryIndex,), {"__doc__": doc, "Meta": meta, **attributes})


ByStatusIndex = status_index(
    "ByStatusIndex", "created_at", "Requests by status and creation time: scheduled, stuck and recent requests."
)
InboundByStatusIndex = status_index(
    "InboundByStatusIndex", "received_at", "Inbound messages by status and arrival: failed or cut-off ones to retry."
)


class ByMessageRefIndex(GlobalSecondaryIndex):
    """Emails by ``message_ref``, the digest in their Message-ID: how provider feedback finds its
    email. Keys only (the table's keys come with them); eventually consistent, like every GSI."""

    class Meta:
        index_name = "ByMessageRef"
        projection = KeysOnlyProjection()

    message_ref = UnicodeAttribute(hash_key=True)


class MessageRequestBase(Model):
    """The original's MessageRequest. Written last, after all its recipients."""

    request_id = UnicodeAttribute(hash_key=True)
    subject = UnicodeAttribute(null=True)
    msgtext = UnicodeAttribute(null=True)
    special_headers = JSONAttribute(null=True)
    sendto_fn_name = UnicodeAttribute(null=True)
    sender = UnicodeAttribute(null=True)
    creator = Person(null=True)
    created_at = ISODateTimeAttribute()
    processed_by = ISODateTimeAttribute(null=True)
    sent_by = ISODateTimeAttribute(null=True)
    priority_level = NumberAttribute(null=True)
    public = BooleanAttribute(default=False)
    message_vars = JSONAttribute(null=True)
    template_dialect = UnicodeAttribute(null=True)  # "django" | "jinja2"; absent: detected
    recipient_count = NumberAttribute(null=True)
    status = UnicodeAttribute(default=RequestStatus.QUEUED)
    error = UnicodeAttribute(null=True)
    email_count = NumberAttribute(null=True)
    skipped_count = NumberAttribute(null=True)
    render_failed_count = NumberAttribute(null=True)
    render_seconds = NumberAttribute(null=True)
    resent_count = NumberAttribute(null=True)
    expand_cursor = UnicodeAttribute(null=True)
    # a bulk request's chunked expansion (outgoing/expand.py): its plan, and each chunk's progress
    chunk_ends = ListAttribute(of=UnicodeAttribute, null=True)  # the last recipient_key of each chunk
    chunk_leases = MapAttribute(null=True)  # chunk number -> lease_until (ISO), from its first start
    chunks_done = NumberSetAttribute(null=True)  # chunks whose counts were added
    chunks_queued_at = ISODateTimeAttribute(null=True)  # when chunk messages were last queued
    lease_owner = UnicodeAttribute(null=True)
    lease_until = ISODateTimeAttribute(null=True)
    processed_at = ISODateTimeAttribute(null=True)
    settled_at = ISODateTimeAttribute(null=True)  # every email final, as the sweep last saw
    failure_reported_at = ISODateTimeAttribute(null=True)

    by_status = ByStatusIndex()


class EmailRequestBase(Model):
    """One recipient user of a request (the original's EmailRequest plus the user's data)."""

    request_id = UnicodeAttribute(hash_key=True)
    recipient_key = UnicodeAttribute(range_key=True)
    user_id = NumberAttribute(null=True)
    username = UnicodeAttribute(null=True)
    email = UnicodeAttribute(null=True)
    first_name = UnicodeAttribute(null=True)
    last_name = UnicodeAttribute(null=True)
    guardian_name = UnicodeAttribute(null=True)
    guardian_email = UnicodeAttribute(null=True)
    emergency_name = UnicodeAttribute(null=True)
    emergency_email = UnicodeAttribute(null=True)
    vars = JSONAttribute(null=True)


class TextOfEmailBase(Model):
    """One rendered email to one address. ``msgtext`` is cleared once sent."""

    request_id = UnicodeAttribute(hash_key=True)
    email_key = UnicodeAttribute(range_key=True)
    recipient_key = UnicodeAttribute()
    user_id = NumberAttribute(null=True)
    send_to = UnicodeAttribute()
    send_from = UnicodeAttribute()
    subject = UnicodeAttribute(null=True)
    msgtext = UnicodeAttribute(null=True)
    created_at = ISODateTimeAttribute()
    sent = ISODateTimeAttribute(null=True)
    sent_by = ISODateTimeAttribute(null=True)
    tries = NumberAttribute(default=0)  # transient failures; three make the email failed
    throttles = NumberAttribute(null=True)  # provider throttles: retried later, never counted as tries
    resends = NumberAttribute(null=True)
    queued_at = ISODateTimeAttribute(null=True)  # when it was last put on the send queue
    status = UnicodeAttribute(default=EmailStatus.QUEUED)
    error = UnicodeAttribute(null=True)
    message_id = UnicodeAttribute(null=True)
    provider_message_id = UnicodeAttribute(null=True)
    claim_id = UnicodeAttribute(null=True)
    claimed_until = ISODateTimeAttribute(null=True)
    # provider feedback (docs/schema.md): written at claim time, before the provider is called
    message_ref = UnicodeAttribute(null=True)  # the 32-hex digest of message_id
    delivered_at = ISODateTimeAttribute(null=True)
    bounce_type = UnicodeAttribute(null=True)  # permanent | transient | undetermined
    feedback = UnicodeAttribute(null=True)  # the provider's diagnostic, addresses redacted
    feedback_at = ISODateTimeAttribute(null=True)  # when the event that set the status happened
    feedback_events = UnicodeSetAttribute(null=True)  # ids of the events already applied

    by_message_ref = ByMessageRefIndex()


class SuppressionBase(Model):
    """An address dbmail sends nothing to any more: the website's contract (docs/schema.md)."""

    address = UnicodeAttribute(hash_key=True)  # the bare address, lower-cased
    reason = UnicodeAttribute()  # bounce | complaint | unsubscribe | operator | soft_bounce
    source = UnicodeAttribute()  # ses | sendgrid | dsn | unsubscribe | cli
    detail = UnicodeAttribute(null=True)
    created_at = ISODateTimeAttribute()
    user_id = NumberAttribute(null=True)
    request_id = UnicodeAttribute(null=True)


class SoftBounceBase(Model):
    """One transient bounce of an address, kept for the soft-bounce window (``expires_at`` is
    the table's TTL): the tally that suppresses an address after DBMAIL_SOFT_BOUNCE_LIMIT."""

    address = UnicodeAttribute(hash_key=True)
    event_id = UnicodeAttribute(range_key=True)
    occurred_at = ISODateTimeAttribute()
    expires_at = NumberAttribute()  # epoch seconds


class EmailListBase(Model):
    """The original's EmailList: a regex on the local part and the handler that decides."""

    list_id = UnicodeAttribute(hash_key=True)
    regex = UnicodeAttribute()
    seq = NumberAttribute()
    handler = UnicodeAttribute()
    subject_prefix = UnicodeAttribute(null=True)
    admin_hold = BooleanAttribute(default=False)
    cc_all = BooleanAttribute(default=False)
    from_email = UnicodeAttribute(null=True)
    description = UnicodeAttribute(null=True)
    accept_automatic = BooleanAttribute(default=False)  # class/section lists take automatic mail too


class PlainRedirectBase(Model):
    """The original's PlainRedirect: a local part forwarded to a comma-separated list."""

    original = UnicodeAttribute(hash_key=True)  # lower case
    destination = UnicodeAttribute()


class DirectoryPerson(MapAttribute):
    name = UnicodeAttribute(null=True)
    email = UnicodeAttribute()


class DirectorySection(MapAttribute):
    index = NumberAttribute()
    emailcode = UnicodeAttribute()
    students = ListAttribute(of=DirectoryPerson, default=list)


class DirectoryEntryBase(Model):
    """What the website publishes for routing: ``user#<username>``, ``email#<address>`` (which
    user has it) and ``class#<id>`` entries."""

    entry_key = UnicodeAttribute(hash_key=True)
    username = UnicodeAttribute(null=True)
    email = UnicodeAttribute(null=True)
    first_name = UnicodeAttribute(null=True)
    last_name = UnicodeAttribute(null=True)
    is_teacher = BooleanAttribute(null=True)
    class_id = NumberAttribute(null=True)
    emailcode = UnicodeAttribute(null=True)
    program_name = UnicodeAttribute(null=True)
    directors_email = UnicodeAttribute(null=True)
    teachers = ListAttribute(of=DirectoryPerson, null=True)
    sections = ListAttribute(of=DirectorySection, null=True)


class InboundMessageBase(Model):
    """One message SES received for a chapter domain; the raw MIME stays in S3 at ``s3_key``."""

    message_id = UnicodeAttribute(hash_key=True)
    received_at = ISODateTimeAttribute()
    status = UnicodeAttribute(default=InboundStatus.RECEIVED)
    s3_key = UnicodeAttribute()
    recipients = ListAttribute(of=UnicodeAttribute, default=list)
    sender_domain = UnicodeAttribute(null=True)
    subject = UnicodeAttribute(null=True)
    list_id = UnicodeAttribute(null=True)
    forwarded_parts = UnicodeSetAttribute(null=True)
    verdicts = MapAttribute(null=True)
    detail = UnicodeAttribute(null=True)
    attempts = NumberAttribute(default=0)
    attempted_at = ISODateTimeAttribute(null=True)  # the last attempt's start

    by_status = InboundByStatusIndex()


def get_or_none(model: type[Model], hash_key, range_key=None) -> Model | None:
    """A strongly consistent read; None when the item does not exist."""
    try:
        return model.get(hash_key, range_key, consistent_read=True)
    except model.DoesNotExist:
        return None


@lru_cache(maxsize=16)
def _item_fields(model: type[Model]) -> dict[str, Attribute]:
    return dict(model.get_attributes())


def item_of(model: type[Model], attributes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The DynamoDB item ``model(**attributes).serialize()`` gives, without the model: building
    and serializing one costs about 50 microseconds, most of an expansion's own CPU per email.
    Defaults fill what is not given; a None is left out; a required attribute missing or an
    unknown one is an error, as in PynamoDB."""
    fields = _item_fields(model)
    unknown = attributes.keys() - fields.keys()
    if unknown:
        raise ValueError(f"{model.__name__} has no attributes {sorted(unknown)}")
    item: dict[str, dict[str, Any]] = {}
    for name, attribute in fields.items():
        if name in attributes:
            value = attributes[name]
        else:
            value = attribute.default() if callable(attribute.default) else attribute.default
        serialized = None if value is None else attribute.serialize(value)
        if serialized is None:
            if not attribute.null:
                raise ValueError(f"{model.__name__}.{name} cannot be None")
            continue
        item[attribute.attr_name] = {attribute.attr_type: serialized}
    return item


# What PynamoDB's clients are created with, beside its own options: the fixed User-Agent.
CLIENT_DEFAULTS = Config(user_agent=USER_AGENT)


def open_connections(*models: type[Model]) -> None:
    """Create the models' botocore clients now, with CLIENT_DEFAULTS. PynamoDB creates one on a
    model's first use, and threads that first use a model at once (a batch delivered
    concurrently) would each create their own, tens of milliseconds of CPU apiece. Each has a
    pool of POOL_CONNECTIONS (the models' Meta.max_pool_connections)."""
    for model in models:
        connection = model._get_connection().connection
        connection.session.set_default_client_config(CLIENT_DEFAULTS)  # PynamoDB's options win
        connection.client  # noqa: B018 (the property creates the client)


@dataclass(frozen=True)
class BoundModels:
    MessageRequest: type[MessageRequestBase]
    EmailRequest: type[EmailRequestBase]
    TextOfEmail: type[TextOfEmailBase]
    EmailList: type[EmailListBase] | None = None
    PlainRedirect: type[PlainRedirectBase] | None = None
    DirectoryEntry: type[DirectoryEntryBase] | None = None
    InboundMessage: type[InboundMessageBase] | None = None
    Suppression: type[SuppressionBase] | None = None
    SoftBounce: type[SoftBounceBase] | None = None


def _bind(base: type[Model], table_name: str, settings: Settings) -> type[Model]:
    meta = type(
        "Meta",
        (),
        {
            "table_name": table_name,
            "region": settings.region,
            "host": settings.dynamodb_endpoint,
            "max_retry_attempts": 5,
            "max_pool_connections": POOL_CONNECTIONS,
        },
    )
    return type(base.__name__.removesuffix("Base"), (base,), {"Meta": meta})


@lru_cache(maxsize=4)
def bind_models(settings: Settings) -> BoundModels:
    """Concrete model classes for the tables named in ``settings`` (cached per settings)."""
    inbound = {}
    if settings.inbound_table:
        inbound = {
            "EmailList": _bind(EmailListBase, settings.emaillist_table, settings),
            "PlainRedirect": _bind(PlainRedirectBase, settings.redirect_table, settings),
            "DirectoryEntry": _bind(DirectoryEntryBase, settings.directory_table, settings),
            "InboundMessage": _bind(InboundMessageBase, settings.inbound_table, settings),
        }
    feedback = {}
    if settings.suppression_table:
        feedback["Suppression"] = _bind(SuppressionBase, settings.suppression_table, settings)
    if settings.soft_bounce_table:
        feedback["SoftBounce"] = _bind(SoftBounceBase, settings.soft_bounce_table, settings)
    return BoundModels(
        MessageRequest=_bind(MessageRequestBase, settings.request_table, settings),
        EmailRequest=_bind(EmailRequestBase, settings.recipient_table, settings),
        TextOfEmail=_bind(TextOfEmailBase, settings.email_table, settings),
        **inbound,
        **feedback,
    )
