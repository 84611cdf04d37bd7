"""One recipient's email as it would be sent, before anything is submitted: the comm panel's
preview and test send, and the hints that keep a mail out of spam folders.

The path is the one expansion and sending take: ``expand.prepare`` (templates compiled in the
sandbox, the send-to function, the sender's domain, the special headers), one render for the
recipient, then ``compose`` and ``to_mime`` as the send function does. Nothing is read or
written: the request is the JSON the website would submit (submit_request's fields).

Hints are short sentences for a chapter admin. "Bulk" is more than BULK_RECIPIENTS recipients;
bulk mail lacks an unsubscribe link when its body has none and some of its emails go out
without a List-Unsubscribe header: the send function adds that header (one-click, RFC 8058)
only to emails of recipients with a website account (a user_id), so those without one would
have no way to stop the mail.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

from dbmail.core.compose import OutgoingEmail, compose, to_mime
from dbmail.core.errors import RequestInvalid
from dbmail.core.settings import Settings
from dbmail.outgoing.emails import message_id_for, message_ref_for
from dbmail.outgoing.expand import RECIPIENT_FIELDS, prepare
from dbmail.outgoing.send import verp_address

BULK_RECIPIENTS = 50
GMAIL_CLIP_BYTES = 102 * 1024  # Gmail shows "[Message clipped]" above this
# A text part under SHORT_TEXT_CHARS, and under TEXT_CHARS_PER_IMAGE for each of the HTML's
# images, is a mail of pictures with a caption: what spam filters score as image spam.
SHORT_TEXT_CHARS = 200
TEXT_CHARS_PER_IMAGE = 50
PREVIEW_KEY = "preview"
PLACEHOLDER_REQUEST_ID = "preview"
_UNSUBSCRIBE = re.compile(r"unsubscribe|opt[ -]?out|email preferences|mailing preferences", re.IGNORECASE)
_CREATOR_FIELDS = ("user_id", "username", "email", "first_name", "last_name")


@dataclass(frozen=True)
class Preview:
    """The rendered email of one recipient, its MIME, and the spam-safety hints."""

    subject: str
    send_from: str
    send_to: tuple[str, ...]
    html: str | None
    text: str
    mime: bytes
    hints: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "send_from": self.send_from,
            "send_to": list(self.send_to),
            "html": self.html,
            "text": self.text,
            "eml": self.mime,
            "size": len(self.mime),
            "hints": list(self.hints),
        }


def draft_request(spec: Mapping[str, Any], now: datetime, request_id: str = PLACEHOLDER_REQUEST_ID) -> SimpleNamespace:
    """The request ``prepare`` reads, from submit_request's fields (no table item is made)."""
    creator = spec.get("creator")
    return SimpleNamespace(
        request_id=request_id,
        subject=spec.get("subject"),
        msgtext=spec.get("msgtext"),
        special_headers=spec.get("special_headers"),
        sendto_fn_name=spec.get("sendto_fn_name") or "",
        sender=spec.get("sender"),
        creator=SimpleNamespace(**{k: creator.get(k) for k in _CREATOR_FIELDS}) if creator else None,
        created_at=now,
        sent_by=None,
        public=bool(spec.get("public")),
        priority_level=spec.get("priority_level"),
        recipient_count=None,  # a preview queues nothing: no send lane to choose
        message_vars=dict(spec["var_dict"]) if spec.get("var_dict") else None,
        template_dialect=spec.get("template_dialect"),
    )


