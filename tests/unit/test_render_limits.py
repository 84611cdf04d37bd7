"""The render sandbox's limits, case by case: what breaks a named limit, and the ordinary use of the
same operations that must still render (each check lets a small value through)."""

from __future__ import annotations

import pytest

from dbmail.core.errors import TemplateInvalid, TemplateLimitExceeded
from tests.unit.test_render import render

OVER_A_LIMIT = {
    # case: (template, words of the limit it breaks)
    "an integer times a huge string": ("{{ 10**9 * 'x' }}", "a repeated value"),
    "an integer product too large": ("{{ (7 ** 5000) * (7 ** 5000) }}", "integer product over 16384 bits"),
    "an integer beyond the integer limit": ("{{ (2 ** 16000) * 4 }}", "integer"),
    "two large strings added": ("{{ ('x' * 200000) + ('y' * 200000) }}", "a joined value"),
    "a percent width from the arguments": ("{{ '%*s' % (5, 'x') }}", "a %-format width or precision"),
    "a percent precision too large": ("{{ '%.999999999f' % 1 }}", "a %-format width or precision"),
    "a huge indent": ("{{ ('x\n' * 1000)|indent(1000) }}", "an indented string"),
    "a huge string indent": ("{{ ('x\n' * 1000)|indent('y' * 1000) }}", "an indented string"),
    "a huge zfill": ("{{ '1'.zfill(10**9) }}", "a padding width"),
    "a huge join method": ("{{ ('x' * 300000).join(['a', 'b', 'c']) }}", "a joined string"),
}


@pytest.mark.parametrize("case", OVER_A_LIMIT)
def test_an_operation_over_a_limit_is_refused_naming_it(case):
    template, words = OVER_A_LIMIT[case]
    with pytest.raises(TemplateLimitExceeded, match=words):
        render("s", template)


ORDINARY = {
    # case: (template, what it renders)
    "a repeat with the count first": ("{{ 3 * 'ab' }}", "ababab"),
    "an integer product": ("{{ 6 * 7 }}", "42"),
    "a power": ("{{ 2 ** 10 }}, {{ 1 ** 99999999 }}, {{ 2 ** -1 }}", "1024, 1, 0.5"),
    "strings added": ("{{ 'a' + 'b' }}", "ab"),
    "a percent format": ("{{ '%5s|%.2f' % ('x', 3.14159) }}", "    x|3.14"),
    "a brace format with a width": ("{{ '{:>5}|{}'.format(1, 2) }}", "    1|2"),
    "a replace method": ("{{ 'abc'.replace('b', 'xy') }}", "axyc"),
    "a join method over a generator": ("{{ ','.join(['a', 'b']) }}", "a,b"),
    "padding methods": ("[{{ 'ab'.ljust(4) }}][{{ 'ab'.rjust(4) }}]", "[ab  ][  ab]"),
    "an indent": ("{{ 'a\nb'|indent(2) }}", "a\n  b"),
    "a wordwrap": ("{{ 'aaa bbb'|wordwrap(3) }}", "aaa\nbbb"),
}


@pytest.mark.parametrize("case", ORDINARY)
def test_the_same_operations_within_the_limits_render(case):
    template, expected = ORDINARY[case]
    assert render("s", template)[1] == expected


def test_a_huge_integer_in_the_data_is_refused_when_a_template_computes_with_it():
    with pytest.raises(TemplateLimitExceeded, match="integer"):
        render("s", "{{ big + 1 }}", message_vars={"big": 2**20000})


def test_an_error_of_the_data_meeting_the_template_is_a_template_error_for_that_email():
    # given a template that divides by a recipient's value, or indexes past a list's end
    with pytest.raises(TemplateInvalid, match="ZeroDivisionError"):
        render("s", "{{ 1 / zero }}", message_vars={"zero": 0})
    with pytest.raises(TemplateInvalid) as failed:
        render("s", "{{ 1 / zero }}", message_vars={"zero": 0})
    assert not isinstance(failed.value, TemplateLimitExceeded)


def test_user_fields_are_read_by_name_and_a_number_index_is_undefined():
    # given the user's fields read with brackets, and a numeric index into the user
    _, body = render("s", "{{ user['first_name'] }}|{{ user[0] }}|", user={"first_name": "Zoë"})
    # then the field renders, and the number renders empty (undefined, as in Django)
    assert body == "Zoë||"
