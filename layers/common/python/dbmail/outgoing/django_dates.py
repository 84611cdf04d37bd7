"""Django's ``date`` and ``time`` filters, in English, without Django.

Values come from JSON, so a date is an ISO 8601 string; ``parse_datetime_value`` turns one into the
``date``, ``datetime`` or ``time`` it stands for, and the filters format that as Django formats the
object.

Time zone: dbmail renders as Django does with ``TIME_ZONE = "UTC"`` and ``USE_TZ = True``. A value
with an offset (``...Z``, ``...+02:00``) is converted to UTC first, as Django's template engine
converts an aware datetime to the current time zone; so ``e`` and ``T`` give ``UTC``, ``O`` gives
``+0000`` and ``Z`` gives ``0``. A value without an offset is naive and taken as UTC: ``e`` is empty
(Django: no tzinfo), ``O``/``T``/``Z``/``I`` as for UTC, ``U`` and ``r`` count it as UTC.

As in Django: a value that is not a date (or a string that does not parse as one) formats as ""
as soon as the format uses a format character; a date (no time of day) with a time-related
character (``a A e f g G h H i O P s T u Z``) is an error; ``"\\"`` escapes a character.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, time, timedelta, timezone
from email.utils import format_datetime
from typing import Any

from dbmail.core.errors import TemplateInvalid

DATE_FORMAT = "N j, Y"
TIME_FORMAT = "P"
DATETIME_FORMAT = "N j, Y, P"
# Django looks a format argument up among the locale's named formats first (English values)
NAMED_FORMATS = {
    "DATE_FORMAT": DATE_FORMAT,
    "TIME_FORMAT": TIME_FORMAT,
    "DATETIME_FORMAT": DATETIME_FORMAT,
    "YEAR_MONTH_FORMAT": "F Y",
    "MONTH_DAY_FORMAT": "F j",
    "SHORT_DATE_FORMAT": "m/d/Y",
    "SHORT_DATETIME_FORMAT": "m/d/Y P",
    "DECIMAL_SEPARATOR": ".",
    "THOUSAND_SEPARATOR": ",",
    "NUMBER_GROUPING": "3",
    "FIRST_DAY_OF_WEEK": "0",
}

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
MONTHS_AP = ["Jan.", "Feb.", "March", "April", "May", "June", "July", "Aug.", "Sept.", "Oct.", "Nov.", "Dec."]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

TIME_CHARS = frozenset("aAefgGhHiOPsTuZ")  # the ones Django's TimeFormat has (and refuses for a date)
DATE_CHARS = frozenset("bcdDEFIjlLmMnNorStUwWyYz")
_ESCAPED = re.compile(r"\\(.)")

_DATE = r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"
_TIME = r"(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?"
_OFFSET = r"(?P<offset>Z|[+-]\d{2}(?::?\d{2})?)?"
_DATE_RE = re.compile(_DATE)
_TIME_RE = re.compile(_TIME)
_DATETIME_RE = re.compile(_DATE + "[T ]" + _TIME + _OFFSET)


class _Blank(Exception):
    """The value cannot be formatted with this character: Django's filter then returns ''."""


def _parts(match: re.Match) -> dict[str, int]:
    fields = match.groupdict()
    fraction = fields.pop("fraction", None)
    fields.pop("offset", None)
    numbers = {name: int(text) for name, text in fields.items() if text is not None}
    if fraction:
        numbers["microsecond"] = int(fraction[:6].ljust(6, "0"))
    return numbers


