"""Transports against what the providers accept: SendGrid's v3 contract (fake server that
validates it), SES v2 raw sends (moto, which requires verified identities like SES), and how
every provider failure is classified (botocore's Stubber; small hostile HTTP servers)."""

import email
import socket
import threading
import time
from datetime import UTC, datetime
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from botocore.stub import Stubber
from moto import mock_aws
from moto.ses.models import ses_backends

from dbmail.core.compose import compose
from dbmail.core.errors import DeliveryError, FailureKind
from dbmail.core.settings import Settings
from dbmail.core.transports import SendGridTransport, SesTransport, make_transport, sendgrid_payload
from tests.fakes.sendgrid import FakeSendGrid

UNSUBSCRIBE = "https://site.org/unsubscribe/t.s"


def outgoing(body="<html><body><p>Dear Zoë</p></body></html>", to=('"Zoë Ng" <zoe@example.net>',)):
    return compose(
        send_from='"Splash Dïrectors" <splash@example.org>',
        send_to=list(to),
        subject="Wëlcome ✨",
        body=body,
        message_id="<dbmail.1@example.org>",
        date=datetime(2026, 11, 23, tzinfo=UTC),
        envelope_sender="bounces@example.org",
        special_headers={"Reply-To": "directors@example.org", "X-Program-ID": "7"},
        unsubscribe_url=UNSUBSCRIBE,
    )


@pytest.fixture
def sendgrid():
    with FakeSendGrid() as fake:
        yield fake


def test_sendgrid_request_satisfies_the_v3_contract(sendgrid):
    # given an HTML email with non-ASCII names, Reply-To and unsubscribe headers
    message_id = SendGridTransport(sendgrid.api_key, sendgrid.url).send(outgoing())
    # then the fake (which validates the documented contract) accepted it
    assert message_id == sendgrid.message_ids[0]
    body = sendgrid.accepted[0]
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["personalizations"][0]["to"] == [{"email": "zoe@example.net", "name": "Zoë Ng"}]
    assert body["reply_to"] == {"email": "directors@example.org"}
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert body["headers"]["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"


def test_sendgrid_payload_carries_a_long_unsubscribe_url_verbatim():
    # given an unsubscribe URL far longer than a header line's 78 columns
    url = "https://site.org/unsubscribe/" + "t" * 250
    email_ = compose(
        send_from="splash@example.org",
        send_to=["zoe@example.net"],
        subject="Hi",
        body="x",
        message_id="<m@example.org>",
        date=datetime(2026, 11, 23, tzinfo=UTC),
        envelope_sender="bounces@example.org",
        unsubscribe_url=url,
    )
    # then the JSON header value is exactly <url>: not folded, not encoded
    assert sendgrid_payload(email_)["headers"]["List-Unsubscribe"] == f"<{url}>"


@pytest.mark.parametrize(
    "status, kind",
    [
        (429, FailureKind.THROTTLED),
        (503, FailureKind.TRANSIENT),
        (500, FailureKind.TRANSIENT),
        (400, FailureKind.PERMANENT),
        (413, FailureKind.PERMANENT),
        (404, FailureKind.PERMANENT),
    ],
)
def test_sendgrid_http_errors_are_classified(sendgrid, status, kind):
    # given SendGrid answering the next send with an error status
    sendgrid.fail_next(1, status=status, retry_after=1 if status == 429 else None)
    # when a message is sent
    with pytest.raises(DeliveryError, match=f"HTTP {status}") as raised:
        SendGridTransport(sendgrid.api_key, sendgrid.url).send(outgoing())
    # then the failure kind tells the send service whether to wait, retry or give up
    assert raised.value.kind is kind
    assert raised.value.permanent is (kind is FailureKind.PERMANENT)
    # and the message names no address from the email
    assert "@" not in str(raised.value)


def test_sendgrid_wrong_key_is_retryable_so_mail_waits_for_the_fix(sendgrid):
    with pytest.raises(DeliveryError, match="401") as raised:
        SendGridTransport("SG.wrong", sendgrid.url).send(outgoing())
    assert raised.value.kind is FailureKind.TRANSIENT


class _Hostile(BaseHTTPRequestHandler):
    """Reads the request, then misbehaves as ``server.behaviour`` says."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        behaviour = self.server.behaviour
        if behaviour == "hang":  # accept, read, never answer
            self.server.release.wait(10)
        elif behaviour == "truncate":  # promise 1000 bytes, send 9, hang up
            self.send_response(202)
            self.send_header("X-Message-Id", "sg-1")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"truncated")
        # "close": no answer at all; for every behaviour the connection is then closed
        self.close_connection = True


@pytest.fixture
def hostile():
    """Start a hostile server with the given behaviour; yields its base URL."""
    servers = []

    def start(behaviour):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
        server.daemon_threads = True
        server.behaviour, server.release = behaviour, threading.Event()
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "behaviour, error",
    [
        ("close", "RemoteDisconnected"),
        ("truncate", "IncompleteRead"),
    ],
)
def test_sendgrid_dropped_connection_is_transient(hostile, behaviour, error):
    # given a server that hangs up without an answer, or in the middle of its body
    url = hostile(behaviour)
    # when a message is sent
    with pytest.raises(DeliveryError, match=error) as raised:
        SendGridTransport("SG.key", url, timeout=5).send(outgoing())
    # then it is a transient failure, not an unclassified exception
    assert raised.value.kind is FailureKind.TRANSIENT


def test_sendgrid_that_never_answers_times_out_as_transient(hostile):
    # given a server that accepts the request and never answers
    url = hostile("hang")
    started = time.monotonic()
    # when a message is sent with a short timeout
    with pytest.raises(DeliveryError, match="TimeoutError") as raised:
        SendGridTransport("SG.key", url, timeout=0.3).send(outgoing())
    # then it gives up within the timeout, transiently
    assert time.monotonic() - started < 3
    assert raised.value.kind is FailureKind.TRANSIENT


def test_sendgrid_refused_connection_is_transient():
    # given a port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # when a message is sent there
    with pytest.raises(DeliveryError, match="unreachable") as raised:
        SendGridTransport("SG.key", f"http://127.0.0.1:{port}", timeout=2).send(outgoing())
    # then it is transient
    assert raised.value.kind is FailureKind.TRANSIENT


def stubbed_ses():
    """A real sesv2 client with botocore's own retries off, so each stubbed answer is final."""
    client = boto3.client(
        "sesv2",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    return client, Stubber(client)


@pytest.mark.parametrize(
    "code, status, message, kind",
    [
        ("TooManyRequestsException", 429, "Too many requests", FailureKind.THROTTLED),
        ("Throttling", 400, "Maximum sending rate exceeded.", FailureKind.THROTTLED),
        ("ThrottlingException", 400, "Rate exceeded", FailureKind.THROTTLED),
        ("LimitExceededException", 400, "Daily message quota exceeded", FailureKind.THROTTLED),
        ("LimitExceeded", 400, "Limit exceeded", FailureKind.THROTTLED),
        ("SomethingNew", 400, "Maximum sending rate exceeded.", FailureKind.THROTTLED),
        ("SomethingNew", 429, "slow down", FailureKind.THROTTLED),
        (
            "MessageRejected",
            400,
            "Email address is not verified. The following identities failed the check "
            "in region US-EAST-1: splash@example.org",
            FailureKind.PERMANENT,
        ),
        ("BadRequestException", 400, "Invalid input", FailureKind.PERMANENT),
        ("MailFromDomainNotVerifiedException", 400, "not verified", FailureKind.PERMANENT),
        ("NotFoundException", 404, "Configuration set does not exist", FailureKind.PERMANENT),
        ("AccountSuspendedException", 400, "suspended", FailureKind.PERMANENT),
        ("SendingPausedException", 400, "paused", FailureKind.PERMANENT),
        ("InternalFailure", 500, "Internal error", FailureKind.TRANSIENT),
        ("ServiceUnavailable", 503, "Service unavailable", FailureKind.TRANSIENT),
        ("SomethingNew", 400, "never seen", FailureKind.TRANSIENT),
    ],
)
def test_ses_errors_are_classified(code, status, message, kind):
    # given SES answering SendEmail with an error
    client, stubber = stubbed_ses()
    stubber.add_client_error("send_email", service_error_code=code, service_message=message, http_status_code=status)
    # when a message is sent
    with stubber, pytest.raises(DeliveryError, match=code) as raised:
        SesTransport(client).send(outgoing())
    # then the failure kind tells the send service whether to wait, retry or give up
    assert raised.value.kind is kind
    # and the error names no email address (SES quotes the unverified sender)
    assert "@" not in str(raised.value)
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="https://email.us-east-1.amazonaws.com"),
        ReadTimeoutError(endpoint_url="https://email.us-east-1.amazonaws.com"),
    ],
)
def test_ses_unreachable_is_transient(error):
    # given a client whose call fails below the HTTP layer
    class Unreachable:
        def send_email(self, **kwargs):
            raise error

    # when a message is sent
    with pytest.raises(DeliveryError, match=type(error).__name__) as raised:
        SesTransport(Unreachable()).send(outgoing())
    # then it is transient
    assert raised.value.kind is FailureKind.TRANSIENT


