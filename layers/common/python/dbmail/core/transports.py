"""Delivery through SES (v2 SendEmail, raw MIME) or SendGrid (v3 mail/send)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
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


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect. urllib would re-send a 301/302/303 as a GET without the body but with
    the Authorization header, to wherever Location points, and take its 2xx for a send. Refused,
    the 3xx reaches HTTPDefaultErrorHandler and is raised as an HTTPError like any other."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class SendGridTransport:
    def __init__(self, api_key: str, base_url: str = "https://api.sendgrid.com", timeout: float = 10):
        if not api_key:
            raise ConfigurationError(
                "MailProvider is sendgrid but the SendGrid API key (the secret DBMAIL_SENDGRID_API_KEY_SECRET_ARN "
                "names) is empty"
            )
        self._api_key = api_key
        self._url = base_url.rstrip("/") + "/v3/mail/send"
        self._timeout = timeout
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    def send(self, email: OutgoingEmail) -> str:
        body = json.dumps(sendgrid_payload(email)).encode()
        if len(body) >= SENDGRID_MAX_BYTES:
            raise DeliveryError(
                f"message is {len(body)} bytes as SendGrid JSON, over SendGrid's 30 MB limit "
                f"(under {SENDGRID_MAX_BYTES} bytes); not sent",
                kind=FailureKind.PERMANENT,
            )
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                response.read()  # to the end, so that a truncated answer is noticed
                message_id = response.headers.get("X-Message-Id", "")
                if not message_id:  # accepted all the same: a retry would send it twice
                    logger.warning(
                        "SendGrid accepted the email without an X-Message-Id",
                        extra={"provider": "sendgrid", "status": response.status},
                    )
                return message_id
        except urllib.error.HTTPError as exc:
            raise DeliveryError(
                f"SendGrid HTTP {exc.code}: {_error_detail(exc)}", kind=sendgrid_failure_kind(exc.code)
            ) from exc
        except urllib.error.URLError as exc:  # DNS, refused or failed connect, TLS, a timed-out send
            raise DeliveryError(f"SendGrid unreachable: {exc.reason}", kind=FailureKind.TRANSIENT) from exc
        except (OSError, http.client.HTTPException) as exc:
            # urllib raises getresponse() and read() errors raw: RemoteDisconnected, a reset,
            # a read timeout, IncompleteRead (a truncated body), a garbled status line
            raise DeliveryError(
                f"SendGrid connection failed: {type(exc).__name__}", kind=FailureKind.TRANSIENT
            ) from exc


def sendgrid_failure_kind(status: int) -> FailureKind:
    if status == 429:
        return FailureKind.THROTTLED  # Retry-After and X-RateLimit-Reset are not honoured
    if status in (401, 403) or status >= 500:
        return FailureKind.TRANSIENT  # a bad key (401/403) is fixable, so mail waits for the fix
    if status == 408:
        return FailureKind.TRANSIENT  # the server (or a proxy) gave up waiting for our request
    if 400 <= status < 500:
        return FailureKind.PERMANENT  # 400 (invalid request), 413 (too large), the rest of 4xx
    return FailureKind.TRANSIENT  # a redirect (never followed) or other surprise


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The first 500 characters of SendGrid's JSON error body, if it can be read."""
    try:
        detail = redact_addresses(exc.read(500).decode("utf-8", "replace"))
        if 300 <= exc.code < 400:  # the Location is not quoted: it may be anywhere
            return f"redirect not followed (is DBMAIL_SENDGRID_URL right?) {detail}".rstrip()
        return detail
    except (OSError, http.client.HTTPException):
        return "(error body unreadable)"
    finally:
        exc.close()


def make_transport(settings: Settings) -> Transport:
    if settings.provider == "sendgrid":
        return SendGridTransport(settings.sendgrid_api_key, settings.sendgrid_url)
    return SesTransport(ses_client(settings.region), settings.configuration_set or None)
