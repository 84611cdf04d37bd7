"""Django's template language, translated to Jinja2 source and rendered in render.py's LimitedSandbox.

Chapter admins write comm-panel templates in Django's language; dbmail renders them as Django
would, without Django: ``to_jinja`` lexes a template as Django does (``{{ }}``, ``{% %}``,
``{# #}`` on one line each, the text between kept byte for byte) and emits Jinja2 source whose
every variable, filter, comparison and loop goes through the helpers below (Django's lookup
order, missing values, callables, escaping), so the sandbox's limits (time, loop iterations,
output) apply unchanged.

The dialect rule (``is_django``; a request's ``template_dialect``, "django" or "jinja2", wins):

- a template using any construct only Django has (a ``:`` filter argument, ``{% load %}``,
  ``{% comment %}``, ``{% empty %}``, ``forloop.``, ``{% firstof %}``, ``{% cycle %}``,
  ``{% ifchanged %}``, ``{% now %}``, ``{% spaceless %}``, ``{% verbatim %}``, ``{% autoescape on %}``,
  ``for ... reversed``, ``with x as y``, a Django-only tag or filter such as ``{% url %}`` or ``|date``)
  is Django;
- a template using any construct only Jinja2 has (``{%-``/``-%}``, ``{% set %}``, ``{% macro %}``,
  ``{% raw %}``, ``loop.``, a call, ``~``, ``[...]``, arithmetic, ``is defined``, a Jinja-only filter
  such as ``|e`` or ``|default(...)``) is Jinja2;
- a template using both is refused: set ``template_dialect``;
- a template using neither is Django (the admins' existing templates are), which for such a
  template means what Jinja2 would mean except Django's details: ``&#x27;``/``&quot;`` escapes,
  callables called, dates printed in Django's default formats.

A tag spread over lines is text to Django; it counts as Jinja2 only if what it holds does. A
``{{`` or ``{%`` that nothing closes is refused (Django would print it). Inside ``{% comment %}``
and ``{% verbatim %}`` nothing is read.

Values arrive through JSON, so a looked-up string in ISO 8601 (``2026-07-04``,
``2026-07-04T09:30:00Z``, ``09:30:00``: what DjangoJSONEncoder writes) is the date, datetime or
time it was written from: it prints in Django's DATE_FORMAT/DATETIME_FORMAT/TIME_FORMAT, filters
get the date, and ``{% if %}`` compares dates (a template's own string literal stays a string,
as in Django). Times are UTC.

Supported tags: if/elif/else, for/empty (``forloop``, ``reversed``, unpacking), with (both forms),
firstof, comment, now, spaceless, autoescape, load (ignored), cycle (``as``, ``silent``),
ifchanged (with and without values, else), filter, verbatim, templatetag; filters are those of
``django_filters.FILTERS``. Anything else raises ``TemplateInvalid`` naming it and its line.
"""

from __future__ import annotations

import inspect
import itertools
import operator
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from time import monotonic
from typing import Any

from jinja2 import Undefined, pass_context
from jinja2.exceptions import TemplateRuntimeError
from jinja2.utils import missing
from markupsafe import Markup

from dbmail.core.errors import TemplateInvalid, TemplateLimitExceeded
from dbmail.outgoing import render  # it imports this module only when it compiles a Django template
from dbmail.outgoing.django_dates import format_date, localize, parse_datetime_value
from dbmail.outgoing.django_filters import FILTERS

# ---- lexing, as django/template/base.py ------------------------------------------------------
TAG_RE = re.compile(r"({%.*?%}|{{.*?}}|{#.*?#})")
TEXT, VAR, BLOCK, COMMENT = "text", "var", "block", "comment"

_STRDQ = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRSQ = r"'[^'\\]*(?:\\.[^'\\]*)*'"
_CONSTANT = rf"(?:_\({_STRDQ}\)|_\({_STRSQ}\)|{_STRDQ}|{_STRSQ})"
_NUM = r"[-+.]?\d[\d.e]*"
_FILTER_RE = re.compile(
    rf"""^(?P<constant>{_CONSTANT})|
    ^(?P<var>[\w.]+|{_NUM})|
    (?:\s*\|\s*(?P<filter_name>\w+)(?::(?:(?P<constant_arg>{_CONSTANT})|(?P<var_arg>[\w.]+|{_NUM})))?)""",
    re.VERBOSE,
)
_SMART_SPLIT = re.compile(r"""((?:[^\s'"]*(?:(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')[^\s'"]*)+)|\S+)""")
_KWARG = re.compile(r"(?:(\w+)=)?(.+)")


class _Token:
    __slots__ = ("kind", "content", "line", "raw", "offset")

    def __init__(self, kind: str, content: str, line: int, raw: str, offset: int = 0):
        self.kind, self.content, self.line, self.raw, self.offset = kind, content, line, raw, offset

    def split(self) -> list[str]:
        """Django's Token.split_contents: quoted strings (and ``_("...")``) stay one bit."""
        bits, pieces = [], iter(_SMART_SPLIT.findall(self.content))
        for bit in pieces:
            if bit.startswith(('_("', "_('")):
                sentinel = bit[2] + ")"
                trans_bit = [bit]
                while not bit.endswith(sentinel):
                    bit = next(pieces, sentinel)
                    trans_bit.append(bit)
                bit = " ".join(trans_bit)
            bits.append(bit)
        return bits


def tokenize(source: str) -> list[_Token]:
    tokens, line, in_tag, verbatim, offset = [], 1, False, "", 0
    for raw in TAG_RE.split(source):
        if raw:
            tokens.append(_make_token(raw, line, in_tag, verbatim))
            token = tokens[-1]
            token.offset = offset
            offset += len(raw)
            if token.kind == BLOCK:
                if verbatim and token.content == verbatim:
                    verbatim = ""
                elif not verbatim and token.content[:9] in ("verbatim", "verbatim "):
                    verbatim = "end" + token.content
            line += raw.count("\n")
        in_tag = not in_tag
    return tokens


def _make_token(raw: str, line: int, in_tag: bool, verbatim: str) -> _Token:
    if not in_tag:
        return _Token(TEXT, raw, line, raw)
    start, content = raw[:2], raw[2:-2].strip()
    if start == "{%":
        if verbatim and content != verbatim:
            return _Token(TEXT, raw, line, raw)
        return _Token(BLOCK, content, line, raw)
    if verbatim:
        return _Token(TEXT, raw, line, raw)
    return _Token(VAR if start == "{{" else COMMENT, content, line, raw)


