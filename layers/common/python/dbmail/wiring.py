"""The composition root: services built from the settings they are given, on first use (never
at import), and cached per settings, since the local runner runs every function in one process
(each with its own settings) and the CLI runs with the website's."""

from __future__ import annotations

from functools import lru_cache, partial

import boto3

from dbmail.core.models import open_connections
from dbmail.core.settings import Settings
from dbmail.core.transports import SesTransport, Transport, make_transport
from dbmail.feedback.one_click import OneClickUnsubscribe
from dbmail.feedback.recorder import FeedbackRecorder
from dbmail.feedback.sendgrid_webhook import SendGridEvents, SignatureVerifier
from dbmail.feedback.store import FeedbackStore, SuppressionStore
from dbmail.inbound.router import InboundRouter
from dbmail.inbound.store import InboundStore
from dbmail.outgoing.archive import Archive
from dbmail.outgoing.expand import Expander
from dbmail.outgoing.expire import Expirer
from dbmail.outgoing.queue import SendQueue, SqsQueue
from dbmail.outgoing.send import EmailSender
from dbmail.outgoing.send_rate import FleetBudget, SendBudget, Unlimited, metered, send_rate
from dbmail.outgoing.send_rate_store import DynamoBucket, ses_quota
from dbmail.outgoing.store import Store

CACHED = 8  # settings per process: the four functions', the website's, and a test's


@lru_cache(maxsize=CACHED)
def send_queue(settings: Settings) -> SendQueue:
    sqs = boto3.session.Session().client("sqs", region_name=settings.region)
    return SendQueue(sqs, settings.send_queue_url, settings.priority_send_queue_url)


@lru_cache(maxsize=CACHED)
def expander(settings: Settings) -> Expander:
    chunk_queue = SqsQueue(
        boto3.session.Session().client("sqs", region_name=settings.region), settings.expand_chunk_queue_url
    )
    return Expander(store=Store(settings), queue=send_queue(settings), chunk_queue=chunk_queue, settings=settings)


@lru_cache(maxsize=CACHED)
def suppression_store(settings: Settings) -> SuppressionStore:
    return SuppressionStore(settings)


@lru_cache(maxsize=CACHED)
def feedback_recorder(settings: Settings) -> FeedbackRecorder:
    return FeedbackRecorder(emails=FeedbackStore(settings), suppressions=suppression_store(settings), settings=settings)


@lru_cache(maxsize=CACHED)
def one_click_unsubscribe(settings: Settings) -> OneClickUnsubscribe:
    return OneClickUnsubscribe(suppressions=suppression_store(settings), secret=settings.unsubscribe_secret)


@lru_cache(maxsize=CACHED)
def sendgrid_events(settings: Settings) -> SendGridEvents:
    sqs = boto3.session.Session().client("sqs", region_name=settings.region)
    return SendGridEvents(
        SignatureVerifier(settings.sendgrid_webhook_public_key), SqsQueue(sqs, settings.feedback_queue_url)
    )


@lru_cache(maxsize=CACHED)
def send_budget(settings: Settings) -> SendBudget:
    """The fleet's send rate as this container draws from it (the SES quota read here, at cold start)."""
    session = boto3.session.Session()
    rate = send_rate(
        settings.max_send_rate,
        settings.provider,
        lambda: ses_quota(session.client("sesv2", region_name=settings.region)),
    )
    if rate is None:
        return Unlimited()
    dynamodb = session.client("dynamodb", region_name=settings.region, endpoint_url=settings.dynamodb_endpoint)
    return FleetBudget(DynamoBucket(dynamodb, settings.send_rate_table, settings.provider), rate)


@lru_cache(maxsize=CACHED)
def email_sender(settings: Settings) -> EmailSender:
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
    settings.require_inbound()
    session = boto3.session.Session()
    return InboundRouter(
        store=InboundStore(settings),
        s3=session.client("s3", region_name=settings.region),
        transport=SesTransport(
            session.client("sesv2", region_name=settings.region), settings.configuration_set or None
        ),
        settings=settings,
        feedback=partial(feedback_recorder, settings),
        budget=send_budget(settings),
    )


def test_send_transport() -> Transport:
    """A test send's provider: the send function's, from its settings in the environment (the
    provider, SendGrid's key, the SES configuration set), since the website's read no secret."""
    return make_transport(Settings.for_function("send"))


@lru_cache(maxsize=CACHED)
def archive(settings: Settings) -> Archive:
    return Archive(store=Store(settings), settings=settings)


@lru_cache(maxsize=CACHED)
def expirer(settings: Settings) -> Expirer:
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
