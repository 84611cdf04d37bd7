"""The composition root: services built once per process from settings, on first use (never at import)."""

from __future__ import annotations

from functools import lru_cache

import boto3

from dbmail.core.settings import get_settings
from dbmail.core.transports import SesTransport, make_transport
from dbmail.core.unsubscribe import check_secret
from dbmail.inbound.router import InboundRouter
from dbmail.inbound.store import InboundStore
from dbmail.outgoing.expand import Expander
from dbmail.outgoing.expire import Expirer
from dbmail.outgoing.queue import SendQueue
from dbmail.outgoing.send import EmailSender
from dbmail.outgoing.store import Store


@lru_cache(maxsize=1)
def send_queue() -> SendQueue:
    settings = get_settings()
    return SendQueue(boto3.session.Session().client("sqs", region_name=settings.region), settings.send_queue_url)


@lru_cache(maxsize=1)
def expander() -> Expander:
    settings = get_settings()
    return Expander(store=Store(settings), queue=send_queue(), settings=settings)


@lru_cache(maxsize=1)
def email_sender() -> EmailSender:
    settings = get_settings()
    check_secret(settings.unsubscribe_secret)  # fail at start-up, not on the first email
    return EmailSender(store=Store(settings), transport=make_transport(settings), queue=send_queue(), settings=settings)


@lru_cache(maxsize=1)
def inbound_router() -> InboundRouter:
    settings = get_settings().require_inbound()
    session = boto3.session.Session()
    return InboundRouter(
        store=InboundStore(settings),
        s3=session.client("s3", region_name=settings.region),
        transport=SesTransport(session.client("sesv2", region_name=settings.region)),
        settings=settings,
    )


@lru_cache(maxsize=1)
def expirer() -> Expirer:
    return Expirer(expander=expander(), transport=make_transport(get_settings()))
