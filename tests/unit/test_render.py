import threading
import time
from pathlib import Path

import pytest

from dbmail.core.errors import TemplateInvalid, TemplateLimitExceeded
from dbmail.outgoing import render as rendering
from dbmail.outgoing.render import RenderLimits, UserContext, build_context, compile_message, is_html, shared_context


def render(subject, body, user=None, message_vars=None, user_vars=None):
    compiled = compile_message(subject, body)
    context = build_context(
        UserContext(user or {"first_name": "Zoë", "last_name": "Ng"}, user_vars),
        {"id": "r1", "public_url": "https://site/email/r1"},
        "info@site.org",
        message_vars,
    )
    return compiled.render(context)


def test_the_original_context_is_available():
    # given a template using user, request, EMAIL_HOST_SENDER and a custom variable
    subject, body = render(
        "Welcome to {{ program.niceName }}",
        "Dear {{ user.first_name }}, see {{ request.public_url }} or write {{ EMAIL_HOST_SENDER }}. "
        "Confirm: {{ user.get_confirmation_link }}",
        message_vars={"program": {"niceName": "Splash 2026"}},
        user_vars={"get_confirmation_link": "https://site/confirm/abc"},
    )
    # then every name resolves
    assert subject == "Welcome to Splash 2026"
    assert body == ("Dear Zoë, see https://site/email/r1 or write info@site.org. Confirm: https://site/confirm/abc")


def test_a_syntax_error_names_the_template_and_line():
    with pytest.raises(TemplateInvalid, match=r"body template syntax error at line 2"):
        compile_message("ok", "line one\n{% if user.first_name %}never closed")


def test_the_sandbox_blocks_attribute_escapes():
    # given a template that reaches for Python internals
    with pytest.raises(TemplateInvalid, match="unsafe|not safely|access"):
        render("x", "{{ ''.__class__.__mro__[1].__subclasses__() }}")


def test_subject_newlines_are_folded_so_no_header_can_be_injected():
    # given a subject whose variable carries CR/LF
    subject, _ = render("Hi {{ user.first_name }}", "", user={"first_name": "Zoë\r\nBcc: evil@x.org"})
    assert "\n" not in subject and "\r" not in subject


def test_html_bodies_are_autoescaped_but_text_bodies_are_not():
    _, html = render("", "<html><body>{{ user.first_name }}</body></html>", user={"first_name": "<b>Tom & Jerry</b>"})
    _, text = render("", "{{ user.first_name }}", user={"first_name": "Tom & Jerry"})
    assert "&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;" in html
    assert text == "Tom & Jerry"


@pytest.mark.parametrize(
    "body, expected",
    [
        ("<html><p>x</p></html>", True),
        ('<HTML lang="en"><p>x</p></HTML>', True),
        ("<htmlish> not html", False),
        ("plain text mentioning html", False),
    ],
)
def test_html_detection_matches_the_original_rule(body, expected):
    assert is_html(body) is expected


def test_missing_variables_render_empty_as_in_django():
    subject, _ = render("Hi {{ user.nickname }}!", "")
    assert subject == "Hi !"


@pytest.mark.parametrize(
    "template",
    [
        "{{ nosuch.attr }}",
        "{{ user.nickname.first }}",
        "{{ program.missing.deeper.still }}",
        "{{ nosuch['key'].attr }}",
    ],
)
def test_a_missing_chain_renders_empty_as_in_django(template):
    # given a chain whose first link is missing
    _, body = render("s", f"<{template}>", message_vars={"program": {"name": "Splash"}})
    # then it renders '' instead of failing the email
    assert body == "<>"


def test_user_name_is_the_full_name_and_user_exposes_fields_only():
    # given a recipient with a guardian, and a template probing user's methods and mapping API
    user = {"first_name": "Zoë", "last_name": "Ng", "email": "zoe@example.net", "guardian_email": "mai@example.net"}
    _, body = render(
        "s",
        "{{ user.name }}|{{ user }}|{{ user.items }}|{{ user.keys }}|{{ user.values }}|{{ user.get }}"
        "|{{ user.field }}|{{ user|pprint }}|{{ user.__dict__ }}",
        user=user,
    )
    # then name is the full name, {{ user }} is the name, and nothing else of the recipient shows
    assert body == "Zoë Ng|Zoë Ng||||||<user>|"
    assert "mai@example.net" not in body and "zoe@" not in body


