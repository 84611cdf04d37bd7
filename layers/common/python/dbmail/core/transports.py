"""Delivery through SES (v2 SendEmail, raw MIME) or SendGrid (v3 mail/send)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from email.utils import parsedate_to_datetime
from email.utils import quote as _quote
from typing import Protocol

from aws_lambda_powertools import Logger
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dbmail.core.addresses import redact_addresses
from dbmail.core.compose import MAX_MESSAGE_BYTES, OutgoingEmail, to_mime
from dbmail.core.errors import ConfigurationError, DeliveryError, FailureKind
from dbmail.core.settings import Settings
from dbmail.feedback.events import MESSAGE_REF_TAG, message_ref_of

# SES error codes that retrying will not fix. SendingPausedException (SendEmail's documented
# "the account's ability to send email is currently paused") needs an operator or AWS to lift
# the pause; the minutes of SQS retries would only spend the tries, so it fails at once.
SES_PERMANENT = frozenset(
    {
        "MessageRejected",
        "BadRequestException",
        "MailFromDomainNotVerifiedException",
        "NotFoundException",
        "AccountSuspendedException",
        "InvalidParameterValue",
        "SendingPausedException",
    }
)
# SES's "slow down" answers (SendEmail documents TooManyRequestsException, HTTP 429, and
# LimitExceededException; SES v1 and the query protocol say Throttling / LimitExceeded).
SES_THROTTLED = frozenset(
    {"TooManyRequestsException", "Throttling", "ThrottlingException", "LimitExceededException", "LimitExceeded"}
)
# botocore retries throttles, 5xx and dropped connections itself (adaptive mode also slows the
# client down) before we classify what is left. 3 attempts in all ("max_attempts" would count
# retries: 3 means 4 tries); a hung SES costs at most 3 x (3 + 5) s, inside a 30 s invocation.
# The pool is dbmail.core.aws's (every concurrent delivery of the process keeps its connection).
# Per-request CPU saved: no validation of the parameters (ours, always of one shape); the fixed
# User-Agent is every client's (aws.USER_AGENT).
SES_CLIENT_CONFIG = Config(
    retries={"mode": "adaptive", "total_max_attempts": 3},
    connect_timeout=3,
    read_timeout=5,
    parameter_validation=False,
)
# SendGrid's v3 mail/send limitations: "less than 30MB" for the whole email; we measure the
# JSON body we would post and refuse it before the call (SES's 40 MB is MAX_MESSAGE_BYTES).
SENDGRID_MAX_BYTES = 30 * 1024 * 1024
KEPT_CONNECTIONS = 10  # a send batch's sends in flight at once (outgoing.send.CONCURRENT_SENDS)
MAX_ANSWER_BYTES = 64 * 1024  # of a SendGrid answer read (an error's JSON is a few hundred bytes)

logger = Logger(child=True)


def ses_failure_kind(exc: ClientError) -> FailureKind:
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in SES_THROTTLED or status == 429 or "maximum sending rate exceeded" in error.get("Message", "").lower():
        return FailureKind.THROTTLED
    if code in SES_PERMANENT:
        return FailureKind.PERMANENT
    return FailureKind.TRANSIENT  # 5xx, InternalFailure, ServiceUnavailable, codes we do not know


def ses_client(region: str | None):
    """The sesv2 client every SES transport should use (adaptive retries, bounded timeouts)."""
    from dbmail.core import aws

    return aws.client("sesv2", region, config=SES_CLIENT_CONFIG)


class Transport(Protocol):
    def send(self, email: OutgoingEmail) -> str:
        """Deliver one message; return the provider's message id or raise DeliveryError."""


