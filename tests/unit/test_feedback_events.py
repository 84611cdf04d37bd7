"""Provider feedback parsed into FeedbackEvents: SES event publishing JSON of every type we take
(shaped as SES publishes it), the SNS envelope, SendGrid Event Webhook objects, and hostile input."""

import copy
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbmail.feedback.events import (
    MAX_BODY_CHARS,
    FeedbackInvalid,
    FeedbackKind,
    from_sendgrid_event,
    from_ses_event,
    message_ref_of,
    parse_body,
)
from tests.conftest import load_event

REF = "78a66884dccea2aa1a364c5b881ff745"


def sample(index: int) -> dict:
    """The SES events of events/feedback_sqs.json: 0 a permanent Bounce, 1 a Delivery."""
    return json.loads(load_event("feedback_sqs.json")["Records"][index]["body"])


def ses(event_type: str, detail_key: str | None, detail: dict | None) -> dict:
    """An SES event of ``event_type`` on the sample bounce's mail object."""
    body = {"eventType": event_type, "mail": sample(0)["mail"]}
    if detail_key:
        body[detail_key] = detail
    return body


def test_a_permanent_bounce_names_its_email_recipient_and_diagnostic_without_addresses():
    event = from_ses_event(sample(0))
    assert event.kind is FeedbackKind.BOUNCED and event.source == "ses"
    assert event.recipients == ("user1@example.net",)
    assert event.bounce_type == "permanent"
    assert event.message_ref == REF
    assert event.provider_message_id == "0100018c2b7f1f3e-5b1a2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d-000000"
    assert event.event_id == "ses:0100018c2b7f2a11-8a3c9b1e-5d7f-4c1a-9e2b-3f4a5b6c7d8e-000000"
    assert event.occurred_at == datetime(2026, 12, 1, 12, 0, 2, 114000, tzinfo=UTC)
    assert "550 5.1.1" in event.diagnostic and "@" not in event.diagnostic and event.diagnostic.startswith("General")


@pytest.mark.parametrize(("ses_type", "ours"), [("Transient", "transient"), ("Undetermined", "undetermined")])
def test_soft_and_undetermined_bounce_types(ses_type, ours):
    body = sample(0)
    body["bounce"]["bounceType"] = ses_type
    body["bounce"]["bounceSubType"] = "MailboxFull" if ses_type == "Transient" else "Undetermined"
    assert from_ses_event(body).bounce_type == ours


def test_a_delivery_has_a_stable_id_made_of_type_message_and_time():
    first, again = from_ses_event(sample(1)), from_ses_event(sample(1))
    assert first.kind is FeedbackKind.DELIVERED and first.recipients == ("user2@example.net",)
    assert first.event_id == again.event_id and first.event_id.startswith("ses:Delivery:0100018c2b7f1f40")
    later = sample(1)
    later["delivery"]["timestamp"] = "2026-12-01T12:05:00.000Z"
    assert from_ses_event(later).event_id != first.event_id


def test_a_complaint():
    body = ses(
        "Complaint",
        "complaint",
        {
            "feedbackId": "0100018c2b8a0b2c-complaint-000000",
            "complaintSubType": None,
            "complainedRecipients": [{"emailAddress": "User1@Example.net"}],
            "timestamp": "2026-12-01T13:00:00.000Z",
            "userAgent": "Mozilla/5.0",
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2026-12-01T12:59:00.000Z",
        },
    )
    event = from_ses_event(body)
    assert (event.kind, event.recipients, event.event_id) == (
        FeedbackKind.COMPLAINED,
        ("user1@example.net",),
        "ses:0100018c2b8a0b2c-complaint-000000",
    )
    assert event.diagnostic == "complaint; abuse"


