"""Outgoing mail end to end on the real local stack: DynamoDB Local's stream, moto's SQS and SES,
and the runner playing Lambda. What lands in the outbox is what SES was handed."""

from __future__ import annotations

import email
import json
import time
import uuid
from datetime import UTC, datetime
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from dbmail.client import request_status, submit_request
from dbmail.outgoing.expand import message_id_for
from tests.conftest import recipient

pytestmark = pytest.mark.integration


def outbox_by_message_id(outbox: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in outbox.glob("*.eml"):
        with path.open("rb") as handle:
            found.setdefault(BytesHeaderParser().parse(handle)["Message-ID"], []).append(path)
    return found


def wait_delivered(local_stack, request_id: str, timeout: float = 120) -> dict:
    def settled():
        status = request_status(request_id)
        if status["status"] in ("failed", "expired"):
            return status
        done = status["status"] == "processed" and set(status["emails_by_status"]) <= {"sent", "failed", "expired"}
        return status if done else None

    return local_stack.wait_for(settled, timeout=timeout, interval=0.5)


def delivered_messages(local_stack, store, request_id: str) -> list[email.message.EmailMessage]:
    by_id = outbox_by_message_id(local_stack.outbox)
    messages = []
    for item in store.iter_emails(request_id):
        paths = by_id.get(message_id_for(request_id, item.email_key, item.send_from), [])
        assert len(paths) == 1, f"{item.email_key}: {len(paths)} copies in the outbox"
        messages.append(email.message_from_bytes(paths[0].read_bytes(), policy=policy.default))
    return messages


def test_a_submitted_request_is_delivered_as_correct_mime(local_stack, store):
    # given an HTML request and a plain one, with non-ASCII names and subjects
    people = [
        recipient(1, first_name="Zoë", last_name="Ng"),
        recipient(2, first_name="José", last_name="García", guardian_email=None),
    ]
    html_id = submit_request(
        subject="[Splash] Wëlcome, {{ user.first_name }} ✨",
        msgtext='<html lang="en"><body><h1>Hi {{ user.first_name }}</h1><p>See <a href="https://esp.example.org/c">'
        "your classes</a></p></body></html>",
        recipients=people,
        sendto_fn_name="send_to_self_and_guardian",
        sender="Splash Dïrectors <splash@example.org>",
        special_headers={"Reply-To": " splash@example.org "},
    )
    text_id = submit_request(
        subject="Plain for {{ user.first_name }}",
        msgtext="Dear {{ user.first_name }},\nhello.\n",
        recipients=people,
        sender="splash@example.org",
    )
    # when the stack has delivered them
    assert wait_delivered(local_stack, html_id)["emails_by_status"] == {"sent": 3}
    assert wait_delivered(local_stack, text_id)["emails_by_status"] == {"sent": 2}
    # then each .eml is correct MIME
    for message in delivered_messages(local_stack, store, html_id):
        assert message.get_content_type() == "multipart/alternative"
        text, html = message.get_payload()
        assert text.get_content_type() == "text/plain" and "<h1>" not in text.get_content()
        assert "your classes" in text.get_content() and "https://esp.example.org/c" in text.get_content()
        assert html.get_content_type() == "text/html" and "<h1>Hi" in html.get_content()
        assert message["From"].addresses[0].display_name == "Splash Dïrectors"
        assert message["Subject"].startswith("[Splash] Wëlcome, ") and message["Subject"].endswith("✨")
        assert message["Reply-To"] == "splash@example.org"
        assert message["Return-Path"] == "<bounces@example.org>"
        assert (
            message["List-Unsubscribe"].startswith("<https://")
            and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        )
        assert message["Date"] is not None
    names = sorted(m["To"].addresses[0].display_name for m in delivered_messages(local_stack, store, html_id))
    assert names == ["José García", "Mai Ng1", "Zoë Ng"]
    for message in delivered_messages(local_stack, store, text_id):
        assert message.get_content_type() == "text/plain"
        assert message.get_content().replace("\r\n", "\n").endswith(",\nhello.\n")


def write_raw_request(local_stack, subject: str, msgtext: str, users: list[dict]) -> str:
    """A request written with plain DynamoDB calls, exactly as docs/schema.md describes."""
    dynamodb = local_stack.client("dynamodb")
    env = local_stack.env
    request_id = f"raw-{uuid.uuid4().hex[:12]}"
    items = []
    for user in users:
        item = {
            "request_id": {"S": request_id},
            "recipient_key": {"S": f"u{user['user_id']:010d}"},
            "user_id": {"N": str(user["user_id"])},
            "email": {"S": user["email"]},
            "first_name": {"S": user["first_name"]},
            "last_name": {"S": user["last_name"]},
            "vars": {"S": json.dumps({"get_confirmation_link": f"https://esp.example.org/c/{user['user_id']}"})},
        }
        items.append({"PutRequest": {"Item": item}})
    dynamodb.batch_write_item(RequestItems={env["DBMAIL_RECIPIENT_TABLE"]: items})
    dynamodb.put_item(
        TableName=env["DBMAIL_REQUEST_TABLE"],
        ConditionExpression="attribute_not_exists(request_id)",
        Item={
            "request_id": {"S": request_id},
            "status": {"S": "queued"},
            "created_at": {"S": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
            "subject": {"S": subject},
            "msgtext": {"S": msgtext},
            "sendto_fn_name": {"S": "send_to_self"},
            "sender": {"S": "Splash <splash@example.org>"},
            "message_vars": {"S": json.dumps({"program": {"name": "Splash"}})},
            "recipient_count": {"N": str(len(users))},
        },
    )
    return request_id


def test_a_request_written_straight_into_dynamodb_is_delivered(local_stack, store):
    request_id = write_raw_request(
        local_stack,
        "{{ program.name }} for {{ user.first_name }}",
        "Confirm at {{ user.get_confirmation_link }}",
        [recipient(7), recipient(8)],
    )
    assert wait_delivered(local_stack, request_id)["emails_by_status"] == {"sent": 2}
    bodies = sorted(m.get_content().strip() for m in delivered_messages(local_stack, store, request_id))
    assert bodies == ["Confirm at https://esp.example.org/c/7", "Confirm at https://esp.example.org/c/8"]


def test_a_template_error_fails_its_request_and_later_requests_still_deliver(local_stack, store):
    # given a raw request whose body has a syntax error, then a good one
    bad = write_raw_request(local_stack, "ok", "Dear {{ user.first_name }", [recipient(9)])
    good = write_raw_request(local_stack, "ok", "Dear {{ user.first_name }}", [recipient(10)])
    # then the bad one ends failed, naming the error, and the good one is delivered
    status = wait_delivered(local_stack, bad)
    assert status["status"] == "failed" and "body template syntax error" in status["error"]
    assert wait_delivered(local_stack, good)["emails_by_status"] == {"sent": 1}


def test_stopping_the_runner_mid_expand_delivers_every_email_exactly_once(local_stack, store):
    # given a large request whose expansion is under way
    size = 1200
    request_id = submit_request(
        subject="Hi {{ user.first_name }}",
        msgtext="Dear {{ user.first_name }}",
        recipients=[recipient(i) for i in range(1000, 1000 + size)],
        sender="splash@example.org",
    )
    local_stack.wait_for(lambda: store.get_request(request_id).expand_cursor or None, timeout=60, interval=0.05)
    # when the runner is stopped in the middle of it and started again
    local_stack.stop_runner()
    interrupted = store.get_request(request_id)
    assert interrupted.status == "processing", "the expansion finished before the runner stopped: test not meaningful"
    local_stack.start_runner()
    # then every email is delivered exactly once
    status = wait_delivered(local_stack, request_id, timeout=240)
    assert (status["status"], status["emails"], status["emails_by_status"]) == ("processed", size, {"sent": size})
    assert len(delivered_messages(local_stack, store, request_id)) == size


def test_a_poison_message_goes_to_the_dead_letter_queue_and_does_not_block_the_queue(local_stack, store):
    sqs = local_stack.client("sqs")
    queue_url = local_stack.env["DBMAIL_SEND_QUEUE_URL"]
    dlq_url = local_stack.env["DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL"]
    # given a message no send can understand, queued before a real request
    sqs.send_message(QueueUrl=queue_url, MessageBody="{not json")
    request_id = submit_request(
        subject="after poison", msgtext="x", recipients=[recipient(3000)], sender="splash@example.org"
    )
    # then the real email is delivered and the poison message ends in the DLQ after 3 receives
    assert wait_delivered(local_stack, request_id)["emails_by_status"] == {"sent": 1}

    def poison_in_dlq():
        messages = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, AttributeNames=["All"]).get(
            "Messages", []
        )
        return [m for m in messages if m["Body"] == "{not json"]

    dead = local_stack.wait_for(poison_in_dlq, timeout=60, interval=0.5)
    assert int(dead[0]["Attributes"]["ApproximateReceiveCount"]) >= 3


def runner_peak_rss_mb(local_stack) -> float:
    from dbmail_local import stack

    pid = stack.running_pid(local_stack.state, stack.RUNNER)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM for the runner")


HOSTILE_TEMPLATES = {
    "nested loops": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "huge string": "{{ 'x' * 10**9 }}",
    "recursive macro": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}x{% endmacro %}{{ f(60) }}",
    "padding": "{{ 'x'.ljust(10**9) }}{{ 'y'|center(10**9) }}",
    "doubling": "{% set ns = namespace(x='ab') %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
    "brace width": "{{ '{:>999999999}'.format(1) }}",
}


