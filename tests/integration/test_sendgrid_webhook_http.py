"""SendGrid's signed Event Webhook end to end on the real local stack: the runner's function URL,
the verification key read from the stack's Secrets Manager at cold start, a signed batch posted
twice over HTTP, queued both times on FeedbackQueue and recorded once by the feedback function;
unsigned and badly signed posts refused."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest

from dbmail.client import submit_request
from dbmail.core.secrets import UNSET
from dbmail.core.settings import website_settings
from dbmail.feedback.store import SuppressionStore
from dbmail.outgoing.emails import message_id_for
from tests.conftest import recipient
from tests.integration.test_outgoing import outbox_by_message_id
from tests.unit.test_sendgrid_webhook import SendGrid

pytestmark = pytest.mark.integration


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def sendgrid(local_stack):
    """SendGrid's key pair, its verification key in the stack's secret, the runner restarted to read it."""
    signer = SendGrid()
    secrets = local_stack.client("secretsmanager")
    secret_id = local_stack.env["DBMAIL_SENDGRID_WEBHOOK_PUBLIC_KEY_SECRET_ARN"]
    secrets.put_secret_value(SecretId=secret_id, SecretString=signer.verification_key)
    local_stack.stop_runner()
    local_stack.start_runner()
    try:
        yield signer
    finally:
        secrets.put_secret_value(SecretId=secret_id, SecretString=UNSET)  # read at the next cold start


def test_a_signed_bounce_posted_twice_is_recorded_once_and_bad_posts_are_refused(local_stack, store, sendgrid):
    url = local_stack.env["DBMAIL_LOCAL_SENDGRIDEVENTSFUNCTION_URL"]
    # given an email of ours, sent
    request_id = submit_request(
        subject="Hi", msgtext="Dear {{ user.first_name }}", recipients=[recipient(5200)], sender="splash@example.org"
    )
    (item,) = local_stack.wait_for(lambda: list(store.iter_emails(request_id)), timeout=60)
    message_id = message_id_for(request_id, item.email_key, item.send_from)
    local_stack.wait_for(lambda: message_id in outbox_by_message_id(local_stack.outbox), timeout=60)
    email = store.get_email(request_id, item.email_key)
    # and SendGrid's report that it bounced
    event = {
        "email": "user5200@example.net",
        "timestamp": int(time.time()),
        "event": "bounce",
        "type": "bounce",
        "status": "5.1.1",
        "reason": "550 5.1.1 The email account that you tried to reach does not exist",
        "sg_event_id": "bounce-5200",
        "sg_message_id": "sg-5200",
        "message_ref": email.message_ref,
    }
    body = json.dumps([event]).encode()
    # when it is posted unsigned, or signed with another key, it is refused and nothing is recorded
    assert post(url, body, {"Content-Type": "application/json"})[0] == 401
    assert post(url, body, SendGrid().headers(body, at=datetime.now(UTC)))[0] == 403
    suppressions = SuppressionStore(website_settings())
    assert not suppressions.is_suppressed("user5200@example.net")
    # when SendGrid posts it, signed, and (a retry) posts it again
    first = post(url, body, sendgrid.headers(body, at=datetime.now(UTC)))
    second = post(url, body, sendgrid.headers(body, at=datetime.now(UTC)))
    # then both are queued for the feedback function, which records the bounce once
    assert first == second == (200, {"events": 1, "outcomes": {"queued": 1}})
    queue_url = local_stack.env["DBMAIL_LOCAL_FEEDBACKQUEUE_URL"]
    sqs = local_stack.client("sqs")

    def recorded_and_drained():
        email = store.get_email(request_id, item.email_key)
        counts = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
        waiting = int(counts["ApproximateNumberOfMessages"]) + int(counts["ApproximateNumberOfMessagesNotVisible"])
        return email if email.status == "bounced" and not waiting else None

    email = local_stack.wait_for(recorded_and_drained, timeout=60, interval=0.5)
    assert email.bounce_type == "permanent"
    assert {event for event in email.feedback_events if event.startswith("sendgrid:")} == {"sendgrid:bounce-5200"}
    entry = suppressions.get("user5200@example.net")
    assert (entry.reason, entry.source) == ("bounce", "sendgrid")
