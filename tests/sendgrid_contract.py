"""SendGrid's documented contract for ``POST /v3/mail/send``, as one pure check.

Tests serve SendGrid's answers with pytest-httpserver and assert that every request the
product made has no problems here. Sources, all under https://www.twilio.com/docs/sendgrid/:
api-reference/mail-send/mail-send (the request body; ``personalizations`` and ``from``
required), api-reference/mail-send/errors (the per-field rules), api-reference/mail-send/limitations
(30 MB, 1000 recipients, custom_args under 10,000 bytes, no ``;`` or ``,`` in recipient names)
and api-reference/how-to-use-the-sendgrid-v3-api/authentication (``Authorization: Bearer``).

Not checked: what needs account state (verified senders, templates, groups, IP pools),
attachments, categories, send_at, substitutions, mail and tracking settings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

PATH = "/v3/mail/send"
MAX_BYTES = 30 * 1024 * 1024  # "less than 30MB", attachments included
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000  # to + cc + bcc over every personalization
MAX_CUSTOM_ARGS_BYTES = 10_000
RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)
TOP_LEVEL = frozenset(
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
PERSONALIZATION = frozenset(
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
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+\.[^\s@<>()\[\],;:\"\\]+")


def v3_mail_send_problems(
    method: str, path: str, headers: Mapping[str, str] | Iterable[tuple[str, str]], body_bytes: bytes
) -> list[str]:
    """Every way this request breaks the documented v3 mail/send contract; [] if none."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    header = {name.lower(): value for name, value in pairs}
    problems = []
    if (method, path) != ("POST", PATH):
        problems.append(f"{method} {path}: only POST {PATH} sends mail")
    scheme, _, key = header.get("authorization", "").partition(" ")
    if scheme != "Bearer" or not key.strip():
        problems.append("Authorization: must be 'Bearer <API key>'")
    if header.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        problems.append("Content-Type: must be application/json")
    if len(body_bytes) >= MAX_BYTES:
        problems.append(f"body: {len(body_bytes)} bytes, must be under 30 MB")
    try:
        body = json.loads(body_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return [*problems, "body: must be UTF-8 JSON"]
    if not isinstance(body, dict):
        return [*problems, "body: must be a JSON object"]
    return problems + _body_problems(body)


def _body_problems(body: dict) -> list[str]:
    problems = [f"{key}: not a v3 mail/send parameter" for key in sorted(set(body) - TOP_LEVEL)]
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not 1 <= len(personalizations) <= MAX_PERSONALIZATIONS:
        problems.append("personalizations: must be a list of 1 to 1000 objects")
        personalizations = []
    recipients = 0
    for i, p in enumerate(personalizations):
        where = f"personalizations[{i}]"
        if not isinstance(p, dict):
            problems.append(f"{where}: must be an object")
            continue
        problems += [f"{where}.{key}: not a personalization parameter" for key in sorted(set(p) - PERSONALIZATION)]
        if not p.get("to"):
            problems.append(f"{where}.to: required, at least one address")
        seen = set()
        for field in ("to", "cc", "bcc"):
            if field not in p:
                continue
            people = p[field]
            if not isinstance(people, list) or not people:
                problems.append(f"{where}.{field}: must be a non-empty list")
                continue
            recipients += len(people)
            for j, person in enumerate(people):
                problems += _person_problems(person, f"{where}.{field}[{j}]", recipient=True)
                address = person.get("email") if isinstance(person, dict) else None
                if isinstance(address, str):
                    if address.lower() in seen:
                        problems.append(f"{where}.{field}[{j}]: address repeated within the personalization")
                    seen.add(address.lower())
        if "subject" in p:
            problems += _text_problems(p["subject"], f"{where}.subject")
        if "headers" in p:
            problems += _headers_problems(p["headers"], f"{where}.headers")
        if "custom_args" in p:
            problems += _custom_args_problems(p["custom_args"], f"{where}.custom_args")
    if recipients > MAX_RECIPIENTS:
        problems.append(f"personalizations: {recipients} recipients, at most 1000 allowed")

    problems += _person_problems(body.get("from"), "from")
    if "reply_to" in body:
        problems += _person_problems(body["reply_to"], "reply_to")
    if "reply_to_list" in body:
        if "reply_to" in body:
            problems.append("reply_to_list: cannot be combined with reply_to")
        people = body["reply_to_list"]
        if not isinstance(people, list) or not people:
            problems.append("reply_to_list: must be a non-empty list")
        else:
            for j, person in enumerate(people):
                problems += _person_problems(person, f"reply_to_list[{j}]")

    templated = "template_id" in body
    if "subject" in body:
        problems += _text_problems(body["subject"], "subject")
    elif not templated and not (personalizations and all("subject" in p for p in personalizations)):
        problems.append("subject: required unless every personalization has one")
    if "content" in body:
        problems += _content_problems(body["content"])
    elif not templated:
        problems.append("content: required unless a template_id is given")
    if "headers" in body:
        problems += _headers_problems(body["headers"], "headers")
    if "custom_args" in body:
        problems += _custom_args_problems(body["custom_args"], "custom_args")
    return problems


def _person_problems(person, where: str, recipient: bool = False) -> list[str]:
    """An email object: {"email": address, "name"?: text}."""
    if not isinstance(person, dict) or "email" not in person:
        return [f"{where}: must be an object with an email"]
    problems = [
        f"{where}.{key}: an email object has only email and name" for key in sorted(set(person) - {"email", "name"})
    ]
    if not isinstance(person["email"], str) or not _ADDRESS.fullmatch(person["email"]):
        problems.append(f"{where}.email: not an email address")
    if "name" in person:
        name = person["name"]
        if not isinstance(name, str):
            problems.append(f"{where}.name: must be a string")
        elif recipient and re.search("[;,]", name) and not (len(name) > 1 and name[0] == name[-1] == '"'):
            problems.append(f"{where}.name: a recipient name may not contain ';' or ','")
    return problems


def _text_problems(value, where: str) -> list[str]:
    return [] if isinstance(value, str) and value else [f"{where}: must be a non-empty string"]


def _content_problems(content) -> list[str]:
    if not isinstance(content, list) or not content:
        return ["content: must be a non-empty list"]
    problems, types = [], []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or set(part) != {"type", "value"}:
            problems.append(f"content[{i}]: must be an object of type and value")
            continue
        problems += _text_problems(part["type"], f"content[{i}].type")
        problems += _text_problems(part["value"], f"content[{i}].value")
        types.append(part["type"])
    first = [t for t in ("text/plain", "text/html") if t in types]
    if types[: len(first)] != first or any(types.count(t) > 1 for t in first):
        problems.append("content: text/plain must come first, then text/html, each at most once")
    return problems


def _headers_problems(headers, where: str) -> list[str]:
    if not isinstance(headers, dict):
        return [f"{where}: must be an object"]
    problems = [f"{where}.{name}: reserved by SendGrid" for name in headers if name.lower() in RESERVED_HEADERS]
    problems += [f"{where}.{name}: value must be a string" for name, v in headers.items() if not isinstance(v, str)]
    return problems


def _custom_args_problems(args, where: str) -> list[str]:
    if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
        return [f"{where}: must be an object of string values"]
    if len(json.dumps(args, ensure_ascii=False).encode()) >= MAX_CUSTOM_ARGS_BYTES:
        return [f"{where}: must be under 10,000 bytes"]
    return []
