"""SES email receiving: an SMTP server on loopback (aiosmtpd) that plays SES's inbound endpoint.

moto stores receipt rules but never receives mail, so the runner does what SES does with the
template's AWS::SES::ReceiptRule resources (enabled ones, in template order; CloudFormation's
``After`` is not read):

- RCPT TO is accepted when a rule's Recipients match it (a domain, ``.domain`` for its
  subdomains, or a full address; no Recipients: the stack's verified domains) and refused with
  ``550 5.7.1`` otherwise, so nothing is accepted for other domains. Messages may have up to
  45 MB (SES refuses over 40 MB, so the application's own check can be tested); aiosmtpd
  enforces the line length and CRLF framing.
- On DATA it makes an SES message id, adds SES's trace headers (Return-Path, Received,
  X-SES-Spam-Verdict, X-SES-Virus-Verdict) on top of the message, and runs each matching rule's
  actions up to its StopAction: S3Action stores the message at
  ``<BucketName>/<ObjectKeyPrefix><messageId>``; LambdaAction queues SES's receipt event for
  the function (asynchronously, see async_invoke.py). It replies ``250 Ok <messageId>`` once the
  message is stored and the events are queued, as SES accepts first and invokes later.
- The event is SES's (``sam local generate-event ses email-receiving`` has its shape): the
  header list as stored, cut after 10 KB (``headersTruncated``); commonHeaders from the
  message's own headers, those it lacks left out, encoded words decoded; bytes that are not
  UTF-8 read as U+FFFD. Malformed mail still makes an event.

Verdicts are PASS. Local-only headers set them for tests: ``X-Dbmail-Local-Spam-Verdict:
FAIL`` (likewise ``-Virus-``, ``-Spf-``, ``-Dkim-``, ``-Dmarc-``; PASS, FAIL, GRAY or
PROCESSING_FAILED). SES never reads these: they are not a way to test against real SES.
Not emulated: other actions (SNS, Bounce, AddHeader, WorkMail), RequestResponse invocations
(run as Event), ScanEnabled, TlsPolicy, dmarcPolicy.
"""

import asyncio
import io
import logging
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import format_datetime, getaddresses
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from botocore.exceptions import BotoCoreError, ClientError

from .async_invoke import AsyncInvoker
from .cfn import Template, as_bool
from .resources import ses_identities
from .triggers import Runtime, utc_timestamp

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 45 * 1024 * 1024  # SES's limit is 40 MB; more reaches the application's own check
HEADERS_LIMIT = 10 * 1024  # SES truncates the event's header list beyond 10 KB
MESSAGE_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuv"  # SES ids look like lowercase base32hex
MESSAGE_ID_LENGTH = 40
SERVER_NAME = "inbound-smtp.dbmail.local"
DELIVERY_THREADS = 4  # SMTP sessions storing messages at once
VERDICTS = ("spam", "virus", "spf", "dkim", "dmarc")
VERDICT_STATUSES = frozenset({"PASS", "FAIL", "GRAY", "PROCESSING_FAILED"})

_HEADER_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+):(.*)", re.DOTALL)  # RFC 5322 field name, colon
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')


# ---- receipt rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class S3Action:
    bucket: str
    prefix: str


@dataclass(frozen=True)
class LambdaAction:
    function_arn: str
    invocation_type: str


@dataclass(frozen=True)
class ReceiptRule:
    """An enabled receipt rule: its actions before any StopAction, and whether it has one."""

    name: str
    recipients: tuple[str, ...]  # lowercase
    actions: tuple[S3Action | LambdaAction, ...]
    stops: bool

    def matches(self, address: str) -> bool:
        return any(_recipient_matches(entry, address.lower()) for entry in self.recipients)


def _recipient_matches(entry: str, address: str) -> bool:
    """SES's Recipients rules: a full address, a domain, or ``.domain`` for any of its subdomains."""
    domain = address.rpartition("@")[2]
    if "@" in entry:
        return address == entry
    if entry.startswith("."):
        return domain.endswith(entry)
    return domain == entry


def receipt_rules(template: Template) -> list[ReceiptRule]:
    """The template's enabled receipt rules; actions not run locally are logged and skipped."""
    rules = []
    for logical_id in template.resources("AWS::SES::ReceiptRule"):
        rule = template.resolve(template.properties(logical_id))["Rule"]
        name = rule.get("Name", logical_id)
        if not as_bool(rule.get("Enabled", False)):  # SES's default is disabled
            log.info("receipt rule disabled in the template", extra={"rule": name})
            continue
        actions: list[S3Action | LambdaAction] = []
        stops = False
        for action in rule.get("Actions", []):
            ((kind, properties),) = action.items()
            if kind == "StopAction":
                stops = True
                break
            if kind == "S3Action":
                actions.append(S3Action(properties["BucketName"], properties.get("ObjectKeyPrefix", "")))
            elif kind == "LambdaAction":
                actions.append(LambdaAction(properties["FunctionArn"], properties.get("InvocationType", "Event")))
            else:
                log.warning("receipt rule action not run locally", extra={"rule": name, "action": kind})
        recipients = rule.get("Recipients") or ses_identities(template)
        rules.append(ReceiptRule(name, tuple(entry.lower() for entry in recipients), tuple(actions), stops))
    return rules


