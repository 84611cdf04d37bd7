"""Django-dialect templates: translated to Jinja2 by outgoing/django_templates.py and rendered in
render.py's LimitedSandbox. Where Django's own output is the reference, the test renders the
same template with Django (a test-only dependency) and compares byte for byte."""

import re
import time
from datetime import UTC, datetime

import django
import pytest
from django.conf import settings
from django.template import Context, Engine
from django.utils import dateparse

from dbmail.client.requests import submit_request
from dbmail.core.errors import TemplateInvalid, TemplateLimitExceeded
from dbmail.outgoing.django_templates import dialect_of, django_escape, is_django
from dbmail.outgoing.expand import prepare
from dbmail.outgoing.render import (
    DEFAULT_LIMITS,
    RenderLimits,
    UserContext,
    build_context,
    compile_message,
    is_html,
    shared_context,
)
from dbmail.outgoing.store import Store

if not settings.configured:
    settings.configure(TEMPLATES=[], USE_TZ=True, TIME_ZONE="UTC", USE_I18N=True, INSTALLED_APPS=[])
    django.setup()

DJANGO = Engine(libraries={"humanize": "django.contrib.humanize.templatetags.humanize"})


def render(body, message_vars=None, *, subject="", dialect=None, limits=DEFAULT_LIMITS):
    compiled = compile_message(subject, body, limits, dialect=dialect)
    context = build_context(
        UserContext({"first_name": "Zoë", "last_name": "Ng"}, None), {"id": "r1"}, "i@x", message_vars
    )
    return compiled.render(context)[1]


