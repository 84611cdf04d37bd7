import pytest

from dbmail.errors import TemplateInvalid
from dbmail.render import UserContext, build_context, compile_message, is_html


def render(subject, body, user=None, message_vars=None, user_vars=None):
    compiled = compile_message(subject, body)
    context = build_context(UserContext(user or {"first_name": "Zoë", "last_name": "Ng"}, user_vars),
                            {"id": "r1", "public_url": "https://site/email/r1"}, "info@site.org", message_vars)
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
    assert body == ("Dear Zoë, see https://site/email/r1 or write info@site.org. "
                    "Confirm: https://site/confirm/abc")


def test_a_syntax_error_names_the_template_and_line():
    with pytest.raises(TemplateInvalid, match=r"body template syntax error at line 2"):
        compile_message("ok", "line one\n{% if user.first_name %}never closed")


def test_the_sandbox_blocks_attribute_escapes():
    # given a template that reaches for Python internals
    with pytest.raises(TemplateInvalid, match="unsafe|not safely|access"):
        render("x", "{{ user.__class__.__mro__[1].__subclasses__() }}")


def test_subject_newlines_are_folded_so_no_header_can_be_injected():
    # given a subject whose variable carries CR/LF
    subject, _ = render("Hi {{ user.first_name }}", "", user={"first_name": "Zoë\r\nBcc: evil@x.org"})
    assert "\n" not in subject and "\r" not in subject


def test_html_bodies_are_autoescaped_but_text_bodies_are_not():
    _, html = render("", "<html><body>{{ user.first_name }}</body></html>", user={"first_name": "<b>Tom & Jerry</b>"})
    _, text = render("", "{{ user.first_name }}", user={"first_name": "Tom & Jerry"})
    assert "&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;" in html
    assert text == "Tom & Jerry"


@pytest.mark.parametrize("body, expected", [
    ("<html><p>x</p></html>", True),
    ('<HTML lang="en"><p>x</p></HTML>', True),
    ("<htmlish> not html", False),
    ("plain text mentioning html", False),
])
def test_html_detection_matches_the_original_rule(body, expected):
    assert is_html(body) is expected


def test_missing_variables_render_empty_as_in_django():
    subject, _ = render("Hi {{ user.nickname }}!", "")
    assert subject == "Hi !"


def test_an_oversized_rendering_is_a_template_error_not_an_oversized_item():
    with pytest.raises(TemplateInvalid, match="over 350000 characters"):
        render("s", "{{ 'x' * 400000 }}")