# ---- the dialect rule -------------------------------------------------------------------------
SUPPORTED_TAGS = frozenset(
    [
        "if",
        "elif",
        "else",
        "endif",
        "for",
        "empty",
        "endfor",
        "with",
        "endwith",
        "firstof",
        "comment",
        "endcomment",
        "now",
        "spaceless",
        "endspaceless",
        "autoescape",
        "endautoescape",
        "load",
        "cycle",
        "ifchanged",
        "endifchanged",
        "verbatim",
        "endverbatim",
        "templatetag",
        "filter",
        "endfilter",
    ]
)
_DJANGO_ONLY_TAGS = frozenset(
    [
        "load",
        "comment",
        "endcomment",
        "empty",
        "firstof",
        "cycle",
        "resetcycle",
        "ifchanged",
        "endifchanged",
        "now",
        "spaceless",
        "endspaceless",
        "verbatim",
        "endverbatim",
        "templatetag",
        "url",
        "csrf_token",
        "static",
        "get_static_prefix",
        "get_media_prefix",
        "trans",
        "translate",
        "blocktrans",
        "blocktranslate",
        "endblocktrans",
        "endblocktranslate",
        "plural",
        "regroup",
        "widthratio",
        "lorem",
        "debug",
        "ifequal",
        "endifequal",
        "ifnotequal",
        "endifnotequal",
        "querystring",
        "partialdef",
        "endpartialdef",
        "partial",
        "get_current_language",
        "get_available_languages",
        "language",
        "endlanguage",
        "localize",
        "endlocalize",
        "localtime",
        "endlocaltime",
        "timezone",
        "endtimezone",
        "get_current_timezone",
    ]
)
_JINJA_ONLY_TAGS = frozenset(
    [
        "set",
        "endset",
        "macro",
        "endmacro",
        "call",
        "endcall",
        "raw",
        "endraw",
        "import",
        "from",
        "do",
        "break",
        "continue",
        "print",
        "endtrans",
        "pluralize",
    ]
)
_DJANGO_ONLY_FILTERS = frozenset(
    [
        "date",
        "time",
        "default_if_none",
        "yesno",
        "pluralize",
        "linebreaks",
        "linebreaksbr",
        "truncatechars",
        "truncatechars_html",
        "truncatewords",
        "truncatewords_html",
        "floatformat",
        "add",
        "cut",
        "capfirst",
        "make_list",
        "divisibleby",
        "ljust",
        "rjust",
        "escapejs",
        "stringformat",
        "addslashes",
        "iriencode",
        "fix_ampersands",
        "phone2numeric",
        "get_digit",
        "length_is",
        "linenumbers",
        "safeseq",
        "slugify",
        "timesince",
        "timeuntil",
        "unordered_list",
        "urlizetrunc",
        "json_script",
        "dictsortreversed",
        "force_escape",
    ]
)
_JINJA_ONLY_FILTERS = frozenset(
    [
        "e",
        "d",
        "trim",
        "replace",
        "round",
        "int",
        "float",
        "list",
        "sort",
        "reverse",
        "tojson",
        "map",
        "select",
        "selectattr",
        "reject",
        "rejectattr",
        "unique",
        "sum",
        "batch",
        "indent",
        "format",
        "attr",
        "groupby",
        "items",
        "xmlattr",
        "truncate",
        "capitalize",
        "string",
        "abs",
        "min",
        "max",
        "count",
        "forceescape",
        "pprint",
    ]
)
_JINJA_TESTS = frozenset(
    [
        "defined",
        "undefined",
        "none",
        "number",
        "string",
        "mapping",
        "iterable",
        "sequence",
        "callable",
        "odd",
        "even",
        "divisibleby",
        "sameas",
        "lower",
        "upper",
        "boolean",
        "integer",
        "float",
        "escaped",
        "filter",
        "test",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
    ]
)
_FILTER_NAME = re.compile(r"\|\s*(\w+)(:)?")


def _django_marks(token: _Token) -> tuple[bool, bool]:
    """(only Django would accept this token, only Jinja2 would)."""
    if token.kind == TEXT:  # Django prints a tag spread over lines as text; Jinja2 reads it
        return False, any(_django_marks(tag)[1] for tag in _multiline_tags(token))
    if token.kind == COMMENT:
        return False, False
    if token.raw[2] in "-+" or token.raw[-3] in "-+":  # Jinja2's whitespace control
        return False, True
    words = token.content.split()
    name = words[0] if words else ""
    django = jinja = False
    if token.kind == BLOCK:
        if name in _DJANGO_ONLY_TAGS:
            django = True
        elif name in _JINJA_ONLY_TAGS:
            jinja = True
        elif name == "autoescape":
            django = words[1:] in (["on"], ["off"])
            jinja = not django and len(words) > 1  # Jinja2's takes an expression
        elif name == "for" and words[-1:] == ["reversed"] or name == "with" and "as" in words:
            django = True
        if re.search(r"\bis\s+(?:not\s+)?(\w+)", token.content):
            test = re.search(r"\bis\s+(?:not\s+)?(\w+)", token.content)[1]
            jinja = jinja or test in _JINJA_TESTS
        if name in ("if", "elif", "for") and re.search(r"[()\[\]~+*/]|\bin\s+range\b", _unquoted(token.content)):
            jinja = True
    else:
        try:
            _parse_filter_expression(token.content, token.line)
        except _NotDjangoSyntax:
            jinja = True
        except TemplateInvalid:  # Django syntax, refused when translated
            pass
    for filter_name, colon in _FILTER_NAME.findall(_unquoted(token.content)):
        django = django or bool(colon) or filter_name in _DJANGO_ONLY_FILTERS
        jinja = jinja or filter_name in _JINJA_ONLY_FILTERS
    if re.search(r"\bforloop\.|_\(['\"]", token.content):
        django = True
    if re.search(r"(?<![\w.])loop\.", _unquoted(token.content)):
        jinja = True
    return django, jinja


_MULTILINE_TAG = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)


