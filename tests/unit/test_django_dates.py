"""django_dates against Django itself (TIME_ZONE="UTC", USE_TZ=True): every format character."""

from datetime import UTC, date, datetime, time, timedelta, timezone

import django
import pytest
from django.conf import settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from dbmail.core.errors import TemplateInvalid
from dbmail.outgoing.django_dates import format_date, format_time, localize, parse_datetime_value

if not settings.configured:
    settings.configure(
        TEMPLATES=[], USE_TZ=True, TIME_ZONE="UTC", USE_I18N=True, LANGUAGE_CODE="en-us", INSTALLED_APPS=[]
    )
    django.setup()

from django.template import defaultfilters
from django.utils import formats
from django.utils import timezone as django_timezone

ALL_CHARS = "aAbcdDeEfFgGhHiIjlLmMnNoOPrsStTUuwWyYzZ"
TIME_CHARS = "aAefgGhHiOPsTuZ"


def django_date(value, fmt=None):
    """Django's date filter as its template engine calls it (aware values in the current zone)."""
    return defaultfilters.date(django_timezone.template_localtime(value), fmt)


def django_time(value, fmt=None):
    return defaultfilters.time(django_timezone.template_localtime(value), fmt)


EDGE_DATETIMES = [
    "2024-02-29T00:00:00",  # leap day, midnight
    "2024-02-29T12:00:00",  # noon
    "2023-12-31T23:59:59.999999",
    "2021-01-01T00:30:05",  # ISO week 53 of 2020
    "2024-12-30T12:30:00",  # ISO week 1 of 2025
    "2026-01-11T11:05:00",  # 11th, 'th'
    "2026-03-22T13:00:00",  # 22nd
    "2026-05-23T01:01:01.5",
    "1999-07-01 09:15",
    "2026-10-01T14:05:00Z",
    "2026-10-01T14:05:00+02:00",
    "2026-10-01T01:05:00-05:30",
    "0999-01-03T00:00:00",
]
EDGE_DATES = ["2024-02-29", "2023-02-28", "2000-01-01", "1900-03-01", "2021-01-03", "2026-12-31"]
EDGE_TIMES = ["00:00:00", "12:00:00", "12:30:15", "23:59:59.123456", "00:01:00"]  # DjangoJSONEncoder writes the seconds


@pytest.mark.parametrize("text", EDGE_DATETIMES)
@pytest.mark.parametrize("char", list(ALL_CHARS))
def test_every_character_formats_a_datetime_as_django(text, char):
    # given a datetime from JSON and the object Django would have had
    value = parse_datetime_value(text)
    # then each format character gives Django's text
    assert format_date(text, char) == django_date(value, char)


@pytest.mark.parametrize("text", EDGE_DATES)
@pytest.mark.parametrize("char", [c for c in ALL_CHARS if c not in TIME_CHARS])
def test_every_date_character_formats_a_date_as_django(text, char):
    assert format_date(text, char) == django_date(parse_datetime_value(text), char)


@pytest.mark.parametrize("char", list(TIME_CHARS))
def test_a_time_character_for_a_date_is_an_error_as_in_django(char):
    # given a date (no time of day): Django raises TypeError
    with pytest.raises(TypeError):
        django_date(date(2024, 1, 5), char)
    # then dbmail refuses it naming the character
    with pytest.raises(TemplateInvalid, match=repr(char)):
        format_date("2024-01-05", f"Y {char}")


@pytest.mark.parametrize("text", EDGE_TIMES)
@pytest.mark.parametrize("char", [c for c in ALL_CHARS if c not in "rU"])
def test_the_date_filter_on_a_time_is_django_s(text, char):
    assert format_date(text, char) == django_date(parse_datetime_value(text), char)


@pytest.mark.parametrize("char", ["r", "U"])
def test_r_and_u_for_a_time_are_errors_as_in_django(char):
    with pytest.raises(TypeError):
        django_date(time(10, 0), char)
    with pytest.raises(TemplateInvalid, match="needs a date"):
        format_date("10:00:00", char)


@pytest.mark.parametrize("text", EDGE_TIMES + EDGE_DATETIMES + EDGE_DATES)
@pytest.mark.parametrize("char", list(ALL_CHARS))
def test_the_time_filter_is_django_s(text, char):
    value = parse_datetime_value(text)
    assert format_time(text, char) == django_time(value, char)
    assert format_time(text, f"\\x {char}") == django_time(value, f"\\x {char}")