def website_value(value):
    """What the website held before JSON: an ISO 8601 string was a date, datetime or time."""
    if isinstance(value, dict):
        return {key: website_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [website_value(item) for item in value]
    if isinstance(value, str):
        for parse in (dateparse.parse_date, dateparse.parse_datetime, dateparse.parse_time):
            try:
                if (parsed := parse(value)) is not None:
                    return parsed
            except ValueError:
                pass
    return value


def django_render(body, message_vars=None):
    context = Context(website_value(dict(message_vars or {})), autoescape=is_html(body))
    return DJANGO.from_string(body).render(context)


# ---- byte for byte with Django ------------------------------------------------------------------
SAME_AS_DJANGO = {
    "text kept byte for byte": ("a } { b }} %} #} {raw} \r\n\ttab {% if 1 %}x{% endif %}\r\n", {}),
    "Jinja2-looking text is text": ("{{ x\n}} {%\n raw %} {#\n#} {{ user.\nfirst_name }}", {"x": 1}),
    "dotted lookups": (
        "{{ p.name }} {{ p.tags.1 }} {{ p.missing }} {{ nothing.at.all }}|",
        {"p": {"name": "Splash", "tags": ["a", "b"]}},
    ),
    "a key before an attribute": ("{{ d.items }} {{ d.keys }}", {"d": {"items": "key wins"}}),
    "callables are called": ("{{ name.upper }} {{ d.values }}", {"name": "zoë", "d": {"a": 1}}),
    "None, booleans, numbers": (
        "{{ n }} {{ t }} {{ f }} {{ i }} {{ x }} {{ tiny }} {{ 2.50 }} {{ -3 }}",
        {"n": None, "t": True, "f": False, "i": 7, "x": 1.5, "tiny": 1e-7},
    ),
    "html is escaped as Django escapes": (
        "<html>{{ s }} {{ s|safe }} {{ '<i>' }} {{ s|escape }}</html>",
        {"s": 'O\'Brien & "<co>"'},
    ),
    "text is not escaped": ("{{ s }}", {"s": "O'Brien & <co>"}),
    "filters with arguments": (
        '{{ s|default:"none" }} {{ e|default:"none" }} {{ s|lower|capfirst }} {{ l|join:", " }} {{ n|add:"2" }} {{ l|length }}',
        {"s": "HELLO", "e": "", "l": ["x", "y"], "n": 3},
    ),
    "a variable argument": ("{{ n|default:fallback }}", {"n": 0, "fallback": "zero"}),
    "translation literals": ('{{ _("Hello") }} {{ s|default:_("none") }}', {"s": ""}),
    "date filter on ISO strings": (
        '{{ d|date:"F j, Y" }} {{ dt|date:"D, N jS P" }}',
        {"d": "2026-07-04", "dt": "2026-07-04T09:30:00"},
    ),
    "if precedence": (
        "{% if a or b and not c %}1{% endif %}{% if not a and b %}2{% endif %}{% if a == 1 or c %}3{% endif %}",
        {"a": 0, "b": 1, "c": 1},
    ),
    "if comparisons": (
        "{% if n > 2 %}a{% endif %}{% if n <= 3 %}b{% endif %}{% if n != 3 %}c{% endif %}{% if s == 'x' %}d{% endif %}{% if 'x' in l %}e{% endif %}{% if 'z' not in l %}f{% endif %}{% if m is None %}g{% endif %}{% if n is not None %}h{% endif %}",
        {"n": 3, "s": "x", "l": ["x"], "m": None},
    ),
    "if with filters and failed comparisons": (
        "{% if l|length > 1 %}long{% elif l %}one{% else %}none{% endif %}{% if s > 1 %}?{% endif %}",
        {"l": [1], "s": "a"},
    ),
    "if truthiness": (
        "{% if e %}1{% endif %}{% if z %}2{% endif %}{% if m %}3{% endif %}{% if '0' %}4{% endif %}{% if l %}5{% endif %}",
        {"e": "", "z": 0, "l": []},
    ),
    "for with forloop": (
        "{% for x in l %}{{ forloop.counter }}{{ forloop.counter0 }}{{ forloop.revcounter }}{{ forloop.revcounter0 }}{{ forloop.first }}{{ forloop.last }}{{ x }};{% endfor %}",
        {"l": ["a", "b", "c"]},
    ),
    "for reversed, empty and parentloop": (
        "{% for r in rows reversed %}{% for c in r %}{{ forloop.parentloop.counter }}.{{ forloop.counter }}={{ c }} {% empty %}empty {% endfor %}{% endfor %}{% for x in nothing %}{% empty %}none{% endfor %}",
        {"rows": [["a", "b"], []]},
    ),
    "for unpacking a dict": (
        "{% for k, v in d.items %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
        {"d": {"a": 1, "b": 2}},
    ),
    "with both forms": (
        "{% with a=x b='lit' %}{{ a }}{{ b }}{% endwith %}{% with x as y %}{{ y }}{% endwith %}{{ a }}|",
        {"x": "<X>"},
    ),
    "firstof escapes as Django": (
        "<html>{% firstof a b 'c<' %} {% firstof b %} {% firstof z q as v %}[{{ v }}]</html>",
        {"a": 0, "b": "<b>", "q": "x&<"},
    ),
    "comment, load and comments": (
        "{% load humanize %}a{% comment %}{% url 'x' %}{{ x|nofilter }}{% endcomment %}b{# c #}",
        {},
    ),
    "spaceless": ("{% spaceless %}\n <p>\n  <a href='x'>y</a>  </p>\n {% endspaceless %}", {}),
    "autoescape on and off": (
        "<html>{{ s }}{% autoescape off %}{{ s }}{% autoescape on %}{{ s }}{% endautoescape %}{% endautoescape %}</html>",
        {"s": "<&>"},
    ),
    "cycle, named and silent": (
        "{% for x in l %}{% cycle 'odd' 'even' %} {% endfor %}{% cycle 'a' 'b' as ab silent %}[{{ ab }}]{% cycle ab %}[{{ ab }}]{% cycle 'p' 'q' as pq %}",
        {"l": [1, 2, 3]},
    ),
    "ifchanged with and without arguments": (
        "{% for d in days %}{% ifchanged %}<{{ d.0 }}>{% endifchanged %}{% ifchanged d.1 %}{{ d.1 }}{% else %}.{% endifchanged %}{% endfor %}",
        {"days": [["a", 1], ["a", 1], ["b", 2], ["b", 2]]},
    ),
    "filter tag": ("<html>{% filter lower|truncatechars:6 %}<B>{{ s }}</B> X{% endfilter %}</html>", {"s": "Ä&"}),
    "verbatim and templatetag": (
        "{% verbatim %}{{ x }}{% if %}{% endverbatim %}{% templatetag openblock %}{% templatetag closevariable %}",
        {"x": 1},
    ),
}


@pytest.mark.parametrize("template, values", SAME_AS_DJANGO.values(), ids=SAME_AS_DJANGO.keys())
def test_a_django_template_renders_as_django_renders_it(template, values):
    # given a Django template and the values it is rendered with
    # when dbmail renders it (detected as Django) and so does Django
    # then the bytes are the same
    assert render(template, values, dialect="django") == django_render(template, values)


# ---- what Django cannot check here --------------------------------------------------------------
def test_iso_date_strings_compare_as_the_dates_they_stand_for():
    # given ISO 8601 values, one with a zone offset
    values = {
        "start": "2026-07-04",
        "end": "2026-07-10",
        "due": "2026-07-04T09:00:00+02:00",
        "sent": "2026-07-04T08:00:00Z",
    }
    # when they are compared in {% if %}
    body = "{% if start < end %}a{% endif %}{% if due < sent %}b{% endif %}{% if start == start %}c{% endif %}"
    # then as dates and datetimes (09:00+02:00 is 07:00Z, before 08:00Z), as Django compares those dates
    assert render(body, values) == "abc" == django_render(body, values)


def test_iso_date_strings_print_and_filter_as_the_dates_they_stand_for():
    body = "{{ d }}|{{ d|default:'x' }}|{{ dt }}|{{ t }}|{{ d|date:'Y' }}|{% for x in l %}{{ x }};{% endfor %}|{{ 'x'|add:d }}"
    values = {"d": "2026-07-04", "dt": "2026-07-04T09:30:00Z", "t": "09:30:00", "l": ["2026-01-02"]}
    assert render(body, values) == django_render(body, values)
    assert render(body, values).startswith(
        "July 4, 2026|July 4, 2026|July 4, 2026, 9:30 a.m.|9:30 a.m.|2026|Jan. 2, 2026;"
    )


def test_a_recipients_iso_date_prints_as_the_date_whichever_path_renders_it():
    # given a recipient's variable holding an ISO date
    context = build_context(UserContext({}, {"birthday": "2026-07-04"}), {}, "i@x", None)
    # when printed plainly (the direct path) and through a filter (the translation)
    for body in ("{{ user.birthday }}", "{{ user.birthday|default:'' }}"):
        # then it is the date, as Django prints it
        assert compile_message("", body, dialect="django").render(context)[1] == "July 4, 2026"


def test_now_formats_the_current_utc_time():
    body = '{% now "Y" %}|{% now "Y-m-d" as today %}{{ today }}'
    assert render(body) == time.strftime("%Y|%Y-%m-%d", time.gmtime())


def test_a_recipients_user_fields_resolve_and_unknown_ones_are_empty():
    assert render("{% if user.first_name %}{{ user.first_name }} {{ user }}{% endif %}[{{ user.nickname }}]") == (
        "Zoë Zoë Ng[]"
    )


def test_the_subject_is_rendered_in_the_django_dialect_too():
    compiled = compile_message('Due {{ d|date:"N j" }}', "x", dialect="django")
    context = build_context(UserContext({}, None), {}, "i@x", {"d": "2026-09-05"})
    assert compiled.render(context)[0] == "Due Sept. 5"


# ---- errors at submit time, naming the tag or filter and the line ---------------------------------
@pytest.mark.parametrize(
    "body, message",
    [
        ("a\nb\n{% url 'home' %}", r"body template has an unsupported Django tag \{% url %\} on line 3"),
        ("{% load static %}\n{% csrf_token %}", r"unsupported Django tag \{% csrf_token %\} on line 2"),
        ("{% extends 'base.html' %}", r"unsupported Django tag \{% extends %\} on line 1"),
        ("{% block content %}{% endblock %}", r"unsupported Django tag \{% block %\} on line 1"),
        ("{% include 'x.html' %}", r"unsupported Django tag \{% include %\} on line 1"),
        ("{% load x %}\n\n{{ name|slugify }}", r"unsupported Django filter \|slugify on line 3"),
        ("{% load x %}{{ name|nosuch:'a' }}", r"unsupported Django filter \|nosuch on line 1"),
        ("{% load x %}\n{% for x in l %}{{ x }}", r"syntax error at line 2: \{% for %\} is never closed"),
        ("{% load x %}\n\n{% endfor %}", r"syntax error at line 3: unexpected \{% endfor %\}"),
        ("{% load x %}{% if a b %}{% endif %}", r"syntax error at line 1: unused 'b' at end of if expression"),
        ("{% load x %}{% if a == %}{% endif %}", r"syntax error at line 1: unexpected end of if expression"),
        ("{% load x %}{{ x|default }}", r"syntax error at line 1: the filter \|default requires an argument"),
        ("{% load x %}\n{{ x._secret }}", r"line 2: variables and attributes may not begin with underscores"),
        ("{% load x %}{% cycle nosuch %}", r"named cycle 'nosuch' does not exist"),
        ("{% load x %}{% with %}{% endwith %}", r"'with' expected at least one variable assignment"),
        ("{% load x %}{% autoescape %}{% endautoescape %}", r"'autoescape' argument should be 'on' or 'off'"),
        ("{% load x %}\n\nDear {{ user.first_name ", r"syntax error at line 3: \{\{ is never closed by \}\}"),
        ("{% load x %}{% filter escape %}x{% endfilter %}", r'"filter escape" is not permitted'),
        ("{% load x %}{{ x|upper:'a' }}", r"syntax error at line 1: the filter \|upper takes no argument"),
        ("{% load x %}\n{% %}", r"syntax error at line 2: empty block tag"),
    ],
)
def test_an_unsupported_or_broken_django_template_is_refused_at_submit(body, message):
    with pytest.raises(TemplateInvalid, match=message):
        compile_message("s", body)


def test_a_template_mixing_both_dialects_is_refused_asking_for_template_dialect():
    with pytest.raises(TemplateInvalid, match=r"mixes Django .*forloop.* line 1\) and Jinja2 .*loop\.index.* line 2"):
        compile_message("s", "{{ forloop.counter }}\n{{ loop.index }}")


def test_an_unknown_dialect_is_refused():
    with pytest.raises(TemplateInvalid, match="template_dialect must be 'django' or 'jinja2'"):
        compile_message("s", "x", dialect="django2")


# ---- the dialect rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source, dialect",
    [
        ('{{ d|date:"Y" }}', "django"),
        ("{% load humanize %}", "django"),
        ("{% for x in l %}{% empty %}{% endfor %}", "django"),
        ("{{ forloop.counter }}", "django"),
        ("{% comment %}x{% endcomment %}", "django"),
        ("{% firstof a b %}", "django"),
        ("{% cycle 'a' 'b' %}", "django"),
        ("{% ifchanged %}{% endifchanged %}", "django"),
        ('{% now "Y" %}', "django"),
        ("{% with a as b %}{% endwith %}", "django"),
        ("{% for x in l reversed %}{% endfor %}", "django"),
        ("{% autoescape off %}{% endautoescape %}", "django"),
        ("{{ n|pluralize }}", "django"),
        ('{{ _("Hi") }}', "django"),
        ("{% url 'x' %}", "django"),
        ("{{ x|default('a') }}", "jinja2"),
        ("{% for x in l %}{{ loop.index }}{% endfor %}", "jinja2"),
        ("{%- if x -%}{% endif %}", "jinja2"),
        ("{% set a = 1 %}", "jinja2"),
        ("{% macro m() %}{% endmacro %}", "jinja2"),
        ("{% raw %}{{ x }}{% endraw %}", "jinja2"),
        ("{{ a ~ b }}", "jinja2"),
        ("{{ a + 1 }}", "jinja2"),
        ("{{ user['first_name'] }}", "jinja2"),
        ("{{ x|e }}", "jinja2"),
        ("{% if x is defined %}{% endif %}", "jinja2"),
        ("{% for i in range(3) %}{% endfor %}", "jinja2"),
        ("{% for x in l %}{% else %}{% endfor %}", "jinja2"),
        ("{{ a\n ~ b }}", "jinja2"),
        ("{{ user.\nfirst_name }}", "django"),
        ("{% comment %}{% set x = 1 %}{{ loop.index }}{% endcomment %}", "django"),
        ("{% for x in l %}{% ifchanged x %}{% else %}{% endifchanged %}{% endfor %}", "django"),
        ("{% filter upper %}x{% endfilter %}", "django"),
        ("Hi {{ user.first_name }}, {% if a %}{{ b|upper }}{% endif %}{% for x in l %}{{ x }}{% endfor %}", "django"),
        ("plain text", "django"),
    ],
)
def test_the_dialect_is_detected_from_constructs_only_one_language_has(source, dialect):
    assert dialect_of(source) == dialect
    assert is_django(source) is (dialect == "django")


