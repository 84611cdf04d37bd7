"""Django's built-in template filters with Django's output, without Django (Jinja2 runs them).

``FILTERS`` maps each supported Django filter name to a function ``(value[, arg][, autoescape=...])``;
``ARGUMENTS`` says whether Django's filter takes no argument, an optional or a required one (Django
refuses any other count when it compiles the template). Filters Django declares
``needs_autoescape`` (``join``, ``linebreaks``, ``linebreaksbr``) take ``autoescape: bool``.

Safety follows Django's rules, with ``markupsafe.Markup`` standing for Django's SafeString:

- a value that is Markup is treated as text first (``str`` of it), as Django's string methods drop
  SafeString; a filter Django declares ``is_safe`` gives Markup back when its value was Markup;
- a filter that marks its output safe in Django (``safe``, ``escape``, ``join``, ``linebreaks``,
  ``floatformat`` of a number...) returns Markup; others return ``str`` (or the value, a number).
- Django marks string literals in a template safe: pass a literal argument as Markup (so
  ``join:"<br>"`` does not escape its separator, and ``default:"<b>"`` prints as written).
- Django escapes with ``&quot;`` and ``&#x27;`` (markupsafe with ``&#34;`` and ``&#39;``):
  ``escape_html`` is Django's ``conditional_escape``, for printing a variable too.

Where Django's filter raises (``first`` of a number, ``wordwrap`` with a width of 0, ``divisibleby``
by zero...), the template fails with ``TemplateInvalid`` naming the filter. A width, repeat or number
of decimal places that would build a string over the render's output limit raises
``TemplateLimitExceeded`` before anything is built.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import textwrap
import unicodedata
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from functools import wraps
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from dbmail.core.errors import TemplateInvalid, TemplateLimitExceeded
from dbmail.outgoing import django_dates

NO_ARGUMENT, OPTIONAL, REQUIRED = "none", "optional", "required"
FILTERS: dict[str, Callable[..., Any]] = {}
ARGUMENTS: dict[str, str] = {}
NEEDS_AUTOESCAPE = frozenset({"join", "linebreaks", "linebreaksbr"})  # these take autoescape=bool


def _check_size(size: int, what: str) -> None:
    from dbmail.outgoing.render import _check_size as check  # render compiles templates that use these

    check(size, what)


def escape_html(value: Any) -> Markup:
    """Django's ``conditional_escape``: Markup as it is, anything else as escaped text."""
    if hasattr(value, "__html__"):
        return Markup(value.__html__())
    return Markup(html.escape(str(value)))