def _offset(text: str | None) -> timezone | None:
    if text is None:
        return None
    if text == "Z":
        return UTC
    digits = text[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
    if delta >= timedelta(hours=24):
        raise ValueError("offset out of range")
    return timezone(-delta if text[0] == "-" else delta)


def parse_datetime_value(value: Any) -> date | datetime | time | None:
    """The date, datetime or time an ISO 8601 string stands for (None if it stands for none; a
    time of day needs its seconds, as DjangoJSONEncoder writes it); date, datetime and time
    objects as they are; None for anything else."""
    if isinstance(value, (date, time)):
        return value
    if not isinstance(value, str):
        return None
    try:
        if match := _DATE_RE.fullmatch(value):
            return date(**_parts(match))
        if match := _DATETIME_RE.fullmatch(value):
            return datetime(**_parts(match), tzinfo=_offset(match["offset"]))
        if (match := _TIME_RE.fullmatch(value)) and match["second"] is not None:
            return time(**_parts(match))  # "12:00" is text: DjangoJSONEncoder writes a time's seconds
    except ValueError:  # 2023-02-29, 25:00, an offset of a day or more
        return None
    return None


class _Formatter:
    """One value's format characters; each method returns the text for its character."""

    def __init__(self, value: Any, *, filter_name: str):
        self.filter_name = filter_name
        if isinstance(value, datetime) and value.tzinfo is not None and value.utcoffset() is not None:
            value = value.astimezone(UTC)
        self.value = value
        self.is_datetime = isinstance(value, datetime)
        self.is_date_only = type(value) is date

    def _need(self, *attributes: str) -> Any:
        if not all(hasattr(self.value, name) for name in attributes):
            raise _Blank
        return self.value

    # ---- time of day ----
    def _hour12(self) -> int:
        return self._need("hour").hour % 12 or 12

    def a(self) -> str:
        return "p.m." if self._need("hour").hour > 11 else "a.m."

    def A(self) -> str:
        return "PM" if self._need("hour").hour > 11 else "AM"

    def f(self) -> str:
        minute = self._need("minute").minute
        return f"{self._hour12()}:{minute:02d}" if minute else str(self._hour12())

    def g(self) -> str:
        return str(self._hour12())

    def G(self) -> str:
        return str(self._need("hour").hour)

    def h(self) -> str:
        return f"{self._hour12():02d}"

    def H(self) -> str:
        return f"{self._need('hour').hour:02d}"

    def i(self) -> str:
        return f"{self._need('minute').minute:02d}"

    def s(self) -> str:
        return f"{self._need('second').second:02d}"

    def u(self) -> str:
        return f"{self._need('microsecond').microsecond:06d}"

    def P(self) -> str:
        value = self._need("hour", "minute")
        if value.minute == 0 and value.hour in (0, 12):
            return "midnight" if value.hour == 0 else "noon"
        return f"{self.f()} {self.a()}"

    # ---- time zone (UTC; only a datetime has one) ----
    def e(self) -> str:
        return "UTC" if self.is_datetime and self.value.tzinfo is not None else ""

    def O(self) -> str:  # noqa: E743 (Django's format character)
        return "+0000" if self.is_datetime else ""

    def T(self) -> str:
        return "UTC" if self.is_datetime else ""

    def Z(self) -> str:
        return "0" if self.is_datetime else ""

    def I(self) -> str:  # noqa: E743 (Django's format character)
        return "0" if self.is_datetime else ""

    # ---- the day ----
    def _day(self) -> date:
        return self._need("year", "month", "day")

    def b(self) -> str:
        return MONTHS[self._day().month - 1][:3].lower()

    def c(self) -> str:
        return self._need("isoformat").isoformat()

    def d(self) -> str:
        return f"{self._day().day:02d}"

    def D(self) -> str:
        return WEEKDAYS[self._day().weekday()][:3]

    def E(self) -> str:
        return self.F()

    def F(self) -> str:
        return MONTHS[self._day().month - 1]

    def j(self) -> str:
        return str(self._day().day)

    def l(self) -> str:  # noqa: E743 (Django's format character)
        return WEEKDAYS[self._day().weekday()]

    def L(self) -> str:
        return str(calendar.isleap(self._day().year))

    def m(self) -> str:
        return f"{self._day().month:02d}"

    def M(self) -> str:
        return self.b().title()

    def n(self) -> str:
        return str(self._day().month)

    def N(self) -> str:
        return MONTHS_AP[self._day().month - 1]

    def o(self) -> str:
        return str(self._day().isocalendar()[0])

    def W(self) -> str:
        return str(self._day().isocalendar()[1])

    def S(self) -> str:
        day = self._day().day
        if day in (11, 12, 13):
            return "th"
        return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")

    def t(self) -> str:
        value = self._day()
        return str(calendar.monthrange(value.year, value.month)[1])

    def w(self) -> str:
        return str((self._day().weekday() + 1) % 7)

    def y(self) -> str:
        return f"{self._day().year % 100:02d}"

    def Y(self) -> str:
        return f"{self._day().year:04d}"

    def z(self) -> str:
        value = self._day()
        return str(value.toordinal() - date(value.year, 1, 1).toordinal() + 1)

    def _as_utc_datetime(self, char: str) -> datetime:
        value = self.value
        if isinstance(value, time):  # Django: datetime.combine() refuses a time (TypeError)
            raise TemplateInvalid(f"the {self.filter_name} filter's format character {char!r} needs a date, not a time")
        self._day()
        if not isinstance(value, datetime):
            value = datetime.combine(value, time.min)
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    def r(self) -> str:
        return format_datetime(self._as_utc_datetime("r"))

    def U(self) -> str:
        return str(int(self._as_utc_datetime("U").timestamp()))

    def render(self, fmt: str, allowed: frozenset[str]) -> str:
        pieces, literal = [], []
        for index, char in enumerate(fmt):
            if char in TIME_CHARS | DATE_CHARS and (index == 0 or fmt[index - 1] != "\\"):
                pieces.append(_ESCAPED.sub(r"\1", "".join(literal)))
                literal = []
                if char not in allowed:
                    raise _Blank
                if self.is_date_only and char in TIME_CHARS:
                    raise TemplateInvalid(
                        f"the {self.filter_name} filter: the format for a date (no time of day) may not contain "
                        f"the time-related format character {char!r}"
                    )
                pieces.append(getattr(self, char)())
            else:
                literal.append(char)
        pieces.append(_ESCAPED.sub(r"\1", "".join(literal)))
        return "".join(pieces)


def _format(value: Any, fmt: Any, *, default: str, allowed: frozenset[str], filter_name: str) -> str:
    if value is None or (isinstance(value, str) and value == ""):
        return ""
    fmt = str(fmt or default)
    fmt = NAMED_FORMATS.get(fmt, fmt)
    parsed = parse_datetime_value(value)
    if filter_name == "time" and type(parsed) is date:
        allowed = frozenset()  # Django's time filter turns a date's TypeError into '' like any other failure
    try:
        return _Formatter(parsed, filter_name=filter_name).render(fmt, allowed)
    except _Blank:
        return ""


def format_date(value: Any, fmt: Any = None) -> str:
    """Django's ``date`` filter: every format character; DATE_FORMAT ("N j, Y") by default."""
    return _format(value, fmt, default="DATE_FORMAT", allowed=TIME_CHARS | DATE_CHARS, filter_name="date")


def format_time(value: Any, fmt: Any = None) -> str:
    """Django's ``time`` filter: the time-of-day and zone characters; TIME_FORMAT ("P") by default.
    A date, or any date character in the format, gives "" (as in Django)."""
    return _format(value, fmt, default="TIME_FORMAT", allowed=TIME_CHARS, filter_name="time")


def localize(value: date | time) -> str:
    """How Django prints a date, datetime or time variable: DATETIME_FORMAT, DATE_FORMAT or TIME_FORMAT."""
    if isinstance(value, datetime):
        return format_date(value, DATETIME_FORMAT)
    if isinstance(value, date):
        return format_date(value, DATE_FORMAT)
    return format_time(value, TIME_FORMAT)
