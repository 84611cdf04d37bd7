"""The website's submit_request: validates before writing anything."""

import pytest

from dbmail.client import submit_request
from dbmail.core.errors import AddressInvalid, HeaderInvalid, SenderNotAllowed, TemplateInvalid, UnknownSendToFunction
from dbmail.outgoing.store import Store
from tests.conftest import recipient


def table_item_counts(moto_stack):
    models = Store(moto_stack.settings).models
    return (models.MessageRequest.count(), sum(1 for _ in models.EmailRequest.scan()))


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"sendto_fn_name": "send_to_parents"}, UnknownSendToFunction, "send_to_parents"),
        ({"msgtext": "{% for x in %}"}, TemplateInvalid, "body template syntax error"),
        ({"subject": "{{ user.first_name "}, TemplateInvalid, "subject template"),
        ({"sender": "someone@gmail.com"}, SenderNotAllowed, "gmail.com"),
        ({"special_headers": {"X-Note": "a\r\nBcc: x@evil.org"}}, HeaderInvalid, "CR or LF"),
        (
            {"recipients": [recipient(1), recipient(2, guardian_email="not-an-address")]},
            AddressInvalid,
            "guardian_email",
        ),
    ],
)
def test_bad_input_raises_a_specific_error_and_writes_nothing(moto_stack, overrides, error, message):
    args = {"subject": "Hi", "msgtext": "Body", "recipients": [recipient(1)], "sender": "splash@example.org"}
    args.update(overrides)
    with pytest.raises(error, match=message):
        submit_request(**args)
    assert table_item_counts(moto_stack) == (0, 0)


def test_a_user_listed_twice_gets_one_recipient_record(moto_stack):
    rid = submit_request(
        subject="Hi", msgtext="Body", recipients=[recipient(1), recipient(1), recipient(2)], sender="splash@example.org"
    )
    request = Store(moto_stack.settings).get_request(rid)
    assert request.recipient_count == 2 and request.status == "queued"


def test_the_sender_falls_back_to_the_creator_then_the_site_default(moto_stack):
    from dbmail.outgoing.expand import resolve_sender

    store = Store(moto_stack.settings)
    with_creator = submit_request(
        subject="s",
        msgtext="b",
        recipients=[recipient(1)],
        creator={"email": "ada@example.org", "first_name": "Ada", "last_name": "Admin"},
    )
    without = submit_request(subject="s", msgtext="b", recipients=[recipient(1)])
    assert resolve_sender(store.get_request(with_creator), moto_stack.settings) == '"Ada Admin" <ada@example.org>'
    assert resolve_sender(store.get_request(without), moto_stack.settings) == moto_stack.settings.default_sender


def test_an_oversized_body_is_refused_before_anything_is_written(moto_stack):
    with pytest.raises(TemplateInvalid, match="larger than 300000 bytes"):
        submit_request(subject="s", msgtext="é" * 160_000, recipients=[recipient(1)], sender="splash@example.org")
    assert table_item_counts(moto_stack) == (0, 0)
