"""django_filters against Django itself: each filter, edge values, safe or not, autoescape on and off.

What is compared is what the template prints: Django's engine renders ``{{ v|name:a }}``; dbmail's
filter result is printed as dbmail prints a value (``localize``, then ``escape_html`` when
autoescaping). A safe value or argument (Markup; a SafeString for Django) stands for a literal.
"""

import django
import pytest
from django.conf import settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from markupsafe import Markup

from dbmail.core.errors import TemplateInvalid, TemplateLimitExceeded
from dbmail.outgoing.django_filters import ARGUMENTS, FILTERS, NEEDS_AUTOESCAPE, escape_html, localize

if not settings.configured:
    settings.configure(
        TEMPLATES=[], USE_TZ=True, TIME_ZONE="UTC", USE_I18N=True, LANGUAGE_CODE="en-us", INSTALLED_APPS=[]
    )
    django.setup()

from django.template import Context, Engine, TemplateSyntaxError
from django.utils.safestring import mark_safe

ENGINE = Engine()
NOARG = object()

TEXTS = [
    "",
    "abc",
    "Zoë <b>&</b> 'q' \"d\"",
    "hello world foo bar baz",
    "line1\nline2\n\nline3\r\nx\r\r\ny",
    "<p>Hi <b>there</b></p> &amp; more &#169; <br/>",
    "ÉCOLE élève ǆ straße",
    "don't 1st o'Neil mcdonald's",
    "  spaced  out  ",
    "e\u0301e\u0301e\u0301e\u0301e\u0301",  # combining accents
    "ab…cd…",
    "1",
    "0",
    "-2.345",
    "3.50",
    " 7 ",
    "1e3",
    "nan",
    "a;b;c",
]
OTHERS = [None, 0, 1, -1, 2, 3.5, -0.5, 0.125, 1e-7, 1e20, 12345678.9, True, False, [], ["a", "<b>"], [1, 2, 3]]
OTHERS += [{"k": "v"}, ("x",)]
VALUES = TEXTS + [Markup(text) for text in TEXTS] + OTHERS

ARGS = {
    "default": ["fallback", "<i>x</i>", ""],
    "default_if_none": ["fallback", "<i>x</i>"],
    "truncatewords": [0, 1, 2, "3", "x", -1],
    "truncatechars": [0, 1, 3, 5, "4", "x", 100],
    "pluralize": [NOARG, "es", "y,ies", "a,b,c", ",", 2],
    "yesno": [NOARG, "yeah,no", "yeah,no,maybe", "one", "a,b,c,d", "<y>,<n>", 5],
    "floatformat": [NOARG, 0, 2, -2, "3", "-3", "2g", "g", "0u", "2gu", "x", 1.5, "-0", ""],
    "join": [", ", "<br>", "", 7],
    "urlencode": [NOARG, "", "/:"],
    "add": [1, "1", "-3", "x", 2.5, ["z"], None, "<i>"],
    "slice": [":2", "1:", "-1", "::2", "1:2:3:4", "x", "::0", 2, ""],
    "wordwrap": [5, 1, "10", 0, "x"],
    "cut": [" ", "o", ";", "<b>", 5],
    "center": [0, 5, 12, -3, "9", "x"],
    "ljust": [0, 12, "9"],
    "rjust": [0, 12, "9"],
    "divisibleby": [2, 3, 0],
    "date": [NOARG, "Y-m-d", "\\Y"],
    "time": [NOARG, "H:i"],
}


def django_prints(name, value, arg, autoescape):
    source = "{{ v|" + name + ("" if arg is NOARG else ":a") + " }}"
    return ENGINE.from_string(source).render(Context({"v": value, "a": arg}, autoescape=autoescape))


def dbmail_prints(name, value, arg, autoescape):
    function = FILTERS[name]
    keywords = {"autoescape": autoescape} if name in NEEDS_AUTOESCAPE else {}
    result = function(value, **keywords) if arg is NOARG else function(value, arg, **keywords)
    result = localize(result)
    return str(escape_html(result)) if autoescape else str(result)


def as_django(value):
    return mark_safe(str(value)) if isinstance(value, Markup) else value


def cases():
    for name in sorted(FILTERS):
        for arg in ARGS.get(name, [NOARG]):
            for safe_arg in (False, True) if isinstance(arg, str) else (False,):
                yield name, Markup(arg) if safe_arg else arg


