from types import SimpleNamespace

import pytest

from dbmail.core.errors import UnknownSendToFunction
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
