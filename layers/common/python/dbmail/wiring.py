"""The composition root: services built from the settings they are given, on first use (never
at import), and cached per settings, since the local runner runs every function in one process
(each with its own settings) and the CLI runs with the website's."""

from __future__ import annotations

from functools import lru_cache, partial

import boto3

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
from dbmail.outgoing.store import Store

CACHED = 8  # settings per process: the four functions', the website's, and a test's


@lru_cache(maxsize=CACHED)
def send_queue(settings: Settings) -> SendQueue:
    return SendQueue(boto3.session.Session().client("sqs", region_name=settings.region), settings.send_queue_url)


@lru_cache(maxsize=CACHED)
def expander(settings: Settings) -> Expander:
    return Expander(store=Store(settings), queue=send_queue(settings), settings=settings)


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
def email_sender(settings: Settings) -> EmailSender:
    return EmailSender(
        store=Store(settings),
        transport=make_transport(settings),
        queue=send_queue(settings),
        settings=settings,
        suppressions=suppression_store(settings),
    )


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
    return Expirer(expander=expander(settings), transport=make_transport(settings))


FACTORIES = (
    send_queue,
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