@pytest.mark.parametrize("autoescape", [True, False], ids=["autoescape", "no-autoescape"])
@pytest.mark.parametrize(("name", "arg"), list(cases()))
def test_each_filter_prints_what_django_prints(name, arg, autoescape):
    for value in VALUES:
        # given what Django prints for the value through the filter (or the error it raises)
        try:
            expected = django_prints(name, as_django(value), as_django(arg), autoescape)
        except TemplateSyntaxError:
            raise
        except Exception:
            # then dbmail fails the template too, naming the filter
            with pytest.raises(TemplateInvalid, match=name):
                dbmail_prints(name, value, arg, autoescape)
            continue
        # then dbmail prints the same
        assert dbmail_prints(name, value, arg, autoescape) == expected, (name, value, arg)


def test_every_filter_of_the_issue_and_the_extras_is_there():
    issue = [
        "date",
        "time",
        "default",
        "default_if_none",
        "length",
        "lower",
        "upper",
        "title",
        "capfirst",
        "linebreaks",
        "linebreaksbr",
        "striptags",
        "truncatewords",
        "truncatechars",
        "pluralize",
        "yesno",
        "floatformat",
        "join",
        "first",
        "last",
        "safe",
        "escape",
        "urlencode",
        "add",
        "slice",
        "wordwrap",
    ]
    extras = [
        "cut",
        "center",
        "ljust",
        "rjust",
        "make_list",
        "wordcount",
        "divisibleby",
        "force_escape",
        "escapejs",
        "addslashes",
    ]
    assert sorted(FILTERS) == sorted(issue + extras)


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_argument_counts_are_django_s(name):
    # given Django's own count check when it compiles the template
    def compiles(source):
        try:
            ENGINE.from_string(source)
            return True
        except TemplateSyntaxError:
            return False

    without, with_one = compiles("{{ v|" + name + " }}"), compiles("{{ v|" + name + ":a }}")
    expected = {(True, False): "none", (True, True): "optional", (False, True): "required"}[(without, with_one)]
    if name in ("linebreaks", "linebreaksbr"):
        # Django compiles an argument there but fails when it renders: dbmail refuses it when compiling
        with pytest.raises(TypeError):
            django_prints(name, "x", "a", True)
        expected = "none"
    assert ARGUMENTS[name] == expected


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=False, allow_infinity=False),
        st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
    ),
    st.sampled_from([NOARG, 0, 1, 2, 3, -1, -2, -3, "2g", "g", "-2g"]),
)
def test_floatformat_matches_django_on_any_number(number, arg):
    assert dbmail_prints("floatformat", number, arg, True) == django_prints("floatformat", number, arg, True)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab <>&\n\r\t'\"é\u0301…")), max_size=40), st.integers(-1, 12))
def test_text_filters_match_django_on_any_text(text, number):
    for name in ("truncatechars", "truncatewords", "wordwrap", "linebreaks", "linebreaksbr", "striptags", "title"):
        arg = NOARG if ARGUMENTS[name] == "none" else number
        if name == "wordwrap" and number < 1:
            continue
        for autoescape in (True, False):
            assert dbmail_prints(name, text, arg, autoescape) == django_prints(name, text, arg, autoescape)


@pytest.mark.parametrize(
    ("name", "arg"),
    [("center", 10**9), ("ljust", 10**9), ("rjust", "999999999"), ("floatformat", 10**9)],
)
def test_hostile_widths_are_refused_before_anything_is_built(name, arg):
    # given a width far over the render's output limit
    # then the filter refuses it without allocating it
    with pytest.raises(TemplateLimitExceeded):
        FILTERS[name]("3.5", arg)


def test_hostile_joins_and_additions_are_refused():
    with pytest.raises(TemplateLimitExceeded):
        FILTERS["join"](["a"] * 100_000, "x" * 10, autoescape=False)
    with pytest.raises(TemplateLimitExceeded):
        FILTERS["add"]("x" * 200_000, "y" * 200_000)
    with pytest.raises(TemplateLimitExceeded):
        FILTERS["add"](["x"] * 200_000, ["y"] * 200_000)


def test_striptags_refuses_what_django_refuses():
    with pytest.raises(TemplateLimitExceeded):
        FILTERS["striptags"]("<a" * 60 + "x" * 1000)


def test_printing_numbers_is_django_s():
    for number in (0.1, 1e-7, 1e16, 1e20, 1e300, -2.5e-10, 3, True, float("inf")):
        assert str(escape_html(localize(number))) == ENGINE.from_string("{{ v }}").render(Context({"v": number}))


def test_the_filters_taking_autoescape_are_django_s():
    from django.template.defaultfilters import register

    assert {name for name in FILTERS if getattr(register.filters[name], "needs_autoescape", False)} == NEEDS_AUTOESCAPE