class SesTransport:
    def __init__(self, sesv2_client, configuration_set: str | None = None):
        self._ses = sesv2_client
        self._configuration_set = configuration_set

    def send(self, email: OutgoingEmail) -> str:
        return self.send_raw(
            to_mime(email),
            email.sender.addr_spec,
            [a.addr_spec for a in email.to],
            feedback_address=email.envelope_sender,
            message_ref=message_ref_of(email.message_id),
        )

    def send_raw(
        self,
        raw: bytes,
        from_address: str,
        destinations: list[str] | None,
        feedback_address: str | None = None,
        message_ref: str | None = None,
    ) -> str:
        """Send MIME bytes as they are (also used to forward inbound mail). Without
        ``destinations`` SES sends to the addresses in the To, Cc and Bcc headers. ``message_ref``
        (our email's) becomes the message tag the configuration set's events carry back."""
        if len(raw) > MAX_MESSAGE_BYTES:
            raise DeliveryError(
                f"message is {len(raw)} bytes, over SES's {MAX_MESSAGE_BYTES}", kind=FailureKind.PERMANENT
            )
        kwargs = {"FromEmailAddress": from_address, "Content": {"Raw": {"Data": raw}}}
        if destinations:
            kwargs["Destination"] = {"ToAddresses": destinations}
        if feedback_address:
            kwargs["FeedbackForwardingEmailAddress"] = feedback_address
        if self._configuration_set:
            kwargs["ConfigurationSetName"] = self._configuration_set
        if message_ref:
            kwargs["EmailTags"] = [{"Name": MESSAGE_REF_TAG, "Value": message_ref}]
        try:
            return self._ses.send_email(**kwargs)["MessageId"]
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise DeliveryError(
                f"SES {error.get('Code', 'ClientError')}: {redact_addresses(error.get('Message', ''))}",
                kind=ses_failure_kind(exc),
            ) from exc
        except BotoCoreError as exc:  # connection errors, timeouts, retries exhausted on the wire
            raise DeliveryError(f"SES unreachable: {type(exc).__name__}", kind=FailureKind.TRANSIENT) from exc


def _person(address, recipient: bool = False) -> dict:
    """An email object. SendGrid refuses a recipient name with ``,`` or ``;`` (v3 mail/send
    limitations) unless it is one quoted string, as SendGrid's own libraries send it: the name
    in double quotes, its quotes and backslashes escaped. Other names go verbatim."""
    person = {"email": address.addr_spec}
    if address.display_name:
        name = address.display_name
        if recipient and ("," in name or ";" in name):
            name = f'"{_quote(name)}"'
        person["name"] = name
    return person


def sendgrid_payload(email: OutgoingEmail) -> dict:
    """The v3 mail/send body: text/plain before text/html, our headers, the id as custom_arg."""
    content = [{"type": "text/plain", "value": email.text or " "}]
    if email.html is not None:
        content.append({"type": "text/html", "value": email.html})
    payload = {
        "personalizations": [{"to": [_person(a, recipient=True) for a in email.to]}],
        "from": _person(email.sender),
        "subject": email.subject or " ",
        "content": content,
        "custom_args": {"dbmail_message_id": email.message_id},
    }
    if message_ref := message_ref_of(email.message_id):  # the Event Webhook's events carry it back
        payload["custom_args"][MESSAGE_REF_TAG] = message_ref
    if len(email.reply_to) == 1:
        payload["reply_to"] = _person(email.reply_to[0])
    elif email.reply_to:  # several: reply_to_list (never together with reply_to)
        payload["reply_to_list"] = [_person(a) for a in email.reply_to]
    if email.headers:
        payload["headers"] = dict(email.headers)
    return payload


