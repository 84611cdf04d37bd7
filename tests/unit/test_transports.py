"""Transports against what the providers accept: SendGrid's v3 contract (pytest-httpserver
answering as SendGrid does, every request checked by tests/sendgrid_contract.py), SES v2 raw
sends (moto, which requires verified identities like SES), and how every provider failure is
classified (botocore's Stubber; the hostile servers of tests/unit/conftest.py)."""

import dataclasses
import email
import json
import socket
import time
from datetime import UTC, datetime
from email import policy

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from botocore.stub import Stubber
from moto import mock_aws
from moto.ses.models import ses_backends
from werkzeug import Request, Response

from dbmail.core.compose import compose
from dbmail.core.errors import ConfigurationError, DeliveryError, FailureKind
from dbmail.core.settings import Settings
from dbmail.core.transports import (
    SENDGRID_MAX_BYTES,
    SendGridTransport,
    SesTransport,
    make_transport,
    retry_after_seconds,
)
from tests.sendgrid_contract import PATH, v3_mail_send_problems

API_KEY = "SG.test-key.for-dbmail"
UNSUBSCRIBE = "https://site.org/unsubscribe/t.s"


def outgoing(
    body="<html><body><p>Dear Zoë</p></body></html>",
    to=('"Zoë Ng" <zoe@example.net>',),
    subject="Wëlcome ✨",
    special_headers=(("Reply-To", "directors@example.org"), ("X-Program-ID", "7")),
    unsubscribe_url=UNSUBSCRIBE,
):
    return compose(
        send_from='"Splash Dïrectors" <splash@example.org>',
        send_to=list(to),
        subject=subject,
        body=body,
        message_id="<dbmail.1@example.org>",
        date=datetime(2026, 11, 23, tzinfo=UTC),
        envelope_sender="bounces@example.org",
        special_headers=dict(special_headers),
        unsubscribe_url=unsubscribe_url,
    )


def sendgrid_error(status, message, field=None, headers=None):
    """SendGrid's error answer: ``{"errors": [{"message", "field", "help"}, ...]}``."""
    body = {"errors": [{"message": message, "field": field, "help": None}]}
    return Response(json.dumps(body), status, headers, content_type="application/json")


# What SendGrid (or the gateway in front of it) answers a mail send with, by status.
ANSWERS = {
    400: lambda: sendgrid_error(400, "zoe@example.net is repeated in the personalization", "personalizations.0"),
    401: lambda: sendgrid_error(401, "authorization grant is invalid, expired, or revoked"),
    403: lambda: sendgrid_error(403, "access forbidden"),
    404: lambda: sendgrid_error(404, "resource not found"),
    408: lambda: Response("Request Timeout", 408, content_type="text/plain"),
    413: lambda: sendgrid_error(413, "the email, attachments included, must be under 30MB"),
    429: lambda: sendgrid_error(
        429,
        "too many requests",
        headers={
            "Retry-After": "60",
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time()) + 60),
        },
    ),
    500: lambda: sendgrid_error(500, "internal error"),
    502: lambda: Response("<html><body><h1>502 Bad Gateway</h1></body></html>", 502, content_type="text/html"),
    503: lambda: Response("<html><body>Service Unavailable</body></html>", 503, {"Retry-After": "30"}, "text/html"),
}


