"""Recording provider feedback on sent emails (moto in-process): statuses only move up, each event
counts once, bounces and complaints suppress the email's own recipient, soft bounces only past
the limit within the window, an event that does not name the email's recipient changes nothing,
and an event that matches nothing yet is retried while young."""

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from dbmail import wiring
from dbmail.client import request_status
from dbmail.core.clock import utcnow
from dbmail.feedback.dsn import parse_dsn
from dbmail.feedback.events import from_sendgrid_event, from_ses_event
from dbmail.feedback.recorder import MATCH_GRACE, FeedbackNotYetMatched, RecordOutcome
from dbmail.feedback.store import FeedbackStore
from dbmail.outgoing.queue import QueuedEmail
from dbmail.outgoing.store import Store
from tests.conftest import function_settings, load_event
from tests.unit.test_dsn import dsn
from tests.unit.test_expand import submit


@pytest.fixture
def sent(moto_stack):
    """Two emails of one request, sent through (moto) SES: to user1 and user2."""
    rid = submit(n=2, sendto_fn_name="")
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    sender = wiring.email_sender(function_settings("send"))
    for i in (1, 2):
        sender.deliver(QueuedEmail(rid, f"u{i:010d}#0"), claim_id=f"m{i}", receive_count=1)
    store = Store(moto_stack.settings)
    return [store.get_email(rid, f"u{i:010d}#0") for i in (1, 2)]


def recorder():
    return wiring.feedback_recorder(function_settings("feedback"))


def suppressions():
    return wiring.suppression_store(function_settings("feedback"))


def reread(email):
    return Store(function_settings("send")).get_email(email.request_id, email.email_key)