def _multiline_tags(token: _Token) -> list[_Token]:
    """The tags over several lines in a text, as one-line tokens (their newlines dropped): one is
    Jinja2 if what it holds is (``{{ a\n ~ b }}``), not for being spread out (``{{ user.\nname }}``)."""
    tags = []
    for match in _MULTILINE_TAG.finditer(token.content):
        kind, content = (VAR, match[1]) if match[1] is not None else (BLOCK, match[2])
        joined = re.sub(r"\s*\n\s*", " " if kind == BLOCK else "", content)
        tags.append(_Token(kind, joined.strip(), token.line, match[0].replace("\n", " ")))
    return tags


def _unquoted(text: str) -> str:
    return re.sub(rf"{_STRDQ}|{_STRSQ}", '""', text)


def dialect_of(source: str) -> str:
    """ "django" or "jinja2" by the rule in the module docstring; TemplateInvalid if both."""
    first_django = first_jinja = None
    open_blocks: list[str] = []
    skip_until = ""  # the end of a {% comment %} or {% verbatim %}: what is inside is not read
    for token in tokenize(source):
        name = token.content.split()[0] if token.kind == BLOCK and token.content else ""
        if skip_until:
            skip_until = "" if token.kind == BLOCK and token.content == skip_until else skip_until
            continue
        django, jinja = _django_marks(token)
        if name == "comment" or name == "verbatim":
            skip_until = "endcomment" if name == "comment" else "end" + token.content
        elif name in ("for", "if", "ifchanged"):
            open_blocks.append(name)
        elif name in ("endfor", "endif", "endifchanged") and open_blocks:
            open_blocks.pop()
        elif name == "else" and open_blocks[-1:] == ["for"]:
            jinja = True  # Django's for has {% empty %}, not {% else %}
        if django and first_django is None:
            first_django = token
        if jinja and first_jinja is None:
            first_jinja = token
    if first_django and first_jinja:
        raise TemplateInvalid(
            f"mixes Django ({first_django.raw} on line {first_django.line}) and Jinja2 "
            f"({first_jinja.raw} on line {first_jinja.line}) syntax: set template_dialect to 'django' or 'jinja2'"
        )
    return "jinja2" if first_jinja else "django"


def is_django(source: str) -> bool:
    return dialect_of(source) == "django"


# ---- expressions ------------------------------------------------------------------------------
class _NotDjangoSyntax(TemplateInvalid):
    """Text Django's grammar cannot read at all (as opposed to a Django construct dbmail refuses)."""


class _Literal:
    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


class _Var:
    __slots__ = ("bits",)

    def __init__(self, bits: list[str]):
        self.bits = bits


def _unescape_literal(text: str) -> str:
    quote = text[0]
    return text[1:-1].replace("\\" + quote, quote).replace("\\\\", "\\")


def _parse_variable(text: str, line: int) -> _Literal | _Var:
    """Django's Variable: a number, a quoted (or ``_("...")``) string, or a dotted lookup."""
    try:
        if "." in text or "e" in text.lower():
            number: Any = float(text)
            if text[0] != "." and text[-1] == ".":
                raise ValueError(text)
        else:
            number = int(text)
        return _Literal(number)
    except ValueError:
        pass
    translated = text[:2] == "_(" and text[-1:] == ")"
    literal = text[2:-1] if translated else text
    if literal[:1] in "\"'" and len(literal) > 1 and literal[-1] == literal[0]:
        value = _unescape_literal(literal)
        return _Literal(Markup(value.replace("%", "%%") if translated else value))
    if ("._" in text or text[:1] == "_") or "" in text.split("."):
        raise TemplateInvalid(
            f"syntax error at line {line}: variables and attributes may not begin with underscores: {text!r}"
        )
    return _Var(text.split("."))


def _argument_rule(function: Any) -> str:
    """Django's args_check, read from the filter's signature: "required", "optional" or "none"."""
    parameters = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "autoescape"
    ]
    if len(parameters) < 2:
        return "none"
    return "required" if parameters[1].default is inspect.Parameter.empty else "optional"


_ARGUMENTS = {name: _argument_rule(function) for name, function in FILTERS.items()}


def _parse_filter_expression(text: str, line: int) -> tuple[Any, list[tuple[str, Any]]]:
    """Django's FilterExpression: a variable and its filters, each with an optional argument."""
    value, filters, upto = None, [], 0
    for match in _FILTER_RE.finditer(text):
        if match.start() != upto:
            raise _NotDjangoSyntax(
                f"syntax error at line {line}: could not parse {text[upto : match.start()]!r} in {{{{ {text} }}}}"
            )
        if value is None:
            constant, var = match["constant"], match["var"]
            if constant:
                value = _parse_variable(constant, line)
            elif var:
                value = _parse_variable(var, line)
            else:
                raise _NotDjangoSyntax(f"syntax error at line {line}: could not parse {text!r}")
        else:
            filters.append((match["filter_name"], match["constant_arg"] or match["var_arg"]))
        upto = match.end()
    if value is None or upto != len(text):
        raise _NotDjangoSyntax(
            f"syntax error at line {line}: could not parse the remainder {text[upto:]!r} of {text!r}"
        )
    for name, arg in filters:
        if name not in FILTERS:
            raise TemplateInvalid(f"has an unsupported Django filter |{name} on line {line}")
        if arg is None and _ARGUMENTS[name] == "required":
            raise TemplateInvalid(f"syntax error at line {line}: the filter |{name} requires an argument")
        if arg is not None and _ARGUMENTS[name] == "none":
            raise TemplateInvalid(f"syntax error at line {line}: the filter |{name} takes no argument")
    return value, [(name, None if arg is None else _parse_variable(arg, line)) for name, arg in filters]