# ---- the message ------------------------------------------------------------------------


def new_message_id() -> str:
    return "".join(secrets.choice(MESSAGE_ID_ALPHABET) for _ in range(MESSAGE_ID_LENGTH))


def header_fields(raw: bytes) -> list[tuple[str, str]]:
    """The header fields of a message, unfolded, in order; never fails on malformed mail.

    The header block ends at the first empty line or the first line that is neither a field
    nor a continuation (as Python's email parser does). Bytes that are not UTF-8 become U+FFFD.
    """
    fields: list[list[bytes]] = []
    for line in io.BytesIO(raw):  # lazily: the body may be 45 MB
        line = line.rstrip(b"\r\n")
        if not line:
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += line
        elif match := _HEADER_LINE.fullmatch(line):
            fields.append([match.group(1), match.group(2)])
        else:
            break
    return [(name.decode("ascii"), value.strip().decode("utf-8", "replace")) for name, value in fields]


def _decoded(value: str) -> str:
    """RFC 2047 encoded words decoded; the value as it is when they cannot be."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, UnicodeError):
        return value


def _addresses(value: str) -> list[str]:
    """An address-list header as SES lists it: one ``Name <address>`` string per mailbox."""
    mailboxes = []
    for name, address in getaddresses([value]):
        if not address:
            continue
        name = _decoded(name)
        if name and _SPECIALS.search(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        mailboxes.append(f"{name} <{address}>" if name else address)
    return mailboxes or [value]


# The message's own headers that SES copies into commonHeaders, in its order.
_COMMON_HEADERS = (
    ("from", "from", _addresses),
    ("sender", "sender", _addresses),
    ("reply-to", "replyTo", _addresses),
    ("date", "date", str),
    ("to", "to", _addresses),
    ("cc", "cc", _addresses),
    ("bcc", "bcc", _addresses),
    ("message-id", "messageId", str),
    ("subject", "subject", _decoded),
)


def common_headers(fields: list[tuple[str, str]], source: str) -> dict[str, Any]:
    """SES's commonHeaders: the envelope sender and the headers present (absent ones are left out)."""
    first: dict[str, str] = {}
    for name, value in fields:
        first.setdefault(name.lower(), value)
    common: dict[str, Any] = {"returnPath": source}
    for header, key, convert in _COMMON_HEADERS:
        if header in first:
            common[key] = convert(first[header])
    return common


def local_verdicts(fields: list[tuple[str, str]]) -> dict[str, str]:
    """PASS, or what an X-Dbmail-Local-<Kind>-Verdict header of the message asks for (tests only)."""
    asked = {name.lower(): value.strip().upper() for name, value in fields}
    verdicts = {}
    for kind in VERDICTS:
        status = asked.get(f"x-dbmail-local-{kind}-verdict", "PASS")
        verdicts[kind] = status if status in VERDICT_STATUSES else "PASS"
    return verdicts


@dataclass(frozen=True)
class ReceivedMail:
    """One message SES accepted, as it is stored (SES's trace headers on top) and described."""

    message_id: str
    received_at: datetime
    source: str  # MAIL FROM
    destination: list[str]  # every accepted RCPT TO
    content: bytes
    mail: dict[str, Any]  # the event's ``mail`` object
    verdicts: dict[str, str]

    @classmethod
    def accept(cls, source: str, destination: list[str], data: bytes, helo: str, peer_ip: str) -> "ReceivedMail":
        received_at = datetime.now(UTC)
        message_id = new_message_id()
        own_fields = header_fields(data)
        verdicts = local_verdicts(own_fields)
        recipient = f" for {destination[0]}" if len(destination) == 1 else ""
        trace = (
            f"Return-Path: <{source}>\r\n"
            f"Received: from {helo or 'unknown'} ([{peer_ip}]) by {SERVER_NAME} with SMTP id {message_id}"
            f"{recipient}; {format_datetime(received_at)} (UTC)\r\n"
            f"X-SES-Spam-Verdict: {verdicts['spam']}\r\n"
            f"X-SES-Virus-Verdict: {verdicts['virus']}\r\n"
        ).encode()
        content = trace + data
        headers, size = [], 0
        all_fields = header_fields(content)
        for name, value in all_fields:
            size += len(name) + len(value) + 4  # "name: value\r\n"
            if size > HEADERS_LIMIT:
                break
            headers.append({"name": name, "value": value})
        mail = {
            "timestamp": utc_timestamp(received_at),
            "source": source,
            "messageId": message_id,
            "destination": destination,
            "headersTruncated": len(headers) < len(all_fields),
            "headers": headers,
            "commonHeaders": common_headers(own_fields, source),
        }
        return cls(message_id, received_at, source, destination, content, mail, verdicts)

    def receipt_event(self, recipients: list[str], action: LambdaAction) -> dict[str, Any]:
        """SES's Lambda receipt event for the recipients one rule matched."""
        receipt: dict[str, Any] = {
            "timestamp": utc_timestamp(self.received_at),
            "processingTimeMillis": int((datetime.now(UTC) - self.received_at).total_seconds() * 1000),
            "recipients": recipients,
        }
        receipt |= {f"{kind}Verdict": {"status": status} for kind, status in self.verdicts.items()}
        receipt["action"] = {
            "type": "Lambda",
            "functionArn": action.function_arn,
            "invocationType": action.invocation_type,
        }
        record = {"eventSource": "aws:ses", "eventVersion": "1.0", "ses": {"mail": self.mail, "receipt": receipt}}
        return {"Records": [record]}