def test_make_transport_builds_an_ses_client_with_adaptive_retries_and_timeouts():
    # given the SES provider
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test")
    settings = Settings(
        request_table="r",
        recipient_table="rc",
        email_table="e",
        send_queue_url="q",
        allowed_sender_domains=("example.org",),
        default_sender="splash@example.org",
        bounces_address="bounces@example.org",
        email_host_sender="host@example.org",
        site_url="https://site.org",
        region="us-east-1",
        provider="ses",
    )
    # when the transport is made
    config = make_transport(settings, boto3_session=session)._ses.meta.config
    # then botocore retries adaptively, 3 attempts in all, with timeouts that fit a 30 s Lambda
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 3}
    assert (config.connect_timeout, config.read_timeout) == (3, 5)


@mock_aws
def test_ses_sends_raw_mime_from_a_verified_identity():
    # given SES with the sender's domain verified
    ses = boto3.client("sesv2", region_name="us-east-1")
    ses.create_email_identity(EmailIdentity="example.org")
    # when the message is sent
    SesTransport(ses).send(outgoing())
    # then SES received the full MIME message (moto keeps it in its backend)
    raw = ses_backends["123456789012"]["us-east-1"].sent_messages[-1].raw_data
    message = email.message_from_string(raw, policy=policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "Wëlcome ✨"


@mock_aws
def test_ses_refuses_an_unverified_sender_permanently():
    ses = boto3.client("sesv2", region_name="us-east-1")
    with pytest.raises(DeliveryError) as raised:
        SesTransport(ses).send(outgoing())
    assert raised.value.permanent is True