# ---- the runtime: what the generated Jinja2 source calls ---------------------------------------
class _Missing:
    """A lookup that failed: "" in output (string_if_invalid), None in {% if %} and loops."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


def _tick() -> None:
    render._budget().tick()


@pass_context
def _name(context: Any, name: str) -> Any:
    value = context.resolve_or_missing(name)
    if value is context.environment.globals.get(name, MISSING) or value is missing:
        return MISSING
    return _website_value(_called(context, value))


def _website_value(value: Any) -> Any:
    """The value the website held before JSON: an ISO 8601 string (not a template's literal) is
    the date, datetime or time it was written from, so printing, filters and comparisons treat it
    as Django treats that date."""
    if type(value) is str:
        if not value[:2].isdigit():  # every ISO form starts with two digits: most text is not one
            return value
        parsed = parse_datetime_value(value)
        return value if parsed is None else parsed
    return value


def _called(context: Any, value: Any) -> Any:
    """Django calls a callable found by a lookup (no arguments); one needing arguments is missing."""
    if callable(value) and not getattr(value, "do_not_call_in_templates", False):
        if getattr(value, "alters_data", False):
            return MISSING
        try:
            return context.environment.call(context, value)
        except TypeError:
            return MISSING
    return value


_NOT_PLAIN = object()  # what _plain_step answers when only an attribute is left


def _plain_step(value: Any, bit: str) -> Any:
    """One dotted part of a lookup, the steps that need no sandbox, in Django's order: the
    recipient's field, a mapping's key, a list index (MISSING if it has none of the field or
    the index); ``_NOT_PLAIN`` when only an attribute is left."""
    if isinstance(value, render.UserContext):
        return value.field(bit, _missing_field)
    if isinstance(value, Mapping) and bit in value:
        return value[bit]
    if isinstance(value, (list, tuple, str)) and bit.lstrip("-").isdigit() and not hasattr(value, bit):
        try:
            return value[int(bit)]
        except IndexError:
            return MISSING
    return _NOT_PLAIN


@pass_context
def _lookup(context: Any, value: Any, *bits: str) -> Any:
    """Django's order for each dotted part: a key, an attribute, a list index; missing if none."""
    for bit in bits:
        _tick()
        if value is MISSING:
            return MISSING
        found = _plain_step(value, bit)
        if found is _NOT_PLAIN:
            found = context.environment.getattr(value, bit)
            if isinstance(found, Undefined):
                return MISSING
        value = _website_value(_called(context, found))
    return value


def _missing_field(**_: Any) -> _Missing:
    return MISSING


def _fail_missing(value: Any, ignore_failures: bool) -> Any:
    if value is MISSING:
        return None if ignore_failures else ""
    return value


def _arg(value: Any) -> Any:
    """A filter's variable argument must exist (Django raises VariableDoesNotExist)."""
    if value is MISSING:
        raise TemplateRuntimeError("a filter argument names a variable that does not exist")
    return value


_AUTOESCAPE_AWARE = frozenset(
    name for name, function in FILTERS.items() if "autoescape" in inspect.signature(function).parameters
)


def _filter(name: str, autoescape: bool, value: Any, *arg: Any) -> Any:
    _tick()
    function = FILTERS[name]
    result = function(value, *arg, **({"autoescape": autoescape} if name in _AUTOESCAPE_AWARE else {}))
    if getattr(function, "is_safe", False) and hasattr(value, "__html__") and isinstance(result, str):
        result = Markup(result)
    return render._check_value(result)


def django_escape(text: Any) -> Markup:
    """django.utils.html.escape: html.escape's five characters (``&#x27;``, ``&quot;``)."""
    return Markup(_escape_text(str(text)))


_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"})
_NEEDS_ESCAPE = re.compile("[&<>\"']")


def _escape_text(text: str) -> str:
    return text.translate(_ESCAPES) if _NEEDS_ESCAPE.search(text) else text


def _localize(value: Any) -> str:
    """Django's localize() with its defaults: numbers plain, dates in DATE_FORMAT, DATETIME_FORMAT
    or TIME_FORMAT."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and "e" in str(value).lower():
        return format(Decimal(str(value)), "f")
    if isinstance(value, (date, time)):
        return localize(value)
    return str(value)


def _out(value: Any, autoescape: bool) -> str:
    """Django's render_value_in_context: missing is "", escaped unless safe when autoescaping."""
    _tick()
    if value is MISSING:
        return ""
    text = _localize(value) if not hasattr(value, "__html__") else value
    if autoescape:  # safe from here on, as Django's conditional_escape marks it ({% firstof ... as v %})
        return Markup(text.__html__()) if hasattr(text, "__html__") else django_escape(text)
    return str(text)


_OPERATORS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
    "in": lambda left, right: left in right,
    "not in": lambda left, right: left not in right,
    "is": operator.is_,
    "is not": operator.is_not,
}


def _compare(op: str, left: Any, right: Any) -> bool:
    """Django's {% if %} operators: any error is False."""
    _tick()
    try:
        return bool(_OPERATORS[op](left, right))
    except Exception:
        return False


def _sequence(value: Any, reverse: bool) -> list:
    if value is MISSING or value is None:
        return []
    items = list(value.keys()) if isinstance(value, Mapping) else value
    items = items if hasattr(items, "__len__") else list(items)
    return [_website_value(item) for item in (reversed(items) if reverse else items)]


class _ForLoop(dict):
    """Django's ``forloop``: counter, counter0, revcounter, revcounter0, first, last, parentloop."""

    def __init__(self, parent: Any):
        super().__init__(parentloop=parent if isinstance(parent, _ForLoop) else {})
        self.ifchanged: dict[int, Any] = {}

    def step(self, loop: Any) -> None:
        length, index = loop.length, loop.index0
        self.update(
            counter0=index,
            counter=index + 1,
            revcounter=length - index,
            revcounter0=length - index - 1,
            first=index == 0,
            last=index == length - 1,
        )


def _step(forloop: _ForLoop, loop: Any) -> str:
    forloop.step(loop)
    return ""


class _RenderState:
    """State kept for one render: each cycle's position and value, {% ifchanged %} outside loops."""

    def __init__(self):
        self.cycles: dict[int, Any] = {}
        self.cycle_values: dict[int, Any] = {}
        self.ifchanged: dict[int, Any] = {}


def _cycle(state: _RenderState, node: int, values: list) -> Any:
    _tick()
    if node not in state.cycles:
        state.cycles[node] = itertools.cycle(range(len(values)))
    state.cycle_values[node] = values[next(state.cycles[node])]
    return state.cycle_values[node]


def _quiet(_: Any) -> str:
    return ""


def _cycle_value(state: _RenderState, node: int) -> Any:
    """A named cycle's variable: its last value (as Django's set_upward leaves it)."""
    return state.cycle_values.get(node, MISSING)


def _changed(frame: Any, node: int, compare_to: Any) -> bool:
    _tick()
    if frame.ifchanged.get(node, None) != compare_to or node not in frame.ifchanged:
        frame.ifchanged[node] = compare_to
        return True
    return False


