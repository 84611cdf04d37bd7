"""The composition root: services built from the settings they are given, on first use (never
at import), and cached per settings, since the local runner runs every function in one process
(each with its own settings) and the CLI runs with the website's."""

from __future__ import annotations

from functools import lru_cache

import boto3

from dbmail.core.settings import Settings
from dbmail.core.transports import SesTransport, make_transport
from dbmail.inbound.router import InboundRouter
from dbmail.inbound.store import InboundStore
from dbmail.outgoing.expand import Expander
from dbmail.outgoing.expire import Expirer
from dbmail.outgoing.queue import SendQueue
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
def email_sender(settings: Settings) -> EmailSender:
    return EmailSender(
        store=Store(settings), transport=make_transport(settings), queue=send_queue(settings), settings=settings
    )


@lru_cache(maxsize=CACHED)
def inbound_router(settings: Settings) -> InboundRouter:
    settings.require_inbound()
    session = boto3.session.Session()
    return InboundRouter(
        store=InboundStore(settings),
        s3=session.client("s3", region_name=settings.region),
        transport=SesTransport(session.client("sesv2", region_name=settings.region)),
        settings=settings,
    )


@lru_cache(maxsize=CACHED)
def expirer(settings: Settings) -> Expirer:
    return Expirer(expander=expander(settings), transport=make_transport(settings))


FACTORIES = (send_queue, expander, email_sender, inbound_router, expirer)


def clear() -> None:
    """Forget every service built (tests: each gets fresh ones)."""
    for factory in FACTORIES:
        factory.cache_clear()
