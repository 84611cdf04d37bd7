"""The local stack's moto server, with an outbox: every email SES accepts is also an .eml file.

Run as ``python -m dbmail_local.moto_server --port N --outbox DIR``. The outbox is filled on the
emulator side, so it sees exactly what any client (a handler, a test, the website) handed to SES.
SES v1 SendRawEmail and v2 SendEmail with Raw content both end in the SES backend's
``send_raw_email``; Simple sends end in ``send_email`` and are written as a composed message.
A send naming a configuration set gets SES's events (Send, then Delivery, Bounce or
Complaint per the SES mailbox simulator) on the set's SNS event destination (see ses_events.py).
It also fixes moto's SQS races (one message handed to several receivers at once, deleted
messages coming back, sent messages lost; see serialize_sqs_queues), gives moto's SQS a cheaper
clock (see speed_up_sqs_clock), and, for tests only, injects faults read from a JSON file given
with ``--faults FILE`` (SES v2 send errors, SQS duplicate deliveries; see FaultSpec). SES reports
its send quota, and with DBMAIL_LOCAL_SES_MAX_RATE set refuses sends above that rate as SES does
(see ses_quota.py).
"""

import argparse
import copy
import itertools
import json
import logging
import queue
import random
import signal
import smtplib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from moto.server import ThreadedMotoServer
from moto.ses.exceptions import ConfigurationSetDoesNotExist
from moto.ses.models import SESBackend, ses_backends
from moto.ses.responses import EmailResponse
from moto.sesv2.responses import SESV2Response
from moto.sns.models import sns_backends
from moto.sqs import models as sqs_models
from moto.sqs.models import Message, Queue, SQSBackend

from . import logs
from .ses_events import EventPublisher, SentMail
from .ses_quota import (
    COUNTS_FILE,
    THROTTLED_MESSAGE,
    SesRateLimit,
    limit_send_rate,
    rate_from_env,
    report_quota,
    wrap_ses_sends,
)
from .stack import write_atomically

log = logging.getLogger("dbmail_local.moto_server")  # also when run as __main__

RECEIVE_RECHECK_SECONDS = 0.2  # how soon a long poll sees a message whose visibility ended
FAULTS_RELOAD_SECONDS = 0.2  # how often the faults file's stat is checked for a change