def _firstof(autoescape: bool, *values: Any) -> str:
    for value in values:
        if value is not MISSING and value:
            return _out(value, autoescape)
    return ""


def _now(fmt: str) -> str:
    return format_date(datetime.now(UTC), fmt)


def _safe(text: str) -> Markup:
    return Markup(text)


def _text(value: Any) -> str:
    """A {% filter %} block's result, output as is (Django does not escape it again)."""
    return "" if value is MISSING else str(value)


def _spaceless(text: str) -> str:
    return re.sub(r">\s+<", "><", str(text).strip())


HELPERS = {
    "_dj_name": _name,
    "_dj_lookup": _lookup,
    "_dj_fail": _fail_missing,
    "_dj_arg": _arg,
    "_dj_filter": _filter,
    "_dj_out": _out,
    "_dj_cmp": _compare,
    "_dj_seq": _sequence,
    "_dj_forloop": _ForLoop,
    "_dj_step": _step,
    "_dj_state": _RenderState,
    "_dj_cycle": _cycle,
    "_dj_cycle_value": _cycle_value,
    "_dj_quiet": _quiet,
    "_dj_changed": _changed,
    "_dj_firstof": _firstof,
    "_dj_now": _now,
    "_dj_spaceless": _spaceless,
    "_dj_safe": _safe,
    "_dj_text": _text,
}


# ---- translation ------------------------------------------------------------------------------
_TEMPLATETAGS = {
    "openblock": "{%",
    "closeblock": "%}",
    "openvariable": "{{",
    "closevariable": "}}",
    "openbrace": "{",
    "closebrace": "}",
    "opencomment": "{#",
    "closecomment": "#}",
}
_IF_BINDING = {
    "or": 6,
    "and": 7,
    "not": 8,
    "in": 9,
    "not in": 9,
    "is": 10,
    "is not": 10,
    "==": 10,
    "!=": 10,
    ">": 10,
    ">=": 10,
    "<": 10,
    "<=": 10,
}


class Translation:
    """Jinja2 source plus the constants it indexes (``_dj_c``); texts are constants too, so no
    text of the template is ever read by Jinja2's lexer."""

    def __init__(self, source: str, constants: list):
        self.source, self.constants = source, constants

    def globals(self) -> dict[str, Any]:
        return {**HELPERS, "_dj_c": self.constants}