def _filter(name: str, *, argument: str = NO_ARGUMENT, is_safe: bool = False, raw: bool = False):
    """Registers a Django filter. Unless ``raw``, a Markup value reaches it as plain ``str``;
    ``is_safe`` re-marks the output as Django does; an error Django would raise fails the template."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(function)
        def run(value: Any, *args: Any, **kwargs: Any) -> Any:
            was_safe = isinstance(value, Markup)
            if was_safe and not raw:
                value = str(value)
            try:
                result = function(value, *args, **kwargs)
            except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError, OverflowError) as error:
                raise TemplateInvalid(f"the {name} filter failed on {_shown(value)}: {error}") from None
            if is_safe and was_safe and isinstance(result, str) and not isinstance(result, Markup):
                return Markup(result)
            return result

        FILTERS[name] = run
        ARGUMENTS[name] = argument
        return run

    return register


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- dates ------------------------------------------------------------------------------------
@_filter("date", argument=OPTIONAL)
def date(value: Any, arg: Any = None) -> str:
    return django_dates.format_date(value, arg)


@_filter("time", argument=OPTIONAL)
def time(value: Any, arg: Any = None) -> str:
    return django_dates.format_time(value, arg)


# ---- logic ------------------------------------------------------------------------------------
@_filter("default", argument=REQUIRED, raw=True)
def default(value: Any, arg: Any) -> Any:
    return value or arg


@_filter("default_if_none", argument=REQUIRED, raw=True)
def default_if_none(value: Any, arg: Any) -> Any:
    return arg if value is None else value


@_filter("yesno", argument=OPTIONAL, raw=True)
def yesno(value: Any, arg: Any = None) -> Any:
    if arg is not None and not isinstance(arg, str):
        raise TypeError("its argument must be a string")
    choices = str("yes,no,maybe" if arg is None else arg).split(",")
    if len(choices) < 2:
        return value
    yes, no = choices[0], choices[1]
    maybe = choices[2] if len(choices) == 3 else no
    return maybe if value is None else yes if value else no


@_filter("pluralize", argument=OPTIONAL)
def pluralize(value: Any, arg: Any = "s") -> str:
    if not isinstance(arg, str):
        raise TypeError("its argument must be a string")
    suffixes = (arg if "," in arg else "," + arg).split(",")
    if len(suffixes) > 2:
        return ""
    singular, plural = suffixes
    try:
        return singular if float(value) == 1 else plural
    except ValueError:
        return ""
    except TypeError:
        try:
            return singular if len(value) == 1 else plural
        except TypeError:
            return ""


@_filter("divisibleby", argument=REQUIRED)
def divisibleby(value: Any, arg: Any) -> bool:
    return int(value) % int(arg) == 0


# ---- text -------------------------------------------------------------------------------------
@_filter("lower", is_safe=True)
def lower(value: Any) -> str:
    return str(value).lower()


@_filter("upper")
def upper(value: Any) -> str:
    return str(value).upper()


_APOSTROPHE_CAPITAL = re.compile("([a-z])'([A-Z])")
_DIGIT_CAPITAL = re.compile(r"\d([A-Z])")


@_filter("title", is_safe=True)
def title(value: Any) -> str:
    """str.title, then "don'T" and "1St" lowered back as Django does."""
    text = _APOSTROPHE_CAPITAL.sub(lambda match: match.group(0).lower(), str(value).title())
    return _DIGIT_CAPITAL.sub(lambda match: match.group(0).lower(), text)


@_filter("capfirst", is_safe=True)
def capfirst(value: Any) -> str:
    text = str(value)
    return text[:1].upper() + text[1:]


@_filter("wordcount")
def wordcount(value: Any) -> int:
    return len(str(value).split())


@_filter("make_list")
def make_list(value: Any) -> list[str]:
    return list(str(value))


@_filter("cut", argument=REQUIRED, raw=True)
def cut(value: Any, arg: Any) -> str:
    if not isinstance(arg, str):
        raise TypeError("its argument must be a string")
    text = str(value).replace(arg, "")
    return Markup(text) if isinstance(value, Markup) and arg != ";" else text


@_filter("addslashes", is_safe=True)
def addslashes(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")


def _width(arg: Any, what: str) -> int:
    width = int(arg)
    _check_size(width, what)
    return width


@_filter("ljust", argument=REQUIRED, is_safe=True)
def ljust(value: Any, arg: Any) -> str:
    return str(value).ljust(_width(arg, "ljust's width"))


@_filter("rjust", argument=REQUIRED, is_safe=True)
def rjust(value: Any, arg: Any) -> str:
    return str(value).rjust(_width(arg, "rjust's width"))


@_filter("center", argument=REQUIRED, is_safe=True)
def center(value: Any, arg: Any) -> str:
    width = _width(arg, "center's width")
    return f"{str(value):^{width}}" if width > 0 else str(value)


def _truncation_length(arg: Any) -> int | None:
    try:
        return int(arg)
    except ValueError:  # Django returns the value unchanged
        return None


@_filter("truncatechars", argument=REQUIRED, is_safe=True)
def truncatechars(value: Any, arg: Any) -> str:
    """At most ``arg`` characters (combining marks not counted), the last one an ellipsis."""
    text = str(value)
    length = _truncation_length(arg)
    if length is None:
        return text
    if length <= 0:
        return ""
    text = unicodedata.normalize("NFC", text)
    counted, keep = 0, 0
    for index, char in enumerate(text):
        if unicodedata.combining(char):
            continue
        counted += 1
        if counted == length:  # the ellipsis takes the last place
            keep = index
        if counted > length:
            return text[:keep] + "…"
    return text


@_filter("truncatewords", argument=REQUIRED, is_safe=True)
def truncatewords(value: Any, arg: Any) -> str:
    text = str(value)
    length = _truncation_length(arg)
    if length is None:
        return text
    if length <= 0:
        return ""
    words = text.split()
    if len(words) <= length:
        return " ".join(words)
    kept = " ".join(words[:length])
    return kept if kept.endswith(" …") else kept + " …"


@_filter("wordwrap", argument=REQUIRED, is_safe=True)
def wordwrap(value: Any, arg: Any) -> str:
    """Lines of at most ``arg`` characters, long words kept whole, existing line breaks kept."""
    text = str(value)
    wrapper = textwrap.TextWrapper(
        width=int(arg), break_long_words=False, break_on_hyphens=False, replace_whitespace=False
    )
    lines = []
    for line in text.splitlines():
        lines.extend(wrapper.wrap(line) or [line])
    if text.endswith("\n"):
        lines.append("")
    return "\n".join(lines)


# ---- HTML -------------------------------------------------------------------------------------
@_filter("safe", is_safe=True)
def safe(value: Any) -> Markup:
    return Markup(value)


@_filter("escape", is_safe=True, raw=True)
def escape(value: Any) -> Markup:
    return escape_html(value if isinstance(value, Markup) else str(value))


@_filter("force_escape", is_safe=True)
def force_escape(value: Any) -> Markup:
    return Markup(html.escape(str(value)))


_JS_ESCAPES = {ord(char): f"\\u{ord(char):04X}" for char in "\\'\"><&=-;`\u2028\u2029"}
_JS_ESCAPES.update((code, f"\\u{code:04X}") for code in [*range(32), *range(0x7F, 0xA0)])


@_filter("escapejs")
def escapejs(value: Any) -> Markup:
    return Markup(str(value).translate(_JS_ESCAPES))


_NEWLINES = re.compile(r"\r\n|\r")
_PARAGRAPH_BREAK = re.compile("\n{2,}")


@_filter("linebreaks", is_safe=True, raw=True)
def linebreaks(value: Any, autoescape: bool = True) -> Markup:
    """Paragraphs (``<p>``) at blank lines, ``<br>`` at single line breaks."""
    escaping = autoescape and not isinstance(value, Markup)
    text = _NEWLINES.sub("\n", str(value))
    paragraphs = [html.escape(part) if escaping else part for part in _PARAGRAPH_BREAK.split(text)]
    return Markup("\n\n".join(f"<p>{part.replace(chr(10), '<br>')}</p>" for part in paragraphs))


@_filter("linebreaksbr", is_safe=True, raw=True)
def linebreaksbr(value: Any, autoescape: bool = True) -> Markup:
    text = _NEWLINES.sub("\n", str(value))
    if autoescape and not isinstance(value, Markup):
        text = html.escape(text)
    return Markup(text.replace("\n", "<br>"))


class _TagStripper(HTMLParser):
    """One pass of Django's strip_tags: text and character references kept, tags dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.kept: list[str] = []

    def handle_data(self, data: str) -> None:
        self.kept.append(data)

    def handle_entityref(self, name: str) -> None:
        self.kept.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.kept.append(f"&#{name};")


