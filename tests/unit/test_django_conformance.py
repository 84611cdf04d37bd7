"""Conformance against Django itself: every template of tests/corpus/django/ renders in dbmail
byte for byte as Django's own engine renders it.

Each case is rendered twice from the same JSON values, the ones the website sends:
- by dbmail, as ``expand`` does: ``compile_message(subject, body)``, then one render with the
  recipient's context (``UserContext`` of the EmailRequest fields and ``vars``, the request,
  EMAIL_HOST_SENDER and the request's ``message_vars``);
- by Django (a test-only dependency, never imported by dbmail), with the values the website held
  before it wrote them as JSON: an ISO 8601 string stands for the date, datetime or time
  DjangoJSONEncoder wrote it from (``2026-11-14``, ``2026-11-14T09:30:00Z``, ``09:30:00``), a
  recipient field dbmail does not store is absent, and ``user`` is a mapping of the recipient's
  fields whose ``str()`` is the full name (the original's ``ESPUser.name()``), as dbmail's is.
Autoescaping is on for an HTML body (``is_html``, the rule dbmail uses) and off for a text body
and the subject. Django runs with USE_TZ and TIME_ZONE "UTC", English. The subject is compared
after folding whitespace to single spaces, as dbmail folds every subject (no header injection).

tests/conftest.py counts the matches and prints "N/N templates match Django" at the end of the
run; any mismatch fails with a diff. Templates that use what dbmail deliberately does not
support are in ``unsupported`` of cases.json: each must be refused at submit, naming the tag or
filter and its line.
"""

from __future__ import annotations

import difflib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.template import Context, Engine
from django.utils import dateparse

from dbmail.core.compose import is_html
from dbmail.core.errors import TemplateInvalid
from dbmail.outgoing.render import UserContext, build_context, compile_message, shared_context

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "django"
UNSUPPORTED_DIR = CORPUS / "unsupported"
CASES = json.loads((CORPUS / "cases.json").read_text(encoding="utf-8"))
EMAIL_HOST_SENDER = "info@esp.mit.edu"
REQUEST_ID = "5f0c3a9e2b7d4e61a8c9d0e1f2a3b4c5"
CREATED_AT = datetime(2026, 10, 1, 14, 5, tzinfo=UTC)

if not settings.configured:
    settings.configure(
        TEMPLATES=[], USE_TZ=True, TIME_ZONE="UTC", USE_I18N=True, LANGUAGE_CODE="en-us", INSTALLED_APPS=[]
    )
    django.setup()

# {% load %} of the libraries comm-panel templates load; dbmail accepts the tag and ignores it.
DJANGO = Engine(
    libraries={
        "humanize": "django.contrib.humanize.templatetags.humanize",
        "i18n": "django.templatetags.i18n",
        "l10n": "django.templatetags.l10n",
        "static": "django.templatetags.static",
        "tz": "django.templatetags.tz",
    }
)


def template_files(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(folder.iterdir()) if path.suffix in (".txt", ".html")}


def source(path: Path) -> str:
    """The template exactly as stored: CRLF line ends (a browser's textarea sends them) are kept."""
    return path.read_bytes().decode("utf-8")


TEMPLATES = template_files(CORPUS)
UNSUPPORTED = template_files(UNSUPPORTED_DIR)


# ---- the two contexts, from one case's JSON values -------------------------------------------
def case_values(name: str, section: str = "templates") -> dict[str, Any]:
    """The case's subject, recipient fields, recipient vars and message_vars: its ``user`` replaces
    the default recipient; its ``user_vars`` and ``message_vars`` are added over the defaults."""
    case, defaults = CASES[section][name], CASES["defaults"]
    return {
        "subject": case.get("subject", ""),
        "user": case.get("user", defaults["user"]),
        "user_vars": {**defaults["user_vars"], **case.get("user_vars", {})},
        "message_vars": {**defaults["message_vars"], **case.get("message_vars", {})},
    }


def request_context(subject: str) -> dict[str, Any]:
    """As expand.prepare builds it for the request."""
    return {
        "id": REQUEST_ID,
        "subject": subject,
        "sender": "",
        "public": False,
        "public_url": f"https://esp.mit.edu/email/{REQUEST_ID}",
        "created_at": CREATED_AT,
        "priority_level": None,
    }


def dbmail_context(values: dict[str, Any]) -> dict[str, Any]:
    user = UserContext(values["user"], values["user_vars"])
    return build_context(user, request_context(values["subject"]), EMAIL_HOST_SENDER, values["message_vars"])


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?")
_TIME = re.compile(r"\d{2}:\d{2}:\d{2}(\.\d{1,6})?")


