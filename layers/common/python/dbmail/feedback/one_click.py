"""One-click unsubscribe over HTTP (RFC 8058): what each request to the unsubscribe function does.

The mail's ``List-Unsubscribe`` link is ``<function URL>/unsubscribe/<token>`` (core/unsubscribe.py):

- ``POST`` with the form body ``List-Unsubscribe=One-Click`` (what a mail client sends for its
  unsubscribe button, urlencoded or multipart) unsubscribes at once: 200, a one-line text body,
  no page, no cookie.
- ``GET`` (a person who clicked the link, or a scanner that fetched it) changes nothing: a small
  page whose button POSTs ``confirm=unsubscribe`` to the same URL, which unsubscribes and answers
  with a confirmation page.
- A malformed token is 400, a forged one 403, an expired one 410, each a page saying so; a body
  over MAX_BODY_BYTES is 413, a POST that is neither form is 400. None of them changes anything.

Unsubscribing adds the token's address to the suppression list (reason and source "unsubscribe",
with the token's user id): the website learns of it from the table's stream (docs/schema.md).
Every page is static HTML with everything interpolated escaped, no script, and headers that keep
it out of caches, frames and referrers.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import hashlib
import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from dbmail.core.clock import utcnow
from dbmail.core.observability import logger
from dbmail.core.unsubscribe import TokenExpired, TokenForged, TokenInvalid, UnsubscribeToken, verify_token

if TYPE_CHECKING:  # integration type only: the domain never imports PynamoDB
    from dbmail.feedback.store import SuppressionStore

MAX_BODY_BYTES = 2048  # RFC 8058's body is 26 bytes; the button's 19
ONE_CLICK = ("List-Unsubscribe", "One-Click")
CONFIRM = ("confirm", "unsubscribe")
REASON = SOURCE = "unsubscribe"

_STYLE = (
    "body{font:1.1rem/1.5 system-ui,sans-serif;margin:0;padding:2rem 1rem;color:#1a1a1a;background:#fff}"
    "main{max-width:32rem;margin:auto}h1{font-size:1.5rem}"
    "button{font:inherit;padding:.6rem 1.4rem;border:2px solid #0b4f9c;border-radius:.3rem;"
    "background:#0b4f9c;color:#fff;cursor:pointer}button:focus{outline:3px solid #f0a000;outline-offset:2px}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Reply:
    """An HTTP response: status, content type, body, and the security headers."""

    status: int
    body: str
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=lambda: dict(SECURITY_HEADERS))


def page(status: int, title: str, *paragraphs: str, form_label: str | None = None) -> Reply:
    """A small accessible page; ``paragraphs`` are HTML already escaped, ``form_label`` adds the button."""
    form = ""
    if form_label is not None:
        name, value = CONFIRM
        form = (
            f'<form method="post" aria-label="{html.escape(form_label)}">'
            f'<input type="hidden" name="{name}" value="{value}">'
            f'<button type="submit">{html.escape(form_label)}</button></form>'
        )
    body = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>'
        f"<body><main><h1>{html.escape(title)}</h1>{''.join(f'<p>{p}</p>' for p in paragraphs)}{form}</main>"
        "</body></html>\n"
    )
    return Reply(status, body)


def refusal(error: TokenInvalid) -> Reply:
    """The page for a token that does not verify: what went wrong and what to do instead."""
    advice = html.escape("To stop this mail, use the unsubscribe link of a recent email, or write to the sender.")
    if isinstance(error, TokenExpired):
        return page(410, "This unsubscribe link has expired", "Nothing was changed.", advice)
    if isinstance(error, TokenForged):
        return page(
            403,
            "This unsubscribe link is not valid",
            "It does not match any link we sent. Nothing was changed.",
            advice,
        )
    return page(400, "This unsubscribe link is broken", "It is incomplete or damaged. Nothing was changed.", advice)


def not_found() -> Reply:
    return page(404, "Not found", "There is nothing here. Unsubscribe links look like /unsubscribe/&lt;token&gt;.")


def _form(body: bytes, content_type: str | None) -> dict[str, list[str]]:
    """The fields of a urlencoded or multipart/form-data body (RFC 8058 allows either); {} otherwise."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        fields: dict[str, list[str]] = {}
        if message.is_multipart():
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if isinstance(name, str):
                    payload = part.get_payload(decode=True) or b""
                    fields.setdefault(name, []).append(payload.decode("utf-8", "replace").strip())
        return fields
    if kind in ("application/x-www-form-urlencoded", ""):
        try:
            return parse_qs(body.decode("ascii"), max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            return {}
    return {}


def _has(fields: dict[str, list[str]], pair: tuple[str, str]) -> bool:
    name, value = pair
    return value in fields.get(name, [])


class OneClickUnsubscribe:
    """The unsubscribe function's two routes: ``show`` (GET) and ``submit`` (POST)."""

    def __init__(self, suppressions: SuppressionStore, secret: str, clock=utcnow) -> None:
        self.suppressions = suppressions
        self.secret = secret
        self.clock = clock

    def _verify(self, token: str) -> UnsubscribeToken:
        return verify_token(self.secret, token, now=self.clock())

    def show(self, token: str) -> Reply:
        """GET: the confirmation page with its button; nothing changes."""
        try:
            verified = self._verify(token)
        except TokenInvalid as error:
            logger.info("unsubscribe link refused", extra={"method": "GET", "reason": str(error)})
            return refusal(error)
        return page(
            200,
            "Unsubscribe",
            f"Stop sending email to <strong>{html.escape(verified.address)}</strong>?",
            form_label="Unsubscribe",
        )

    def submit(self, token: str, body: str | None, *, base64_encoded: bool, content_type: str | None) -> Reply:
        """POST: RFC 8058's one-click (a one-line answer) or the page's button (a page)."""
        raw = self._body(body, base64_encoded)
        if raw is None:
            return page(413, "Request too large", "Nothing was changed.")
        try:
            verified = self._verify(token)
        except TokenInvalid as error:
            logger.info("unsubscribe link refused", extra={"method": "POST", "reason": str(error)})
            return refusal(error)
        fields = _form(raw, content_type)
        if _has(fields, ONE_CLICK):
            self._unsubscribe(verified, "one-click (RFC 8058)")
            return Reply(200, "unsubscribed\n", content_type="text/plain; charset=utf-8")
        if _has(fields, CONFIRM):
            self._unsubscribe(verified, "confirmation page")
            return page(
                200,
                "You are unsubscribed",
                f"No more email will be sent to <strong>{html.escape(verified.address)}</strong>.",
            )
        return page(400, "Nothing to do", "This form was not sent as expected. Nothing was changed.")

    @staticmethod
    def _body(body: str | None, base64_encoded: bool) -> bytes | None:
        """The request body's bytes, or None when it is over MAX_BODY_BYTES (checked before decoding)."""
        text = body or ""
        if len(text) > (MAX_BODY_BYTES * 4 // 3 + 4 if base64_encoded else MAX_BODY_BYTES):
            return None
        if not base64_encoded:
            data = text.encode("utf-8")
        else:
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                return b""  # not a form: answered as one
        return data if len(data) <= MAX_BODY_BYTES else None

    def _unsubscribe(self, verified: UnsubscribeToken, how: str) -> None:
        added = self.suppressions.add(
            verified.address, reason=REASON, source=SOURCE, detail=how, user_id=verified.user_id
        )
        logger.info(
            "unsubscribed" if added else "already unsubscribed",
            extra={"user_id": verified.user_id, "domain": verified.address.rpartition("@")[2], "how": how},
        )