def test_template_dialect_wins_over_detection():
    # given a template Django would read as text around a variable, and Jinja2 as a tag
    assert render("{{ '{{' }}", dialect="jinja2") == "{{"
    # and a template whose only construct both languages have
    assert render("{{ s }}", {"s": "<a'>"}, dialect="jinja2") == "<a'>"
    assert render("<html>{{ s }}</html>", {"s": "'"}, dialect="jinja2") == "<html>&#39;</html>"
    assert render("<html>{{ s }}</html>", {"s": "'"}, dialect="django") == "<html>&#x27;</html>"


@pytest.mark.parametrize(
    "template, values, expected",
    [
        ("{{ x|default('none') }}", {}, "none"),
        ("{% for x in l %}{{ loop.index }}{{ x }}{% endfor %}", {"l": "ab"}, "1a2b"),
        ("{% set n = 2 %}{{ n * 3 }}", {}, "6"),
        ("{%- if 1 %} a {% endif -%} ", {}, " a "),
    ],
)
def test_jinja2_templates_render_as_before(template, values, expected):
    assert render(template, values) == expected


# ---- the sandbox's limits apply ----------------------------------------------------------------------
def test_a_hostile_django_template_stays_within_the_loop_limit():
    # given nested Django loops that would run a million times
    body = "{% for a in l %}{% for b in l %}{% for c in l %}{{ forloop.counter }}{% endfor %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateLimitExceeded, match="iteration limit"):
        render(body, {"l": list(range(100))}, dialect="django", limits=RenderLimits(loop_iterations=10_000, seconds=60))


