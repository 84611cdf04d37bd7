"""The local stack's moto server, with an outbox: every email SES accepts is also an .eml file.

Run as ``python -m dbmail_local.moto_server --port N --outbox DIR``. The outbox is filled on the
emulator side, so it sees exactly what any client (a handler, a test, the website) handed to SES.
SES v1 SendRawEmail and v2 SendEmail with Raw content both end in the SES backend's
``send_raw_email``; Simple sends end in ``send_email`` and are written as a composed message.
It also fixes a race in moto's SQS that would hand one message to several receivers at once,
and gives moto's SQS a cheaper clock (see speed_up_sqs_clock).
"""

import argparse
import itertools
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from moto.server import ThreadedMotoServer
from moto.ses.models import SESBackend
from moto.sqs import models as sqs_models
from moto.sqs.models import SQSBackend

from . import logs

log = logging.getLogger("dbmail_local.moto_server")  # also when run as __main__

RECEIVE_RECHECK_SECONDS = 0.2  # how soon a long poll sees a message whose visibility ended


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
        partial = self.directory / f".{path.name}.partial"
        partial.write_bytes(raw)
        os.replace(partial, path)
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


def record_sent_mail(outbox: Outbox) -> None:
    """Wraps moto's SES backend so each send it accepts is also written to the outbox.

    A send SES rejects (unverified sender, bad address) raises before anything is written,
    as a real SES would not deliver it either.
    """
    send_raw_email = SESBackend.send_raw_email
    send_email = SESBackend.send_email

    def send_raw_email_to_outbox(self: SESBackend, source: str, destinations: list[str], raw_data: str) -> Any:
        message = send_raw_email(self, source, destinations, raw_data)
        path = outbox.write(raw_data.encode("utf-8"))
        log.info("raw email accepted", extra={"message_id": message.id, "eml": path.name})
        return message

    def send_email_to_outbox(
        self: SESBackend, source: str, subject: str, body: str, destinations: dict[str, list[str]]
    ) -> Any:
        message = send_email(self, source, subject, body, destinations)
        path = outbox.write(_compose(source, subject, body, destinations))
        log.info("simple email accepted", extra={"message_id": message.id, "eml": path.name})
        return message

    SESBackend.send_raw_email = send_raw_email_to_outbox  # type: ignore[method-assign]
    SESBackend.send_email = send_email_to_outbox  # type: ignore[method-assign]


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


def serialize_sqs_receives() -> None:
    """Makes each queue hand a message to one receiver at a time, as SQS does.

    moto picks and marks messages without a lock, so the runner's concurrent pollers could
    all receive the same message (and send the same email twice). Picking is serialized per
    queue; long polling waits outside the lock, so one waiting poller never blocks another.
    """
    receive_message = SQSBackend.receive_message
    locks: dict[str, threading.Lock] = {}

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
            with locks.setdefault(queue_name, threading.Lock()):
                messages = receive_message(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            # Wakes on a send; a message whose visibility timeout ends sends no signal.
            self.get_queue(queue_name).wait_for_messages(min(remaining, RECEIVE_RECHECK_SECONDS))
            time.sleep(0.01)  # visible but unavailable (a FIFO group in flight): do not spin

    SQSBackend.receive_message = receive_message_exclusively  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dbmail_local.moto_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--outbox", type=Path, required=True)
    args = parser.parse_args(argv)

    logs.configure(json_lines=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns the log
    record_sent_mail(Outbox(args.outbox))
    serialize_sqs_receives()
    speed_up_sqs_clock()
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    log.info("moto listening", extra={"url": f"http://{args.host}:{args.port}", "outbox": str(args.outbox)})
    while not stopping.wait(0.5):
        pass
    server.stop()
    log.info("moto stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
