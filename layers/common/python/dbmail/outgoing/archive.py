"""The public archive: ``GET /email/<request_id>`` shows a request marked ``public`` as a web page,
as the original's ``<site>/email/<id>`` did.

The subject and body are rendered for a neutral placeholder user (PLACEHOLDER_USER), never for a
recipient: no recipient item is read. An HTML body is shown in a sandboxed iframe (no script, no
same-origin, no forms), a text body in ``<pre>``; everything interpolated is escaped. A private
request, an unknown id, and a request that no longer renders all get the same 404 page, so ids
cannot be probed; a malformed id is 400. The pages carry the unsubscribe pages' security headers
(feedback/one_click.py), the email's page with a policy that lets the email's own images and
inline styles show and nothing else.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING

from dbmail.core.errors import RequestInvalid
from dbmail.core.observability import logger
from dbmail.core.settings import Settings
from dbmail.feedback.one_click import SECURITY_HEADERS, Reply, page
from dbmail.outgoing.expand import RECIPIENT_FIELDS, prepare

if TYPE_CHECKING:  # integration type only: the domain never imports PynamoDB
    from dbmail.outgoing.store import Store

REQUEST_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")  # dbmail's are uuid4 hex (docs/schema.md)
PLACEHOLDER_USER = {
    "user_id": None,
    "username": "reader",
    "email": "",
    "first_name": "Reader",
    "last_name": "",
    "guardian_name": "",
    "guardian_email": "",
    "emergency_name": "",
    "emergency_email": "",
}
_STYLE = (
    "body{font:1rem/1.5 system-ui,sans-serif;margin:0;padding:1rem;color:#1a1a1a;background:#fff}"
    "main{max-width:52rem;margin:auto}h1{font-size:1.4rem}"
    "iframe{width:100%;height:80vh;border:1px solid #ccc}pre{white-space:pre-wrap;font:inherit}"
)
# The email's page: its images (https) and inline styles may show; no script, form, frame or base.
ARCHIVE_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; img-src https: data:; style-src 'unsafe-inline'; font-src https: data:; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def not_found() -> Reply:
    """The one page for a private, unknown or unrenderable request."""
    return page(404, "Not found", "There is no public email here.")


def malformed() -> Reply:
    return page(400, "This address is broken", "Archived emails have addresses like /email/&lt;request id&gt;.")


def email_page(subject: str, body: str, is_html: bool) -> Reply:
    """The archive page of one rendered email (``body`` as rendered: HTML or text)."""
    title = html.escape(subject or "(no subject)")
    if is_html:
        shown = (
            f'<iframe sandbox="allow-popups allow-popups-to-escape-sandbox" title="{title}" '
            f'referrerpolicy="no-referrer" srcdoc="{html.escape(body, quote=True)}"></iframe>'
        )
    else:
        shown = f"<pre>{html.escape(body)}</pre>"
    document = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{title}</title><style>{_STYLE}</style></head>'
        f"<body><main><h1>{title}</h1>{shown}</main></body></html>\n"
    )
    return Reply(200, document, headers=dict(ARCHIVE_HEADERS))


@dataclass
class Archive:
    store: Store
    settings: Settings

    def show(self, request_id: str) -> Reply:
        """The page for ``GET /email/<request_id>``."""
        if not REQUEST_ID.fullmatch(request_id or ""):
            return malformed()
        try:
            request = self.store.get_request(request_id)
        except RequestInvalid:
            request = None
        if request is None or not request.public:
            return not_found()
        try:
            prepared = prepare(request, self.settings)
            _, subject, body = prepared.render(
                SimpleNamespace(**{f: PLACEHOLDER_USER[f] for f in RECIPIENT_FIELDS}, vars=None)
            )
        except RequestInvalid as exc:  # a template that fails for the placeholder: not shown
            logger.warning(
                "public request does not render for the archive",
                extra={"request_id": request_id, "error_type": type(exc).__name__, "error": str(exc)},
            )
            return not_found()
        return email_page(subject, body, prepared.compiled.html)