def test_a_hostile_django_template_stays_within_the_output_limit():
    body = "{% for a in l %}{{ s }}{% endfor %}"
    with pytest.raises(TemplateLimitExceeded, match="output limit"):
        render(body, {"l": list(range(1000)), "s": "x" * 1000}, limits=RenderLimits(output_chars=100_000))


def test_a_hostile_django_template_stays_within_the_time_limit():
    body = (
        "{% for a in l %}{% for b in l %}{% ifchanged a b %}{% cycle 1 2 %}{% endifchanged %}{% endfor %}{% endfor %}"
    )
    started = time.monotonic()
    with pytest.raises(TemplateLimitExceeded, match="time limit|iteration limit"):
        render(body, {"l": list(range(300))}, limits=RenderLimits(seconds=0.2, loop_iterations=10**9))
    assert time.monotonic() - started < 2


def test_a_django_template_nested_thousands_deep_is_refused_not_crashed():
    body = "{% load x %}" + "{% if a %}" * 3000 + "{% endif %}" * 3000
    with pytest.raises(TemplateInvalid, match="nested too deeply"):
        compile_message("s", body)


def test_the_translation_compiles_once_and_renders_per_recipient():
    # given one compiled Django request
    compiled = compile_message("Hi {{ user.first_name }}", "{% for x in l %}{{ x }}{% endfor %} {{ user.first_name }}")
    # when two recipients are rendered
    rendered = [
        compiled.render(build_context(UserContext({"first_name": name}, None), {}, "i@x", {"l": [1, 2]}))
        for name in ("Ann", "Bo")
    ]
    # then each gets their own values
    assert rendered == [("Hi Ann", "12 Ann"), ("Hi Bo", "12 Bo")]