_STRIP_PASSES = 50  # Django refuses input that needs more (SuspiciousOperation)
_LONG_OPEN_TAG = re.compile(r"<[a-zA-Z][^>]{1000,}")


@_filter("striptags", is_safe=True)
def striptags(value: Any) -> str:
    text = str(value)
    if any(match.group().count("<") >= _STRIP_PASSES for match in _LONG_OPEN_TAG.finditer(text)):
        raise TemplateLimitExceeded("striptags: the value nests over 50 unclosed tags")
    passes = 0
    while "<" in text and ">" in text:
        if passes >= _STRIP_PASSES:
            raise TemplateLimitExceeded("striptags: the value needs over 50 passes to strip")
        stripper = _TagStripper()
        stripper.feed(text)
        stripper.close()
        stripped = "".join(stripper.kept)
        if stripped.count("<") == text.count("<"):
            break
        text = stripped
        passes += 1
    return text


@_filter("urlencode", argument=OPTIONAL)
def urlencode(value: Any, arg: Any = None) -> str:
    return quote(str(value)) if arg is None else quote(str(value), safe=arg)


# ---- lists ------------------------------------------------------------------------------------
@_filter("length")
def length(value: Any) -> int:
    try:
        return len(value)
    except (TypeError, ValueError):
        return 0


@_filter("first")
def first(value: Any) -> Any:
    try:
        return value[0]
    except IndexError:
        return ""


@_filter("last", is_safe=True)
def last(value: Any) -> Any:
    try:
        return value[-1]
    except IndexError:
        return ""