class _Translator:
    def __init__(self, source: str, autoescape: bool):
        self.source, self.tokens, self.position = source, tokenize(source), 0
        self.autoescape = autoescape
        self.constants: list = []
        self.scopes: list[dict[str, str]] = [{}]
        self.loops: list[str] = []  # the Jinja names of the enclosing Django loops' forloop
        self.cycles: dict[str, tuple[int, str]] = {}
        self.counter = itertools.count()

    # -- helpers
    def const(self, value: Any) -> str:
        self.constants.append(value)
        return f"_dj_c[{len(self.constants) - 1}]"

    def fresh(self) -> str:
        return f"_dj_{next(self.counter)}"

    def bind(self, name: str) -> str:
        local = self.fresh()
        self.scopes[-1][name] = local
        return local

    def value(self, node: _Literal | _Var) -> str:
        if isinstance(node, _Literal):
            return self.const(node.value)
        head, rest = node.bits[0], node.bits[1:]
        for scope in reversed(self.scopes):
            if head in scope:
                base = scope[head]
                break
        else:
            if head == "forloop" and self.loops:
                base = self.loops[-1]
            elif head in ("True", "False", "None"):
                base = self.const({"True": True, "False": False, "None": None}[head])
            else:
                base = f"_dj_name({self.const(head)})"
        if not rest:
            return base
        return f"_dj_lookup({base}, {', '.join(self.const(bit) for bit in rest)})"

    def expression(self, text: str, line: int, ignore_failures: bool = False) -> str:
        """A Django FilterExpression as a Jinja2 expression."""
        value, filters = _parse_filter_expression(text, line)
        code = self.value(value)
        if isinstance(value, _Var):
            code = f"_dj_fail({code}, {ignore_failures})"
        for name, arg in filters:
            args = "" if arg is None else f", {self.arg(arg)}"
            code = f"_dj_filter({self.const(name)}, {self.autoescape}, {code}{args})"
        return code

    def arg(self, node: _Literal | _Var) -> str:
        return self.value(node) if isinstance(node, _Literal) else f"_dj_arg({self.value(node)})"

    # -- the token stream
    def parse(self, until: tuple[str, ...] = ()) -> tuple[str, _Token | None]:
        out = []
        while self.position < len(self.tokens):
            token = self.tokens[self.position]
            self.position += 1
            if token.kind == TEXT:
                self.check_openings(token)
                out.append(f"{{{{ {self.const(token.content)} }}}}")
            elif token.kind == VAR:
                if not token.content:
                    raise TemplateInvalid(f"syntax error at line {token.line}: empty variable tag {{{{ }}}}")
                out.append(f"{{{{ _dj_out({self.expression(token.content, token.line)}, {self.autoescape}) }}}}")
            elif token.kind == BLOCK:
                name = token.content.split()[0] if token.content else ""
                if name in until:
                    return "".join(out), token
                out.append(self.tag(name, token))
        return "".join(out), None

    def check_openings(self, token: _Token) -> None:
        """Django prints a ``{{`` or ``{%`` that nothing closes as text; it is refused, as the
        typo it always is (``Dear {{ user.first_name``)."""
        for match in re.finditer(r"\{\{|\{%", token.content):
            closer = "}}" if match[0] == "{{" else "%}"
            if self.source.find(closer, token.offset + match.end()) == -1:
                line = token.line + token.content.count("\n", 0, match.start())
                raise TemplateInvalid(f"syntax error at line {line}: {match[0]} is never closed by {closer}")

    def block(self, opener: _Token, *ends: str) -> tuple[str, _Token]:
        body, end = self.parse(ends)
        if end is None:
            name = opener.content.split()[0]
            raise TemplateInvalid(
                f"syntax error at line {opener.line}: {{% {name} %}} is never closed (expected "
                + " or ".join(f"{{% {e} %}}" for e in ends)
                + ")"
            )
        return body, end

    def tag(self, name: str, token: _Token) -> str:
        if not name:
            raise TemplateInvalid(f"syntax error at line {token.line}: empty block tag {{% %}}")
        if name not in SUPPORTED_TAGS:
            raise TemplateInvalid(f"has an unsupported Django tag {{% {name} %}} on line {token.line}")
        handler = getattr(self, f"tag_{name}", None)
        if handler is None:  # an end or middle tag with no opener
            raise TemplateInvalid(f"syntax error at line {token.line}: unexpected {{% {name} %}}")
        return handler(token)

    def tag_load(self, token: _Token) -> str:
        return ""

    def tag_comment(self, token: _Token) -> str:
        while self.position < len(self.tokens):
            candidate = self.tokens[self.position]
            self.position += 1
            if candidate.kind == BLOCK and candidate.content == "endcomment":
                return ""
        raise TemplateInvalid(f"syntax error at line {token.line}: {{% comment %}} is never closed")

    def tag_verbatim(self, token: _Token) -> str:
        parts = []
        while self.position < len(self.tokens):
            candidate = self.tokens[self.position]
            self.position += 1
            if candidate.kind == BLOCK and candidate.content == "end" + token.content:
                return f"{{{{ {self.const(''.join(parts))} }}}}"
            parts.append(candidate.raw)
        raise TemplateInvalid(f"syntax error at line {token.line}: {{% {token.content} %}} is never closed")

    def tag_templatetag(self, token: _Token) -> str:
        bits = token.split()
        if len(bits) != 2 or bits[1] not in _TEMPLATETAGS:
            raise TemplateInvalid(
                f"syntax error at line {token.line}: {{% templatetag %}} takes one of {', '.join(_TEMPLATETAGS)}"
            )
        return f"{{{{ {self.const(_TEMPLATETAGS[bits[1]])} }}}}"

    def tag_if(self, token: _Token) -> str:
        out = f"{{% if {self.condition(token)} %}}"
        while True:
            body, end = self.block(token, "elif", "else", "endif")
            out += body
            end_name = end.content.split()[0]
            if end_name == "elif":
                out += f"{{% elif {self.condition(end)} %}}"
            elif end_name == "else":
                body, end = self.block(token, "endif")
                return out + "{% else %}" + body + "{% endif %}"
            else:
                return out + "{% endif %}"

    def condition(self, token: _Token) -> str:
        bits = token.split()[1:]
        words: list[str] = []
        for bit in bits:  # "not in" and "is not" are one operator
            if words and (words[-1], bit) in (("not", "in"), ("is", "not")):
                words[-1] += " " + bit
            else:
                words.append(bit)
        if not words:
            raise TemplateInvalid(f"syntax error at line {token.line}: {{% {token.content} %}} has no condition")
        parser = _IfParser(self, words, token.line)
        code = parser.expression(0)
        if parser.position < len(words):
            raise TemplateInvalid(
                f"syntax error at line {token.line}: unused {words[parser.position]!r} at end of if expression"
            )
        return code

    def tag_for(self, token: _Token) -> str:
        bits = token.split()
        line = token.line
        if len(bits) < 4:
            raise TemplateInvalid(f"syntax error at line {line}: 'for' statements should have at least four words")
        reverse = bits[-1] == "reversed"
        in_index = -3 if reverse else -2
        if bits[in_index] != "in":
            raise TemplateInvalid(f"syntax error at line {line}: 'for' statements should use the format 'for x in y'")
        names = re.split(r" *, *", " ".join(bits[1:in_index]))
        if any(not name or " " in name or not re.fullmatch(r"\w+", name) for name in names):
            raise TemplateInvalid(f"syntax error at line {line}: 'for' tag received an invalid argument")
        sequence = self.expression(bits[in_index + 1], line, ignore_failures=True)
        loop = self.fresh()
        parent = self.loops[-1] if self.loops else "none"
        self.scopes.append({})
        self.loops.append(loop)
        targets = ", ".join(self.bind(name) for name in names)
        body, end = self.block(token, "empty", "endfor")
        self.loops.pop()
        self.scopes.pop()
        empty = ""
        if end.content == "empty":
            empty, end = self.block(token, "endfor")
            empty = "{% else %}" + empty
        return (
            f"{{% with {loop} = _dj_forloop({parent}) %}}{{% for {targets} in _dj_seq({sequence}, {reverse}) %}}"
            f"{{{{ _dj_step({loop}, loop) }}}}{body}{empty}{{% endfor %}}{{% endwith %}}"
        )

    def tag_with(self, token: _Token) -> str:
        bits = token.split()[1:]
        assignments = self.with_assignments(bits, token.line)
        if not assignments:
            raise TemplateInvalid(
                f"syntax error at line {token.line}: 'with' expected at least one variable assignment"
            )
        if bits:
            raise TemplateInvalid(f"syntax error at line {token.line}: 'with' received an invalid token: {bits[0]!r}")
        values = [(name, self.expression(value, token.line)) for name, value in assignments.items()]
        self.scopes.append({})
        targets = ", ".join(f"{self.bind(name)} = {code}" for name, code in values)
        body, _ = self.block(token, "endwith")
        self.scopes.pop()
        return f"{{% with {targets} %}}{body}{{% endwith %}}"

    @staticmethod
    def with_assignments(bits: list[str], line: int) -> dict[str, str]:
        """django.template.base.token_kwargs, with the legacy ``x as y`` form."""
        if not bits:
            return {}
        match = _KWARG.match(bits[0])
        kwarg_format = bool(match and match[1])
        if not kwarg_format and (len(bits) < 3 or bits[1] != "as"):
            return {}
        assignments: dict[str, str] = {}
        while bits:
            if kwarg_format:
                match = _KWARG.match(bits[0])
                if not match or not match[1]:
                    return assignments
                key, value = match.groups()
                del bits[:1]
            else:
                if len(bits) < 3 or bits[1] != "as":
                    return assignments
                key, value = bits[2], bits[0]
                del bits[:3]
            assignments[key] = value
            if bits and not kwarg_format:
                if bits[0] != "and":
                    return assignments
                del bits[:1]
        return assignments

    def tag_firstof(self, token: _Token) -> str:
        bits = token.split()[1:]
        target = None
        if len(bits) >= 2 and bits[-2] == "as":
            target, bits = bits[-1], bits[:-2]
        if not bits:
            raise TemplateInvalid(
                f"syntax error at line {token.line}: 'firstof' statement requires at least one argument"
            )
        values = ", ".join(self.expression(bit, token.line, ignore_failures=True) for bit in bits)
        code = f"_dj_firstof({self.autoescape}, {values})"
        if target:
            return f"{{% set {self.bind(target)} = {code} %}}"
        return f"{{{{ {code} }}}}"

    def tag_cycle(self, token: _Token) -> str:
        args = token.split()
        line = token.line
        if len(args) < 2:
            raise TemplateInvalid(f"syntax error at line {line}: 'cycle' tag requires at least two arguments")
        if len(args) == 2:  # {% cycle name %}: the named cycle itself, advanced
            if args[1] not in self.cycles:
                raise TemplateInvalid(f"syntax error at line {line}: named cycle {args[1]!r} does not exist")
            return self.cycles[args[1]]
        target, silent = None, False
        if len(args) > 4 and args[-3] == "as":
            if args[-1] != "silent":
                raise TemplateInvalid(
                    f"syntax error at line {line}: only 'silent' is allowed after cycle's name, not {args[-1]!r}"
                )
            target, silent, args = args[-2], True, args[:-1]
        if len(args) > 4 and args[-2] == "as":
            target, args = args[-1], args[:-2]
        node = next(self.counter)
        values = "[" + ", ".join(self.expression(bit, line) for bit in args[1:]) + "]"
        code = f"_dj_cycle(_dj_root, {node}, {values})"
        if silent:
            code = f"{{{{ _dj_quiet({code}) }}}}"
        else:
            code = f"{{{{ _dj_out({code}, {self.autoescape}) }}}}"
        if target:
            self.cycles[target] = code
            self.scopes[-1][target] = f"_dj_cycle_value(_dj_root, {node})"
        return code

    def tag_ifchanged(self, token: _Token) -> str:
        bits = token.split()[1:]
        frame = self.loops[-1] if self.loops else "_dj_root"
        node = next(self.counter)
        body, end = self.block(token, "else", "endifchanged")
        otherwise = ""
        if end.content == "else":
            otherwise, _ = self.block(token, "endifchanged")
            otherwise = "{% else %}" + otherwise
        if bits:
            compared = "[" + ", ".join(self.expression(bit, token.line, ignore_failures=True) for bit in bits) + "]"
            return f"{{% if _dj_changed({frame}, {node}, {compared}) %}}{body}{otherwise}{{% endif %}}"
        content = self.fresh()
        return (
            f"{{% set {content} %}}{body}{{% endset %}}"
            f"{{% if _dj_changed({frame}, {node}, {content}) %}}{{{{ {content} }}}}{otherwise}{{% endif %}}"
        )

    def tag_now(self, token: _Token) -> str:
        bits = token.split()
        target = None
        if len(bits) == 4 and bits[2] == "as":
            target, bits = bits[3], bits[:2]
        if len(bits) != 2 or bits[1][:1] not in "\"'" or bits[1][-1] != bits[1][0] or len(bits[1]) < 2:
            raise TemplateInvalid(f"syntax error at line {token.line}: 'now' statement takes one quoted format")
        code = f"_dj_now({self.const(bits[1][1:-1])})"
        if target:
            return f"{{% set {self.bind(target)} = {code} %}}"
        return f"{{{{ {code} }}}}"

    def tag_filter(self, token: _Token) -> str:
        """``{% filter f|g:arg %}``: the block's output (safe, as Django's nodelist output is) filtered."""
        rest = token.content[len("filter") :].strip()
        value, filters = _parse_filter_expression(f"var|{rest}", token.line)
        for name, _ in filters:
            if name in ("escape", "safe"):
                raise TemplateInvalid(
                    f'syntax error at line {token.line}: "filter {name}" is not permitted; use the "autoescape" tag'
                )
        body, _ = self.block(token, "endfilter")
        content = self.fresh()
        code = f"_dj_safe({content})"
        for name, arg in filters:
            args = "" if arg is None else f", {self.arg(arg)}"
            code = f"_dj_filter({self.const(name)}, {self.autoescape}, {code}{args})"
        return f"{{% set {content} %}}{body}{{% endset %}}{{{{ _dj_text({code}) }}}}"

    def tag_spaceless(self, token: _Token) -> str:
        body, _ = self.block(token, "endspaceless")
        content = self.fresh()
        return f"{{% set {content} %}}{body}{{% endset %}}{{{{ _dj_spaceless({content}) }}}}"

    def tag_autoescape(self, token: _Token) -> str:
        bits = token.split()
        if len(bits) != 2 or bits[1] not in ("on", "off"):
            raise TemplateInvalid(f"syntax error at line {token.line}: 'autoescape' argument should be 'on' or 'off'")
        outer, self.autoescape = self.autoescape, bits[1] == "on"
        body, _ = self.block(token, "endautoescape")
        self.autoescape = outer
        return body


