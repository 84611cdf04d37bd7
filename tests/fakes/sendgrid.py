"""A fake SendGrid v3 Web API ``POST /v3/mail/send`` endpoint, for tests.

Our rules allow faking SendGrid's HTTP API as long as the fake checks each
request against the documented v3 contract. ``validate_mail_send`` is that
check, a pure function; ``FakeSendGrid`` serves it over HTTP on 127.0.0.1.

Sources (numbers are used in the rule list below)
-------------------------------------------------
[1] v3 Mail Send overview (request body parameters, "Limitations"):
    https://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/index.html
    (source: github.com/sendgrid/docs, content/docs/API_Reference/Web_API_v3/Mail/index.html)
[2] v3 Mail Send errors, "a complete list of the possible parameter level errors":
    https://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html
    https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors
[3] Mail Send operation (OpenAPI; ``personalizations`` and ``from`` required,
    ``Authorization`` header required):
    https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send
[4] Authentication, ``Authorization: Bearer <API key>``:
    https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/authentication
[5] Error body ``{"errors": [{"field": ..., "message": ...}]}``:
    https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/errors
[6] Rate limits (429, X-RateLimit-* headers, "too many requests"):
    https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/rate-limits
[7] X-Message-Id response header on a mail send:
    https://sendgrid.com/docs/glossary/x-message-id/
[8] Real responses quoted in SendGrid's issue trackers:
    401 body ``{"errors":[{"message":"The provided authorization grant is invalid,
    expired, or revoked","field":null,"help":null}]}`` (github.com/sendgrid/sendgrid-php/issues/793);
    field paths such as ``content.1.value`` with help
    ``http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.content.value``
    (github.com/sendgrid/sendgrid-go/issues/266); ``field: "content"`` for the
    ordering error, also raised by repeated ``text/plain`` blocks
    (github.com/sendgrid/sendgrid-go/issues/254, github.com/sendgrid/sendgrid-php/issues/799).
[9] The official Python helper wraps names that contain ``,`` or ``;`` in double
    quotes (github.com/sendgrid/sendgrid-python, sendgrid/helpers/mail/email.py).

Rules enforced
--------------
HTTP level (``FakeSendGrid``):
  H1  Only ``POST /v3/mail/send``; another method on that path gets 405, another path 404.
  H2  ``Authorization: Bearer <api_key>`` with the fake's key, else 401 with the
      body of [8] [3][4]. Checked before anything else.
  H3  Body larger than 30 MB gets 413 ("The total size of your email, including
      attachments, must be less than 30MB") [1][2].
  H4  ``Content-Type`` must be ``application/json`` (parameters allowed), else 415 [2][3].
  H5  Body must be UTF-8, else 415 "Invalid UTF8 in request" [2 "Encoding Errors"].
  H6  Body must be JSON (else 400 "Bad Request") and a JSON object [3].
  H7  Success: 202, empty body, ``X-Message-Id`` header [1][7].
  H8  Every error is ``{"errors": [{"message", "field", "help"}, ...]}`` and a 400
      lists every problem found, not only the first [1 "Validation"][5][8].

Body (``validate_mail_send``); field paths use indices, e.g. ``personalizations.0.to.1.email`` [8]:
  P1  ``personalizations`` required: an array of 1..1000 objects [1][2][3].
  P2  Each personalization has ``to``: a non-empty array of email objects [1][2].
      ``cc``/``bcc``, when present, are non-empty arrays of email objects [2].
  P3  Email object: ``email`` required, a valid-looking address of at most 320
      characters; ``name`` optional string that may not contain ``;`` or ``,``
      unless the name is double-quoted as the official helper sends it [1][2][9].
  P4  At most 1000 recipients (to + cc + bcc) over the whole request [2] ([1] says
      "less than 1000"; the error table [2] says "may never exceed 1000").
  P5  An address may appear only once across to/cc/bcc of one personalization
      (compared case-insensitively) [2].
  F1  ``from`` required: an email object [1][2][3].
  R1  ``reply_to`` optional: an email object; ``reply_to_list`` optional: an array
      of email objects [1][2][3].
  S1  ``subject`` (top level or per personalization), when present, is a string of
      at least one character [2].
  S2  Unless ``template_id`` is given, a top-level ``subject`` or a ``subject`` in
      every personalization is required [2].
  C1  Unless ``template_id`` is given, ``content`` is required; when present it is a
      non-empty array [1][2].
  C2  Each content block has ``type`` (non-empty string without ``;``, ``,``, CR,
      LF) and ``value`` (non-empty string) [1][2].
  C3  ``text/plain``, if present, is first, then ``text/html``, then the rest [1][2][8].
      A repeated text/plain or text/html also gets this error, as SendGrid does [8].
  C4  Fake-only extension of C3: any other content type may appear only once.
  D1  ``headers`` (top level or per personalization): an object whose keys are
      printable ASCII without spaces, whose values are strings, with no key twice
      (case-insensitively) and no reserved key: x-sg-id, x-sg-eid, received,
      dkim-signature, Content-Type, Content-Transfer-Encoding, To, From, Subject,
      Reply-To, CC, BCC (case-insensitively) [1][2].
  A1  ``custom_args`` (top level or per personalization): a non-empty object of
      string values; merged top-level + personalization args at most 10,000 bytes [1][2].
  K1  ``categories``: an array of at most 10 unique ASCII strings of at most 255
      characters [1][2].
  T1  ``send_at`` (top level or per personalization): an integer Unix timestamp,
      not more than 72 hours ahead [1][2].
  M1  ``attachments``: an array of objects with non-empty base64 ``content``,
      non-empty ``filename``, optional ``type`` and ``disposition`` of
      ``inline``/``attachment`` [1][2].
  M2  ``substitutions`` and ``sections`` are objects of string values; ``template_id``,
      ``batch_id`` and ``ip_pool_name`` are strings; ``asm``, ``mail_settings``,
      ``tracking_settings`` and ``dynamic_template_data`` are objects [1][2][3].
  U1  Fake-only strictness: keys not in the documented request body [1][3] are
      rejected, so that a typo such as ``reply-to`` fails loudly in tests.

Not checked: anything needing account state (verified senders, template, ASM
group or IP pool existence), gzip ``Content-Encoding``, the 10,000 substitutions
per request limit, and the contents of ``mail_settings``/``tracking_settings``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MAIL_SEND_PATH = "/v3/mail/send"
MAX_BODY_BYTES = 30 * 1024 * 1024
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_EMAIL_LENGTH = 320
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_SCHEDULE_AHEAD_SECONDS = 72 * 3600
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "Content-Type",
        "Content-Transfer-Encoding",
        "To",
        "From",
        "Subject",
        "Reply-To",
        "CC",
        "BCC",
    )
)
TOP_LEVEL_KEYS = frozenset(
    {
        "personalizations",
        "from",
        "reply_to",
        "reply_to_list",
        "subject",
        "content",
        "attachments",
        "template_id",
        "sections",
        "headers",
        "categories",
        "custom_args",
        "send_at",
        "batch_id",
        "asm",
        "ip_pool_name",
        "mail_settings",
        "tracking_settings",
    }
)
PERSONALIZATION_KEYS = frozenset(
    {
        "to",
        "cc",
        "bcc",
        "from",
        "subject",
        "headers",
        "substitutions",
        "dynamic_template_data",
        "custom_args",
        "send_at",
    }
)
HELP_URL = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message."
AUTH_ERROR_MESSAGE = "The provided authorization grant is invalid, expired, or revoked"
CONTENT_ORDER_MESSAGE = (
    "Following RFC 1341, section 7.2, if either text/html or text/plain are to be sent "
    "in your email: text/plain needs to be first, followed by text/html, followed by "
    "any other content."
)

# Valid-looking, not RFC 5322 complete: local@label(.label)+ with no spaces or specials.
_EMAIL_RE = re.compile(
    r"[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
_HEADER_KEY_RE = re.compile(r"[!-9;-~]+")  # printable ASCII except ':' (RFC 5322 ftext)


def error(field: str | None, message: str) -> dict:
    """One SendGrid error object; ``help`` points at the error table anchor [8]."""
    if field is None:
        return {"message": message, "field": None, "help": None}
    anchor = ".".join(part for part in field.split(".") if not part.isdigit())
    return {"message": message, "field": field, "help": HELP_URL + anchor}


def validate_mail_send(body: Any, *, now: float | None = None) -> list[dict]:
    """Check a decoded ``/v3/mail/send`` body; return every error found (empty = valid)."""
    if not isinstance(body, dict):
        return [error(None, "The request body must be a JSON object.")]
    now = time.time() if now is None else now
    errors: list[dict] = []
    has_template = "template_id" in body

    for key in sorted(set(body) - TOP_LEVEL_KEYS):  # U1
        errors.append(error(key, f"Unknown parameter {key!r}."))

    personalizations = _check_personalizations(body, errors, now)

    if "from" not in body:  # F1
        errors.append(error("from", "The from object must be provided for every email send."))
    else:
        _check_email(body["from"], "from", errors)
    if "reply_to" in body:  # R1
        _check_email(body["reply_to"], "reply_to", errors)
    if "reply_to_list" in body:
        _check_email_list(body["reply_to_list"], "reply_to_list", errors)

    if "subject" in body:  # S1
        _check_subject(body["subject"], "subject", errors)
    elif not has_template and not all("subject" in p for p in personalizations):  # S2
        errors.append(
            error(
                "subject",
                "The subject is required. You can get around this "
                "requirement if you use a template with a subject defined or "
                "if every personalization has a subject defined.",
            )
        )

    if "content" in body:
        _check_content(body["content"], errors)
    elif not has_template:  # C1
        errors.append(
            error(
                "content",
                "The content param is required unless you are using "
                "a transactional template and have defined a template_id.",
            )
        )

    if "attachments" in body:
        _check_attachments(body["attachments"], errors)
    if "headers" in body:
        _check_headers(body["headers"], "headers", errors)
    if "custom_args" in body:
        _check_string_map(body["custom_args"], "custom_args", errors, non_empty=True)
    for i, p in enumerate(personalizations):  # A1: merged size per personalization
        merged = {**_as_dict(body.get("custom_args")), **_as_dict(p.get("custom_args"))}
        if len(json.dumps(merged, ensure_ascii=False).encode()) > MAX_CUSTOM_ARGS_BYTES:
            errors.append(
                error(
                    f"personalizations.{i}.custom_args",
                    "The combined size of both global and personalization custom "
                    "arguments may not exceed 10,000 bytes per personalization.",
                )
            )
    if "categories" in body:
        _check_categories(body["categories"], errors)
    if "send_at" in body:
        _check_send_at(body["send_at"], "send_at", errors, now)
    if "sections" in body:
        _check_string_map(body["sections"], "sections", errors)
    for key in ("template_id", "batch_id", "ip_pool_name"):  # M2
        if key in body and not isinstance(body[key], str):
            errors.append(error(key, f"The {key} must be a string."))
    for key in ("asm", "mail_settings", "tracking_settings"):
        if key in body and not isinstance(body[key], dict):
            errors.append(error(key, f"The {key} parameter must be an object."))
    return errors


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _check_personalizations(body: dict, errors: list[dict], now: float) -> list[dict]:
    """P1-P5 plus the per-personalization S1/D1/A1/T1/M2 checks; returns the valid objects."""
    value = body.get("personalizations")
    if "personalizations" not in body or value == []:
        errors.append(error("personalizations", "You must have at least one personalization."))
        return []
    if not isinstance(value, list):
        errors.append(error("personalizations", "The personalizations parameter must be an array."))
        return []
    if len(value) > MAX_PERSONALIZATIONS:
        errors.append(
            error(
                "personalizations",
                "The personalization block is limited to 1000 "
                f"personalizations per API request. You have provided {len(value)} "
                "personalizations.",
            )
        )
    recipients = 0
    objects = []
    for i, p in enumerate(value):
        path = f"personalizations.{i}"
        if not isinstance(p, dict):
            errors.append(error(path, "Each personalization must be an object."))
            continue
        objects.append(p)
        for key in sorted(set(p) - PERSONALIZATION_KEYS):  # U1
            errors.append(error(f"{path}.{key}", f"Unknown parameter {key!r}."))
        if "to" not in p:
            errors.append(error(f"{path}.to", "The to parameter is required for all personalization objects."))
        seen: set[str] = set()
        for kind in ("to", "cc", "bcc"):
            if kind not in p:
                continue
            addresses = _check_email_list(p[kind], f"{path}.{kind}", errors)
            recipients += len(p[kind]) if isinstance(p[kind], list) else 0
            for j, address in addresses:  # P5
                if address.lower() in seen:
                    errors.append(
                        error(
                            f"{path}.{kind}.{j}.email",
                            "Each unique email address "
                            "in the personalization block should only be included "
                            f"once. You have included {address} more than once.",
                        )
                    )
                seen.add(address.lower())
        if "from" in p:
            _check_email(p["from"], f"{path}.from", errors)
        if "subject" in p:
            _check_subject(p["subject"], f"{path}.subject", errors)
        if "headers" in p:
            _check_headers(p["headers"], f"{path}.headers", errors)
        if "custom_args" in p:
            _check_string_map(p["custom_args"], f"{path}.custom_args", errors, non_empty=True)
        if "substitutions" in p:
            _check_string_map(p["substitutions"], f"{path}.substitutions", errors)
        if "dynamic_template_data" in p and not isinstance(p["dynamic_template_data"], dict):
            errors.append(
                error(f"{path}.dynamic_template_data", "The dynamic_template_data parameter must be an object.")
            )
        if "send_at" in p:
            _check_send_at(p["send_at"], f"{path}.send_at", errors, now)
    if recipients > MAX_RECIPIENTS:  # P4
        errors.append(
            error("personalizations", "There is a limit of 1000 total recipients (to + cc + bcc) per request.")
        )
    return objects


def _check_email_list(value: Any, path: str, errors: list[dict]) -> list[tuple[int, str]]:
    """A non-empty array of email objects; returns (index, address) of the valid ones."""
    if not isinstance(value, list) or not value:
        errors.append(
            error(
                path,
                f"The {path.rsplit('.', 1)[-1]} array must contain at least "
                "one recipient object with an email parameter.",
            )
        )
        return []
    found = []
    for j, item in enumerate(value):
        address = _check_email(item, f"{path}.{j}", errors)
        if address is not None:
            found.append((j, address))
    return found


def _check_email(value: Any, path: str, errors: list[dict]) -> str | None:
    """P3: ``{"email": ..., "name"?: ...}``; returns the address when it is valid."""
    if not isinstance(value, dict):
        errors.append(
            error(
                path,
                "Each recipient must be an object that has at least an email "
                'address and may also contain a name, e.g. {"email": '
                '"example@example.com", "name": "Example Recipient"}.',
            )
        )
        return None
    for key in sorted(set(value) - {"email", "name"}):  # U1
        errors.append(error(f"{path}.{key}", f"Unknown parameter {key!r}."))
    valid = True
    if "name" in value:
        name = value["name"]
        if not isinstance(name, str):
            errors.append(error(f"{path}.name", "The name must be a string."))
            valid = False
        elif (";" in name or "," in name) and not (len(name) >= 2 and name.startswith('"') and name.endswith('"')):
            errors.append(error(f"{path}.name", "The name may not contain ';' or ',' unless it is double-quoted."))
            valid = False
    address = value.get("email")
    if not isinstance(address, str) or not _EMAIL_RE.fullmatch(address):
        errors.append(error(f"{path}.email", "Does not contain a valid address."))
        return None
    if len(address) > MAX_EMAIL_LENGTH:
        errors.append(error(f"{path}.email", "The email exceeds the maximum total length of 320 characters."))
        return None
    return address if valid else None


def _check_subject(value: Any, path: str, errors: list[dict]) -> None:
    if not isinstance(value, str) or not value:
        errors.append(error(path, "The subject of your email must be a string at least one character in length."))


def _check_content(value: Any, errors: list[dict]) -> None:
    """C1-C4."""
    if not isinstance(value, list) or not value:
        errors.append(error("content", "There must be at least one defined content block."))
        return
    types: list[str | None] = []
    for i, block in enumerate(value):
        path = f"content.{i}"
        if not isinstance(block, dict):
            errors.append(error(path, "Each content block must be an object with type and value."))
            types.append(None)
            continue
        for key in sorted(set(block) - {"type", "value"}):  # U1
            errors.append(error(f"{path}.{key}", f"Unknown parameter {key!r}."))
        kind = block.get("type")
        if not isinstance(kind, str) or not kind:
            errors.append(
                error(f"{path}.type", "Your content type must be a string with length of at least one character.")
            )
            kind = None
        elif any(ch in kind for ch in ";,\r\n"):
            errors.append(error(f"{path}.type", "Cannot contain ';', ',' or CRLF characters."))
        types.append(kind.lower() if kind else None)
        if not isinstance(block.get("value"), str) or not block.get("value"):
            errors.append(
                error(f"{path}.value", "The content value must be a string at least one character in length.")
            )
    ordered = ("text/plain", "text/html")
    for i, kind in enumerate(types):  # C4
        if kind is not None and kind not in ordered and kind in types[:i]:
            errors.append(error(f"content.{i}.type", f"The content type {kind} may only be included once."))
    if None in types:  # a block without a usable type: its place is unknown
        return
    expected = [t for t in ordered if t in types]
    if types[: len(expected)] != expected or any(  # C3
        types.count(t) > 1 for t in expected
    ):
        errors.append(error("content", CONTENT_ORDER_MESSAGE))


def _check_headers(value: Any, path: str, errors: list[dict]) -> None:
    """D1."""
    if not isinstance(value, dict):
        errors.append(error(path, "The headers parameter must be an object."))
        return
    seen: set[str] = set()
    for key, header_value in value.items():
        if not _HEADER_KEY_RE.fullmatch(key):
            errors.append(error(path, f"Header keys cannot contain non-ASCII characters or empty spaces: {key!r}."))
        elif key.lower() in RESERVED_HEADERS:
            errors.append(error(path, f"Header can not be one of the reserved keys: {key!r}."))
        elif key.lower() in seen:
            errors.append(error(path, f"The headers cannot contain duplicate keys: {key!r}."))
        seen.add(key.lower())
        if not isinstance(header_value, str):
            errors.append(error(path, f"The header values must be strings: {key!r}."))


def _check_string_map(value: Any, path: str, errors: list[dict], *, non_empty: bool = False) -> None:
    """A1 / M2: an object whose values are all strings."""
    name = path.rsplit(".", 1)[-1]
    if not isinstance(value, dict):
        errors.append(error(path, f"The {name} parameter must be an object."))
    elif non_empty and not value:
        errors.append(error(path, f"{name} cannot be empty."))
    elif not all(isinstance(v, str) for v in value.values()):
        errors.append(error(path, f"All values of the {name} object must be strings."))


def _check_categories(value: Any, errors: list[dict]) -> None:
    """K1."""
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        errors.append(error("categories", "Categories must be an array of strings."))
        return
    if len(value) > MAX_CATEGORIES:
        errors.append(
            error(
                "categories",
                f"There is a limit of 10 categories for each email that is sent. You provided {len(value)} categories.",
            )
        )
    for i, category in enumerate(value):
        if len(category) > MAX_CATEGORY_LENGTH:
            errors.append(error(f"categories.{i}", "Each category must not be longer than 255 characters."))
        if not category.isascii():
            errors.append(error(f"categories.{i}", "Categories can not contain non-ASCII characters."))
        if category in value[:i]:
            errors.append(
                error(
                    f"categories.{i}",
                    f"The categories must be a unique list, and you have included {category} more than once.",
                )
            )


def _check_send_at(value: Any, path: str, errors: list[dict], now: float) -> None:
    """T1."""
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(error(path, "The send_at parameter is expecting a Unix timestamp as an integer."))
    elif value > now + MAX_SCHEDULE_AHEAD_SECONDS:
        errors.append(error(path, "Scheduling more than 72 hours in advance is forbidden."))


def _check_attachments(value: Any, errors: list[dict]) -> None:
    """M1."""
    if not isinstance(value, list):
        errors.append(error("attachments", "The attachments parameter must be an array."))
        return
    for i, item in enumerate(value):
        path = f"attachments.{i}"
        if not isinstance(item, dict):
            errors.append(error(path, "Each attachment must be an object."))
            continue
        content = item.get("content")
        if not isinstance(content, str) or not content:
            errors.append(
                error(f"{path}.content", "The attachment content must be a string at least one character in length.")
            )
        else:
            try:
                base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                errors.append(error(f"{path}.content", "The attachment content must be base64 encoded."))
        filename = item.get("filename")
        if not isinstance(filename, str) or not filename:
            errors.append(error(f"{path}.filename", "filename is required."))
        if "type" in item and (
            not isinstance(item["type"], str) or not item["type"] or any(ch in item["type"] for ch in ";\r\n")
        ):
            errors.append(
                error(
                    f"{path}.type",
                    "The attachment type must be a string and at least "
                    "one character in length, without ';' or CRLF characters.",
                )
            )
        if item.get("disposition", "attachment") not in ("attachment", "inline"):
            errors.append(
                error(
                    f"{path}.disposition", 'The disposition of your attachment can be either "inline" or "attachment".'
                )
            )


class FakeSendGrid:
    """An HTTP server on 127.0.0.1 that answers ``POST {url}/v3/mail/send`` like SendGrid.

    Use as ``with FakeSendGrid() as sg: ...`` or ``sg = FakeSendGrid().start()`` then
    ``sg.stop()``. Point the client at ``sg.url`` with the key ``sg.api_key``.
    """

    def __init__(self, api_key: str = "SG.fake-key.for-tests", *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self._lock = threading.Lock()
        self._accepted: list[dict] = []
        self._message_ids: list[str] = []
        self._rejected: list[tuple[int, list[dict]]] = []
        self._failures: list[tuple[int, int | None]] = []
        self._request_count = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> FakeSendGrid:
        if self._server is not None:
            raise RuntimeError("FakeSendGrid is already running")
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="FakeSendGrid", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeSendGrid:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL; the client posts to ``f"{url}/v3/mail/send"``."""
        if self._server is None:
            raise RuntimeError("FakeSendGrid is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- what happened (copies, safe to read while requests are in flight) ----------
    @property
    def accepted(self) -> list[dict]:
        """Decoded JSON bodies answered with 202, in arrival order."""
        with self._lock:
            return list(self._accepted)

    @property
    def message_ids(self) -> list[str]:
        """The X-Message-Id given to each accepted body, aligned with ``accepted``."""
        with self._lock:
            return list(self._message_ids)

    @property
    def rejected(self) -> list[tuple[int, list[dict]]]:
        """``(status, errors)`` for every non-202 answer to a mail send."""
        with self._lock:
            return list(self._rejected)

    @property
    def request_count(self) -> int:
        """Requests that reached ``/v3/mail/send``, whatever the answer."""
        with self._lock:
            return self._request_count

    # -- control ------------------------------------------------------------------
    def fail_next(self, count: int = 1, status: int = 500, *, retry_after: int | None = None) -> None:
        """Answer the next ``count`` authorized mail sends with ``status`` instead.

        A 429 carries the X-RateLimit-* headers of [6]; ``retry_after`` (seconds) adds a
        ``Retry-After`` header to any status. Injected failures are used in order.
        """
        if not 400 <= status <= 599:
            raise ValueError("fail_next needs an error status (4xx or 5xx)")
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def reset(self) -> None:
        """Forget recorded requests and pending injected failures."""
        with self._lock:
            self._accepted.clear()
            self._message_ids.clear()
            self._rejected.clear()
            self._failures.clear()
            self._request_count = 0

    # -- request handling (called on server threads) ---------------------------------
    def _handle_mail_send(self, request: _Handler, raw: bytes) -> None:
        with self._lock:
            self._request_count += 1
        if not self._authorized(request.headers.get("Authorization")):  # H2
            return self._reject(request, 401, [error(None, AUTH_ERROR_MESSAGE)])
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            status, retry_after = failure
            headers = {}
            if status == 429:
                reset_at = int(time.time() + (retry_after or 1))
                headers = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset_at)}
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
            try:
                message = HTTPStatus(status).phrase.lower()  # e.g. "too many requests" [6]
            except ValueError:
                message = "error"
            return self._reject(request, status, [error(None, message)], headers)
        if len(raw) > self.max_body_bytes:  # H3
            return self._reject(
                request,
                413,
                [error(None, "The total size of your email, including attachments, must be less than 30MB.")],
            )
        media_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":  # H4
            return self._reject(request, 415, [error(None, "Content-Type should be application/json.")])
        try:
            text = raw.decode("utf-8")  # H5
        except UnicodeDecodeError:
            return self._reject(request, 415, [error(None, "Invalid UTF8 in request")])
        try:
            body = json.loads(text)  # H6
        except ValueError:
            return self._reject(request, 400, [error(None, "Bad Request")])
        errors = validate_mail_send(body)
        if errors:  # H8
            return self._reject(request, 400, errors)
        message_id = secrets.token_urlsafe(16)
        with self._lock:
            self._accepted.append(body)
            self._message_ids.append(message_id)
        request.respond(202, b"", {"X-Message-Id": message_id})  # H7

    def _authorized(self, header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key.encode())

    def _reject(
        self, request: _Handler, status: int, errors: list[dict], headers: dict[str, str] | None = None
    ) -> None:
        with self._lock:
            self._rejected.append((status, errors))
        request.respond_json(status, {"errors": errors}, headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeSendGrid/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_POST(self) -> None:
        raw = self._read_body()
        if urlsplit(self.path).path != MAIL_SEND_PATH:
            return self.respond_json(404, {"errors": [error(None, "not found")]})
        self.server.fake._handle_mail_send(self, raw)  # type: ignore[attr-defined]

    def _not_allowed(self) -> None:  # H1
        self._read_body()
        if urlsplit(self.path).path == MAIL_SEND_PATH:
            self.respond_json(405, {"errors": [error(None, "method not allowed")]}, {"Allow": "POST"})
        else:
            self.respond_json(404, {"errors": [error(None, "not found")]})

    do_GET = do_PUT = do_PATCH = do_DELETE = _not_allowed

    def respond(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def respond_json(self, status: int, document: dict, headers: dict[str, str] | None = None) -> None:
        self.respond(status, json.dumps(document).encode(), {"Content-Type": "application/json", **(headers or {})})
