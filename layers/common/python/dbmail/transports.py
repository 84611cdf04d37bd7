"""Delivery through SES (v2 SendEmail, raw MIME) or SendGrid (v3 mail/send)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError

from dbmail.compose import OutgoingEmail, to_mime
from dbmail.errors import ConfigurationError, DeliveryError, FailureKind
from dbmail.settings import Settings

# SES error codes that retrying will not fix.
SES_PERMANENT = frozenset(
    {"MessageRejected", "BadRequestException", "MailFromDomainNotVerifiedException", "NotFoundException",
     "AccountSuspendedException", "InvalidParameterValue"}
)
MAX_MESSAGE_BYTES = 40 * 1024 * 1024  # SES v2's limit for a raw message


class Transport(Protocol):
    def send(self, email: OutgoingEmail) -> str:
        """Deliver one message; return the provider's message id or raise DeliveryError."""


class SesTransport:
    def __init__(self, sesv2_client, configuration_set: str | None = None):
        self._ses = sesv2_client
        self._configuration_set = configuration_set

    def send(self, email: OutgoingEmail) -> str:
        return self.send_raw(to_mime(email), email.sender.addr_spec, [a.addr_spec for a in email.to],
                             feedback_address=email.envelope_sender)

    def send_raw(self, raw: bytes, from_address: str, destinations: list[str] | None,
                 feedback_address: str | None = None) -> str:
        """Send MIME bytes as they are (also used to forward inbound mail). Without
        ``destinations`` SES sends to the addresses in the To, Cc and Bcc headers."""
        if len(raw) > MAX_MESSAGE_BYTES:
            raise DeliveryError(f"message is {len(raw)} bytes, over SES's {MAX_MESSAGE_BYTES}", kind=FailureKind.PERMANENT)
        kwargs = {"FromEmailAddress": from_address, "Content": {"Raw": {"Data": raw}}}
        if destinations:
            kwargs["Destination"] = {"ToAddresses": destinations}
        if feedback_address:
            kwargs["FeedbackForwardingEmailAddress"] = feedback_address
        if self._configuration_set:
            kwargs["ConfigurationSetName"] = self._configuration_set
        try:
            return self._ses.send_email(**kwargs)["MessageId"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            raise DeliveryError(f"SES {code}: {exc.response.get('Error', {}).get('Message', '')}",
                                kind=FailureKind.PERMANENT if code in SES_PERMANENT else FailureKind.TRANSIENT) from exc
        except BotoCoreError as exc:
            raise DeliveryError(f"SES unreachable: {type(exc).__name__}") from exc


def _person(address) -> dict:
    person = {"email": address.addr_spec}
    if address.display_name:
        person["name"] = address.display_name
    return person


def sendgrid_payload(email: OutgoingEmail) -> dict:
    """The v3 mail/send body: text/plain before text/html, our headers, the id as custom_arg."""
    content = [{"type": "text/plain", "value": email.text or " "}]
    if email.html is not None:
        content.append({"type": "text/html", "value": email.html})
    payload = {
        "personalizations": [{"to": [_person(a) for a in email.to]}],
        "from": _person(email.sender),
        "subject": email.subject or " ",
        "content": content,
        "custom_args": {"dbmail_message_id": email.message_id},
    }
    if email.reply_to:
        payload["reply_to"] = _person(email.reply_to[0])
    if email.headers:
        payload["headers"] = dict(email.headers)
    return payload


class SendGridTransport:
    def __init__(self, api_key: str, base_url: str = "https://api.sendgrid.com", timeout: float = 10):
        if not api_key:
            raise ConfigurationError("MailProvider is sendgrid but DBMAIL_SENDGRID_API_KEY is empty")
        self._api_key = api_key
        self._url = base_url.rstrip("/") + "/v3/mail/send"
        self._timeout = timeout

    def send(self, email: OutgoingEmail) -> str:
        request = urllib.request.Request(
            self._url,
            data=json.dumps(sendgrid_payload(email)).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return response.headers.get("X-Message-Id", "")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            permanent = exc.code in (400, 413)  # a bad key (401/403) is fixable: let SQS retry
            raise DeliveryError(f"SendGrid HTTP {exc.code}: {detail}", kind=FailureKind.PERMANENT if permanent else FailureKind.TRANSIENT) from exc
        except (urllib.error.URLError, TimeoutError) as exc:
            raise DeliveryError(f"SendGrid unreachable: {exc}") from exc


def make_transport(settings: Settings, boto3_session=None) -> Transport:
    if settings.provider == "sendgrid":
        return SendGridTransport(settings.sendgrid_api_key, settings.sendgrid_url)
    import boto3

    session = boto3_session or boto3.session.Session()
    return SesTransport(session.client("sesv2", region_name=settings.region))