class _IfParser:
    """Django's smartif: a Pratt parser with Django's binding powers, emitting Jinja2."""

    def __init__(self, translator: _Translator, words: list[str], line: int):
        self.translator, self.words, self.line, self.position = translator, words, line, 0

    def next_word(self) -> str | None:
        if self.position >= len(self.words):
            return None
        self.position += 1
        return self.words[self.position - 1]

    def peek(self) -> str | None:
        return self.words[self.position] if self.position < len(self.words) else None

    def expression(self, rbp: int) -> str:
        word = self.next_word()
        if word is None:
            raise TemplateInvalid(f"syntax error at line {self.line}: unexpected end of if expression")
        if word == "not":
            left = f"(not {self.expression(_IF_BINDING['not'])})"
        elif word in _IF_BINDING:
            raise TemplateInvalid(
                f"syntax error at line {self.line}: not expecting {word!r} in this position in if tag"
            )
        else:
            left = self.translator.expression(word, self.line, ignore_failures=True)
        while (op := self.peek()) is not None and _IF_BINDING.get(op, 0) > rbp:
            self.position += 1
            if op == "not":
                raise TemplateInvalid(
                    f"syntax error at line {self.line}: not expecting 'not' as infix operator in if tag"
                )
            right = self.expression(_IF_BINDING[op])
            if op in ("or", "and"):
                left = f"({left} {op} {right})"
            else:
                left = f"_dj_cmp({self.translator.const(op)}, {left}, {right})"
        if (op := self.peek()) is not None and op not in _IF_BINDING:
            raise TemplateInvalid(f"syntax error at line {self.line}: unused {op!r} at end of if expression")
        return left


