"""Transports against what the providers accept: SendGrid's v3 contract (fake server that
validates it) and SES v2 raw sends (moto, which requires verified identities like SES)."""

from datetime import datetime, timezone
import email
from email import policy

import boto3
import pytest
from moto import mock_aws
from moto.ses.models import ses_backends

from dbmail.compose import compose
from dbmail.errors import DeliveryError
from dbmail.transports import SendGridTransport, SesTransport
from tests.fakes.sendgrid import FakeSendGrid


def outgoing(body="<html><body><p>Dear Zoë</p></body></html>", to=('"Zoë Ng" <zoe@example.net>',)):
    return compose(
        send_from='"Splash Dïrectors" <splash@example.org>', send_to=list(to), subject="Wëlcome ✨", body=body,
        message_id="<dbmail.1@example.org>", date=datetime(2026, 11, 23, tzinfo=timezone.utc),
        envelope_sender="bounces@example.org", special_headers={"Reply-To": "directors@example.org", "X-Program-ID": "7"},
        unsubscribe_url="https://site.org/unsubscribe/t.s",
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


def test_sendgrid_rate_limit_is_a_retryable_failure(sendgrid):
    sendgrid.fail_next(1, status=429, retry_after=1)
    with pytest.raises(DeliveryError) as raised:
        SendGridTransport(sendgrid.api_key, sendgrid.url).send(outgoing())
    assert raised.value.permanent is False


def test_sendgrid_rejection_of_the_request_is_permanent(sendgrid):
    sendgrid.fail_next(1, status=400)
    with pytest.raises(DeliveryError) as raised:
        SendGridTransport(sendgrid.api_key, sendgrid.url).send(outgoing(body="plain"))
    assert raised.value.permanent is True


def test_sendgrid_wrong_key_is_retryable_so_mail_waits_for_the_fix(sendgrid):
    with pytest.raises(DeliveryError, match="401") as raised:
        SendGridTransport("SG.wrong", sendgrid.url).send(outgoing())
    assert raised.value.permanent is False


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