@_filter("join", argument=REQUIRED, is_safe=True, raw=True)
def join(value: Any, arg: Any, autoescape: bool = True) -> Any:
    if not autoescape and not isinstance(arg, str):
        raise AttributeError(f"cannot join with {_shown(arg)}")
    try:
        items = list(value)
        if autoescape:
            separator, items = escape_html(arg), [escape_html(item) for item in items]
        else:
            separator = arg
            if not all(isinstance(item, str) for item in items):
                raise TypeError
        _check_size(sum(map(len, items)) + len(separator) * max(len(items) - 1, 0), "a joined string")
        return Markup(str(separator).join(str(item) for item in items))
    except TypeError:  # Django: a value it cannot join comes back as it is
        return value


@_filter("slice", argument=REQUIRED, is_safe=True)
def slice_(value: Any, arg: Any) -> Any:
    try:
        bounds = [int(bit) if bit else None for bit in str(arg).split(":")]
        return value[slice(*bounds)]
    except (ValueError, TypeError, KeyError):
        return value


# ---- numbers ----------------------------------------------------------------------------------
@_filter("add", argument=REQUIRED, raw=True)
def add(value: Any, arg: Any) -> Any:
    """Integers (int() of each) added; else the values concatenated; else ''."""
    try:
        return int(value) + int(arg)
    except (ValueError, TypeError):
        pass
    if isinstance(value, str) and isinstance(arg, str):
        _check_size(len(value) + len(arg), "an added string")
        text = str(value) + str(arg)
        return Markup(text) if isinstance(value, Markup) and isinstance(arg, Markup) else text
    if isinstance(value, (list, tuple)) and isinstance(arg, type(value)):
        _check_size(len(value) + len(arg), "an added list")
    try:
        return value + arg
    except Exception:
        return ""


def _group_thousands(number: str) -> str:
    sign = "-" if number.startswith("-") else ""
    whole, dot, fraction = number.removeprefix("-").partition(".")
    groups = []
    while len(whole) > 3:
        whole, tail = whole[:-3], whole[-3:]
        groups.insert(0, tail)
    return sign + ",".join([whole, *groups]) + dot + fraction


@_filter("floatformat", argument=OPTIONAL, is_safe=True)
def floatformat(value: Any, arg: Any = -1) -> Any:
    """Rounded half up to ``arg`` places: negative or none, only if the number has a fraction;
    a 'g' suffix groups thousands with ',' (not with 'u' as well, as Django's settings have no grouping)."""
    grouping = False
    if isinstance(arg, str):
        if not arg:
            raise TemplateInvalid("the floatformat filter's argument is empty")
        suffix = arg[-2:] if arg[-2:] in ("gu", "ug") else arg[-1] if arg[-1] in "gu" else ""
        grouping = suffix == "g"
        arg = arg[: len(arg) - len(suffix)] or -1
    text = str(value)
    try:
        number = Decimal(text)
    except InvalidOperation:
        try:
            number = Decimal(str(float(value)))
        except (ValueError, InvalidOperation, TypeError):
            return ""
    try:
        places = int(arg)
    except ValueError:
        return text
    _, digits, exponent = number.as_tuple()
    if isinstance(exponent, str) or len(digits) + abs(exponent) > 200:  # NaN/Infinity, or huge: as written
        return text
    fraction = number - int(number)
    if not fraction and places <= 0:
        whole = str(int(number))
        return Markup(_group_thousands(whole) if grouping else whole)
    _check_size(abs(places), "floatformat's decimal places")
    precision = max(28, abs(places) + len(digits) + abs(exponent) + 1)
    rounded = number.quantize(Decimal(1).scaleb(-abs(places)), ROUND_HALF_UP, Context(prec=precision))
    shown = format(rounded.copy_abs(), "f")  # abs() would round to 28 digits
    if rounded.is_signed() and rounded:
        shown = "-" + shown
    return Markup(_group_thousands(shown) if grouping else shown)


def localize(value: Any) -> Any:
    """What Django prints for a value (after template_localtime): dates in their default format,
    floats written out in full where ``str`` would use an exponent; other values as they are."""
    if isinstance(value, (dt.date, dt.time)):
        return django_dates.localize(value)
    if isinstance(value, float) and "e" in str(value).lower():
        number = Decimal(str(value))
        _, digits, exponent = number.as_tuple()
        if len(digits) + abs(exponent) > 200:
            coefficient, power = f"{number:e}".split("e")
            return f"{coefficient}e{power}"
        return f"{number:f}"
    return value
