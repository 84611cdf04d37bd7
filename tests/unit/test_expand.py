"""Expanding a request: one TextOfEmail per address, idempotent, resumable, failing cleanly."""

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from pynamodb.exceptions import PutError

from dbmail import wiring
from dbmail.client import request_status, submit_request
from dbmail.core.clock import utcnow
from dbmail.core.errors import ExpansionIncomplete
from dbmail.core.models import bind_models
from dbmail.core.settings import Settings
from dbmail.core.statuses import EmailStatus, RequestStatus
from dbmail.outgoing.emails import message_ref_for
from dbmail.outgoing.expand import BATCH_RECIPIENTS, RECIPIENT_FIELDS, Outcome, prepare
from dbmail.outgoing.queue import QueuedEmail
from dbmail.outgoing.render import UserContext, build_context, compile_message
from dbmail.outgoing.store import Store
from tests.conftest import drain, function_settings, recipient


def submit(n=3, **kwargs):
    args = {
        "subject": "Hi {{ user.first_name }}",
        "msgtext": "Dear {{ user.first_name }} {{ program.name }}",
        "recipients": [recipient(i) for i in range(1, n + 1)],
        "sendto_fn_name": "send_to_self_and_guardian",
        "sender": "Splash <splash@example.org>",
        "var_dict": {"program": {"name": "Splash"}},
    }
    args.update(kwargs)
    return submit_request(**args)


def test_one_email_per_address_rendered_and_queued(moto_stack):
    # given a request for 3 users, one without a guardian
    rid = submit(recipients=[recipient(1), recipient(2, guardian_email=None), recipient(3)])
    # when it is expanded
    assert (
        wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True) == Outcome.PROCESSED
    )
    # then 5 emails exist, each rendered for its user, with its message_ref and without its body
    store = Store(moto_stack.settings)
    emails = list(store.iter_emails(rid))
    assert len(emails) == 5
    assert {e.subject for e in emails} == {"Hi Zoë"}
    assert {e.send_to for e in emails if e.recipient_key == "u0000000002"} == {'"Zoë Ng2" <user2@example.net>'}
    assert all(e.msgtext is None and e.send_from == "Splash <splash@example.org>" for e in emails)
    assert all(e.message_ref == message_ref_for(rid, e.email_key) for e in emails)
    # and 5 messages carry the rendered emails, in the priority lane (a small request)
    queued = [
        QueuedEmail.from_body(m["Body"]) for m in drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url)
    ]
    assert sorted(q.email_key for q in queued) == sorted(e.email_key for e in emails)
    assert {(q.subject, q.msgtext, q.priority) for q in queued} == {("Hi Zoë", "Dear Zoë Splash", True)}
    assert drain(moto_stack.sqs, moto_stack.settings.send_queue_url) == []
    status = request_status(rid)
    assert (status["status"], status["recipients"], status["emails"], status["skipped_no_address"]) == (
        "processed",
        3,
        5,
        0,
    )


def test_expanding_again_creates_no_duplicates(moto_stack):
    rid = submit()
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:a", takeover=True)
    # when the same stream record is delivered again
    assert (
        wiring.expander(function_settings("expand")).expand(rid, owner="stream:b", takeover=True)
        == Outcome.ALREADY_DONE
    )
    assert len(drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url)) == 6


def test_an_interrupted_expansion_resumes_without_duplicates(moto_stack):
    # given a request bigger than one chunk whose first expansion runs out of time after a chunk
    n = BATCH_RECIPIENTS + 50
    rid = submit(n=n, sendto_fn_name="")
    with pytest.raises(ExpansionIncomplete):
        wiring.expander(function_settings("expand")).expand(
            rid, owner="stream:first", takeover=True, time_left=lambda: 0
        )
    assert Store(moto_stack.settings).get_request(rid).status == RequestStatus.PROCESSING
    # when the stream retries it
    assert (
        wiring.expander(function_settings("expand")).expand(rid, owner="stream:retry", takeover=True)
        == Outcome.PROCESSED
    )
    # then every user has exactly one email and one queued message
    bodies = [m["Body"] for m in drain(moto_stack.sqs, moto_stack.settings.send_queue_url)]
    assert len(bodies) == len(set(bodies)) == n
    assert request_status(rid)["emails"] == n