class _UseTranslation(Exception):
    """A value the direct path does not reproduce: the translation renders this recipient."""


def _plain_value(value: Any) -> Any:
    """``_website_value(_called(...))`` on the direct path: a callable needs the sandbox's call."""
    if type(value) is str:  # most text starts with no digit: _website_value would return it as it is
        return _website_value(value) if value[:1].isdigit() else value
    if callable(value):
        raise _UseTranslation
    return value


class LazyTemplate:
    """A translation compiled by Jinja2 the first time a render needs it. Compiling is most of
    preparing a request (about 10 ms for a 3 KB body), and a direct template's recipients
    rarely need the translation; a translation holds its text in constants (``_dj_c``), so
    compiling one of text and plain variables cannot fail later than ``to_jinja`` would. The
    compile is the request's work, as it was when the request was prepared: the render that
    meets it (or waits for another thread's) is not charged its time (seconds, for a large
    template of many variables)."""

    __slots__ = ("_compile", "_template", "_lock")

    def __init__(self, compile_template: Callable[[], Any]):
        self._compile, self._template, self._lock = compile_template, None, threading.Lock()

    @property
    def compiled(self) -> bool:
        return self._template is not None

    def template(self) -> Any:
        if self._template is not None:
            return self._template
        started = monotonic()
        with self._lock:
            if self._template is None:
                self._template = self._compile()
        render.excuse(monotonic() - started)
        return self._template

    def generate(self, context: Mapping[str, Any]) -> Any:
        return self.template().generate(context)


class DirectTemplate:
    """A Django template of text and plain variables only (no tag, no filter: most program
    mail), rendered without Jinja2. Each variable is looked up, converted and escaped by the
    same helpers as the translation's (``_plain_step``, ``_website_value``, ``_out``), minus the
    sandbox's metering of calls to them; a value those would reach through the sandbox (a
    callable, an attribute, a key a mapping lacks) hands the recipient to ``translation``, so
    the output is the translation's byte for byte."""

    __slots__ = ("parts", "autoescape", "translation")

    def __init__(self, parts: list, autoescape: bool, translation: LazyTemplate):
        self.parts, self.autoescape, self.translation = parts, autoescape, translation

    @classmethod
    def of(cls, source: str, autoescape: bool, translation: LazyTemplate) -> Any:
        """The direct template for ``source`` if it has only text and plain variables, else
        ``translation``'s compiled template. ``source`` has been translated, so it is valid."""
        parts: list = []
        for token in tokenize(source):
            if token.kind == TEXT:
                parts.append(token.content)
            elif token.kind != VAR:
                return translation.template()
            else:
                value, filters = _parse_filter_expression(token.content, token.line)
                if filters or not isinstance(value, _Var) or value.bits[0] in ("True", "False", "None"):
                    return translation.template()
                parts.append((value.bits[0], tuple(value.bits[1:])))
        return cls(parts, autoescape, translation)

    def bind(self, shared: Mapping[str, Any]) -> DirectTemplate:
        """This template with each variable outside ``user`` rendered once from ``shared`` (the
        context's other names: the same objects for every recipient) and merged with the text
        around it, so that a recipient's render looks up the recipient's own fields only; it
        writes what this one writes for ``shared`` plus a ``user``. Itself if a shared variable
        needs the translation or fails (a limit, a value's error): every recipient's render
        meets that, as before. Call it within a render's budget."""
        parts: list = []
        for is_shared, run in itertools.groupby(self.parts, lambda part: type(part) is str or part[0] != "user"):
            if not is_shared:
                parts.extend(run)
                continue
            try:
                text = DirectTemplate(list(run), self.autoescape, self.translation)._render(shared)[0]
            except Exception:  # raised by the unbound render too, for every recipient
                return self
            if text:
                parts.append(text)
        return DirectTemplate(parts, self.autoescape, self.translation)

    def generate(self, context: Mapping[str, Any]) -> Any:
        """The output's parts (as the translation's ``generate``)."""
        try:
            return self._render(context)
        except _UseTranslation:
            return self.translation.generate(context)

    def _render(self, context: Mapping[str, Any]) -> list[str]:
        """One part: the whole output, its size checked as it grows (the render's own check
        sees the total)."""
        budget = render._budget()
        budget.tick()
        limit, autoescape, lookup = budget.limits.output_chars, self.autoescape, self._lookup
        out, size = [], 0
        for part in self.parts:
            if type(part) is not str:
                head, bits = part
                value = lookup(context[head], bits) if head in context else MISSING
                if value is MISSING:
                    continue  # string_if_invalid: ""
                if type(value) is str:  # _out's result for text, without building the Markup
                    part = _escape_text(value) if autoescape else value
                else:
                    part = str(_out(render._check_value(value), autoescape))
            size += len(part)
            if size > limit:
                raise TemplateLimitExceeded(f"rendered text is over {limit} characters (the output limit)")
            out.append(part)
        return ["".join(out)]

    @staticmethod
    def _lookup(value: Any, bits: tuple[str, ...]) -> Any:
        """``_name`` then ``_lookup``'s steps, for values that need no sandbox."""
        if type(value) is render.UserContext and len(bits) == 1:  # user.first_name: most variables
            return _plain_value(value.field(bits[0], _missing_field))
        value = _plain_value(value)
        for bit in bits:
            if value is MISSING:
                return MISSING
            value = _plain_step(value, bit)
            if value is _NOT_PLAIN:
                raise _UseTranslation
            value = _plain_value(value)
        return value


def to_jinja(source: str, *, name: str, autoescape: bool = False) -> Translation:
    """Django template source as Jinja2 source for LimitedSandbox (autoescape off there: the
    escaping is Django's, done by the helpers); TemplateInvalid names the tag or filter and line."""
    translator = _Translator(source, autoescape)
    body, stray = translator.parse()
    if stray is not None:
        raise TemplateInvalid(f"syntax error at line {stray.line}: unexpected {{% {stray.content} %}} in {name}")
    return Translation(f"{{% with _dj_root = _dj_state() %}}{body}{{% endwith %}}", translator.constants)
