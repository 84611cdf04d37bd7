"""The function URL handlers (unsubscribe, sendgrid_events) fed the sample events in events/, with a
fresh token or signature put in, as Lambda's function URLs invoke them."""

from __future__ import annotations

import base64
import copy
import json
import os
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from dbmail import wiring
from dbmail.core import secrets
from dbmail.core.unsubscribe import make_token
from tests.conftest import function_settings, load_event
from tests.handlers.conftest import load_handler
from tests.unit.test_sendgrid_webhook import SendGrid


def with_token(event: dict, token: str) -> dict:
    event = copy.deepcopy(event)
    path = f"/unsubscribe/{token}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    return event


@pytest.fixture
def unsubscribe(moto_stack):
    settings = function_settings("unsubscribe")
    return load_handler("unsubscribe"), settings.unsubscribe_secret, wiring.suppression_store(settings)


def test_the_sample_one_click_post_unsubscribes_with_a_minimal_answer(unsubscribe, context):
    handler, secret, suppressions = unsubscribe
    # when the sample RFC 8058 POST arrives with a token for user 4800's address
    token = make_token(secret, 4800, "zayan@example.net")
    response = handler(with_token(load_event("unsubscribe_post.json"), token), context)
    # then it answers 200 with one line, no page and no cookie, and the address is suppressed
    assert response["statusCode"] == 200 and response["body"] == "unsubscribed\n"
    assert response["headers"]["Content-Type"] == "text/plain; charset=utf-8"
    assert response["headers"]["Cache-Control"] == "no-store" and not response.get("cookies")
    entry = suppressions.get("zayan@example.net")
    assert (entry.reason, entry.source, entry.user_id) == ("unsubscribe", "unsubscribe", 4800)


def test_the_sample_get_shows_the_page_and_changes_nothing(unsubscribe, context):
    handler, secret, suppressions = unsubscribe
    response = handler(
        with_token(load_event("unsubscribe_get.json"), make_token(secret, 4800, "zayan@example.net")), context
    )
    assert response["statusCode"] == 200 and response["headers"]["Content-Type"] == "text/html; charset=utf-8"
    assert '<form method="post"' in response["body"] and "zayan@example.net" in response["body"]
    assert response["headers"]["Content-Security-Policy"].startswith("default-src 'none'")
    assert response["headers"]["Referrer-Policy"] == "no-referrer"
    assert response["headers"]["X-Content-Type-Options"] == "nosniff"
    assert not suppressions.is_suppressed("zayan@example.net")


@pytest.mark.parametrize(
    "make, status",
    [
        (lambda secret: make_token(secret, 4800, "zayan@example.net", now=datetime.now(UTC) - timedelta(days=61)), 410),
        (lambda secret: make_token("x" * 40, 4800, "zayan@example.net"), 403),
        (lambda secret: load_event("unsubscribe_post.json")["rawPath"].rpartition("/")[2], 400),
    ],
)
def test_a_bad_token_is_a_4xx_page_and_nothing_is_added(unsubscribe, context, make, status):
    handler, secret, suppressions = unsubscribe
    response = handler(with_token(load_event("unsubscribe_post.json"), make(secret)), context)
    assert response["statusCode"] == status and "Nothing was changed." in response["body"]
    assert response["headers"]["Content-Type"] == "text/html; charset=utf-8"
    assert not suppressions.is_suppressed("zayan@example.net")


def test_another_path_is_an_html_404(unsubscribe, context):
    handler, _, _ = unsubscribe
    event = copy.deepcopy(load_event("unsubscribe_get.json"))
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/"
    response = handler(event, context)
    assert response["statusCode"] == 404 and "<title>Not found</title>" in response["body"]


@pytest.fixture
def sendgrid(moto_stack):
    """SendGrid's key pair, its verification key in the stack's secret, and the handler cold-started."""
    signer = SendGrid()
    boto3.client("secretsmanager", region_name="us-east-1").put_secret_value(
        SecretId=os.environ["DBMAIL_SENDGRID_WEBHOOK_PUBLIC_KEY_SECRET_ARN"], SecretString=signer.verification_key
    )
    secrets.clear()
    return signer, load_handler("sendgrid_events")


def signed(event: dict, signer: SendGrid, body: bytes | None = None) -> dict:
    event = copy.deepcopy(event)
    body = event["body"].encode() if body is None else body
    event["body"] = body.decode()
    for name, value in signer.headers(body, at=datetime.now(UTC)).items():
        event["headers"][name.lower()] = value
    return event


def test_the_sample_sendgrid_batch_is_verified_and_queued_for_the_feedback_function(sendgrid, context, moto_stack):
    signer, handler = sendgrid
    response = handler(signed(load_event("sendgrid_events.json"), signer), context)
    # the delivery is queued on FeedbackQueue; the open is a type dbmail does not record
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"events": 2, "outcomes": {"queued": 1, "skipped": 1}}
    assert response["headers"]["Cache-Control"] == "no-store"
    url = moto_stack.template.queue_url(moto_stack.template.physical_name("FeedbackQueue"))
    (message,) = moto_stack.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert json.loads(message["Body"])["sendgrid"]["event"] == "delivered"


def test_the_sample_sendgrid_batch_with_the_samples_own_signature_is_refused(sendgrid, context):
    _, handler = sendgrid
    event = copy.deepcopy(load_event("sendgrid_events.json"))
    event["headers"]["x-twilio-email-event-webhook-timestamp"] = str(int(datetime.now(UTC).timestamp()))
    response = handler(event, context)
    assert response["statusCode"] == 403 and "does not verify" in response["body"]


def test_a_base64_encoded_sendgrid_body_and_a_get_are_handled(sendgrid, context):
    signer, handler = sendgrid
    event = signed(load_event("sendgrid_events.json"), signer)
    event["body"], event["isBase64Encoded"] = base64.b64encode(event["body"].encode()).decode(), True
    assert handler(event, context)["statusCode"] == 200
    event["requestContext"]["http"]["method"] = "GET"
    assert handler(event, context)["statusCode"] == 405