def test_reject_delay_and_send():
    reject = from_ses_event(ses("Reject", "reject", {"reason": "Bad content"}))
    assert reject.kind is FeedbackKind.REJECTED and reject.recipients == ("user1@example.net",)
    assert reject.diagnostic == "rejected by SES; Bad content"
    delay = from_ses_event(
        ses(
            "DeliveryDelay",
            "deliveryDelay",
            {
                "timestamp": "2026-12-01T12:30:00.000Z",
                "delayType": "TransientCommunicationFailure",
                "expirationTime": "2026-12-01T23:00:00.000Z",
                "delayedRecipients": [
                    {"emailAddress": "user1@example.net", "status": "4.4.1", "diagnosticCode": "smtp; 421 try later"}
                ],
            },
        )
    )
    assert (
        delay.kind is FeedbackKind.DELAYED
        and delay.diagnostic == "delayed; TransientCommunicationFailure; smtp; 421 try later"
    )
    send = from_ses_event(ses("Send", "send", {}))
    assert send.kind is FeedbackKind.SENT and send.occurred_at == datetime(2026, 12, 1, 12, 0, 0, 512000, tzinfo=UTC)


def test_the_message_ref_is_found_in_the_headers_or_the_verp_return_path_without_the_tag():
    body = sample(0)
    del body["mail"]["tags"]["message_ref"]
    assert from_ses_event(body).message_ref == REF  # the Message-ID header
    body["mail"]["headers"] = [h for h in body["mail"]["headers"] if h["name"] != "Message-ID"]
    assert from_ses_event(body).message_ref == REF  # the Return-Path
    body["mail"]["headers"] = []
    assert from_ses_event(body).message_ref is None  # SES's own id in commonHeaders is not ours
    body["mail"]["commonHeaders"]["messageId"] = f"<dbmail.{REF}@example.org>"
    assert from_ses_event(body).message_ref == REF


def test_an_sns_envelope_is_opened_when_raw_delivery_is_off():
    envelope = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:dbmail-FeedbackTopic",
        "Message": json.dumps(sample(0)),
        "Timestamp": "2026-12-01T12:00:02.300Z",
        "SignatureVersion": "1",
    }
    assert from_ses_event(envelope) == from_ses_event(sample(0))


def test_an_event_type_we_do_not_take_is_invalid():
    with pytest.raises(FeedbackInvalid, match="Open"):
        from_ses_event(ses("Open", "open", {"timestamp": "2026-12-01T12:00:00Z"}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("mail"), "mail"),
        (lambda b: b.update(mail="not an object"), "mail"),
        (lambda b: b["mail"].pop("messageId"), "messageId"),
        (lambda b: b["mail"].update(messageId=12), "messageId"),
        (lambda b: (b["bounce"].update(timestamp="yesterday"), b["mail"].pop("timestamp")), "not a time"),
        (lambda b: (b["bounce"].pop("timestamp"), b["mail"].update(timestamp=True)), "not a time"),
        (lambda b: b.update(eventType=["Bounce"]), "eventType"),
    ],
)
def test_missing_or_mistyped_fields_are_invalid(change, message):
    body = sample(0)
    change(body)
    with pytest.raises(FeedbackInvalid, match=message):
        from_ses_event(body)


def test_recipients_that_are_not_addresses_are_left_out():
    body = sample(0)
    body["bounce"]["bouncedRecipients"] = [
        {"emailAddress": 42},
        {"emailAddress": {"a": "b@c.d"}},
        {"emailAddress": None},
        "user9@example.net",
        {"emailAddress": "x" * 400 + "@example.net"},
        {"emailAddress": "no-at-sign"},
        {"emailAddress": "evil@example.net\r\nBcc: x@y.z"},
        {"emailAddress": '"Ada" <ADA@Example.net>', "diagnosticCode": ["not", "text"]},
    ]
    event = from_ses_event(body)
    assert event.recipients == ("ada@example.net",)
    assert event.diagnostic == "General"