@pytest.mark.parametrize(
    "fields, user_vars, name",
    [
        ({"first_name": "Zoë", "last_name": "Ng"}, None, "Zoë Ng"),
        ({"first_name": "Zoë", "last_name": None}, {"last_name": "Vars"}, "Zoë Vars"),
        ({"first_name": "", "last_name": "Ng"}, {}, "Ng"),
        ({"first_name": 0, "last_name": 5}, None, "5"),
        ({"email": "zoe@example.net"}, None, ""),
    ],
)
def test_user_name_is_made_of_the_first_and_last_names_there_are(fields, user_vars, name):
    # given a recipient's fields (a None field leaves the website's variable of that name)
    user = UserContext(fields, user_vars)
    # then the name joins the non-empty first and last names
    assert str(user) == user.field("name") == name


def test_user_fields_win_over_the_websites_variables_whose_names_are_text():
    # given website variables with a non-text key and one a field also has
    user = UserContext({"email": "zoe@example.net", "last_name": None}, {3: "three", "email": "old@example.net"})
    # then the field wins, and the key is found by its text
    assert (user.field("email"), user.field("3")) == ("zoe@example.net", "three")


def test_each_render_has_its_own_budget_which_ends_with_it_even_when_it_fails():
    # given a message with a small output limit, and the budget outside any render
    compiled = compile_message("s", "{{ user.first_name }}", RenderLimits(output_chars=5))
    outside = rendering._current.get()
    # when it renders, breaks the limit and is bound
    assert compiled.render(build_context(UserContext({"first_name": "Zoë"}, None), {}, "", None)) == ("s", "Zoë")
    with pytest.raises(TemplateLimitExceeded, match="output limit"):
        compiled.render(build_context(UserContext({"first_name": "Zoë Ng"}, None), {}, "", None))
    compiled.bind(shared_context({}, "", None))
    # then no budget of theirs is left behind
    assert rendering._current.get() is outside


def test_a_template_cannot_change_shared_values_for_the_next_recipient():
    # given a request-wide variable and a template that tries to write into it
    compiled = compile_message("s", "{% if program.update({'last': user.email}) %}{% endif %}{{ program.last }}")
    program = {"name": "Splash"}
    context = build_context(UserContext({"email": "first@example.net"}, None), {}, "", {"program": program})
    # then the sandbox refuses the mutation and the shared value is untouched
    with pytest.raises(TemplateInvalid, match="unsafe"):
        compiled.render(context)
    assert program == {"name": "Splash"}


ATTACKS = {
    "nested loops": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "nested loops over strings": "{% for a in 'x' * 1000 %}{% for b in 'x' * 1000 %}{% for c in 'x' * 1000 %}"
    "{% endfor %}{% endfor %}{% endfor %}",
    "huge repeat": "{{ 'x' * 10**9 }}",
    "huge list": "{{ [0] * 10**9 }}",
    "huge power": "{{ 9 ** 9999999 }}",
    "recursive macro": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}x{% endmacro %}{{ f(30) }}",
    "doubling concat": "{% set x = 'a' * 100000 %}{% set x = x ~ x %}{% set x = x ~ x %}{% set x = x ~ x %}{{ x }}",
    "doubling namespace": "{% set ns = namespace(x='ab') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
    "doubling block set": "{% set x %}{{ 'a' * 300000 }}{% endset %}{% set y %}{{ x }}{{ x }}{% endset %}",
    "padding method": "{{ 'x'.ljust(10**9) }}",
    "padding filter": "{{ 'x'|center(10**9) }}",
    "percent width": "{{ '%999999999s'|format(1) }}",
    "brace width": "{{ '{:>999999999}'.format(1) }}",
    "join amplification": "{{ range(100000)|join('x' * 300000) }}",
    "replace amplification": "{{ ('x' * 300000)|replace('x', 'yy') }}",
    "recursive loop": "{% for x in [1] recursive %}{{ loop([1, 1]) }}{% endfor %}",
    "huge range": "{% for i in range(10**9) %}{% endfor %}",
    "slice explosion": "{{ 'abc'|slice(10**9)|list }}",
    "wordwrap amplification": "{{ ('x' * 300000)|wordwrap(1, true, 'y' * 1000) }}",
    "output flood": "{% for i in range(99999) %}{{ 'x' * 100 }}{% endfor %}",
}


def peak_rss_kib() -> int:
    """This process's own high-water RSS (VmHWM; ru_maxrss would include the forking process's)."""
    return int(Path("/proc/self/status").read_text().split("VmHWM:", 1)[1].split()[0])


