from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from dbmail.core.errors import UnknownSendToFunction
from dbmail.core.models import bind_models
from dbmail.core.settings import Settings
from dbmail.outgoing.sendto import SENDTO_FUNCTIONS, get_sendto_function


def student(**overrides):
    fields = {
        "first_name": "Zoë",
        "last_name": "Ng",
        "email": "zoe@example.net",
        "guardian_name": "Mai Ng",
        "guardian_email": "mai@example.net",
        "emergency_name": "Bo Ng",
        "emergency_email": "bo@example.net",
    }
    fields.update(overrides)
    return SimpleNamespace(**fields)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("", ['"Zoë Ng" <zoe@example.net>']),
        ("send_to_self", ['"Zoë Ng" <zoe@example.net>']),
        ("send_to_guardian", ['"Mai Ng" <mai@example.net>']),
        ("send_to_emergency", ['"Bo Ng" <bo@example.net>']),
        ("send_to_self_and_guardian", ['"Zoë Ng" <zoe@example.net>', '"Mai Ng" <mai@example.net>']),
        ("send_to_self_and_emergency", ['"Zoë Ng" <zoe@example.net>', '"Bo Ng" <bo@example.net>']),
        ("send_to_guardian_and_emergency", ['"Mai Ng" <mai@example.net>', '"Bo Ng" <bo@example.net>']),
        (
            "send_to_self_and_guardian_and_emergency",
            ['"Zoë Ng" <zoe@example.net>', '"Mai Ng" <mai@example.net>', '"Bo Ng" <bo@example.net>'],
        ),
    ],
)
def test_each_sendto_function_concatenates_in_the_original_order(name, expected):
    # given a student with all three addresses; when the send-to function runs
    destinations = get_sendto_function(name)(student())
    # then the addresses come in the original's order, formatted "First Last" <email>
    assert [d.send_to for d in destinations] == expected


def test_all_seven_functions_and_self_are_known():
    assert len(SENDTO_FUNCTIONS) == 8


def test_a_missing_guardian_means_no_email_for_that_part_not_an_error():
    # given a student without a guardian address
    destinations = get_sendto_function("send_to_guardian")(student(guardian_email=None))
    # then nobody is addressed
    assert destinations == []


def test_a_repeated_address_is_dropped_per_user():
    # given a guardian who shares the student's address (case differs)
    destinations = get_sendto_function("send_to_self_and_guardian")(student(guardian_email="ZOE@example.net"))
    # then only the first is kept
    assert [d.email for d in destinations] == ["zoe@example.net"]


def test_an_unknown_function_is_a_clear_error():
    with pytest.raises(UnknownSendToFunction, match="send_to_parents"):
        get_sendto_function("send_to_parents")


TRICKY = ["", " ", "\t \n", "Zoë", "  Ada   Lovelace ", 'O"Brien', "back\\slash", 'a\\"b', "ZOE@Example.NET"]
NAMES = st.one_of(st.none(), st.sampled_from(TRICKY), st.text(max_size=12))
EMAILS = st.one_of(
    st.none(),
    st.sampled_from(["", "  ", "zoe@example.net", " Zoe@Example.NET\t", 'q"t@example.net', "a\\b@example.net"]),
    st.text(max_size=12),
)
# each one-part function, and a two-part one that gives the same when its other part has no address
ONE_PART = {
    "send_to_self": ("send_to_self_and_guardian", "guardian_email"),
    "send_to_guardian": ("send_to_guardian_and_emergency", "emergency_email"),
    "send_to_emergency": ("send_to_self_and_emergency", "email"),
}


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(ONE_PART)),
    first=NAMES,
    last=NAMES,
    other=NAMES,
    email=EMAILS,
    other_email=EMAILS,
)
def test_a_one_part_function_addresses_as_the_general_path_does(name, first, last, other, email, other_email):
    # given a student whose fields hold None, blanks, mixed case, quotes and backslashes
    fields = {"first_name": first, "last_name": last, "email": email}
    fields.update(guardian_name=other, guardian_email=other_email, emergency_name=last, emergency_email=email)
    general, silent = ONE_PART[name]
    # when a one-part function addresses them, and the two-part one with its other part silent
    one_part = get_sendto_function(name)(student(**fields))
    two_parts = get_sendto_function(general)(student(**dict(fields, **{silent: None})))
    # then both give the same destinations (none without an address, stripped, in the same format)
    assert one_part == two_parts


@pytest.mark.parametrize("name", sorted(SENDTO_FUNCTIONS))
def test_a_stored_recipient_is_addressed_as_its_fields_are(name):
    # given a recipient as stored (a PynamoDB item) and the same fields as a namespace
    models = bind_models(Settings(allowed_sender_domains=("example.org",)))
    fields = vars(student(email=" Zoe@Example.net ", guardian_name=None))
    item = models.EmailRequest(request_id="r1", recipient_key="k", **fields)
    # then each send-to function addresses both alike
    assert get_sendto_function(name)(item) == get_sendto_function(name)(student(**fields))