def as_the_website_had_it(value: Any) -> Any:
    """The Python value DjangoJSONEncoder wrote ``value`` from: ISO strings back to dates and times."""
    if isinstance(value, dict):
        return {key: as_the_website_had_it(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_the_website_had_it(item) for item in value]
    if isinstance(value, str):
        if _DATE.fullmatch(value):
            return dateparse.parse_date(value)
        if _DATETIME.fullmatch(value):
            return dateparse.parse_datetime(value)
        if _TIME.fullmatch(value):
            return dateparse.parse_time(value)
    return value


class WebsiteUser(dict):
    """The recipient as a template sees it: fields by name; ``{{ user }}`` is the full name."""

    def __str__(self) -> str:
        return self["name"]


def django_context(values: dict[str, Any]) -> dict[str, Any]:
    fields = {**values["user_vars"], **{key: value for key, value in values["user"].items() if value is not None}}
    fields = as_the_website_had_it(fields)
    fields["name"] = " ".join(str(fields[part]) for part in ("first_name", "last_name") if fields.get(part))
    context = as_the_website_had_it(values["message_vars"])
    context.update(
        user=WebsiteUser(fields), request=request_context(values["subject"]), EMAIL_HOST_SENDER=EMAIL_HOST_SENDER
    )
    return context


def render_with_django(source: str, context: dict[str, Any], autoescape: bool) -> str:
    return DJANGO.from_string(source).render(Context(context, autoescape=autoescape))


def diff(what: str, django_output: str, dbmail_output: str) -> str:
    """A unified diff of the two outputs, line by line as reprs, so whitespace shows."""
    lines = difflib.unified_diff(
        [repr(line) + "\n" for line in django_output.splitlines(keepends=True)],
        [repr(line) + "\n" for line in dbmail_output.splitlines(keepends=True)],
        fromfile=f"{what} (Django)",
        tofile=f"{what} (dbmail)",
    )
    return "".join(lines)


# ---- the tests ---------------------------------------------------------------------------------
def test_the_corpus_is_complete():
    # every template file has its case, every case its file, and the corpus is the size the issue asks
    assert set(TEMPLATES) == set(CASES["templates"])
    assert set(UNSUPPORTED) == set(CASES["unsupported"])
    assert len(TEMPLATES) >= 180


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_template_renders_as_django_renders_it(name):
    # given a corpus template and its recipient's JSON values
    values = case_values(name)
    body = source(TEMPLATES[name])
    html = is_html(body)
    # when Django renders it (with the values the website held) and dbmail renders it (with the JSON)
    expected_subject = " ".join(render_with_django(values["subject"], django_context(values), False).split())
    expected_body = render_with_django(body, django_context(values), html)
    try:
        subject, rendered = compile_message(values["subject"], body).render(dbmail_context(values))
    except TemplateInvalid as exc:
        refused = f"dbmail refused {TEMPLATES[name].name}: {exc}"
    else:
        refused = None
    if refused:  # failed outside the except, so the report shows the reason alone
        pytest.fail(refused, pytrace=False)
    # then the subject and the body are the same, byte for byte
    outputs = (("subject", expected_subject, subject), ("body", expected_body, rendered))
    problems = [diff(what, expected, got) for what, expected, got in outputs if expected != got]
    if problems:
        pytest.fail(f"{TEMPLATES[name].name} renders differently from Django:\n" + "\n".join(problems), pytrace=False)


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_template_renders_the_same_bound_to_its_requests_shared_names(name):
    # given a corpus template compiled, and bound to its request's shared names as expand.prepare binds it
    values = case_values(name)
    compiled = compile_message(values["subject"], source(TEMPLATES[name]))
    shared = shared_context(request_context(values["subject"]), EMAIL_HOST_SENDER, values["message_vars"])
    bound = compiled.bind(shared)
    # when its recipient's context is built from those same values
    context = build_context(
        UserContext(values["user"], values["user_vars"]), shared["request"], EMAIL_HOST_SENDER, values["message_vars"]
    )
    # then the bound templates write what the unbound ones write
    assert bound.render(context) == compiled.render(context)


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_an_unsupported_construct_is_refused_at_submit_naming_it_and_its_line(name):
    # given a template using a tag or filter dbmail deliberately does not support
    values = case_values(name, "unsupported")
    case = CASES["unsupported"][name]
    body = source(UNSUPPORTED[name])
    # when it is compiled, as at submit
    with pytest.raises(TemplateInvalid) as refused:
        compile_message(values["subject"], body)
    # then the error names the construct and the line it is on
    message = str(refused.value)
    assert case["names"] in message, message
    assert re.search(rf"\bline {case['line']}\b", message), message
