"""Template rendering in Jinja2's sandbox: compiled once per request, rendered per recipient."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment

from dbmail.errors import TemplateInvalid

HTML_MARKER = re.compile(r"<html[\s>/]", re.IGNORECASE)
MAX_TEMPLATE_BYTES = 300_000  # request and TextOfEmail items must stay under DynamoDB's 400 KB
MAX_RENDERED_CHARS = 350_000


def is_html(body: str) -> bool:
    """The original's rule: a body containing an <html> tag (with or without attributes)."""
    return bool(HTML_MARKER.search(body))


@lru_cache(maxsize=2)
def _environment(autoescape: bool) -> SandboxedEnvironment:
    # Missing variables render as '' as Django's did; the sandbox blocks attribute tricks.
    return SandboxedEnvironment(autoescape=autoescape, undefined=Undefined, keep_trailing_newline=True)


@dataclass(frozen=True)
class CompiledMessage:
    """A request's subject and body templates, compiled once."""

    subject_template: Any
    body_template: Any
    html: bool

    def render(self, context: Mapping[str, Any]) -> tuple[str, str]:
        """Subject (one line: CR/LF folded to spaces) and body for one recipient."""
        try:
            subject = self.subject_template.render(context)
            body = self.body_template.render(context)
        except TemplateError as exc:
            raise TemplateInvalid(f"template error while rendering: {exc}") from exc
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateInvalid(f"template error while rendering: {type(exc).__name__}: {exc}") from exc
        if len(body) + len(subject) > MAX_RENDERED_CHARS:
            raise TemplateInvalid(f"rendered email is over {MAX_RENDERED_CHARS} characters")
        return " ".join(subject.split()), body


def compile_message(subject: str | None, msgtext: str | None) -> CompiledMessage:
    """Compile both templates; a syntax error names the template and the line."""
    subject, msgtext = subject or "", msgtext or ""
    html = is_html(msgtext)
    compiled = []
    for label, source, autoescape in (("subject", subject, False), ("body", msgtext, html)):
        if len(source.encode()) > MAX_TEMPLATE_BYTES:
            raise TemplateInvalid(f"{label} template is larger than {MAX_TEMPLATE_BYTES} bytes")
        try:
            compiled.append(_environment(autoescape).from_string(source))
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f" at line {line}" if line else ""
            raise TemplateInvalid(f"{label} template syntax error{where}: {exc}") from exc
    return CompiledMessage(subject_template=compiled[0], body_template=compiled[1], html=html)


class UserContext(dict):
    """``user`` in templates: the recipient's fields and the website's per-user variables
    (``{{ user.first_name }}``, ``{{ user.get_confirmation_link }}``)."""

    def __init__(self, fields: Mapping[str, Any], user_vars: Mapping[str, Any] | None):
        merged = dict(user_vars or {})
        merged.update({k: v for k, v in fields.items() if v is not None})
        super().__init__(merged)

    def name(self) -> str:
        return " ".join(p for p in (self.get("first_name"), self.get("last_name")) if p)


def build_context(
    user: UserContext,
    request: Mapping[str, Any],
    email_host_sender: str,
    message_vars: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The original's context: user, request, EMAIL_HOST_SENDER and the custom variables."""
    context: dict[str, Any] = dict(message_vars or {})
    context.update(user=user, request=request, EMAIL_HOST_SENDER=email_host_sender)
    return context