@pytest.mark.parametrize("template", ATTACKS.values(), ids=ATTACKS.keys())
def test_a_hostile_template_breaks_a_named_limit_quickly_and_in_little_memory(template):
    # given a template built to exhaust time, memory or the stack
    started, peak_before = time.monotonic(), peak_rss_kib()
    # when it renders
    with pytest.raises(TemplateLimitExceeded, match="limit"):
        render("s", template)
    # then it stops within about the per-email time limit, without growing the process by 100 MB
    assert time.monotonic() - started < 2.5
    assert peak_rss_kib() - peak_before < 100 * 1024


def test_a_slow_template_breaks_the_time_limit():
    # given a template that stays within the iteration limit but does slow work per iteration
    compiled = compile_message(
        "s",
        "{% for i in range(100000) %}{{ (i|string)|replace('1', '22')|center(50) }}{% endfor %}",
        limits=RenderLimits(seconds=0.05, output_chars=10**7),
    )
    with pytest.raises(TemplateLimitExceeded, match="time limit"):
        compiled.render(build_context(UserContext({}, None), {}, "", None))


def test_ordinary_loops_filters_and_joins_still_work():
    _, body = render(
        "s",
        "{% for i in range(3) %}{{ loop.index }}/{{ loop.length }} {% endfor %}"
        "{{ [1, 2, 3]|join(',') }} {{ 'a' ~ 'b' }} {{ '%05.1f'|format(3.14159) }} {{ 'ab'|center(6) }}"
        "{% for k, v in program|dictsort %} {{ k }}={{ v }}{% endfor %}",
        message_vars={"program": {"name": "Splash", "year": 2026}},
    )
    assert body == "1/3 2/3 3/3 1,2,3 ab 003.1   ab   name=Splash year=2026"


def test_an_oversized_rendering_is_a_template_error_not_an_oversized_item():
    with pytest.raises(TemplateInvalid, match="over 350000 characters"):
        render("s", "{% for i in range(4000) %}{{ 'x' * 100 }}{% endfor %}")


def test_a_plain_django_template_is_compiled_by_jinja2_only_for_a_recipient_that_needs_it():
    # given a body of text and plain variables, one of them a method of a field (the translation's)
    compiled = compile_message(
        "Hi {{ user.first_name }}", "Dear {{ user.first_name }} {{ user.nick.upper }}", dialect="django"
    )
    translation = compiled.body_template.translation
    assert not translation.compiled and not compiled.subject_template.translation.compiled

    def body(**fields) -> str:
        return compiled.render(build_context(UserContext(fields, None), {}, "", None))[1]

    # when a recipient without the field is rendered, then nothing was compiled (the direct path)
    assert body(first_name="Zoë") == "Dear Zoë "
    assert not translation.compiled
    # when a recipient's field needs the method, then its translation is compiled, once, and renders it
    assert body(first_name="Zoë", nick="zed") == "Dear Zoë ZED"
    assert translation.compiled
    template = translation.template()
    assert body(first_name="Ada", nick="ace") == "Dear Ada ACE"
    assert translation.template() is template


def test_a_lazy_compile_is_not_charged_to_the_render_that_needs_it():
    # given a plain template whose translation takes longer to compile than a recipient's render
    # may take (a large template of many variables takes seconds: here the compile sleeps), and a
    # recipient whose field needs that translation
    compiled = compile_message("s", "Dear {{ user.first_name }} {{ user.nick.upper }}", RenderLimits(seconds=0.2))
    translation = compiled.body_template.translation
    compile_translation = translation._compile
    translation._compile = lambda: time.sleep(0.5) or compile_translation()
    context = build_context(UserContext({"first_name": "Zoë", "nick": "zed"}, None), {}, "", None)
    # when that recipient is rendered, then the compile (the request's work) does not fail it
    assert compiled.render(context)[1] == "Dear Zoë ZED"
    assert translation.compiled


def test_compiling_a_template_with_tags_leaves_no_render_budget_behind_in_the_thread():
    # given a thread (a kept pool thread lives on) with no render in progress
    def prepare_and_render():
        assert rendering._current.get() is None
        # when a Django template with a tag is compiled (its translation now, while preparing)
        compiled = compile_message("Hi", "{% if user.first_name %}Dear {{ user.first_name }}{% endif %}")
        left_by_compile = rendering._current.get()
        # then no default budget is left in the thread's context, and a render still has its own
        user = UserContext({"first_name": "Zoë"}, None)
        assert compiled.render(build_context(user, {}, "host@example.org", {})) == ("Hi", "Dear Zoë")
        return left_by_compile, rendering._current.get()

    results = []
    thread = threading.Thread(target=lambda: results.append(prepare_and_render()))
    thread.start()
    thread.join()
    assert results == [(None, None)]