class Outbox:
    """Writes each message to ``<dir>/<UTC timestamp>-<n>.eml``, atomically (write, then rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def write(self, raw: bytes) -> Path:
        with self._lock:
            number = next(self._numbers)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.directory / f"{stamp}-{number:06d}.eml"
        write_atomically(path, raw)
        return path


def _compose(source: str, subject: str, body: str, destinations: dict[str, list[str]]) -> bytes:
    """A MIME message for a Simple send (moto keeps only the HTML body if there is one)."""
    message = EmailMessage(policy=SMTP)
    message["From"] = source
    for header, key in (("To", "ToAddresses"), ("Cc", "CcAddresses")):
        if destinations.get(key):
            message[header] = ", ".join(destinations[key])
    message["Subject"] = subject
    message.set_content(body, subtype="html" if body.lstrip().startswith("<") else "plain")
    return message.as_bytes()


class SesHop:
    """What SES does with mail it sends to a domain whose MX is SES receiving: it receives it.

    Each raw send whose recipients include addresses of the receipt rules' domains is handed to
    the local SMTP front (the runner's), in the background and in order, as SES would deliver
    it: so a forward to ``directors@<chapter>`` comes back in as inbound mail, as it does once
    deployed. A front that does not answer is retried a few times, then the hop is logged as lost.
    """

    ATTEMPTS = 5

    def __init__(self, host: str, port: int, recipients: tuple[str, ...]) -> None:
        self.address = (host, port)
        self.recipients = recipients  # SES Recipients entries: address, domain or .domain
        self._queue: queue.Queue[tuple[str, list[str], bytes]] = queue.Queue()
        threading.Thread(target=self._work, name="ses-hop", daemon=True).start()

    def ours(self, address: str) -> bool:
        address = address.lower()
        domain = address.rpartition("@")[2]
        return any(
            address == entry if "@" in entry else domain.endswith(entry) if entry.startswith(".") else domain == entry
            for entry in self.recipients
        )

    def offer(self, source: str, recipients: list[str], raw: bytes) -> None:
        local = sorted({r for r in (parseaddr(r)[1] for r in recipients) if r and self.ours(r)})
        if local:
            self._queue.put((parseaddr(source)[1] or "", local, raw))

    def _work(self) -> None:
        while True:
            source, recipients, raw = self._queue.get()
            for attempt in range(self.ATTEMPTS):
                try:
                    with smtplib.SMTP(*self.address, timeout=30) as smtp:
                        smtp.sendmail(source, recipients, raw)
                    log.info("SES hop: mail for our own domains received again", extra={"recipients": len(recipients)})
                    break
                except (OSError, smtplib.SMTPException) as error:
                    if attempt == self.ATTEMPTS - 1:
                        log.error("SES hop lost: the SMTP front did not take it", extra={"error": str(error)})
                    time.sleep(1 + attempt)


@dataclass(frozen=True)
class SendRequest:
    """What a SES send request names besides the message: its configuration set, tags, feedback address."""

    configuration_set: str | None
    tags: dict[str, str]
    feedback_address: str | None


_current_send = threading.local()  # the SendRequest of the send this request thread is handling


def _sent_mail(backend: SESBackend, message_id: str, source: str, recipients: list[str], raw: bytes) -> SentMail | None:
    request: SendRequest | None = getattr(_current_send, "request", None)
    if request is None or not request.configuration_set:
        return None
    bare = tuple(dict.fromkeys(address for address in (parseaddr(r)[1] for r in recipients) if address))
    return SentMail(
        message_id=message_id,
        source=source or "",
        recipients=bare,
        raw=raw,
        configuration_set=request.configuration_set,
        account_id=backend.account_id,
        region=backend.region_name,
        tags=request.tags,
        feedback_address=request.feedback_address,
    )


def record_sent_mail(outbox: Outbox, hop: SesHop | None = None, events: EventPublisher | None = None) -> None:
    """Wraps moto's SES backend so each send it accepts is also written to the outbox (with
    ``hop``, mail to our own domains comes back in through SES receiving; with ``events``, a
    send naming a configuration set gets SES's events, see ses_events.py).

    A send SES rejects (unverified sender, bad address, unknown configuration set) raises
    before anything is written, as a real SES would not deliver it either.
    """
    send_raw_email = SESBackend.send_raw_email
    send_email = SESBackend.send_email

    def send_raw_email_to_outbox(self: SESBackend, source: str, destinations: list[str], raw_data: str) -> Any:
        explicit = list(destinations)  # moto appends the header recipients to the list it is given
        message = send_raw_email(self, source, destinations, raw_data)
        raw = raw_data.encode("utf-8")
        path = outbox.write(raw)
        log.info("raw email accepted", extra={"message_id": message.id, "eml": path.name})
        if hop is not None:
            hop.offer(source or "", explicit or list(destinations), raw)
        sent = _sent_mail(self, message.id, source, explicit or list(destinations), raw)
        if events is not None and sent is not None:
            events.offer(sent)
        return message

    def send_email_to_outbox(
        self: SESBackend, source: str, subject: str, body: str, destinations: dict[str, list[str]]
    ) -> Any:
        message = send_email(self, source, subject, body, destinations)
        raw = _compose(source, subject, body, destinations)
        path = outbox.write(raw)
        log.info("simple email accepted", extra={"message_id": message.id, "eml": path.name})
        recipients = [
            address for key in ("ToAddresses", "CcAddresses", "BccAddresses") for address in destinations.get(key, [])
        ]
        sent = _sent_mail(self, message.id, source, recipients, raw)
        if events is not None and sent is not None:
            events.offer(sent)
        return message

    SESBackend.send_raw_email = send_raw_email_to_outbox  # type: ignore[method-assign]
    SESBackend.send_email = send_email_to_outbox  # type: ignore[method-assign]
    _read_send_requests()


def _read_send_requests() -> None:
    """Wraps the SES v2 SendEmail and v1 SendEmail / SendRawEmail handlers: each notes the
    request's configuration set, tags and feedback address for the backend (see _sent_mail),
    and refuses a configuration set SES does not have, as SES does (v2: 404 NotFoundException,
    v1: ConfigurationSetDoesNotExist)."""

    def v2(handler: Callable[[SESV2Response], Any]) -> Callable[[SESV2Response], Any]:
        def send(self: SESV2Response) -> Any:
            params = json.loads(self.body or "{}")
            name = params.get("ConfigurationSetName")
            if name and name not in self.sesv2_backend.core_backend.config_sets:
                headers = {"status": 404, "Content-Type": "application/json", "x-amzn-ErrorType": "NotFoundException"}
                return json.dumps({"message": f"Configuration set <{name}> does not exist."}), headers
            tags = {t.get("Name", ""): t.get("Value", "") for t in params.get("EmailTags") or []}
            return _handling(SendRequest(name, tags, params.get("FeedbackForwardingEmailAddress")), handler, self)

        return send

    def v1(handler: Callable[[EmailResponse], Any]) -> Callable[[EmailResponse], Any]:
        def send(self: EmailResponse) -> Any:
            name = self._get_param("ConfigurationSetName")
            if name and name not in self.backend.config_sets:
                raise ConfigurationSetDoesNotExist(f"Configuration set <{name}> does not exist.")
            tags = {t.get("Name", ""): t.get("Value", "") for t in self._get_param("Tags", []) or []}
            return _handling(SendRequest(name, tags, self._get_param("ReturnPath")), handler, self)

        return send

    wrap_ses_sends(v2, v1)


def _handling(request: SendRequest, handler: Callable[[Any], Any], response: Any) -> Any:
    _current_send.request = request
    try:
        return handler(response)
    finally:
        _current_send.request = None


def publish_to_sns(account_id: str, region: str, topic_arn: str, message: str) -> None:
    """Publishes on a topic of this moto's SNS: its SQS subscriptions get it at once."""
    sns_backends[account_id][region].get_topic(topic_arn).publish(message)


def event_destinations(account_id: str, region: str, configuration_set: str) -> list[Mapping[str, Any]]:
    """The configuration set's event destinations, as SES v1's CreateConfigurationSetEventDestination took them."""
    destination = ses_backends[account_id][region].config_set_event_destination.get(configuration_set)
    return [destination] if destination else []


def speed_up_sqs_clock() -> None:
    """Gives moto's SQS a cheap clock: the same time, from time.time().

    moto checks every queued message's visibility on every receive, and each check builds
    datetimes; with a thousand queued emails that took 80% of its CPU (7x slower end to end).
    """
    unix_time = sqs_models.unix_time

    def fast_unix_time(dt: datetime | None = None) -> float:
        return time.time() if dt is None else unix_time(dt)

    def fast_unix_time_millis(dt: datetime | None = None) -> float:
        return fast_unix_time(dt) * 1000.0

    sqs_models.unix_time = fast_unix_time
    sqs_models.unix_time_millis = fast_unix_time_millis


def cheap_retention_checks() -> None:
    """Checks a received message's retention against its queue's retention period alone.

    moto (5.1 and 5.2 alike) reads the period through get_queue_attributes, which computes every
    attribute, the message counts too: a scan of the whole queue for each message received. With
    the runner's send pollers receiving while a 10,000-recipient expansion filled the queue, that
    was most of moto's CPU: 45.7 CPU seconds, 28.8 with this check.
    """
    if not hasattr(SQSBackend, "is_message_valid_based_on_retention_period"):
        return  # a moto without the check
    original = _unpatched(SQSBackend.is_message_valid_based_on_retention_period)

    @_patches(original)
    def is_message_valid_based_on_retention_period(self: SQSBackend, queue_name: str, message: Message) -> bool:
        retention_seconds = float(self.get_queue(queue_name).message_retention_period)
        return retention_seconds + message.sent_timestamp / 1000 > sqs_models.unix_time()  # type: ignore[operator]

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]