@pytest.mark.parametrize(
    "body",
    ["not json", "[1, 2]", '"text"', "null", "{" * 100_000, " " * (MAX_BODY_CHARS + 1), b"{}", None],
)
def test_bodies_that_are_not_a_json_object_of_sane_size_are_invalid(body):
    with pytest.raises(FeedbackInvalid):
        parse_body(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


@given(
    st.fixed_dictionaries(
        {"eventType": st.sampled_from(["Bounce", "Complaint", "Delivery", "Send", "Reject", "DeliveryDelay", 7])},
        optional={
            "mail": json_values,
            "bounce": json_values,
            "complaint": json_values,
            "delivery": json_values,
            "deliveryDelay": json_values,
        },
    )
)
def test_garbage_in_any_field_is_an_event_or_invalid_never_another_error(body):
    try:
        event = from_ses_event(body)
    except FeedbackInvalid:
        return
    assert all(isinstance(address, str) and "@" in address for address in event.recipients)


@given(st.dictionaries(st.sampled_from(["event", "email", "sg_event_id", "timestamp", "type", "smtp-id"]), json_values))
def test_garbage_sendgrid_events_are_an_event_none_or_invalid(event):
    try:
        from_sendgrid_event(event)
    except FeedbackInvalid:
        pass


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        (f"<dbmail.{REF}@example.org>", REF),
        (f"bounces+{REF}@example.org", REF),
        (f"<bounces+{REF.upper()}@example.org>", REF),
        (REF, REF),
        ("<dbmail.outgoing.report.abc@example.org>", None),  # a failure report: never an email
        ("<0100018c2b7f1f3e@email.amazonses.com>", None),
        (f"<x{REF}@example.org>", None),
        (12, None),
        (None, None),
        ("a" * 5000, None),
    ],
)
def test_message_ref_of(text, ref):
    assert message_ref_of(text) == ref


# ---- SendGrid -----------------------------------------------------------------------------

SENDGRID = {
    "email": "User1@example.net",
    "timestamp": 1796126402,
    "smtp-id": f"<dbmail.{REF}@example.org>",
    "sg_event_id": "sg_event_id_bounce_1",
    "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    "dbmail_message_id": f"<dbmail.{REF}@example.org>",
    "message_ref": REF,
}


@pytest.mark.parametrize(
    ("fields", "kind", "bounce_type"),
    [
        ({"event": "delivered", "response": "250 OK"}, FeedbackKind.DELIVERED, None),
        (
            {"event": "bounce", "type": "bounce", "status": "5.1.1", "reason": "550 no such user"},
            FeedbackKind.BOUNCED,
            "permanent",
        ),
        (
            {"event": "bounce", "type": "blocked", "status": "4.0.0", "reason": "452 try later"},
            FeedbackKind.BOUNCED,
            "transient",
        ),
        ({"event": "dropped", "reason": "Bounced Address"}, FeedbackKind.DROPPED, None),
        ({"event": "spamreport"}, FeedbackKind.COMPLAINED, None),
        ({"event": "unsubscribe"}, FeedbackKind.UNSUBSCRIBED, None),
        ({"event": "group_unsubscribe", "asm_group_id": 1}, FeedbackKind.UNSUBSCRIBED, None),
        ({"event": "deferred", "response": "400 try again later", "attempt": "5"}, FeedbackKind.DELAYED, None),
    ],
)
def test_sendgrid_events_we_record(fields, kind, bounce_type):
    event = from_sendgrid_event({**SENDGRID, **fields})
    assert (event.kind, event.bounce_type, event.source) == (kind, bounce_type, "sendgrid")
    assert event.recipients == ("user1@example.net",) and event.message_ref == REF
    assert event.event_id == "sendgrid:sg_event_id_bounce_1"
    assert event.occurred_at == datetime.fromtimestamp(1796126402, UTC)


def test_sendgrid_falls_back_to_the_smtp_id_and_skips_the_types_we_do_not_record():
    fields = copy.deepcopy(SENDGRID)
    del fields["message_ref"]
    assert from_sendgrid_event({**fields, "event": "delivered"}).message_ref == REF
    for ignored in ("processed", "open", "click", "group_resubscribe", None):
        assert from_sendgrid_event({**SENDGRID, "event": ignored}) is None


@pytest.mark.parametrize(
    "fields",
    [{"sg_event_id": None}, {"sg_event_id": ""}, {"email": ["a@b.c"]}, {"email": "nobody"}, {"timestamp": "soon"}],
)
def test_sendgrid_events_missing_what_we_need_are_invalid(fields):
    with pytest.raises(FeedbackInvalid):
        from_sendgrid_event({**SENDGRID, "event": "bounce", **fields})