class _Connections:
    """Kept-alive connections to SendGrid, up to ``keep`` of them idle. urllib opened one per
    email: a TCP and TLS handshake per send, which on the real network costs more than the send.
    Each connection serves one send at a time. http.client follows no redirect (urllib would
    re-send a 301/302/303 as a GET, Authorization and all, to wherever Location points)."""

    def __init__(self, url: str, timeout: float, keep: int):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = f"{parts.scheme}:" if parts.scheme else "a relative"
            raise ConfigurationError(f"DBMAIL_SENDGRID_URL must be http(s)://host[:port], not {shown} URL")
        self.path = (parts.path.rstrip("/") or "") + "/v3/mail/send"
        self._host, self._port, self._https = parts.hostname, parts.port, parts.scheme == "https"
        self._timeout, self._keep = timeout, keep
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (True: it served a send before) or a new one, not connected yet."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self.take_new(), False

    def take_new(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(connection)
                return
        connection.close()


class SendGridTransport:
    def __init__(self, api_key: str, base_url: str = "https://api.sendgrid.com", timeout: float = 10):
        if not api_key:
            raise ConfigurationError(
                "MailProvider is sendgrid but the SendGrid API key (the secret DBMAIL_SENDGRID_API_KEY_SECRET_ARN "
                "names) is empty"
            )
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._connections = _Connections(base_url, timeout, KEPT_CONNECTIONS)

    def send(self, email: OutgoingEmail) -> str:
        body = json.dumps(sendgrid_payload(email)).encode()
        if len(body) >= SENDGRID_MAX_BYTES:
            raise DeliveryError(
                f"message is {len(body)} bytes as SendGrid JSON, over SendGrid's 30 MB limit "
                f"(under {SENDGRID_MAX_BYTES} bytes); not sent",
                kind=FailureKind.PERMANENT,
            )
        connection, reused = self._connections.take()
        try:
            status, headers, answer, reusable = self._post(connection, body)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            if not (reused and isinstance(exc, _STALE)):
                raise _connection_failure(exc) from exc
            # SendGrid closed the idle connection before reading this send: once on a new one
            connection = self._connections.take_new()
            try:
                status, headers, answer, reusable = self._post(connection, body)
            except (OSError, http.client.HTTPException) as again:
                connection.close()
                raise _connection_failure(again) from again
        if reusable:
            self._connections.give_back(connection)
        else:
            connection.close()
        if not 200 <= status < 300:
            raise DeliveryError(
                f"SendGrid HTTP {status}: {_error_detail(status, answer)}",
                kind=sendgrid_failure_kind(status),
                retry_after=retry_after_seconds(headers, time.time()) if status in (429, 503) else None,
            )
        message_id = headers.get("X-Message-Id", "")
        if not message_id:  # accepted all the same: a retry would send it twice
            logger.warning(
                "SendGrid accepted the email without an X-Message-Id", extra={"provider": "sendgrid", "status": status}
            )
        return message_id

    def _post(self, connection: http.client.HTTPConnection, body: bytes):
        """(status, headers, the answer's first bytes, whether the connection may serve again).
        Raises what the connection raises: a refused or failed connect, a reset, a timeout, a
        truncated answer (IncompleteRead), a garbled status line."""
        if connection.sock is None:
            try:
                connection.connect()
            except OSError as exc:  # DNS, refused or failed connect, TLS, a timed-out connect
                raise _Unreachable(exc) from exc
        connection.request("POST", self._connections.path, body=body, headers=self._headers)
        response = connection.getresponse()
        if response.length is not None and response.length <= MAX_ANSWER_BYTES:
            answer = response.read()  # to the end, so that a truncated answer is noticed
            reusable = not response.will_close
        else:  # chunked, unsized or oversized: its start only, and the connection is not kept
            answer, reusable = response.read(MAX_ANSWER_BYTES), False
        return response.status, response.headers, answer, reusable


class _Unreachable(OSError):
    """The connect itself failed: nothing was sent."""

    def __init__(self, cause: OSError):
        super().__init__(str(cause))
        self.cause = cause


# What a kept connection that SendGrid closed while idle raises on its next send
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def _connection_failure(exc: Exception) -> DeliveryError:
    if isinstance(exc, _Unreachable):
        cause = exc.cause
        reason = getattr(cause, "reason", None) or cause.strerror or type(cause).__name__
        return DeliveryError(f"SendGrid unreachable: {reason}", kind=FailureKind.TRANSIENT)
    # a reset, a read timeout, IncompleteRead (a truncated body), a garbled status line
    return DeliveryError(f"SendGrid connection failed: {type(exc).__name__}", kind=FailureKind.TRANSIENT)


def retry_after_seconds(headers, now: float) -> float | None:
    """The wait a 429 or 503 asks for: Retry-After (seconds, or an HTTP date), else SendGrid's
    X-RateLimit-Reset (the epoch second its limit resets); None if neither says, or says
    nonsense. The send service waits at least that long, within SQS's 15 minutes."""
    value = (headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    if value:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError, OverflowError):
            pass
    reset = (headers.get("X-RateLimit-Reset") or "").strip()
    if reset.isdigit():
        return max(0.0, float(reset) - now)
    return None


def sendgrid_failure_kind(status: int) -> FailureKind:
    if status == 429:
        return FailureKind.THROTTLED  # waited for as its Retry-After asks (retry_after_seconds)
    if status in (401, 403) or status >= 500:
        return FailureKind.TRANSIENT  # a bad key (401/403) is fixable, so mail waits for the fix
    if status == 408:
        return FailureKind.TRANSIENT  # the server (or a proxy) gave up waiting for our request
    if 400 <= status < 500:
        return FailureKind.PERMANENT  # 400 (invalid request), 413 (too large), the rest of 4xx
    return FailureKind.TRANSIENT  # a redirect (never followed) or other surprise


def _error_detail(status: int, answer: bytes) -> str:
    """The first 500 characters of SendGrid's JSON error body, addresses redacted."""
    detail = redact_addresses(answer[:500].decode("utf-8", "replace"))
    if 300 <= status < 400:  # the Location is not quoted: it may be anywhere
        return f"redirect not followed (is DBMAIL_SENDGRID_URL right?) {detail}".rstrip()
    return detail


def make_transport(settings: Settings) -> Transport:
    if settings.provider == "sendgrid":
        return SendGridTransport(settings.sendgrid_api_key, settings.sendgrid_url)
    return SesTransport(ses_client(settings.region), settings.configuration_set or None)