def serve_sendgrid(httpserver, answer=None, *, key=API_KEY):
    """Answer the next mail send as SendGrid would: 401 for another key, 400 listing what breaks
    the contract, else ``answer`` (by default 202, no body, an X-Message-Id). Returns the base URL."""

    def handle(request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {key}":
            return ANSWERS[401]()
        problems = v3_mail_send_problems(request.method, request.path, request.headers, request.get_data())
        if problems:
            errors = [{"message": problem, "field": None, "help": None} for problem in problems]
            return Response(json.dumps({"errors": errors}), 400, content_type="application/json")
        return answer or Response("", 202, {"X-Message-Id": "sg-msg-1"})

    httpserver.expect_oneshot_request(PATH, method="POST").respond_with_handler(handle)
    return httpserver.url_for("").rstrip("/")


def posted(httpserver) -> list[dict]:
    """The JSON bodies the product posted, each request checked against SendGrid's contract."""
    httpserver.check_assertions()  # nothing reached a path or method without a handler
    for request, _ in httpserver.log:
        assert v3_mail_send_problems(request.method, request.path, request.headers, request.get_data()) == []
    return [json.loads(request.get_data()) for request, _ in httpserver.log]


def test_sendgrid_gets_an_html_email_as_v3_json(httpserver):
    # given an HTML email with non-ASCII names and subject, Reply-To, a special header and unsubscribe
    url = serve_sendgrid(httpserver)
    # when it is sent
    provider_id = SendGridTransport(API_KEY, url).send(outgoing())
    # then SendGrid's X-Message-Id is the provider's id
    assert provider_id == "sg-msg-1"
    ((request, _),) = httpserver.log
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    # and the body is exactly this: text/plain before text/html, Reply-To as reply_to, the other
    # headers verbatim, our Message-ID as a custom arg. No envelope sender, Date or Message-ID
    # header: SendGrid uses its own bounce address and writes those headers itself.
    assert posted(httpserver) == [
        {
            "personalizations": [{"to": [{"email": "zoe@example.net", "name": "Zoë Ng"}]}],
            "from": {"email": "splash@example.org", "name": "Splash Dïrectors"},
            "subject": "Wëlcome ✨",
            "content": [
                {"type": "text/plain", "value": "Dear Zoë\n"},
                {"type": "text/html", "value": "<html><body><p>Dear Zoë</p></body></html>"},
            ],
            "custom_args": {"dbmail_message_id": "<dbmail.1@example.org>"},
            "reply_to": {"email": "directors@example.org"},
            "headers": {
                "X-Program-ID": "7",
                "List-Unsubscribe": f"<{UNSUBSCRIBE}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        }
    ]


def test_sendgrid_gets_a_plain_email_without_subject_once_per_address(httpserver):
    # given a plain-text email with no subject, no headers, and one address given twice
    email_ = outgoing(
        body="Hi Zoë,\nsee you Sunday.",
        to=("zoe@example.net", "Zoe <ZOE@example.net>", "kim@example.net"),
        subject="",
        special_headers=(),
        unsubscribe_url=None,
    )
    # when it is sent
    SendGridTransport(API_KEY, serve_sendgrid(httpserver)).send(email_)
    # then there is one text/plain part, a blank subject (SendGrid requires one) and each address once
    (body,) = posted(httpserver)
    assert body["content"] == [{"type": "text/plain", "value": "Hi Zoë,\nsee you Sunday."}]
    assert body["subject"] == " "
    assert body["personalizations"] == [{"to": [{"email": "zoe@example.net"}, {"email": "kim@example.net"}]}]
    assert "headers" not in body and "reply_to" not in body


def test_sendgrid_gets_a_long_unsubscribe_url_verbatim(httpserver):
    # given an unsubscribe URL far longer than a header line's 78 columns
    url = "https://site.org/unsubscribe/" + "t" * 250
    SendGridTransport(API_KEY, serve_sendgrid(httpserver)).send(outgoing(unsubscribe_url=url))
    # then the JSON header value is exactly <url>: not folded, not encoded
    (body,) = posted(httpserver)
    assert body["headers"]["List-Unsubscribe"] == f"<{url}>"


@pytest.mark.parametrize(
    "status, kind, detail",
    [
        (400, FailureKind.PERMANENT, "<address> is repeated"),
        (401, FailureKind.TRANSIENT, "authorization grant"),
        (403, FailureKind.TRANSIENT, "access forbidden"),
        (404, FailureKind.PERMANENT, "resource not found"),
        (408, FailureKind.TRANSIENT, "Request Timeout"),
        (413, FailureKind.PERMANENT, "under 30MB"),
        (429, FailureKind.THROTTLED, "too many requests"),
        (500, FailureKind.TRANSIENT, "internal error"),
        (502, FailureKind.TRANSIENT, "Bad Gateway"),
        (503, FailureKind.TRANSIENT, "Service Unavailable"),
    ],
)
def test_sendgrid_http_errors_are_classified(httpserver, status, kind, detail):
    # given SendGrid answering the next send with an error
    url = serve_sendgrid(httpserver, ANSWERS[status]())
    # when a message is sent
    with pytest.raises(DeliveryError, match=f"SendGrid HTTP {status}: ") as raised:
        SendGridTransport(API_KEY, url).send(outgoing())
    # then the failure kind tells the send service whether to wait, retry or give up
    assert raised.value.kind is kind
    assert raised.value.permanent is (kind is FailureKind.PERMANENT)
    # and the error carries SendGrid's explanation, with no address from it or the email
    assert detail in str(raised.value)
    assert "@" not in str(raised.value)
    # and the transport tried once: retrying (after Retry-After or not) is the send service's job
    assert len(posted(httpserver)) == 1


@pytest.mark.parametrize("status, asked", [(429, 60), (503, 30), (500, None), (400, None)])
def test_sendgrid_says_how_long_to_wait_after_a_429_or_503(httpserver, status, asked):
    # given SendGrid answering with its Retry-After (429: 60 s, 503: 30 s) or without one
    url = serve_sendgrid(httpserver, ANSWERS[status]())
    # when a message is sent, then the failure carries the wait it asked for
    with pytest.raises(DeliveryError) as raised:
        SendGridTransport(API_KEY, url).send(outgoing())
    assert raised.value.retry_after == asked


@pytest.mark.parametrize(
    "headers, seconds",
    [
        ({"Retry-After": "120"}, 120),
        ({"Retry-After": "Thu, 01 Jan 2026 00:02:00 GMT"}, 120),
        ({"Retry-After": "Thu, 01 Jan 2026 00:00:00 GMT"}, 0),  # a date past: no wait
        ({"X-RateLimit-Reset": "1767225645"}, 45),  # SendGrid's epoch second of the reset
        ({"Retry-After": "soon", "X-RateLimit-Reset": "1767225610"}, 10),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_a_retry_after_is_read_as_seconds_an_http_date_or_sendgrids_reset(headers, seconds):
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()  # 1767225600
    assert retry_after_seconds(headers, now) == seconds


def test_sendgrid_wrong_key_is_retryable_so_mail_waits_for_the_fix(httpserver):
    url = serve_sendgrid(httpserver, key=API_KEY)
    with pytest.raises(DeliveryError, match="HTTP 401") as raised:
        SendGridTransport("SG.wrong", url).send(outgoing())
    assert raised.value.kind is FailureKind.TRANSIENT
    assert len(posted(httpserver)) == 1


def settings(**overrides):
    values = {
        "request_table": "r",
        "recipient_table": "rc",
        "email_table": "e",
        "send_queue_url": "q",
        "allowed_sender_domains": ("example.org",),
        "default_sender": "splash@example.org",
        "bounces_address": "bounces@example.org",
        "email_host_sender": "host@example.org",
        "site_url": "https://site.org",
        "region": "us-east-1",
        "provider": "ses",
    }
    return Settings(**(values | overrides))


def test_make_transport_sends_through_the_configured_sendgrid(httpserver):
    # given the SendGrid provider, its key and its URL
    url = serve_sendgrid(httpserver)
    transport = make_transport(settings(provider="sendgrid", sendgrid_api_key=API_KEY, sendgrid_url=url))
    # when the made transport sends, SendGrid at that URL gets the email with that key
    assert transport.send(outgoing()) == "sg-msg-1"
    assert len(posted(httpserver)) == 1


def test_make_transport_refuses_sendgrid_without_a_key():
    with pytest.raises(ConfigurationError, match="DBMAIL_SENDGRID_API_KEY"):
        make_transport(settings(provider="sendgrid", sendgrid_api_key=""))


def contract_kept(hostile):
    for request in hostile.requests:
        assert v3_mail_send_problems(*request) == []
    return len(hostile.requests)


@pytest.mark.parametrize(
    "behaviour, error",
    [
        ("close", "RemoteDisconnected"),
        ("truncate", "IncompleteRead"),
        ("reset", "ConnectionResetError"),
        ("garble", "BadStatusLine"),
    ],
)
def test_sendgrid_dropped_connection_is_transient(hostile, behaviour, error):
    # given a server that hangs up without an answer or in the middle of its body, aborts the
    # connection, or answers with something that is not HTTP
    url = hostile(behaviour)
    # when a message is sent
    with pytest.raises(DeliveryError, match=error) as raised:
        SendGridTransport(API_KEY, url, timeout=5).send(outgoing())
    # then it is a transient failure, not an unclassified exception
    assert raised.value.kind is FailureKind.TRANSIENT
    assert contract_kept(hostile) == 1


def test_sendgrid_that_never_answers_times_out_as_transient(hostile):
    # given a server that accepts the request and never answers
    url = hostile("hang")
    started = time.monotonic()
    # when a message is sent with a short timeout
    with pytest.raises(DeliveryError, match="TimeoutError") as raised:
        SendGridTransport(API_KEY, url, timeout=0.3).send(outgoing())
    # then it gives up within the timeout, transiently
    assert time.monotonic() - started < 3
    assert raised.value.kind is FailureKind.TRANSIENT
    assert contract_kept(hostile) == 1


def test_sendgrid_refused_connection_is_transient():
    # given a port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # when a message is sent there
    with pytest.raises(DeliveryError, match="unreachable") as raised:
        SendGridTransport(API_KEY, f"http://127.0.0.1:{port}", timeout=2).send(outgoing())
    # then it is transient
    assert raised.value.kind is FailureKind.TRANSIENT


@pytest.mark.parametrize("url", ["ftp://api.sendgrid.com", "api.sendgrid.com", "https://"])
def test_a_sendgrid_url_that_is_not_http_is_refused_at_the_start(url):
    with pytest.raises(ConfigurationError, match="DBMAIL_SENDGRID_URL must be http"):
        SendGridTransport(API_KEY, url)


def test_sendgrid_sends_one_after_another_on_one_kept_connection(hostile):
    # given SendGrid keeping its connections alive
    url = hostile("keep")
    transport = SendGridTransport(API_KEY, url, timeout=5)
    # when three emails are sent one after another
    ids = [transport.send(outgoing()) for _ in range(3)]
    # then each was accepted, all on one TCP connection (no handshake per email), each to the contract
    assert ids == ["sg-1", "sg-2", "sg-3"]
    assert hostile.servers[0].connections == 1
    assert contract_kept(hostile) == 3


def test_sendgrid_that_dropped_an_idle_connection_gets_the_send_on_a_new_one(hostile):
    # given SendGrid that drops each connection after answering, without saying so
    url = hostile("idle-close")
    transport = SendGridTransport(API_KEY, url, timeout=5)
    assert transport.send(outgoing()) == "sg-1"
    time.sleep(0.1)  # the server has closed the kept connection by now
    # when the next email goes out on the connection kept from the first
    provider_id = transport.send(outgoing())
    # then it is sent once, on a new connection: the dead one cost no try and sent nothing
    assert provider_id == "sg-2"
    assert hostile.servers[0].connections == 2
    assert contract_kept(hostile) == 2


def test_a_failure_on_a_new_sendgrid_connection_is_not_tried_again(hostile):
    # given SendGrid that hangs up without answering, on the first connection of a transport
    url = hostile("close")
    # when an email is sent, then it fails transiently after one request: nothing is retried
    # at once on a connection that had not served before (the send service retries later)
    with pytest.raises(DeliveryError, match="RemoteDisconnected"):
        SendGridTransport(API_KEY, url, timeout=5).send(outgoing())
    assert contract_kept(hostile) == 1
    assert hostile.servers[0].connections == 1


@pytest.mark.parametrize(
    "to, name",
    [
        ('"Ng, Zoë" <zoe@example.net>', '"Ng, Zoë"'),
        ('"Ng; Zoë \\"Z\\" \\\\o/" <zoe@example.net>', '"Ng; Zoë \\"Z\\" \\\\o/"'),
    ],
)
def test_sendgrid_gets_a_recipient_name_with_a_comma_or_semicolon_quoted(httpserver, to, name):
    # given a recipient whose display name holds ',' or ';' (which SendGrid refuses bare)
    SendGridTransport(API_KEY, serve_sendgrid(httpserver)).send(outgoing(to=(to,)))
    # then the name goes as one quoted string, its quotes and backslashes escaped, and is accepted
    (body,) = posted(httpserver)
    assert body["personalizations"] == [{"to": [{"email": "zoe@example.net", "name": name}]}]


def test_sendgrid_gets_every_reply_to_address(httpserver):
    # given two Reply-To addresses
    email_ = outgoing(special_headers={"Reply-To": "Ann <a@example.org>, b@example.org"}.items())
    SendGridTransport(API_KEY, serve_sendgrid(httpserver)).send(email_)
    # then both go as reply_to_list (one alone goes as reply_to: see the first test)
    (body,) = posted(httpserver)
    assert body["reply_to_list"] == [{"email": "a@example.org", "name": "Ann"}, {"email": "b@example.org"}]
    assert "reply_to" not in body


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_sendgrid_redirect_is_a_failure_and_the_key_goes_nowhere_else(httpserver, status):
    # given SendGrid's URL redirecting to a place that would accept anything
    elsewhere = httpserver.url_for("/elsewhere")
    url = serve_sendgrid(httpserver, Response("", status, {"Location": elsewhere}))
    httpserver.expect_request("/elsewhere").respond_with_response(Response("", 202, {"X-Message-Id": "moved"}))
    # when a message is sent
    with pytest.raises(DeliveryError, match=f"SendGrid HTTP {status}: redirect not followed") as raised:
        SendGridTransport(API_KEY, url).send(outgoing())
    # then it is a failure, never a send, retried like any surprise (the URL may be fixed)
    assert raised.value.kind is FailureKind.TRANSIENT
    assert API_KEY not in str(raised.value) and "elsewhere" not in str(raised.value)
    # and the Location target received nothing: neither the email nor the key
    assert [request.path for request, _ in httpserver.log] == [PATH]


def test_a_sendgrid_send_without_a_message_id_is_sent_with_a_warning(httpserver, monkeypatch):
    from dbmail.core import transports

    warned = []
    monkeypatch.setattr(transports.logger, "warning", lambda message, **kw: warned.append((message, kw["extra"])))
    # given SendGrid accepting the email without an X-Message-Id
    url = serve_sendgrid(httpserver, Response("", 202))
    # when it is sent, it counts as sent (retrying would send it twice), with no provider id
    assert SendGridTransport(API_KEY, url).send(outgoing()) == ""
    assert len(posted(httpserver)) == 1
    # and a structured warning says so, naming no address
    ((message, extra),) = warned
    assert "X-Message-Id" in message
    assert extra == {"provider": "sendgrid", "status": 202}


def test_a_message_over_sendgrids_30_mb_fails_permanently_before_the_call(httpserver):
    # given a message whose v3 JSON would be 30 MB or more (SES would take up to 40 MB)
    big = dataclasses.replace(outgoing(), text="x" * SENDGRID_MAX_BYTES, html=None)
    httpserver.expect_request(PATH).respond_with_response(Response("", 202, {"X-Message-Id": "big"}))
    # when it is sent
    with pytest.raises(DeliveryError, match="over SendGrid's 30 MB limit") as raised:
        SendGridTransport(API_KEY, httpserver.url_for("")).send(big)
    # then it fails at once, and SendGrid was never called
    assert raised.value.kind is FailureKind.PERMANENT
    assert httpserver.log == []


# The contract check itself (tests/sendgrid_contract.py), briefly.

VALID = {
    "personalizations": [{"to": [{"email": "zoe@example.net", "name": "Zoë"}]}],
    "from": {"email": "splash@example.org"},
    "subject": "Hi",
    "content": [{"type": "text/plain", "value": "x"}, {"type": "text/html", "value": "<p>x</p>"}],
}
JSON_HEADERS = {"Authorization": "Bearer SG.k", "Content-Type": "application/json"}


def problems_of(body, headers=JSON_HEADERS):
    return v3_mail_send_problems("POST", PATH, headers, json.dumps(body).encode())


def test_the_contract_accepts_a_documented_send():
    assert problems_of(VALID) == []
    # the subject may move into every personalization
    per_personalization = [{"to": [{"email": "a@example.net"}], "subject": "s"}]
    assert (
        problems_of({k: v for k, v in VALID.items() if k != "subject"} | {"personalizations": per_personalization})
        == []
    )


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"personalizations": []}, "personalizations: must be a list of 1 to 1000"),
        ({"personalizations": [{"to": [{"email": f"u{n}@example.net"} for n in range(1001)]}]}, "1001 recipients"),
        (
            {"personalizations": [{"to": [{"email": "a@x.org"}], "bcc": [{"email": "A@x.org"}]}]},
            "bcc[0]: address repeated",
        ),
        ({"personalizations": [{"to": [{"email": "a@x.org", "name": "Ng, Zoë"}]}]}, "may not contain ';' or ','"),
        ({"subject": ""}, "subject: must be a non-empty string"),
        (
            {"content": [{"type": "text/html", "value": "h"}, {"type": "text/plain", "value": "t"}]},
            "text/plain must come first",
        ),
        ({"content": [{"type": "", "value": "t"}]}, "content[0].type: must be a non-empty string"),
        ({"headers": {"X-Ok": "1", "dkim-signature": "v=1"}}, "headers.dkim-signature: reserved"),
        ({"headers": {"X-Count": 7}}, "headers.X-Count: value must be a string"),
        ({"custom_args": {"id": 7}}, "custom_args: must be an object of string values"),
        ({"reply-to": {"email": "a@x.org"}}, "reply-to: not a v3 mail/send parameter"),
    ],
)
def test_the_contract_names_what_a_send_breaks(change, problem):
    assert any(problem in found for found in problems_of(VALID | change)), problems_of(VALID | change)


def test_the_contract_checks_the_http_request():
    problems = v3_mail_send_problems("PUT", "/v3/mail/sent", {"Authorization": "token SG.k"}, b"\xff")
    assert len(problems) == 4 and problems[-1] == "body: must be UTF-8 JSON"


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


def test_make_transport_builds_an_ses_client_with_adaptive_retries_and_timeouts(monkeypatch):
    # given the SES provider
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    # when the transport is made
    config = make_transport(settings())._ses.meta.config
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