def test_a_resumed_chunk_does_not_reset_an_email_already_sent(moto_stack):
    # given an expansion that wrote a chunk but crashed before checkpointing it
    rid = submit(n=2, sendto_fn_name="")
    store = Store(moto_stack.settings)
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:a", takeover=True)
    email = store.get_email(rid, "u0000000001#0")
    store.mark_sent(email, utcnow(), "p-1", "<m@x>")
    store.models.MessageRequest(rid).update(
        actions=[
            store.models.MessageRequest.status.set(RequestStatus.PROCESSING),
            store.models.MessageRequest.expand_cursor.remove(),
        ]
    )
    # when it is resumed
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:b", takeover=True)
    # then the sent email stays sent
    assert store.get_email(rid, "u0000000001#0").status == "sent"


@pytest.mark.parametrize(
    "attribute, value, message",
    [
        ("msgtext", "Dear {{ user.first_name ", "body template syntax error"),
        ("sendto_fn_name", "send_to_parents", "unknown send-to function 'send_to_parents'"),
        ("recipient_count", 10, "write every recipient before the request item"),
    ],
)
def test_a_bad_request_fails_with_the_error_named_and_queues_nothing(moto_stack, attribute, value, message):
    # given a request changed behind the client's validation (as a raw writer could)
    rid = submit()
    store = Store(moto_stack.settings)
    Request = store.models.MessageRequest
    Request(rid).update(actions=[getattr(Request, attribute).set(value)])
    # when expand runs
    assert wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True) == Outcome.FAILED
    # then it is failed with the error named, and nothing was queued
    request = store.get_request(rid)
    assert request.status == "failed" and message in request.error
    assert drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url) == []


def test_a_future_processed_by_waits_and_an_old_request_expires(moto_stack):
    later = submit(processed_by=utcnow() + timedelta(hours=1))
    assert (
        wiring.expander(function_settings("expand")).expand(later, owner="stream:t", takeover=True) == Outcome.SCHEDULED
    )
    assert Store(moto_stack.settings).get_request(later).status == RequestStatus.QUEUED
    old = submit()
    store = Store(moto_stack.settings)
    Request = store.models.MessageRequest
    Request(old).update(actions=[Request.created_at.set(utcnow() - timedelta(days=8))])
    assert wiring.expander(function_settings("expand")).expand(old, owner="stream:t", takeover=True) == Outcome.EXPIRED
    assert store.get_request(old).status == RequestStatus.EXPIRED


def test_a_live_lease_held_by_the_schedule_is_not_taken_by_the_stream(moto_stack):
    rid = submit()
    store = Store(moto_stack.settings)
    now = utcnow()
    assert store.claim_request(rid, "schedule:x", now, now + timedelta(minutes=5), takeover=False)
    assert wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True) == Outcome.BUSY