# ---- the SMTP server --------------------------------------------------------------------


class SmtpFront:
    """The SMTP server (an aiosmtpd handler: ``handle_RCPT``, ``handle_DATA``) for a runner's rules.

    ``invokers`` maps function ARNs to their asynchronous queues; a Lambda action whose function
    is not there (not in the template, or its handler did not load) is skipped.
    """

    def __init__(
        self, rules: list[ReceiptRule], invokers: dict[str, AsyncInvoker], runtime: Runtime, host: str, port: int
    ) -> None:
        self.rules = rules
        self.invokers = invokers
        self.runtime = runtime
        self.address = (host, port)
        self._controller = Controller(
            self, hostname=host, port=port, server_hostname=SERVER_NAME, data_size_limit=MAX_MESSAGE_BYTES
        )
        self._deliveries = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="smtp-delivery")

    def start(self) -> None:
        """Listens once this returns; OSError if the port is taken."""
        self._controller.start()
        log.info("SMTP front for SES receipt rules listening", extra={"smtp": f"{self.address[0]}:{self.address[1]}"})

    def stop(self) -> None:
        """Stops listening and ends open sessions; messages being stored are stored and queued."""
        self._controller.stop()
        self._deliveries.shutdown(wait=True)
        log.info("SMTP front stopped")

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not any(rule.matches(address) for rule in self.rules):
            log.info("recipient refused: no receipt rule matches it")
            return "550 5.7.1 Recipient address rejected: no receipt rule matches it"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer_ip = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        loop = asyncio.get_running_loop()
        try:
            message_id = await loop.run_in_executor(
                self._deliveries,
                self._deliver,
                "" if envelope.mail_from in (None, "<>") else envelope.mail_from,  # <>: the null sender
                list(envelope.rcpt_tos),
                envelope.original_content,
                session.host_name or "",
                peer_ip,
            )
        except (BotoCoreError, ClientError, OSError) as error:
            log.error("message not accepted: storing or queueing it failed", extra={"error": str(error)})
            return "451 4.3.0 Temporary failure storing the message; try again"
        return f"250 Ok {message_id}"

    def _deliver(self, source: str, destination: list[str], data: bytes, helo: str, peer_ip: str) -> str:
        """Runs the matching rules' actions: every S3 action first, then the Lambda events."""
        mail = ReceivedMail.accept(source, destination, data, helo, peer_ip)
        plan = self._matching_rules(destination)
        s3 = self.runtime.client("s3")
        for rule, _ in plan:
            for action in rule.actions:
                if isinstance(action, S3Action):
                    s3.put_object(Bucket=action.bucket, Key=action.prefix + mail.message_id, Body=mail.content)
        for rule, recipients in plan:
            for action in rule.actions:
                invoker = self.invokers.get(action.function_arn) if isinstance(action, LambdaAction) else None
                if invoker is not None:
                    invoker.submit(mail.receipt_event(recipients, action))
        log.info(
            "message accepted",
            extra={
                "message_id": mail.message_id,
                "recipients": len(destination),
                "bytes": len(data),
                "rules": [rule.name for rule, _ in plan],
            },
        )
        return mail.message_id

    def _matching_rules(self, recipients: list[str]) -> list[tuple[ReceiptRule, list[str]]]:
        """Each rule with the recipients it applies to; a StopAction ends the rule set for its recipients."""
        remaining = list(recipients)
        plan = []
        for rule in self.rules:
            matched = [address for address in remaining if rule.matches(address)]
            if not matched:
                continue
            plan.append((rule, matched))
            if rule.stops:
                remaining = [address for address in remaining if address not in matched]
        return plan