def test_hostile_templates_fail_alone_within_seconds_and_the_next_request_is_on_time(local_stack, store):
    # given hostile requests written straight into DynamoDB (no dry render), then an ordinary one
    hostile = {
        name: write_raw_request(local_stack, "s", body, [recipient(4000 + n), recipient(4100 + n)])
        for n, (name, body) in enumerate(HOSTILE_TEMPLATES.items())
    }
    started = time.monotonic()
    normal = write_raw_request(local_stack, "after the attacks", "Dear {{ user.first_name }}", [recipient(4500)])
    # then the ordinary one is delivered promptly
    assert wait_delivered(local_stack, normal, timeout=60)["emails_by_status"] == {"sent": 1}
    elapsed = time.monotonic() - started
    # and each hostile one failed on its own, naming the limit it broke, with no email
    for name, request_id in hostile.items():
        status = wait_delivered(local_stack, request_id, timeout=30)
        assert status["status"] == "failed" and "limit" in status["error"], (name, status)
        assert status["emails_by_status"] == {}, name
    assert elapsed < 30, f"the ordinary request waited {elapsed:.1f} s behind the hostile ones"
    assert runner_peak_rss_mb(local_stack) < 512
    print(
        f"\nhostile templates: ordinary request delivered {elapsed:.1f} s after {len(hostile)} attacks; "
        f"runner peak RSS {runner_peak_rss_mb(local_stack):.0f} MB"
    )


def test_every_raw_list_unsubscribe_header_is_a_plain_url_on_the_wire(local_stack, store):
    # given a delivered request whose recipients are website users
    request_id = submit_request(
        subject="Hi",
        msgtext="Dear {{ user.first_name }}",
        recipients=[recipient(4600), recipient(4601)],
        sender="splash@example.org",
    )
    assert wait_delivered(local_stack, request_id)["emails_by_status"] == {"sent": 2}
    # then the raw bytes of each .eml carry the URL itself, not an encoded word
    by_id = outbox_by_message_id(local_stack.outbox)
    for item in store.iter_emails(request_id):
        (path,) = by_id[message_id_for(request_id, item.email_key, item.send_from)]
        raw = path.read_bytes()
        (line,) = [line for line in raw.split(b"\r\n") if line.lower().startswith(b"list-unsubscribe:")]
        assert line.startswith(b"List-Unsubscribe: <https://") and line.endswith(b">") and b"=?" not in line
        assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