def test_a_raw_item_without_status_is_expanded_and_one_without_created_at_fails_clearly(moto_stack):
    store = Store(moto_stack.settings)
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    store.put_recipients([store.models.EmailRequest(request_id="raw-1", recipient_key="u1", email="a@example.net")])
    base = {
        "request_id": {"S": "raw-1"},
        "subject": {"S": "s"},
        "msgtext": {"S": "b"},
        "sender": {"S": "splash@example.org"},
        "recipient_count": {"N": "1"},
    }
    dynamodb.put_item(
        TableName=moto_stack.settings.request_table,
        Item={**base, "created_at": {"S": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")}},
    )
    assert (
        wiring.expander(function_settings("expand")).expand("raw-1", owner="stream:t", takeover=True)
        == Outcome.PROCESSED
    )
    dynamodb.put_item(TableName=moto_stack.settings.request_table, Item={**base, "request_id": {"S": "raw-2"}})
    assert (
        wiring.expander(function_settings("expand")).expand("raw-2", owner="stream:t", takeover=True) == Outcome.FAILED
    )
    assert "created_at is required" in store.get_request("raw-2").error


def test_a_template_that_breaks_a_limit_fails_its_request_alone_and_at_once(moto_stack):
    # given a request whose template is harmless for the sample recipient but explodes for the second one
    hostile = submit(
        n=3,
        sendto_fn_name="",
        msgtext="{% for i in range(user.loops) %}{% for j in range(user.loops) %}{% endfor %}{% endfor %}done",
        recipients=[
            dict(recipient(1), vars={"loops": 2}),
            dict(recipient(2), vars={"loops": 99999}),
            dict(recipient(3), vars={"loops": 2}),
        ],
    )
    normal = submit(n=2, sendto_fn_name="")
    # when both are expanded
    assert (
        wiring.expander(function_settings("expand")).expand(hostile, owner="stream:t", takeover=True) == Outcome.FAILED
    )
    assert (
        wiring.expander(function_settings("expand")).expand(normal, owner="stream:t", takeover=True)
        == Outcome.PROCESSED
    )
    # then the hostile one failed with the limit named, before writing any of its emails
    status = request_status(hostile)
    assert status["status"] == "failed" and "iteration limit" in status["error"]
    assert status["emails_by_status"] == {}
    assert request_status(normal)["emails_by_status"] == {"queued": 2}


@pytest.mark.parametrize(
    "msgtext",
    [
        "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 10**9 }}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    ],
    ids=["nested loops", "huge string", "recursive macro"],
)
def test_submit_refuses_a_template_that_breaks_a_limit_and_writes_nothing(moto_stack, msgtext):
    from dbmail.core.errors import TemplateLimitExceeded

    with pytest.raises(TemplateLimitExceeded, match="limit"):
        submit(n=5, msgtext=msgtext)
    recipients = moto_stack.template.physical_name("EmailRequestTable")
    assert boto3.client("dynamodb", region_name="us-east-1").scan(TableName=recipients)["Count"] == 0


def test_a_request_item_that_cannot_be_read_is_recorded_failed_not_retried(moto_stack):
    # given a raw request item whose special_headers is not JSON
    table = moto_stack.template.physical_name("MessageRequestTable")
    boto3.client("dynamodb", region_name="us-east-1").put_item(
        TableName=table,
        Item={
            "request_id": {"S": "raw-bad"},
            "created_at": {"S": utcnow().isoformat()},
            "status": {"S": "queued"},
            "special_headers": {"S": "{not json"},
            "subject": {"S": "s"},
            "msgtext": {"S": "b"},
        },
    )
    # when it is expanded, the expansion returns (the stream record succeeds) with the request failed
    assert (
        wiring.expander(function_settings("expand")).expand("raw-bad", owner="stream:t", takeover=True)
        == Outcome.FAILED
    )
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=table, Key={"request_id": {"S": "raw-bad"}}
    )["Item"]
    assert item["status"]["S"] == "failed" and "malformed request item" in item["error"]["S"]


def test_a_prepared_request_renders_each_recipient_as_its_unbound_templates_do():
    # given a Django request whose templates mix the recipient's fields with its shared names
    settings = Settings(
        allowed_sender_domains=("example.org",),
        default_sender="Splash <splash@example.org>",
        email_host_sender="info@example.org",
        site_url="https://esp.example.org",
    )
    models = bind_models(settings)
    request = models.MessageRequest(
        request_id="r1",
        subject="{{ program.name }} for {{ user.first_name }}",
        msgtext="<html>{{ user }}: {{ program.name }} {{ program.start }} {{ request.public_url }}"
        " {{ EMAIL_HOST_SENDER }} {{ nothing }} {{ user.link }}</html>",
        sender="Splash <splash@example.org>",
        created_at=utcnow(),
        message_vars={"program": {"name": "Tom & Jerry's", "start": "2026-11-28"}, "user": "not the recipient"},
        template_dialect="django",
    )
    prepared = prepare(request, settings)
    unbound = compile_message(request.subject, request.msgtext, dialect="django")
    # when recipients whose values need escaping are rendered
    for fields, user_vars in (
        ({"first_name": "O'Brien <&>", "last_name": '"Ng"', "email": "a@example.net"}, {"link": "https://x/?a&b"}),
        ({"first_name": "Zoë", "email": "z@example.net"}, None),
    ):
        item = models.EmailRequest(request_id="r1", recipient_key="k", vars=user_vars, **fields)
        context = build_context(
            UserContext({f: fields.get(f) for f in RECIPIENT_FIELDS}, user_vars),
            prepared.request_context,
            settings.email_host_sender,
            prepared.message_vars,
        )
        # then each email is what the unbound templates write for the recipient's whole context
        assert prepared.render(item)[1:] == unbound.render(context)
    # and the shared names were rendered once, when the request was prepared
    assert {part[0] for part in prepared.compiled.body_template.parts if type(part) is not str} == {"user"}


@pytest.mark.parametrize(
    "attributes",
    [
        {"user_id": 7, "subject": "Hi", "sent_by": None, "error": None},
        {"user_id": None, "subject": "", "status": EmailStatus.FAILED, "error": "TemplateInvalid: x"},
        {"user_id": 12345678901, "subject": "Zoë", "sent_by": datetime(2026, 11, 28, 9, 30, tzinfo=UTC), "tries": 2},
        {"user_id": 3, "feedback_events": {"e1", "e2"}, "queued_at": datetime(2026, 12, 1, 23, 59, 59)},
    ],
)
def test_a_new_email_is_the_item_pynamodb_would_write(moto_stack, attributes):
    # given the attributes the expansion gives a new email
    store = Store(moto_stack.settings)
    given = {
        "request_id": "r1",
        "email_key": "u0000000007.0",
        "recipient_key": "u0000000007",
        "send_to": "Zoë <zoe@example.net>",
        "send_from": "Splash <splash@example.org>",
        "created_at": datetime(2026, 11, 1, tzinfo=UTC),
        "queued_at": utcnow(),
        **attributes,
    }
    # when the store builds its item without the model, then it is the model's own serialization
    email = store.new_email(**given)
    model = store.models.TextOfEmail(**{**given, "message_ref": email.item["message_ref"]["S"]})
    assert email.item == model.serialize()
    assert (email.request_id, email.email_key, email.status) == ("r1", "u0000000007.0", model.status)


def test_a_new_email_refuses_what_the_model_would(moto_stack):
    store = Store(moto_stack.settings)
    with pytest.raises(ValueError, match="no attributes"):
        store.new_email(request_id="r1", email_key="k", bogus=1)
    with pytest.raises(ValueError, match="send_to cannot be None"):
        store.new_email(
            request_id="r1", email_key="k", recipient_key="k", send_from="a@example.org", created_at=utcnow()
        )


def _emails(store: Store, n: int) -> list:
    now = utcnow()
    return [
        store.new_email(
            request_id="r-unprocessed",
            email_key=f"u{i:010d}#0",
            recipient_key=f"u{i:010d}",
            send_to=f"user{i}@example.net",
            send_from="splash@example.org",
            created_at=now,
            queued_at=now,
        )
        for i in range(n)
    ]


def test_emails_dynamodb_leaves_unprocessed_are_written_again_after_a_pause(moto_stack, monkeypatch):
    # given DynamoDB leaving the last 5 items of each of the first two calls unprocessed (throttled)
    store = Store(moto_stack.settings)
    table = store.models.TextOfEmail._get_connection()
    write, calls, pauses = type(table).batch_write_item, [], []

    def throttled(self, put_items=None, **kwargs):
        calls.append(len(put_items))
        if len(calls) > 2:
            return write(self, put_items=put_items, **kwargs)
        write(self, put_items=put_items[:-5], **kwargs)
        left = [{"PutRequest": {"Item": item}} for item in put_items[-5:]]
        return {"UnprocessedItems": {self.table_name: left}}

    monkeypatch.setattr(type(table), "batch_write_item", throttled)
    monkeypatch.setattr("dbmail.outgoing.store.time.sleep", pauses.append)
    # when 25 emails are put, then the rest is written again, pausing longer each time
    store.put_emails(_emails(store, 25))
    assert calls == [25, 5, 5] and pauses == [0.05, 0.1]
    assert store.email_status_counts("r-unprocessed") == {"queued": 25}


def test_emails_left_unprocessed_after_every_attempt_fail_the_put(moto_stack, monkeypatch):
    store = Store(moto_stack.settings)
    table = store.models.TextOfEmail._get_connection()
    monkeypatch.setattr(
        type(table),
        "batch_write_item",
        lambda self, put_items=None, **kw: {
            "UnprocessedItems": {self.table_name: [{"PutRequest": {"Item": i}} for i in put_items]}
        },
    )
    monkeypatch.setattr("dbmail.outgoing.store.time.sleep", lambda seconds: None)
    with pytest.raises(PutError, match="25 of 25 left unprocessed"):
        store.put_emails(_emails(store, 25))