# ---- bound to the request's shared names (CompiledMessage.bind, as expand.prepare binds) -------------
SHARED_REQUEST = {"id": "r1", "public": False, "created_at": datetime(2026, 10, 1, 14, 5, tzinfo=UTC)}
SHARED_VARS = {
    "program": {"name": 'Tom & <Jerry>\'s "club"', "startdate": "2026-11-28", "tags": ["a", "<b>"], "count": 3},
    "user": "a custom variable named user, which the recipient's user hides",
}
TRICKY_RECIPIENTS = [
    ({"first_name": "O'Brien & <Co>", "last_name": '"Zoë"'}, {"link": "https://x/?a=1&b=2"}),
    ({"first_name": "2026-01-02", "last_name": None}, None),  # an ISO date: printed as the date
    ({"first_name": "", "last_name": "Ng"}, {"link": 7}),
    ({}, {"link": ["<l>"]}),
]


def bound_and_unbound(subject, body, message_vars=SHARED_VARS, limits=DEFAULT_LIMITS):
    compiled = compile_message(subject, body, limits, dialect="django")
    return compiled.bind(shared_context(SHARED_REQUEST, "i@x", message_vars)), compiled


def recipient_context(fields, user_vars, message_vars=SHARED_VARS):
    return build_context(UserContext(fields, user_vars), SHARED_REQUEST, "i@x", message_vars)