@pytest.mark.parametrize(
    "fmt",
    [None, "", "F j, Y", "l, F jS, Y \\a\\t g:i A", "\\\\Y", "Y\\", "jS \\o\\f F", "SHORT_DATE_FORMAT",
     "DATETIME_FORMAT", "YEAR_MONTH_FORMAT", "MONTH_DAY_FORMAT", "SHORT_DATETIME_FORMAT", "TIME_FORMAT",
     "no chars here? x", "Ünïcødé Y ☃", 5],
)  # fmt: skip
@pytest.mark.parametrize("text", ["2026-07-04T16:45:00", "2026-07-04T00:00:00Z", "2026-07-04T12:00:00-04:00"])
def test_whole_formats_and_defaults_are_django_s(fmt, text):
    assert format_date(text, fmt) == django_date(parse_datetime_value(text), fmt)
    assert format_time(text, fmt) == django_time(parse_datetime_value(text), fmt)


@pytest.mark.parametrize("value", [None, "", "not a date", "2023-02-29", "2026-13-01", 0, 17, 3.5, [], {}, True])
@pytest.mark.parametrize("fmt", ["Y", "F j, Y", "\\Y\\e\\s", "", "literal"])
def test_values_that_are_not_dates_format_as_django_formats_them(value, fmt):
    # given what Django gets for a string that is not a date (the string itself) or a number
    django_value = value if parse_datetime_value(value) is None else parse_datetime_value(value)
    assert format_date(value, fmt) == django_date(django_value, fmt)
    assert format_time(value, fmt) == django_time(django_value, fmt)


def test_parsing_covers_the_iso_8601_shapes_json_carries():
    assert parse_datetime_value("2026-07-04") == date(2026, 7, 4)
    assert parse_datetime_value("2026-07-04T16:45") == datetime(2026, 7, 4, 16, 45)
    assert parse_datetime_value("2026-07-04 16:45:30.25") == datetime(2026, 7, 4, 16, 45, 30, 250000)
    assert parse_datetime_value("2026-07-04T16:45:30.1234567Z") == datetime(2026, 7, 4, 16, 45, 30, 123456, UTC)
    assert parse_datetime_value("2026-07-04T16:45:00+0530") == datetime(
        2026, 7, 4, 16, 45, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )
    assert parse_datetime_value("2026-07-04T16:45:00-08") == datetime(
        2026, 7, 4, 16, 45, tzinfo=timezone(timedelta(hours=-8))
    )
    assert parse_datetime_value("16:45:01") == time(16, 45, 1)
    assert parse_datetime_value(time(1, 2)) == time(1, 2)
    assert parse_datetime_value(date(2020, 1, 1)) == date(2020, 1, 1)
    for junk in ("2026-07-04T25:00", "2026-02-30", "2026-07-04T10:00+24:00", "July 4", " 2026-07-04", 20260704, None):
        assert parse_datetime_value(junk) is None


def test_printing_a_date_variable_is_django_s_localize():
    for text in ("2026-07-04T16:45:00Z", "2026-07-04", "09:30:00", "2026-07-04T00:00:00"):
        value = parse_datetime_value(text)
        assert localize(value) == formats.localize(django_timezone.template_localtime(value))


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from([None, UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=45))]),
)
def test_any_datetime_formats_as_django(value, zone):
    value = value.replace(tzinfo=zone)
    fmt = " ".join(ALL_CHARS)
    text = value.isoformat()
    assert format_date(text, fmt) == django_date(parse_datetime_value(text), fmt)
    assert format_time(text, " ".join(TIME_CHARS)) == django_time(parse_datetime_value(text), " ".join(TIME_CHARS))


@pytest.mark.parametrize("text", ["12:00", "00:01", "9:30"])
@pytest.mark.parametrize("char", ["P", "H", "T", "O", "Z"])
def test_a_time_without_seconds_is_text_as_in_django(text, char):
    # given "12:00": DjangoJSONEncoder writes a time with its seconds, so this was text on the website
    assert parse_datetime_value(text) is None
    # then the time filter formats it as Django formats that text
    assert format_time(text, char) == django_time(text, char)
