"""SendGrid's signed Event Webhook: verify each POST, then record its events.

SendGrid signs every POST with the ECDSA key pair of the account's "Signed Event Webhook"
(P-256, SHA-256): ``X-Twilio-Email-Event-Webhook-Signature`` is the base64 DER signature of the
bytes of ``X-Twilio-Email-Event-Webhook-Timestamp`` (Unix seconds) followed by the raw body, and
the verification key it shows is the base64 DER (SubjectPublicKeyInfo) public key, which
``DBMAIL_SENDGRID_WEBHOOK_PUBLIC_KEY`` holds (PEM works too).

A request is refused, and nothing recorded, when:

- a header is missing (401), or no verification key is configured (403: anything unsigned is refused);
- the timestamp is not Unix seconds within MAX_SKEW of now (403: stale or replayed long after);
- the signature does not verify over timestamp + body (403);
- the body is over MAX_BODY_BYTES (413) or is not a JSON array of objects (400).

A verified batch's events are checked (``feedback.events.from_sendgrid_event``: types we do not
record are skipped, a malformed event is logged and skipped, so one bad event does not make
SendGrid retry the batch for a day) and queued on FeedbackQueue, 10 to an SQS call, for the
feedback function, which records each (idempotently, with retries and a dead-letter queue). The
answer so stays fast however large SendGrid's batch. If SQS refuses them, the answer is a 503 and
SendGrid posts the batch again: a queued event that arrives twice is recorded once.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dbmail.core.clock import utcnow
from dbmail.core.errors import ConfigurationError, DbmailError
from dbmail.core.observability import logger
from dbmail.feedback.events import FeedbackInvalid, from_sendgrid_event, sendgrid_queue_body

if TYPE_CHECKING:
    from dbmail.outgoing.queue import SqsQueue

SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"
MAX_SKEW = timedelta(minutes=10)
MAX_BODY_BYTES = 2 * 1024 * 1024  # SendGrid posts batches of events, well under this
MAX_SIGNATURE_CHARS = 200  # a P-256 DER signature is at most 72 bytes (96 in base64)
SKIPPED, INVALID, QUEUED = "skipped", "invalid", "queued"  # what became of each event of a batch


class WebhookRefused(DbmailError):
    """The request is not a genuine, current SendGrid batch; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Reply:
    status: int
    body: str
    content_type: str = "application/json"


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key (base64 DER, or PEM); a key that is not P-256 is a ConfigurationError."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise ConfigurationError("DBMAIL_SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key (base64 DER or PEM)") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigurationError("DBMAIL_SENDGRID_WEBHOOK_PUBLIC_KEY must be an ECDSA P-256 key (SendGrid's)")
    return key


class SignatureVerifier:
    """Checks SendGrid's signature and timestamp on a request's raw body."""

    def __init__(self, public_key: str, clock=utcnow) -> None:
        self.key = load_public_key(public_key) if public_key.strip() else None
        self.clock = clock

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Returns when the request is signed by SendGrid's key, recently; else raises WebhookRefused."""
        lowered = {name.lower(): value for name, value in headers.items()}
        signature_b64, timestamp = lowered.get(SIGNATURE_HEADER), lowered.get(TIMESTAMP_HEADER)
        if not signature_b64 or not timestamp:
            raise WebhookRefused("unsigned request: the SendGrid signature or timestamp header is missing", 401)
        if self.key is None:
            raise WebhookRefused("no SendGrid webhook verification key is configured; every request is refused", 403)
        timestamp = timestamp.strip()
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            raise WebhookRefused("the webhook timestamp is not Unix seconds", 403)
        skew = abs(self.clock().timestamp() - int(timestamp))
        if skew > MAX_SKEW.total_seconds():
            raise WebhookRefused(f"the webhook timestamp is {int(skew)} s from now (stale or replayed)", 403)
        try:
            if len(signature_b64) > MAX_SIGNATURE_CHARS:
                raise ValueError("signature too long")
            signature = base64.b64decode(signature_b64.strip(), validate=True)
            self.key.verify(signature, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError, binascii.Error) as exc:
            raise WebhookRefused("the SendGrid webhook signature does not verify", 403) from exc


class SendGridEvents:
    """The sendgrid_events function: one POST of the Event Webhook."""

    def __init__(self, verifier: SignatureVerifier, queue: SqsQueue) -> None:
        self.verifier = verifier
        self.queue = queue

    def handle(self, headers: Mapping[str, str], body: str | None, *, base64_encoded: bool) -> Reply:
        try:
            raw = _body(body, base64_encoded)
            self.verifier.verify(headers, raw)
            events = _events(raw)
        except WebhookRefused as refused:
            logger.warning("SendGrid webhook request refused", extra={"status": refused.status, "reason": str(refused)})
            return Reply(refused.status, json.dumps({"error": str(refused)}))
        outcomes: Counter[str] = Counter()
        bodies = []
        for position, item in enumerate(events):
            try:
                if from_sendgrid_event(item) is None:
                    outcomes[SKIPPED] += 1
                    continue
                bodies.append(sendgrid_queue_body(item))
            except FeedbackInvalid as error:
                logger.warning("SendGrid event skipped: malformed", extra={"position": position, "error": str(error)})
                outcomes[INVALID] += 1
        try:
            outcomes[QUEUED] = self.queue.send_bodies(bodies)
        except DbmailError as error:  # SendGrid posts the batch again; what was queued is recorded once
            logger.error("SendGrid batch not queued; SendGrid will retry it", extra={"error": str(error)})
            return Reply(503, json.dumps({"error": "the events could not be queued; retry"}))
        outcomes = +outcomes  # no zero counts
        logger.info("SendGrid webhook batch queued", extra={"events": len(events), "outcomes": dict(outcomes)})
        return Reply(200, json.dumps({"events": len(events), "outcomes": dict(sorted(outcomes.items()))}))


def _body(body: str | None, base64_encoded: bool) -> bytes:
    text = body or ""
    if len(text) > (MAX_BODY_BYTES * 4 // 3 + 4 if base64_encoded else MAX_BODY_BYTES):
        raise WebhookRefused(f"the body is over {MAX_BODY_BYTES} bytes", 413)
    if not base64_encoded:
        return text.encode("utf-8")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookRefused("the body is not valid base64", 400) from exc


def _events(raw: bytes) -> list[dict]:
    try:
        events = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookRefused("the body is not JSON", 400) from exc
    if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
        raise WebhookRefused("the body is not a JSON array of event objects", 400)
    return events