def _unpatched(method: Callable[..., Any]) -> Callable[..., Any]:
    """moto's own method, also when serialize_sqs_queues already replaced it (so it can run twice)."""
    return getattr(method, "_dbmail_unpatched", method)


def _patches(original: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(wrapper: Callable[..., Any]) -> Callable[..., Any]:
        wrapper.__name__ = original.__name__
        wrapper._dbmail_unpatched = original  # type: ignore[attr-defined]
        return wrapper

    return mark


@contextmanager
def _queue_locked(backend: SQSBackend, queue_name: str) -> Iterator[Queue]:
    """Holds the queue's own lock (the re-entrant one moto's add_message takes) and yields the queue."""
    queue = backend.get_queue(queue_name)
    with queue._messages_lock:
        yield queue


def serialize_sqs_queues(faults: "Faults | None" = None) -> None:
    """Makes every change to a queue's messages, and every pick of messages to hand out, one at a time.

    moto guards only the append in ``Queue.add_message`` with a lock. ``Queue.delete_message``
    rebuilds the queue's list without it (``self._messages = new_messages``), so two concurrent
    deletes each write back a list that still holds the other's message (it comes back once
    its visibility timeout ends: a deleted message delivered again), and a send that appends
    to the old list while a delete rebuilds it is lost. ``receive_message`` picks and marks
    messages without any lock, so concurrent receivers could all get the same message.

    Here the queue's re-entrant ``_messages_lock`` is held around add_message (every send,
    batch entry and move to a dead-letter queue), delete_message (and batches), the pick of
    receive_message, change_message_visibility (and batches) and purge_queue. Long polling
    waits outside the lock, so one waiting poller never blocks another. Lock order is a
    queue, then its dead-letter queue (a receive moves messages there): a redrive cycle
    between queues could deadlock, which the template does not have.

    ``faults`` (if given) adds SQS's at-least-once duplicates to what receivers get.
    """
    add_message = _unpatched(Queue.add_message)
    delete_message = _unpatched(Queue.delete_message)
    receive_message = _unpatched(SQSBackend.receive_message)

    @_patches(add_message)
    def add_message_locked(self: Queue, message: Message) -> None:
        with self._messages_lock:
            add_message(self, message)  # re-enters the lock for its append and notify

    @_patches(delete_message)
    def delete_message_locked(self: Queue, receipt_handle: str) -> None:
        with self._messages_lock:
            delete_message(self, receipt_handle)

    def per_queue(name: str) -> None:
        """Makes a backend method whose first argument is a queue name run holding that queue's lock."""
        method = _unpatched(getattr(SQSBackend, name))

        @_patches(method)
        def locked(self: SQSBackend, queue_name: str, *args: Any, **kwargs: Any) -> Any:
            with _queue_locked(self, queue_name):
                return method(self, queue_name, *args, **kwargs)

        setattr(SQSBackend, name, locked)

    @_patches(receive_message)
    def receive_message_exclusively(
        self: SQSBackend,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> Any:
        deadline = time.monotonic() + wait_seconds_timeout
        while True:
            with _queue_locked(self, queue_name) as queue:
                messages = receive_message(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
                if messages and faults is not None:
                    faults.duplicate_received(queue, messages)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            # Wakes on a send; a message whose visibility timeout ends sends no signal.
            self.get_queue(queue_name).wait_for_messages(min(remaining, RECEIVE_RECHECK_SECONDS))
            time.sleep(0.01)  # visible, yet none handed out (moved to a dead-letter queue): do not spin

    Queue.add_message = add_message_locked  # type: ignore[method-assign]
    Queue.delete_message = delete_message_locked  # type: ignore[method-assign]
    SQSBackend.receive_message = receive_message_exclusively  # type: ignore[method-assign]
    # A batch holds the lock once for all its entries (each entry re-enters it).
    for name in (
        "send_message_batch",
        "delete_message_batch",
        "change_message_visibility",
        "change_message_visibility_batch",
        "purge_queue",
    ):
        per_queue(name)


def cheap_standard_sends() -> None:
    """moto's send_message reads ``queue.attributes`` to see whether the queue deduplicates by
    content (a FIFO queue's setting), and that property counts the queue's messages three times
    (ApproximateNumberOf*): each send costs O(queue depth), a bulk expansion O(n^2). A standard
    queue's send skips that read; a FIFO queue's is moto's own."""
    send_message = _unpatched(SQSBackend.send_message)

    @_patches(send_message)
    def send_message_cheaply(
        self: SQSBackend,
        queue_name: str,
        message_body: str,
        message_attributes: dict[str, Any] | None = None,
        delay_seconds: int | None = None,
        deduplication_id: str | None = None,
        group_id: str | None = None,
        system_attributes: dict[str, Any] | None = None,
        validate_group_id: bool = True,
    ) -> Message:
        queue = self.get_queue(queue_name)
        if queue.fifo_queue or deduplication_id is not None or group_id is not None:
            return send_message(
                self,
                queue_name,
                message_body,
                message_attributes,
                delay_seconds,
                deduplication_id,
                group_id,
                system_attributes,
                validate_group_id,
            )
        delay = int(delay_seconds) if delay_seconds is not None else int(queue.delay_seconds or 0)
        self._validate_message(queue, message_body=message_body, delay_seconds=delay)
        if delay > sqs_models.MAXIMUM_MESSAGE_DELAY:
            raise sqs_models.InvalidParameterValue(
                f"Value {delay} for parameter DelaySeconds is invalid. Reason: DelaySeconds must be >= 0 and <= 900."
            )
        message = Message(str(sqs_models.random.uuid4()), message_body, system_attributes)
        if message_attributes:
            message.message_attributes = message_attributes
        message.mark_sent(delay_seconds=delay)
        queue.add_message(message)
        return message

    SQSBackend.send_message = send_message_cheaply  # type: ignore[method-assign]


# ---- fault injection (tests only) ---------------------------------------------------------

SES_FAULT_KINDS = ("throttle", "transient", "permanent")


@dataclass(frozen=True)
class SesFault:
    """How real SES v2 (the API dbmail sends with) fails a send: HTTP status, error code, message."""

    status: int
    code: str
    message: str


SES_ERRORS = {
    "throttle": SesFault(429, "TooManyRequestsException", THROTTLED_MESSAGE),
    # The common AWS server error; botocore's retry modes retry any 5xx.
    "transient": SesFault(
        500,
        "InternalFailure",
        "The request processing has failed because of an unknown error, exception or failure.",
    ),
    "permanent": SesFault(400, "MessageRejected", "Email rejected (dbmail_local fault injection)."),
}


def _share(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"faults: {name} must be a number from 0 to 1, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class FaultSpec:
    """What the faults file asks for; every share is a probability from 0 to 1.

        {"ses_send": {"throttle": 0.2, "transient": 0.1, "permanent": 0.0},
         "sqs_duplicate": 0.05, "seed": 7}

    ``ses_send``: shares of SES v2 SendEmail calls that fail, before anything is sent or written
    to the outbox, as SES fails them (see SES_ERRORS); at most 1 together. ``sqs_duplicate``:
    share of the messages a ReceiveMessage returns of which an exact copy (body, message and
    system attributes, SentTimestamp; a new MessageId) is also put in the queue, like SQS's
    at-least-once delivery. ``seed`` makes the draws repeatable (from each load of the file on).
    Every key is optional; an empty spec means no faults.
    """

    ses_throttle: float = 0.0
    ses_transient: float = 0.0
    ses_permanent: float = 0.0
    sqs_duplicate: float = 0.0
    seed: int | None = None

    @classmethod
    def from_json(cls, spec: Mapping[str, Any] | None) -> "FaultSpec":
        """Validates a spec (the parsed file; None: no faults); raises ValueError."""
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise ValueError(f"faults: expected a JSON object, not {type(spec).__name__}")
        unknown = set(spec) - {"ses_send", "sqs_duplicate", "seed"}
        if unknown:
            raise ValueError(f"faults: unknown keys {sorted(unknown)}")
        ses = spec.get("ses_send") or {}
        if not isinstance(ses, Mapping) or set(ses) - set(SES_FAULT_KINDS):
            raise ValueError(f"faults: ses_send takes {list(SES_FAULT_KINDS)}, not {ses!r}")
        shares = {kind: _share(ses.get(kind, 0.0), f"ses_send.{kind}") for kind in SES_FAULT_KINDS}
        if sum(shares.values()) > 1.0 + 1e-9:
            raise ValueError(f"faults: the ses_send shares add up to more than 1: {shares}")
        seed = spec.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"faults: seed must be an integer, not {seed!r}")
        return cls(
            ses_throttle=shares["throttle"],
            ses_transient=shares["transient"],
            ses_permanent=shares["permanent"],
            sqs_duplicate=_share(spec.get("sqs_duplicate", 0.0), "sqs_duplicate"),
            seed=seed,
        )

    @property
    def any(self) -> bool:
        return bool(self.ses_throttle or self.ses_transient or self.ses_permanent or self.sqs_duplicate)


def faults_file_key(path: Path) -> str:
    """Identifies one version of a file: os.replace gives a new inode, a rewrite a new mtime or size."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "absent"
    return f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"


def faults_ack_path(path: Path) -> Path:
    """Where the server writes the key (see faults_file_key) of the faults file version it has loaded."""
    return path.with_name(path.name + ".loaded")


class Faults:
    """The faults file's current FaultSpec, reloaded when the file changes, and the draws from it.

    A thread checks the file's stat every FAULTS_RELOAD_SECONDS; an absent file means no
    faults. After each load the file's key goes to ``<file>.loaded``, so a writer can wait until
    its faults apply (see stack.write_faults). Requests only read ``self.spec``.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.spec = FaultSpec()
        self._key: str | None = None  # the first reload always loads (and acknowledges)
        self._random = random.Random()
        self._random_lock = threading.Lock()

    def reload(self) -> None:
        if self.path is None:
            return
        key = faults_file_key(self.path)
        if key == self._key:
            return
        try:
            spec = (
                FaultSpec.from_json(json.loads(self.path.read_text(encoding="utf-8")))
                if key != "absent"
                else FaultSpec()
            )
        except FileNotFoundError:
            return  # removed between stat and read: the next check sees it
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            log.error("faults file not valid: no faults", extra={"faults": str(self.path), "error": str(error)})
            spec = FaultSpec()
        with self._random_lock:
            self._random = random.Random(spec.seed)
            self.spec = spec
        self._key = key
        level = logging.WARNING if spec.any else logging.INFO  # a developer's `make up` should notice
        log.log(level, "faults loaded", extra={"faults": str(self.path), **vars(spec)})
        write_atomically(faults_ack_path(self.path), key + "\n")

    def watch(self, stopping: threading.Event) -> threading.Thread:
        """Reloads the file whenever it changes, until ``stopping`` is set."""

        def reload() -> None:
            try:
                self.reload()
            except OSError:
                log.exception("could not read the faults file or write its .loaded", extra={"faults": str(self.path)})

        def run() -> None:
            while not stopping.wait(FAULTS_RELOAD_SECONDS):
                reload()

        reload()  # faults written before the server started apply to its first request
        thread = threading.Thread(target=run, name="faults-watcher", daemon=True)
        thread.start()
        return thread

    def _draw(self) -> float:
        with self._random_lock:
            return self._random.random()

    def ses_send_fault(self) -> str | None:
        """The kind of fault this send gets ("throttle", "transient", "permanent"), or None."""
        spec = self.spec
        if not (spec.ses_throttle or spec.ses_transient or spec.ses_permanent):
            return None
        draw = self._draw()
        for kind, share in (
            ("throttle", spec.ses_throttle),
            ("transient", spec.ses_transient),
            ("permanent", spec.ses_permanent),
        ):
            if draw < share:
                return kind
            draw -= share
        return None

    def duplicate_received(self, queue: Queue, received: list[Message]) -> None:
        """Puts an exact copy (new message id) of a share of the received messages in the queue.

        Runs holding the queue's lock; ``received`` are receive_message's copies of the messages.
        """
        share = self.spec.sqs_duplicate
        if not share:
            return
        chosen = [message.id for message in received if self._draw() < share]
        if not chosen:
            return
        originals = {message.id: message for message in queue._messages}
        for message_id in chosen:
            original = originals.get(message_id)
            if original is None:
                continue
            duplicate = Message(str(uuid.uuid4()), original.body, copy.deepcopy(original.system_attributes))
            duplicate.message_attributes = copy.deepcopy(original.message_attributes)
            duplicate.sender_id = original.sender_id
            duplicate.sent_timestamp = original.sent_timestamp
            queue.add_message(duplicate)
            log.info(
                "fault injected",
                extra={
                    "fault": "sqs_duplicate",
                    "queue": queue.name,
                    "message_id": message_id,
                    "duplicate_id": duplicate.id,
                },
            )


def inject_ses_faults(faults: Faults) -> None:
    """Makes a share of SES v2 sends fail as SES fails them, before the send reaches the backend.

    Wraps the SendEmail response handler, which returns the error's body and headers to moto's
    dispatch, so a boto3 client gets a ClientError with the real code and HTTP status
    (botocore's retries go by both). Nothing reaches the outbox.
    """
    handler = SESV2Response.send_email

    def respond(self: Any) -> Any:
        kind = faults.ses_send_fault()
        if kind is None:
            return handler(self)
        error = SES_ERRORS[kind]
        log.info(
            "fault injected",
            extra={
                "fault": f"ses_{kind}",
                "api": "sesv2",
                "operation": "SendEmail",
                "status": error.status,
                "code": error.code,
            },
        )
        headers = {"status": error.status, "Content-Type": "application/json", "x-amzn-ErrorType": error.code}
        return json.dumps({"message": error.message}), headers

    respond.__name__ = handler.__name__
    SESV2Response.send_email = respond  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dbmail_local.moto_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--outbox", type=Path, required=True)
    parser.add_argument(
        "--faults", type=Path, help="a JSON file of faults to inject, for tests (see FaultSpec); may be absent"
    )
    parser.add_argument("--ses-hop", metavar="HOST:PORT", help="SMTP front that receives mail sent to our own domains")
    parser.add_argument("--ses-hop-recipients", default="", help="comma-separated receipt rule Recipients entries")
    args = parser.parse_args(argv)

    logs.configure(json_lines=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns the log
    hop = None
    if args.ses_hop and args.ses_hop_recipients:
        host, _, port = args.ses_hop.rpartition(":")
        hop = SesHop(host, int(port), tuple(r.strip().lower() for r in args.ses_hop_recipients.split(",") if r.strip()))
    events = EventPublisher(event_destinations, publish_to_sns, hop.offer if hop is not None else None)
    record_sent_mail(Outbox(args.outbox), hop, events)
    faults = Faults(args.faults.resolve()) if args.faults else None
    serialize_sqs_queues(faults)
    cheap_standard_sends()
    speed_up_sqs_clock()
    cheap_retention_checks()
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    if faults is not None:
        inject_ses_faults(faults)
        faults.watch(stopping)
    rate = rate_from_env()
    report_quota(rate)
    counts = args.outbox.parent / COUNTS_FILE  # the outbox is <state>/outbox
    counts.unlink(missing_ok=True)
    if rate is not None:  # outermost: a send above the rate meets nothing else
        limit_send_rate(SesRateLimit(rate, counts))
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    log.info(
        "moto listening",
        extra={"url": f"http://{args.host}:{args.port}", "outbox": str(args.outbox), "ses_max_send_rate": rate},
    )
    while not stopping.wait(0.5):
        pass
    server.stop()
    log.info("moto stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