def variables(template):
    return [part for part in template.parts if type(part) is not str]


@pytest.mark.parametrize("html", [True, False], ids=["html", "text"])
def test_a_bound_template_renders_as_the_unbound_one_for_every_recipient(html):
    # given templates mixing the recipient's fields with shared names: escaped, dates, indexes, missing
    shared = (
        "{{ program.name }} {{ program.startdate }} {{ program.tags.1 }} {{ program.count }} {{ nothing }}"
        "{{ nothing.at.all }} {{ request.id }} {{ request.public }} {{ request.created_at }}"
        " {{ EMAIL_HOST_SENDER }}"
    )
    body = f"{'<html>' if html else ''}{{{{ user.first_name }}}} {shared} {{{{ user }}}} {{{{ user.link }}}}[{{{{ user.missing }}}}]"
    bound, compiled = bound_and_unbound(f"{{{{ user.first_name }}}}: {shared}", body)
    # when each tricky recipient is rendered by both
    for fields, user_vars in TRICKY_RECIPIENTS:
        context = recipient_context(fields, user_vars)
        # then the bound one writes the very same subject and body
        assert bound.render(context) == compiled.render(context)
    # and it looks up the recipient's fields only: the shared names are text now
    assert {part[0] for part in variables(bound.body_template) + variables(bound.subject_template)} == {"user"}
    assert len(variables(bound.body_template)) == 4
    merged = ' Tom & <Jerry>\'s "club" Nov. 28, 2026 <b> 3  r1 False Oct. 1, 2026, 2:05 p.m. i@x '
    assert (django_escape(merged) if html else merged) in bound.body_template.parts


