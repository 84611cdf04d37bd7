"""Template rendering in Jinja2's immutable sandbox, under explicit limits.

Templates come from chapter admins and the website, so they are untrusted: compiled once per
request, rendered once per recipient, each render bounded in wall time, loop iterations, output
size, value growth (strings, lists, integers) and call depth. Breaking a limit raises
``TemplateLimitExceeded``, which fails the whole request; it never stalls the others.

``user`` exposes the recipient's fields by name and nothing else, and the sandbox lets no
template change shared values, so one recipient's data cannot reach another's email.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import lru_cache, partial, wraps
from typing import Any

from jinja2 import ChainableUndefined, TemplateError, nodes
from jinja2.runtime import LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, soft_str

from dbmail.core.compose import is_html
from dbmail.core.errors import TemplateInvalid, TemplateLimitExceeded

MAX_TEMPLATE_BYTES = 300_000  # request and TextOfEmail items must stay under DynamoDB's 400 KB


@dataclass(frozen=True)
class RenderLimits:
    """Per recipient: one render of the subject and the body together."""

    seconds: float = 1.0
    loop_iterations: int = 100_000
    output_chars: int = 350_000  # also the largest string or list a template may build
    call_depth: int = 32  # macro and recursive-loop nesting
    int_bits: int = 16_384  # about 4,900 decimal digits


DEFAULT_LIMITS = RenderLimits()


# ---- the budget of the render in progress (per thread: the local runner renders in several) ----
class _Budget:
    __slots__ = ("limits", "deadline", "iterations", "depth")

    def __init__(self, limits: RenderLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.iterations = 0
        self.depth = 0

    def excuse(self, seconds: float) -> None:
        """``seconds`` spent on the request's work, not this recipient's (a lazy compile)."""
        self.deadline += seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitExceeded(f"rendering one email took over {self.limits.seconds:g} s (the time limit)")


_current: ContextVar[_Budget | None] = ContextVar("dbmail_render_budget", default=None)


def _budget() -> _Budget:
    budget = _current.get()
    if budget is None:  # rendering outside CompiledMessage.render: apply the defaults anyway
        budget = _Budget(DEFAULT_LIMITS)
        _current.set(budget)
    return budget


def excuse(seconds: float) -> None:
    """``seconds`` of the request's work (a lazy compile) done inside a render: not charged to
    it. Outside a render (a compile while preparing) there is no budget to excuse, and none is
    made: ``_budget`` would leave a default one in the thread's context, a kept pool thread's too."""
    budget = _current.get()
    if budget is not None:
        budget.excuse(seconds)


@contextmanager
def _rendering(limits: RenderLimits):
    token = _current.set(_Budget(limits))
    try:
        yield
    finally:
        _current.reset(token)


def _check_size(size: int, what: str) -> None:
    limit = _budget().limits.output_chars
    if size > limit:
        raise TemplateLimitExceeded(f"{what} would be {size:,} long, over the limit of {limit:,}")


def _check_value(value: Any) -> Any:
    if isinstance(value, (str, bytes, list, tuple, dict, set)):
        _check_size(len(value), "a value")
    elif isinstance(value, int) and value.bit_length() > _budget().limits.int_bits:
        raise TemplateLimitExceeded(f"an integer over {_budget().limits.int_bits} bits (the integer limit)")
    return value


# ---- checks made before an operation that could allocate without bound --------------------
_SIZED = (str, bytes, list, tuple)
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_WIDTH = re.compile(r"\{[^{}]*:[^{}]*?(\d+)")


def _check_percent_format(fmt: str) -> None:
    """'%999999999s' allocates the width; '*' takes it from the arguments."""
    for width, precision in _FORMAT_WIDTH.findall(fmt):
        for part in (width, precision):
            if part == "*" or (part and int(part) > _budget().limits.output_chars):
                raise TemplateLimitExceeded("a %-format width or precision over the output limit (or '*')")


def _check_brace_format(fmt: str) -> None:
    for width in _BRACE_WIDTH.findall(fmt):
        _check_size(int(width), "a format width")


def _check_repeat(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, _SIZED):
        left, right = right, left
    if isinstance(left, _SIZED) and isinstance(right, int):
        _check_size(len(left) * max(right, 0), "a repeated value")
    elif isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > _budget().limits.int_bits:
            raise TemplateLimitExceeded(f"an integer product over {_budget().limits.int_bits} bits (the integer limit)")


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * abs(base).bit_length() > _budget().limits.int_bits:
            raise TemplateLimitExceeded(f"an integer power over {_budget().limits.int_bits} bits (the integer limit)")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        _check_repeat(left, right)
    elif operator == "**":
        _check_power(left, right)
    elif operator == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
        _check_size(len(left) + len(right), "a joined value")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left)


def _check_replace(text: Any, old: Any = "", new: Any = "", *_: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        occurrences = text.count(old) if old else len(text) + 1
        _check_size(len(text) + occurrences * max(len(new) - len(old), 0), "a replaced string")


def _sized(items: Any) -> Any:
    """Generators are listed first so that their size can be checked before a join."""
    return items if hasattr(items, "__len__") else list(items)


def _check_join(separator: Any, items: Any) -> None:
    if isinstance(separator, str) and hasattr(items, "__len__"):
        _check_size(len(items) * len(separator), "a joined string")


def _check_width(_: Any, width: Any = 0, *__: Any) -> None:
    if isinstance(width, int):
        _check_size(width, "a padding width")


_STR_METHOD_CHECKS = {
    "ljust": _check_width,
    "rjust": _check_width,
    "center": _check_width,
    "zfill": _check_width,
    "expandtabs": _check_width,
    "replace": _check_replace,
}


def _check_method_call(method: Any, args: tuple) -> tuple:
    """Checks a str method call (``'x'.ljust(10**9)``); returns its arguments, generators listed."""
    method = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format
    owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
    if not isinstance(owner, str):
        return args
    if name == "join" and args:
        args = (_sized(args[0]), *args[1:])
        _check_join(owner, args[0])
    elif name in ("format", "format_map"):
        _check_brace_format(owner)
    elif name in _STR_METHOD_CHECKS:
        _STR_METHOD_CHECKS[name](owner, *args)
    return args


def _check_filter(name: str, args: list) -> None:
    """``args`` start with the filter's value; generators there are listed in place."""
    if not args:
        return
    if name == "join":
        args[0] = _sized(args[0])
        _check_join(args[1] if len(args) > 1 else "", args[0])
    elif name == "format" and isinstance(args[0], str):
        _check_percent_format(args[0])
    elif name == "replace":
        _check_replace(*args)
    elif name in ("center", "slice", "batch"):
        _check_width(*args)
    elif name == "indent" and isinstance(args[0], str):
        width = args[1] if len(args) > 1 else 4
        pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        _check_size(len(args[0]) + (args[0].count("\n") + 1) * pad, "an indented string")
    elif name == "wordwrap" and isinstance(args[0], str):
        width = args[1] if len(args) > 1 and isinstance(args[1], int) else 79
        wrap = args[3] if len(args) > 3 and isinstance(args[3], str) else "\n"
        _check_size(len(args[0]) + (len(args[0]) // max(width, 1) + 1) * len(wrap), "a wrapped string")


def _guard_filter(name: str, function: Any) -> Any:
    passes_context = hasattr(function, "jinja_pass_arg")

    @wraps(function)  # keeps jinja_pass_arg, so Jinja still passes the context where asked
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _budget().tick()
        offset = 1 if passes_context else 0
        rest = list(args[offset:])
        _check_filter(name, rest)
        return _check_value(function(*args[:offset], *rest, **kwargs))

    return guarded


# ---- loops and concatenation are routed through these (see LimitedSandbox._parse) -----------
class _CountedLoop:
    """A for loop's iterable, charging each item to the render's iteration budget."""

    def __init__(self, iterable: Any):
        self._iterable = iterable

    def __len__(self) -> int:
        return len(self._iterable)  # TypeError for generators, as Jinja's LoopContext expects

    def __iter__(self):
        budget = _budget()
        for item in self._iterable:
            budget.iterations += 1
            if budget.iterations > budget.limits.loop_iterations:
                raise TemplateLimitExceeded(
                    f"loops ran over {budget.limits.loop_iterations:,} iterations (the iteration limit)"
                )
            budget.tick()
            yield item


def counted_loop(iterable: Any) -> _CountedLoop:
    return _CountedLoop(iterable)


def bounded_str_join(*parts: Any) -> str:
    """``a ~ b`` in a text template, size-checked before the join."""
    texts = [str(part) for part in parts]
    _check_size(sum(map(len, texts)), "a concatenated string")
    return "".join(texts)


def bounded_markup_join(*parts: Any) -> str:
    """``a ~ b`` in an autoescaped template: Markup as soon as one part is Markup (as Jinja does)."""
    texts = [soft_str(part) for part in parts]
    _check_size(sum(map(len, texts)), "a concatenated string")
    if any(hasattr(text, "__html__") for text in texts):
        return Markup("").join(texts)
    return "".join(texts)


def limited_range(*args: int) -> range:
    values = range(*args)
    if len(values) > DEFAULT_LIMITS.loop_iterations:
        raise TemplateLimitExceeded(f"range() of {len(values):,} items, over the iteration limit")
    return values


# ---- the environment ---------------------------------------------------------------------------
class LimitedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, with every call, lookup, loop, operator and join metered."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, autoescape: bool):
        super().__init__(autoescape=autoescape, undefined=ChainableUndefined, keep_trailing_newline=True)
        self.filters = {name: _guard_filter(name, function) for name, function in self.filters.items()}
        self.globals.pop("lipsum", None)  # lipsum(n=10**9) would write without bound
        self.globals["range"] = limited_range

    @staticmethod
    def concat(parts: Iterable[str]) -> str:
        """Macro bodies and {% set %} blocks: joined with their size checked as they grow."""
        buffer, size = [], 0
        for part in parts:
            size += len(part)
            _check_size(size, "a block or macro output")
            buffer.append(part)
        return "".join(buffer)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        join = "bounded_markup_join" if self.autoescape else "bounded_str_join"
        for loop in tree.find_all(nodes.For):
            counted = nodes.Call(nodes.ImportedName(f"{__name__}.counted_loop"), [loop.iter], [], None, None)
            loop.iter = counted.set_lineno(loop.lineno)
        for concat in list(tree.find_all(nodes.Concat)):
            call = nodes.Call(nodes.ImportedName(f"{__name__}.{join}"), concat.nodes, [], None, None)
            call.set_lineno(concat.lineno)
            concat.__class__, concat.__dict__ = call.__class__, call.__dict__  # replace in place
        return tree.set_environment(self)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _budget().tick()
        _check_binop(operator, left, right)
        return _check_value(super().call_binop(context, operator, left, right))

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Django's order: a mapping's key before an attribute; ``user`` has fields only."""
        _budget().tick()
        if isinstance(obj, UserContext):
            return obj.field(attribute, self.undefined)
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _budget().tick()
        if isinstance(obj, UserContext):
            return obj.field(argument, self.undefined) if isinstance(argument, str) else self.undefined(obj=obj)
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        args = _check_method_call(__obj, args)
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
            args = (counted_loop(args[0]), *args[1:])
        nested = isinstance(__obj, (Macro, LoopContext))
        if nested:
            budget.depth += 1
            if budget.depth > budget.limits.call_depth:
                raise TemplateLimitExceeded(
                    f"macros or loops nested over {budget.limits.call_depth} deep (the recursion limit)"
                )
        try:
            return _check_value(super().call(__context, __obj, *args, **kwargs))
        finally:
            if nested:
                budget.depth -= 1


@lru_cache(maxsize=2)
def _environment(autoescape: bool) -> LimitedSandbox:
    return LimitedSandbox(autoescape)


# ---- the recipient --------------------------------------------------------------------------
class UserContext:
    """``user`` in templates: the recipient's fields and the website's per-user variables, by name
    (``{{ user.first_name }}``, ``{{ user.get_confirmation_link }}``), plus ``name``, the full
    name, as in the original. No method, no mapping API and no other field is reachable, and
    ``{{ user }}`` alone is the name."""

    __slots__ = ("_fields",)

    def __init__(
        self, fields: Mapping[str, Any], user_vars: Mapping[str, Any] | None, names: Iterable[str] | None = None
    ):
        """``names``: only those of ``fields`` (an item's whole dict: one pass, no copy of it)."""
        # built once per recipient: loops and a list, not generators (they cost a third of it)
        merged = {str(key): value for key, value in user_vars.items()} if user_vars else {}
        if names is None:
            names = fields
        get = fields.get
        for key in names:
            value = get(key)
            if value is not None:
                merged[key] = value
        merged["name"] = " ".join([str(merged[p]) for p in ("first_name", "last_name") if merged.get(p)])
        self._fields = merged

    def field(self, name: str, undefined: type = ChainableUndefined) -> Any:
        if name in self._fields:
            return self._fields[name]
        return undefined(obj=self, name=name)

    def __str__(self) -> str:
        return self._fields["name"]

    def __repr__(self) -> str:
        return "<user>"


def shared_context(
    request: Mapping[str, Any], email_host_sender: str, message_vars: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A context's names but ``user``: the custom variables, request and EMAIL_HOST_SENDER, the
    same values for every recipient (the immutable sandbox lets no template change them)."""
    context: dict[str, Any] = dict(message_vars or {})
    context.update(request=request, EMAIL_HOST_SENDER=email_host_sender)
    return context


def build_context(
    user: UserContext,
    request: Mapping[str, Any],
    email_host_sender: str,
    message_vars: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The original's context, new for each recipient: ``user`` and the shared names."""
    context = shared_context(request, email_host_sender, message_vars)
    context["user"] = user
    return context


# ---- compiling and rendering -------------------------------------------------------------------
@dataclass(frozen=True)
class CompiledMessage:
    """A request's subject and body templates, compiled once."""

    subject_template: Any
    body_template: Any
    html: bool
    limits: RenderLimits = DEFAULT_LIMITS

    def bind(self, shared: Mapping[str, Any]) -> CompiledMessage:
        """These templates with the names every recipient shares (``shared_context``) rendered
        once where that changes no output (``DirectTemplate.bind``): to be rendered with
        contexts holding those very values."""
        from dbmail.outgoing.django_templates import DirectTemplate

        with _rendering(self.limits):
            subject, body = (
                template.bind(shared) if isinstance(template, DirectTemplate) else template
                for template in (self.subject_template, self.body_template)
            )
        return replace(self, subject_template=subject, body_template=body)

    def render(self, context: Mapping[str, Any]) -> tuple[str, str]:
        """Subject (one line: CR/LF folded to spaces) and body for one recipient.

        ``TemplateLimitExceeded`` means the request must fail as a whole; any other
        ``TemplateInvalid`` is this recipient's data meeting the template (that email fails)."""
        token = _current.set(_Budget(self.limits))  # _rendering's, without a context manager's cost per recipient
        try:
            subject = self._stream(self.subject_template, context, 0)
            body = self._stream(self.body_template, context, len(subject))
        except TemplateLimitExceeded:
            raise
        except MemoryError as exc:
            raise TemplateLimitExceeded("rendering ran out of memory (the memory limit)") from exc
        except RecursionError as exc:
            raise TemplateLimitExceeded("rendering recursed too deep (the recursion limit)") from exc
        except TemplateError as exc:
            raise TemplateInvalid(f"template error while rendering: {exc}") from exc
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
            raise TemplateInvalid(f"template error while rendering: {type(exc).__name__}: {exc}") from exc
        finally:
            _current.reset(token)
        return " ".join(subject.split()), body

    def _stream(self, template: Any, context: Mapping[str, Any], written: int) -> str:
        """Output gathered piece by piece, so an oversized rendering stops as it grows."""
        parts = []
        for part in template.generate(context):
            written += len(part)
            if written > self.limits.output_chars:
                raise TemplateLimitExceeded(
                    f"rendered email is over {self.limits.output_chars} characters (the output limit)"
                )
            parts.append(part)
        return "".join(parts)


DIALECTS = ("django", "jinja2")


def compile_message(
    subject: str | None, msgtext: str | None, limits: RenderLimits = DEFAULT_LIMITS, dialect: str | None = None
) -> CompiledMessage:
    """Compile both templates; a syntax error names the template and the line.

    ``dialect`` ("django" or "jinja2", the request's ``template_dialect``) wins; without it each
    template's dialect is detected (``django_templates.dialect_of``). A Django template is
    translated to Jinja2 and rendered by the same sandbox, autoescaped by the same rule."""
    from dbmail.outgoing import django_templates  # it imports this module's limits

    if dialect is not None and dialect not in DIALECTS:
        raise TemplateInvalid(f"template_dialect must be 'django' or 'jinja2', not {dialect!r}")
    subject, msgtext = subject or "", msgtext or ""
    html = is_html(msgtext)
    compiled = []
    for label, source, autoescape in (("subject", subject, False), ("body", msgtext, html)):
        if len(source.encode()) > MAX_TEMPLATE_BYTES:
            raise TemplateInvalid(f"{label} template is larger than {MAX_TEMPLATE_BYTES} bytes")
        try:
            if (dialect or django_templates.dialect_of(source)) == "django":
                translation = django_templates.to_jinja(source, name=label, autoescape=autoescape)
                lazy = django_templates.LazyTemplate(
                    partial(_environment(False).from_string, translation.source, globals=translation.globals())
                )
                template = django_templates.DirectTemplate.of(source, autoescape, lazy)
            else:
                template = _environment(autoescape).from_string(source)
            compiled.append(template)
        except TemplateInvalid as exc:
            raise TemplateInvalid(f"{label} template {exc}") from exc
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f" at line {line}" if line else ""
            raise TemplateInvalid(f"{label} template syntax error{where}: {exc}") from exc
        except RecursionError as exc:  # a template nested thousands deep
            raise TemplateInvalid(f"{label} template is nested too deeply to compile") from exc
    return CompiledMessage(subject_template=compiled[0], body_template=compiled[1], html=html, limits=limits)