def ses_event(email, event_type: str, minutes: float = 0, **detail):
    """An SES event of ``event_type`` for ``email``, shaped as SES publishes it (the mail object of
    events/feedback_sqs.json, re-aimed at the email), ``minutes`` after now."""
    body = json.loads(load_event("feedback_sqs.json")["Records"][0]["body"])
    address = email.send_to.rpartition("<")[2].rstrip(">")
    mail = body["mail"]
    mail["tags"]["message_ref"] = [email.message_ref]
    mail["destination"] = [address]
    mail["messageId"] = email.provider_message_id
    when = (utcnow() + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
    key = {"Bounce": "bounce", "Complaint": "complaint", "Delivery": "delivery", "Reject": "reject"}.get(
        event_type, "send"
    )
    payload = {"timestamp": when}
    if event_type == "Bounce":
        payload |= {
            "feedbackId": f"bounce-{email.email_key}-{minutes}",
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": address, "diagnosticCode": f"smtp; 550 5.1.1 <{address}> unknown"}],
        }
    elif event_type == "Complaint":
        payload |= {
            "feedbackId": f"complaint-{email.email_key}-{minutes}",
            "complainedRecipients": [{"emailAddress": address}],
            "complaintFeedbackType": "abuse",
        }
    elif event_type == "Delivery":
        payload |= {"recipients": [address], "smtpResponse": "250 OK"}
    elif event_type == "Reject":
        payload |= {"reason": "Bad content"}
    payload |= detail
    return from_ses_event({"eventType": event_type, "mail": mail, key: payload})


def test_a_delivery_then_a_hard_bounce_record_bounced_and_suppress_the_recipient(sent, capsys):
    email = sent[0]
    # when SES reports the delivery, then a permanent bounce
    assert recorder().record(ses_event(email, "Delivery")) == RecordOutcome.RECORDED
    assert reread(email).status == "delivered" and reread(email).delivered_at is not None
    assert recorder().record(ses_event(email, "Bounce", minutes=1)) == RecordOutcome.RECORDED
    # then the email is bounced, permanent, with the diagnostic (its address redacted)
    bounced = reread(email)
    assert (bounced.status, bounced.bounce_type) == ("bounced", "permanent")
    assert "550 5.1.1" in bounced.feedback and "@" not in bounced.feedback
    assert bounced.feedback_at is not None and len(bounced.feedback_events) == 2
    # and its recipient is suppressed, with who and why
    entry = suppressions().get("user1@example.net")
    assert (entry.reason, entry.source, entry.user_id, entry.request_id) == ("bounce", "ses", 1, email.request_id)
    # and the other email is untouched
    assert reread(sent[1]).status == "sent" and not suppressions().is_suppressed("user2@example.net")
    # and no log line holds the address
    assert "user1@example.net" not in capsys.readouterr().out


def test_the_same_event_twice_changes_nothing_the_second_time(sent):
    email = sent[0]
    event = ses_event(email, "Bounce")
    assert recorder().record(event) == RecordOutcome.RECORDED
    before, entry = reread(email), suppressions().get("user1@example.net")
    assert recorder().record(event) == RecordOutcome.DUPLICATE
    after = reread(email)
    assert (after.status, after.feedback_events, after.feedback_at) == (
        before.status,
        before.feedback_events,
        before.feedback_at,
    )
    assert suppressions().get("user1@example.net").created_at == entry.created_at


def test_out_of_order_events_never_move_an_email_down(sent):
    first, second = sent
    # a complaint after a delivery moves it up
    recorder().record(ses_event(first, "Delivery"))
    assert recorder().record(ses_event(first, "Complaint", minutes=5)) == RecordOutcome.RECORDED
    assert reread(first).status == "complained"
    assert suppressions().get("user1@example.net").reason == "complaint"
    # and a bounce after the complaint leaves it complained
    assert recorder().record(ses_event(first, "Bounce", minutes=6)) == RecordOutcome.NOTED
    assert reread(first).status == "complained"
    # a delivery arriving after the bounce leaves it bounced, but notes when it was delivered
    recorder().record(ses_event(second, "Bounce", minutes=1))
    assert recorder().record(ses_event(second, "Delivery")) == RecordOutcome.NOTED
    late = reread(second)
    assert late.status == "bounced" and late.delivered_at is not None


def test_an_ses_reject_fails_the_email_with_the_reason_and_a_send_event_is_ignored(sent):
    email = sent[0]
    assert recorder().record(ses_event(email, "Send")) == RecordOutcome.IGNORED
    assert recorder().record(ses_event(email, "Reject")) == RecordOutcome.RECORDED
    failed = reread(email)
    assert failed.status == "failed" and failed.error == "rejected by SES; Bad content"
    assert not suppressions().is_suppressed("user1@example.net")


def test_soft_bounces_suppress_only_at_the_limit_within_the_window(sent):
    settings = function_settings("feedback")
    assert (settings.soft_bounce_limit, settings.soft_bounce_window) == (3, timedelta(days=7))
    email = sent[0]

    def soft(minutes, feedback_id):
        event = ses_event(email, "Bounce", minutes=minutes, bounceType="Transient", bounceSubType="MailboxFull")
        return replace(event, event_id=f"ses:{feedback_id}")

    # given a soft bounce eight days ago (outside the window) and one yesterday
    old = soft(-8 * 24 * 60, "old")
    assert recorder().record(old) == RecordOutcome.RECORDED
    assert reread(email).bounce_type == "transient"
    recorder().record(soft(-24 * 60, "yesterday"))
    # when the same soft bounce is delivered twice more, it counts once
    today = soft(0, "today")
    recorder().record(today)
    recorder().record(today)
    assert (
        FeedbackStore(settings).count_soft_bounce(
            "user1@example.net", today.event_id, today.occurred_at, timedelta(days=7)
        )
        == 2
    )
    # then two within the window do not suppress
    assert not suppressions().is_suppressed("user1@example.net")
    # and the third within the window does
    recorder().record(soft(60, "third"))
    entry = suppressions().get("user1@example.net")
    assert (entry.reason, entry.detail) == ("soft_bounce", "3 soft bounces within 7 days")


VICTIM = "victim@example.com"


def forged(email, kind: str):
    """An event that matches ``email`` by its message_ref but names VICTIM, never its recipient."""
    ref = email.message_ref
    if kind == "ses-bounce":
        return ses_event(email, "Bounce", bouncedRecipients=[{"emailAddress": VICTIM, "diagnosticCode": "550"}])
    if kind == "ses-complaint":
        return ses_event(email, "Complaint", complainedRecipients=[{"emailAddress": VICTIM}])
    if kind == "ses-delivery":
        return ses_event(email, "Delivery", recipients=[VICTIM])
    if kind == "sendgrid-bounce":
        timestamp = int(utcnow().timestamp())
        return from_sendgrid_event(
            {"event": "bounce", "email": VICTIM, "sg_event_id": "b1", "timestamp": timestamp, "message_ref": ref}
        )
    (event,) = parse_dsn(
        dsn(recipients=((VICTIM, "failed", "5.1.1", "smtp; 550 5.1.1 unknown"),), original_message_id=email.message_id),
        [f"bounces+{ref}@example.org"],
        utcnow(),
    )
    return event


@pytest.mark.parametrize("kind", ["ses-bounce", "ses-complaint", "ses-delivery", "sendgrid-bounce", "dsn"])
def test_an_event_naming_another_address_changes_nothing(sent, capsys, caplog, kind):
    # given a forged event about our email that names an address it was never sent to
    email = sent[0]
    event = forged(email, kind)
    assert event.message_ref == email.message_ref and event.recipients == (VICTIM,)
    # when it is recorded, it matches no recipient of ours
    assert recorder().record(event) == RecordOutcome.UNMATCHED
    # then the email is untouched
    after = reread(email)
    fields = ("status", "bounce_type", "feedback", "feedback_at", "delivered_at", "feedback_events", "error")
    assert [getattr(after, name) for name in fields] == [getattr(email, name) for name in fields]
    assert after.status == "sent"
    # and neither that address nor the email's own recipient is suppressed
    assert not suppressions().is_suppressed(VICTIM)
    assert not suppressions().is_suppressed("user1@example.net")
    # and the log says so without the addresses
    (warning,) = [r for r in caplog.records if "does not name its email's recipient" in r.getMessage()]
    logged = str(vars(warning)) + capsys.readouterr().out
    assert email.request_id in logged and VICTIM not in logged and "user1@example.net" not in logged


def test_a_dsn_naming_the_recipient_records_the_bounce(sent):
    # given a DSN for our email (to its VERP address) reporting its recipient, in another case
    email = sent[0]
    raw = dsn(recipients=(("User1@Example.NET", "failed", "5.1.1", "smtp; 550 5.1.1 unknown"),))
    (event,) = parse_dsn(raw, [f"bounces+{email.message_ref}@example.org"], utcnow())
    # when it is recorded, the email is bounced and its recipient suppressed (source dsn)
    assert recorder().record(event) == RecordOutcome.RECORDED
    assert (reread(email).status, reread(email).bounce_type) == ("bounced", "permanent")
    assert (suppressions().get("user1@example.net").reason, suppressions().get("user1@example.net").source) == (
        "bounce",
        "dsn",
    )


def test_an_event_matching_no_email_is_retried_while_young_and_dropped_when_old(sent):
    email = sent[0]
    unknown = replace(ses_event(email, "Delivery"), message_ref="f" * 32)
    with pytest.raises(FeedbackNotYetMatched):
        recorder().record(unknown)
    old = replace(unknown, occurred_at=utcnow() - MATCH_GRACE - timedelta(seconds=1))
    assert recorder().record(old) == RecordOutcome.UNMATCHED
    # an event naming no message of ours (a failure report, a forward) never matches
    assert recorder().record(replace(unknown, message_ref=None)) == RecordOutcome.UNMATCHED


def test_an_event_for_an_email_not_recorded_as_sent_yet_is_retried(moto_stack):
    # given an email claimed by a send that has not recorded it sent yet
    rid = submit(n=1, sendto_fn_name="")
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    store = Store(moto_stack.settings)
    email = store.get_email(rid, "u0000000001#0")
    assert store.claim_email(email, "m1", utcnow(), utcnow() + timedelta(minutes=1))
    email = store.get_email(rid, "u0000000001#0")
    email.provider_message_id = "ses-1"
    # when its delivery is reported, it is retried later, not lost
    with pytest.raises(FeedbackNotYetMatched, match="not recorded as sent"):
        recorder().record(ses_event(email, "Delivery"))


def test_sendgrid_unsubscribes_and_drops(sent):
    first, second = sent
    base = {"timestamp": int(utcnow().timestamp()), "sg_message_id": "sg-1"}
    unsubscribe = from_sendgrid_event(
        {
            **base,
            "event": "unsubscribe",
            "email": "user1@example.net",
            "sg_event_id": "u1",
            "message_ref": first.message_ref,
        }
    )
    assert recorder().record(unsubscribe) == RecordOutcome.NOTED
    assert reread(first).status == "sent"
    assert (suppressions().get("user1@example.net").reason, suppressions().get("user1@example.net").source) == (
        "unsubscribe",
        "sendgrid",
    )
    dropped = from_sendgrid_event(
        {
            **base,
            "event": "dropped",
            "reason": "Bounced Address",
            "email": "user2@example.net",
            "sg_event_id": "d1",
            "smtp-id": second.message_id,
        }
    )
    assert recorder().record(dropped) == RecordOutcome.RECORDED
    assert (reread(second).status, reread(second).bounce_type) == ("bounced", "permanent")
    assert suppressions().get("user2@example.net").reason == "bounce"


def test_delivered_and_bounced_emails_reconcile_and_the_request_settles(sent):
    recorder().record(ses_event(sent[0], "Delivery"))
    recorder().record(ses_event(sent[1], "Bounce"))
    status = request_status(sent[0].request_id)
    assert status["emails_by_status"] == {"bounced": 1, "delivered": 1}
    assert (status["reconciliation"]["outstanding"], status["reconciliation"]["balanced"]) == (0, True)
    assert wiring.expirer(function_settings("expire")).run(owner="test").get("requests_settled") == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DBMAIL_SOFT_BOUNCE_LIMIT", "0"),
        ("DBMAIL_SOFT_BOUNCE_LIMIT", "three"),
        ("DBMAIL_SOFT_BOUNCE_WINDOW_DAYS", "-1"),
    ],
)
def test_the_soft_bounce_settings_are_checked_at_cold_start(moto_stack, variable, value):
    import os

    from dbmail.core.errors import ConfigurationError
    from dbmail.core.settings import Settings

    env = {**os.environ, variable: value}
    with pytest.raises(ConfigurationError, match=variable):
        Settings.for_function("feedback", env)