def pick_recipient(spec: Mapping[str, Any], index: int | None, user: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``user`` when given, else the request's recipient ``index`` (default the first)."""
    if user is not None:
        if not isinstance(user, Mapping):
            raise RequestInvalid("the user must be a JSON object of recipient fields")
        return user
    recipients = list(spec.get("recipients") or [])
    position = 0 if index is None else index
    if not recipients:
        raise RequestInvalid("the request has no recipients: give a user to preview with")
    if not 0 <= position < len(recipients):
        raise RequestInvalid(
            f"recipient {position} does not exist: the request has {len(recipients)} (0 to {len(recipients) - 1})"
        )
    return recipients[position]


def _recipient(fields: Mapping[str, Any]) -> SimpleNamespace:
    unknown = set(fields) - set(RECIPIENT_FIELDS) - {"vars"}
    if unknown:
        raise RequestInvalid(f"the recipient has unknown fields {sorted(unknown)}")
    return SimpleNamespace(**{f: fields.get(f) for f in RECIPIENT_FIELDS}, vars=fields.get("vars"))


def render_email(
    spec: Mapping[str, Any],
    user: Mapping[str, Any],
    settings: Settings,
    now: datetime,
    *,
    send_to: Sequence[str] | None = None,
    subject_prefix: str = "",
    request_id: str = PLACEHOLDER_REQUEST_ID,
) -> OutgoingEmail:
    """``user``'s email of the request, composed as the send function composes it (without the
    List-Unsubscribe header, whose token only the send function signs). ``send_to`` replaces
    the send-to function's addresses (a test send); ``request_id`` makes its Message-ID."""
    prepared = prepare(draft_request(spec, now, request_id), settings)
    destinations, subject, body = prepared.render(_recipient(user))
    addresses = list(send_to) if send_to is not None else [d.send_to for d in destinations]
    if not addresses:
        raise RequestInvalid(
            f"this recipient has no address for the send-to function {spec.get('sendto_fn_name') or 'send_to_self'!r}: "
            "no email would be sent to them"
        )
    return compose(
        send_from=prepared.send_from,
        send_to=addresses,
        subject=subject_prefix + subject,
        body=body,
        message_id=message_id_for(prepared.request_id, PREVIEW_KEY, prepared.send_from),
        date=now,
        envelope_sender=verp_address(settings.bounces_address, message_ref_for(prepared.request_id, PREVIEW_KEY)),
        special_headers=spec.get("special_headers"),
    )


def preview(
    spec: Mapping[str, Any],
    settings: Settings,
    now: datetime,
    *,
    recipient: int | None = None,
    user: Mapping[str, Any] | None = None,
) -> Preview:
    """Recipient ``recipient`` of the request (or ``user``), rendered, composed and checked."""
    email = render_email(spec, pick_recipient(spec, recipient, user), settings, now)
    mime = to_mime(email)
    return Preview(
        subject=email.subject,
        send_from=str(email.sender),
        send_to=tuple(str(a) for a in email.to),
        html=email.html,
        text=email.text,
        mime=mime,
        hints=tuple(hints(email, len(mime), spec.get("recipients") or [])),
    )


# ---- hints ----------------------------------------------------------------------------------
class _Links(HTMLParser):
    """The HTML's links (a href), images (img src) and visible text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(values["href"].strip())
        elif tag == "img":
            self.images.append((values.get("src") or "").strip())
        elif tag in ("style", "script", "head", "title"):
            self._hidden += 1

    def handle_endtag(self, tag):
        if tag in ("style", "script", "head", "title") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data):
        if not self._hidden:
            self.text.append(data)


def _parse(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    parser.close()
    return parser


def _words(text: str) -> str:
    """The readable words of a text part: markdown link and emphasis marks taken out."""
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return " ".join(re.sub(r"[\[\]*_#>`|-]+", " ", text).split())


def _listed(urls: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(urls[:limit])
    return shown + (f" and {len(urls) - limit} more" if len(urls) > limit else "")


def hints(email: OutgoingEmail, size: int, recipients: Sequence[Mapping[str, Any]]) -> list[str]:
    """The spam-safety hints for one composed email of a request with ``recipients``."""
    found = [f"The email is {size:,} bytes."]
    if size > GMAIL_CLIP_BYTES:
        found.append(
            f"Gmail clips emails over {GMAIL_CLIP_BYTES // 1024} KB: readers will not see the end of this one."
        )
    body = email.html if email.html is not None else email.text
    parsed = _parse(email.html) if email.html is not None else None
    if parsed is not None:
        found.extend(_text_part_hints(email.text, parsed))
        links = parsed.links + [src for src in parsed.images if src]
    else:
        links = re.findall(r"\b(?:https?://|www\.)[^\s<>\"')\]]+", email.text, flags=re.IGNORECASE)
    plain = sorted({u for u in links if u.lower().startswith("http://")})
    if plain:
        found.append(
            f"{len(plain)} link{'s are' if len(plain) > 1 else ' is'} not https ({_listed(plain)}): "
            "spam filters distrust plain http links; use https:// addresses."
        )
    found.extend(_unsubscribe_hints(body, parsed, recipients))
    return found


def _text_part_hints(text: str, parsed: _Links) -> list[str]:
    words, images = _words(text), len(parsed.images)
    if not words:
        if images:
            return [
                "The text part is empty because the HTML is all images: add the message as text too, "
                "or spam filters and text-only readers see nothing."
            ]
        return ["The text part is empty because the HTML has no text: write the message in the HTML's body."]
    found = []
    if len(words) < min(SHORT_TEXT_CHARS, TEXT_CHARS_PER_IMAGE * images):
        found.append(
            f"The text part has only {len(words)} characters beside {images} image{'s' if images > 1 else ''}: "
            "mail that is mostly pictures looks like spam; put the message in words."
        )
    wordless = sorted(set(re.findall(r"\[\]\(([^)\s]*)\)", text)))
    if wordless:
        many = len(wordless) > 1
        found.append(
            f"{len(wordless)} link{'s are pictures' if many else ' is a picture'} with no words ({_listed(wordless)}): "
            f"the text part shows {'them' if many else 'it'} as an empty link; put words in the link too."
        )
    lost = sorted({u for u in parsed.links if not u.lower().startswith("mailto:") and u not in text})
    if lost:
        many = len(lost) > 1
        found.append(
            f"{len(lost)} link{'s' if many else ''} of the HTML {'are' if many else 'is'} missing from the text "
            f"part ({_listed(lost)}): text-only readers cannot follow {'them' if many else 'it'}."
        )
    return found


def _unsubscribe_hints(body: str, parsed: _Links | None, recipients: Sequence[Mapping[str, Any]]) -> list[str]:
    if len(recipients) <= BULK_RECIPIENTS:
        return []
    if parsed is not None:
        has_link = any(_UNSUBSCRIBE.search(u) for u in parsed.links) or bool(_UNSUBSCRIBE.search(" ".join(parsed.text)))
    else:
        has_link = bool(_UNSUBSCRIBE.search(body))
    without_account = sum(1 for r in recipients if isinstance(r, Mapping) and r.get("user_id") is None)
    if has_link or not without_account:
        return []
    return [
        f"This bulk mail ({len(recipients):,} recipients) has no unsubscribe link, and {without_account:,} of its "
        "recipients have no website account, so their emails get no unsubscribe header either: add an "
        "unsubscribe link to the body."
    ]