@pytest.mark.parametrize("shared", ["{{ request.items }}", "{{ program.name.upper }}", "{{ program.missing }}"])
def test_a_template_whose_shared_part_needs_the_translation_is_not_bound(shared):
    # given a shared part only the translation renders (a call, an attribute, a key the mapping lacks)
    bound, compiled = bound_and_unbound("s", f"{{{{ user.first_name }}}} {shared}")
    # then the template is left as it was, and renders as before
    assert bound.body_template is compiled.body_template
    context = recipient_context({"first_name": "Zoë"}, None)
    assert bound.render(context) == compiled.render(context)


def test_a_recipients_value_that_needs_the_translation_still_gets_it_when_bound():
    # given a bound template whose recipient parts need the translation for some recipients
    bound, compiled = bound_and_unbound("s", "{{ user.first_name.upper }} {{ user.links.b }}|{{ program.count }}")
    assert len(variables(bound.body_template)) == 2
    # when rendered, the translation renders those recipients with their whole context
    context = recipient_context({"first_name": "zoë"}, {"links": {"a": 1}})
    assert bound.render(context) == compiled.render(context) == ("s", "ZOË |3")


def test_a_shared_part_over_the_output_limit_is_not_bound_and_fails_every_render_as_before():
    # given a shared value longer than the output limit
    message_vars = {"big": "x" * 60}
    limits = RenderLimits(output_chars=50)
    bound, compiled = bound_and_unbound("s", "{{ user.first_name }}{{ big }}", message_vars, limits)
    # then it is not bound, and each render breaks the limit as before
    assert bound.body_template is compiled.body_template
    with pytest.raises(TemplateLimitExceeded, match="output limit"):
        bound.render(recipient_context({"first_name": "Zoë"}, None, message_vars))


def test_a_bound_template_breaks_the_output_limit_where_the_unbound_one_does():
    # given a bound template whose shared text fits the output limit
    message_vars = {"program": {"name": "p" * 30}}
    limits = RenderLimits(output_chars=50)
    bound, compiled = bound_and_unbound("", "{{ program.name }} {{ user.first_name }}.", message_vars, limits)
    # when one recipient's name fits and another's makes the body one character too long
    fits, over = (recipient_context({"first_name": "z" * n}, None, message_vars) for n in (18, 19))
    # then the first renders as before and the second fails with the same error
    assert bound.render(fits) == compiled.render(fits)
    with pytest.raises(TemplateLimitExceeded) as unbound_error:
        compiled.render(over)
    with pytest.raises(TemplateLimitExceeded, match=re.escape(str(unbound_error.value))):
        bound.render(over)


# ---- the request's template_dialect, end to end ----------------------------------------------------
RECIPIENTS = [{"user_id": 1, "email": "ann@example.org", "first_name": "Ann"}]


def test_submit_refuses_an_unsupported_django_tag_naming_it_and_writes_nothing(moto_stack):
    with pytest.raises(TemplateInvalid, match=r"body template has an unsupported Django tag \{% url %\} on line 2"):
        submit_request("s", "Hi {{ user.first_name }}\n{% url 'home' %}", RECIPIENTS, sender="S <s@example.org>")
    store = Store(moto_stack.settings)
    assert list(store.models.MessageRequest.scan()) == [] and list(store.models.EmailRequest.scan()) == []


def test_a_requests_template_dialect_is_stored_and_used_to_render(moto_stack):
    # given a request whose body means different things in the two languages, marked Jinja2
    store = Store(moto_stack.settings)
    body = "<html>{{ s }}</html>"
    rid = submit_request(
        "s", body, RECIPIENTS, sender="S <s@example.org>", var_dict={"s": "'"}, template_dialect="jinja2"
    )
    # when expand prepares it from the stored item
    stored = store.models.MessageRequest.get(rid)
    prepared = prepare(stored, moto_stack.settings)
    recipient = store.models.EmailRequest(request_id=rid, recipient_key="x", email="ann@example.org", first_name="Ann")
    # then it renders as Jinja2 (Jinja2's escape of ' is &#39;; Django's is &#x27;)
    assert stored.template_dialect == "jinja2"
    assert prepared.render(recipient)[2] == "<html>&#39;</html>"
