"""The website's SDK for outgoing mail beyond the field checks of test_client.py: dates given as
text, recipients refused part-way (nothing left written), a request without recipients, and what
request_status says is stuck."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dbmail import wiring
from dbmail.client import request_status, submit_request
from dbmail.core.clock import utcnow
from dbmail.core.errors import RequestInvalid, TemplateInvalid
from dbmail.core.statuses import EmailStatus, RequestStatus
from dbmail.outgoing.store import Store
from tests.conftest import function_settings, recipient
from tests.unit.test_client import table_item_counts

BASE = {"subject": "Hi", "msgtext": "Body", "sender": "splash@example.org"}


def later(monkeypatch, delta: timedelta):
    """request_status's clock moved ``delta`` ahead."""
    moment = utcnow() + delta
    monkeypatch.setattr("dbmail.client.requests.utcnow", lambda: moment)
    return moment


# --- submit_request -------------------------------------------------------------------------------


def test_dates_given_as_iso_text_are_stored_as_datetimes(moto_stack):
    # given processed_by and sent_by as ISO 8601 text (as a JSON request file has them)
    processed_by = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    rid = submit_request(
        **BASE, recipients=[recipient(1)], processed_by=processed_by.isoformat(), sent_by="2026-11-30T10:00:00+00:00"
    )
    # then they are stored as those moments, and the status shows processed_by
    request = Store(moto_stack.settings).get_request(rid)
    assert request.processed_by == processed_by
    assert request.sent_by.isoformat() == "2026-11-30T10:00:00+00:00"
    assert request_status(rid)["processed_by"] == processed_by.isoformat()


def test_a_request_scheduled_beyond_the_maximum_age_is_refused_unwritten(moto_stack):
    too_late = utcnow() + moto_stack.settings.max_age + timedelta(hours=1)
    with pytest.raises(RequestInvalid, match=f"more than {moto_stack.settings.max_age.days} days ahead"):
        submit_request(**BASE, recipients=[recipient(1)], processed_by=too_late)
    assert table_item_counts(moto_stack) == (0, 0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (recipient(9, colour="red"), r"recipient 1: unknown fields \['colour'\]"),
        (recipient(9, vars=["not", "a", "map"]), "recipient 1: vars must be an object"),
    ],
)
def test_a_bad_later_recipient_removes_the_ones_already_written(moto_stack, bad, message):
    # given a first recipient that is fine and a second that is not
    # when submitted, then the second is named and nothing is left written (the first is removed)
    with pytest.raises(RequestInvalid, match=message):
        submit_request(**BASE, recipients=[recipient(1), bad])
    assert table_item_counts(moto_stack) == (0, 0)


def test_a_bad_first_recipient_is_refused_before_anything_is_written(moto_stack):
    with pytest.raises(RequestInvalid, match=r"recipient 0: unknown fields \['colour'\]"):
        submit_request(**BASE, recipients=iter([recipient(1, colour="red")]))
    assert table_item_counts(moto_stack) == (0, 0)


def test_a_request_without_recipients_is_written_with_none(moto_stack):
    # given no recipients (the template is still dry-rendered, with a sample recipient)
    rid = submit_request(subject="Hi {{ user.first_name }}", msgtext="Body", recipients=[], sender="splash@example.org")
    # then the request exists, queued, with no recipients
    status = request_status(rid)
    assert (status["status"], status["recipients"], status["emails_by_status"]) == ("queued", 0, {})
    assert table_item_counts(moto_stack) == (1, 0)


# --- request_status: what is stuck ----------------------------------------------------------------


def test_a_request_never_expanded_is_reported_stuck(moto_stack, monkeypatch):
    # given a request the stream did not expand
    rid = submit_request(**BASE, recipients=[recipient(1)])
    assert request_status(rid)["stuck"] == []
    # when its status is read after the stranded time, then the waiting expansion is explained
    later(monkeypatch, moto_stack.settings.stranded_after + timedelta(minutes=1))
    (sentence,) = request_status(rid)["stuck"]
    minutes = int(moto_stack.settings.stranded_after.total_seconds() // 60)
    assert sentence.startswith(f"the request has waited over {minutes} min to be expanded")


def test_a_scheduled_request_is_not_reported_stuck(moto_stack, monkeypatch):
    rid = submit_request(**BASE, recipients=[recipient(1)], processed_by=utcnow() + timedelta(days=1))
    later(monkeypatch, moto_stack.settings.stranded_after + timedelta(minutes=1))
    assert request_status(rid)["stuck"] == []


def test_an_expansion_whose_lease_lapsed_is_reported_stuck(moto_stack, monkeypatch):
    # given a request an expansion claimed (processing, with a lease) and then stopped
    rid = submit_request(**BASE, recipients=[recipient(1)])
    store = Store(moto_stack.settings)
    now = utcnow()
    assert store.claim_request(rid, "stream:dead", now, now + timedelta(minutes=1), takeover=True)
    assert request_status(rid)["status"] == RequestStatus.PROCESSING
    assert request_status(rid)["stuck"] == []  # the lease still holds
    # when its status is read after the lease, then the stopped expansion is explained
    later(monkeypatch, timedelta(minutes=2))
    assert request_status(rid)["stuck"] == [
        "the expansion stopped part-way (its lease lapsed); the expire schedule resumes it from its checkpoint."
    ]


def test_emails_left_queued_or_claimed_are_reported_stuck(moto_stack, monkeypatch):
    # given an expanded request of two emails, one of them claimed by a send that then died
    rid = submit_request(**BASE, recipients=[recipient(1), recipient(2)])
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    store = Store(moto_stack.settings)
    queued, claimed = sorted(store.iter_emails(rid), key=lambda e: e.email_key)
    now = utcnow()
    assert store.claim_email(claimed, "m1", now, now + timedelta(minutes=1))
    status = request_status(rid)
    assert status["emails_by_status"] == {EmailStatus.PROCESSING: 1, EmailStatus.QUEUED: 1}
    assert status["stuck"] == [] and status["reconciliation"]["outstanding"] == 2
    # when the status is read long after, then both are explained, each with its count
    later(monkeypatch, moto_stack.settings.stranded_after + timedelta(minutes=2))
    stuck = request_status(rid)["stuck"]
    minutes = int(moto_stack.settings.stranded_after.total_seconds() // 60)
    assert len(stuck) == 2
    assert stuck[0].startswith(f"1 email(s) queued for over {minutes} min")
    assert stuck[1].startswith("1 email(s) claimed by a send that did not finish (its claim lapsed)")


@pytest.mark.parametrize(
    "msgtext, message",
    [
        (
            "Hi {{ user.first_name }},\n{% load static %}\nSee {% url 'home' %}",
            r"unsupported Django tag \{% url %\} on line 3",
        ),
        ("Hi\n{{ program.startdate|naturalday }}", r"unsupported Django filter \|naturalday on line 2"),
    ],
)
def test_a_django_template_using_what_dbmail_does_not_support_is_refused_at_submit_unwritten(
    moto_stack, msgtext, message
):
    # given a comm-panel template with a Django tag or filter dbmail does not render
    # when it is submitted, then the error names it and its line, and nothing is written
    with pytest.raises(TemplateInvalid, match=message):
        submit_request(**{**BASE, "msgtext": msgtext}, recipients=[recipient(1)])
    assert table_item_counts(moto_stack) == (0, 0)
