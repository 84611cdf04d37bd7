"""The composition root: services built from the settings they are given, on first use (never
at import), and cached per settings, since the local runner runs every function in one process
(each with its own settings) and the CLI runs with the website's.

Each factory imports what it builds: a function's cold start loads its own services only (the
send function never imports the inbound router, the expire sweep never the unsubscribe page).
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import TYPE_CHECKING

from dbmail.core import aws  # botocore at cold start, as every function's first record needs it
from dbmail.core.settings import Settings

if TYPE_CHECKING:
    from dbmail.core.transports import Transport
    from dbmail.feedback.one_click import OneClickUnsubscribe
    from dbmail.feedback.recorder import FeedbackRecorder
    from dbmail.feedback.sendgrid_webhook import SendGridEvents
    from dbmail.feedback.store import SuppressionStore
    from dbmail.inbound.router import InboundRouter
    from dbmail.outgoing.archive import Archive
    from dbmail.outgoing.expand import Expander
    from dbmail.outgoing.expire import Expirer
    from dbmail.outgoing.queue import SendQueue
    from dbmail.outgoing.send import EmailSender
    from dbmail.outgoing.send_rate import SendBudget

CACHED = 8  # settings per process: the four functions', the website's, and a test's


@lru_cache(maxsize=CACHED)
def send_queue(settings: Settings) -> SendQueue:
    from dbmail.outgoing.queue import SendQueue

    sqs = aws.client("sqs", settings.region)
    return SendQueue(sqs, settings.send_queue_url, settings.priority_send_queue_url)


@lru_cache(maxsize=CACHED)
def expander(settings: Settings) -> Expander:
    from dbmail.core.models import open_connections
    from dbmail.outgoing.expand import Expander
    from dbmail.outgoing.queue import SqsQueue
    from dbmail.outgoing.store import Store

    chunk_queue = SqsQueue(aws.client("sqs", settings.region), settings.expand_chunk_queue_url)
    store = Store(settings)
    open_connections(store.models.TextOfEmail)  # before a batch's writes use it from several threads
    return Expander(store=store, queue=send_queue(settings), chunk_queue=chunk_queue, settings=settings)


@lru_cache(maxsize=CACHED)
def suppression_store(settings: Settings) -> SuppressionStore:
    from dbmail.feedback.store import SuppressionStore

    return SuppressionStore(settings)


@lru_cache(maxsize=CACHED)
def feedback_recorder(settings: Settings) -> FeedbackRecorder:
    from dbmail.feedback.recorder import FeedbackRecorder
    from dbmail.feedback.store import FeedbackStore

    return FeedbackRecorder(emails=FeedbackStore(settings), suppressions=suppression_store(settings), settings=settings)


@lru_cache(maxsize=CACHED)
def one_click_unsubscribe(settings: Settings) -> OneClickUnsubscribe:
    from dbmail.feedback.one_click import OneClickUnsubscribe

    return OneClickUnsubscribe(suppressions=suppression_store(settings), secret=settings.unsubscribe_secret)


@lru_cache(maxsize=CACHED)
def sendgrid_events(settings: Settings) -> SendGridEvents:
    from dbmail.feedback.sendgrid_webhook import SendGridEvents, SignatureVerifier
    from dbmail.outgoing.queue import SqsQueue

    sqs = aws.client("sqs", settings.region)
    return SendGridEvents(
        SignatureVerifier(settings.sendgrid_webhook_public_key), SqsQueue(sqs, settings.feedback_queue_url)
    )


@lru_cache(maxsize=CACHED)
def send_budget(settings: Settings) -> SendBudget:
    """The fleet's send rate as this container draws from it (the SES quota read here, at cold start)."""
    from dbmail.outgoing.send_rate import FleetBudget, Unlimited, send_rate
    from dbmail.outgoing.send_rate_store import DynamoBucket, ses_quota

    rate = send_rate(
        settings.max_send_rate,
        settings.provider,
        lambda: ses_quota(aws.client("sesv2", settings.region)),
    )
    if rate is None:
        return Unlimited()
    dynamodb = aws.client("dynamodb", settings.region, endpoint_url=settings.dynamodb_endpoint)
    return FleetBudget(DynamoBucket(dynamodb, settings.send_rate_table, settings.provider), rate)


@lru_cache(maxsize=CACHED)
def email_sender(settings: Settings) -> EmailSender:
    from dbmail.core.models import open_connections
    from dbmail.core.transports import make_transport
    from dbmail.outgoing.send import EmailSender
    from dbmail.outgoing.store import Store

    sender = EmailSender(
        store=Store(settings),
        transport=make_transport(settings),
        queue=send_queue(settings),
        settings=settings,
        suppressions=suppression_store(settings),
        budget=send_budget(settings),
    )
    # before the batch's threads use them (an email rendered again reads EmailRequest: rare)
    open_connections(sender.store.models.TextOfEmail, sender.store.models.MessageRequest, sender.suppressions.model)
    return sender


@lru_cache(maxsize=CACHED)
def inbound_router(settings: Settings) -> InboundRouter:
    from dbmail.core.transports import SesTransport, ses_client
    from dbmail.inbound.router import InboundRouter
    from dbmail.inbound.store import InboundStore

    settings.require_inbound()
    return InboundRouter(
        store=InboundStore(settings),
        s3=aws.client("s3", settings.region),
        transport=SesTransport(ses_client(settings.region), settings.configuration_set or None),
        settings=settings,
        feedback=partial(feedback_recorder, settings),
        budget=send_budget(settings),
    )


def test_send_transport() -> Transport:
    """A test send's provider: the send function's, from its settings in the environment (the
    provider, SendGrid's key, the SES configuration set), since the website's read no secret."""
    from dbmail.core.transports import make_transport

    return make_transport(Settings.for_function("send"))


@lru_cache(maxsize=CACHED)
def archive(settings: Settings) -> Archive:
    from dbmail.outgoing.archive import Archive
    from dbmail.outgoing.store import Store

    return Archive(store=Store(settings), settings=settings)


@lru_cache(maxsize=CACHED)
def expirer(settings: Settings) -> Expirer:
    from dbmail.core.transports import make_transport
    from dbmail.outgoing.expire import Expirer
    from dbmail.outgoing.send_rate import metered

    return Expirer(expander=expander(settings), transport=metered(make_transport(settings), send_budget(settings)))


FACTORIES = (
    send_queue,
    send_budget,
    expander,
    email_sender,
    inbound_router,
    expirer,
    suppression_store,
    feedback_recorder,
    one_click_unsubscribe,
    sendgrid_events,
    archive,
)


def clear() -> None:
    """Forget every service built (tests: each gets fresh ones)."""
    for factory in FACTORIES:
        factory.cache_clear()
