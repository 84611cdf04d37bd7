"""Outgoing mail from a shell: submit a request file, a request's status, render an email again,
redrive the send dead-letter queue, resend failed emails."""

from __future__ import annotations

import argparse
import inspect
import json
import os
from collections.abc import Callable
from typing import Any

from dbmail.cli.errors import EXIT_OK, BadInput, reach_dynamodb, reach_sqs
from dbmail.cli.files import expect, is_int, kind, read_json

# --- the request file: checked field by field, so that an error names the field ----------------


def _string(name: str, value: Any, *, optional: bool = True) -> None:
    expect(
        name,
        value,
        isinstance(value, str) or (optional and value is None),
        "a string or null" if optional else "a string",
    )


def _integer(name: str, value: Any) -> None:
    expect(name, value, value is None or is_int(value), "an integer or null")


def _object(name: str, value: Any) -> None:
    expect(name, value, value is None or isinstance(value, dict), "an object or null")


def _datetime(name: str, value: Any) -> None:
    from dbmail.core.clock import parse_datetime

    _string(name, value)
    if value is not None:
        try:
            parse_datetime(value)
        except ValueError:
            raise BadInput(f"{name}: {value!r} is not an ISO 8601 date-time") from None


def _person(name: str, value: Any, string_fields: tuple[str, ...]) -> None:
    """A recipient or the creator: an object whose user_id is an integer (or absent) and names strings."""
    expect(name, value, isinstance(value, dict), "an object")
    _integer(f"{name}.user_id", value.get("user_id"))
    for field in string_fields:
        _string(f"{name}.{field}", value.get(field))


def _recipients(name: str, value: Any) -> None:
    from dbmail.outgoing.expand import RECIPIENT_FIELDS

    expect(name, value, isinstance(value, list), "a list of objects")
    names = tuple(field for field in RECIPIENT_FIELDS if field != "user_id")
    for index, recipient in enumerate(value):
        _person(f"{name}[{index}]", recipient, names)
        _object(f"{name}[{index}].vars", recipient.get("vars"))


def _creator(name: str, value: Any) -> None:
    if value is not None:
        _person(name, value, ("username", "email", "first_name", "last_name"))


def _headers(name: str, value: Any) -> None:
    _object(name, value)
    for header, header_value in (value or {}).items():
        _string(f"{name}[{header!r}]", header_value, optional=False)


def _boolean(name: str, value: Any) -> None:
    expect(name, value, isinstance(value, bool), "true or false")


REQUEST_FIELD_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "subject": lambda name, value: _string(name, value, optional=False),
    "msgtext": lambda name, value: _string(name, value, optional=False),
    "recipients": _recipients,
    "sendto_fn_name": _string,
    "sender": _string,
    "creator": _creator,
    "var_dict": _object,
    "special_headers": _headers,
    "processed_by": _datetime,
    "public": _boolean,
    "priority_level": _integer,
    "sent_by": _datetime,
}


def _request_fields() -> dict[str, bool]:
    """submit_request's fields (its non-keyword-only parameters), each with whether it is required."""
    from dbmail.client import submit_request

    return {
        name: param.default is inspect.Parameter.empty
        for name, param in inspect.signature(submit_request).parameters.items()
        if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    }


def check_request_spec(spec: Any) -> dict[str, Any]:
    """A request file's content, checked field by field so that an error names the field.
    What only the stack can judge (templates, send-to function, sender domain, headers,
    addresses) is left to submit_request, which raises a RequestInvalid subclass."""
    if not isinstance(spec, dict):
        raise BadInput(f"request file must be a JSON object of submit_request's fields, not {kind(spec)}")
    fields = _request_fields()
    unknown = sorted(set(spec) - set(fields))
    if unknown:
        raise BadInput(f"request file has unknown fields {unknown} (known: {', '.join(fields)})")
    missing = [name for name, required in fields.items() if required and name not in spec]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise BadInput(f"request file lacks the required field{plural} " + ", ".join(map(repr, missing)))
    for name, value in spec.items():
        check = REQUEST_FIELD_CHECKS.get(name)
        if check:
            check(name, value)
    return spec


# --- the commands --------------------------------------------------------------------------------


def _submit(args) -> int:
    spec = check_request_spec(read_json(args.file))
    reach_dynamodb()

    from dbmail.client import submit_request

    print(submit_request(**spec))
    return EXIT_OK


def _status(args) -> int:
    from dbmail.client import request_status

    reach_dynamodb()
    print(json.dumps(request_status(args.request_id), indent=2))
    return EXIT_OK


def _render(args) -> int:
    from dbmail.client import render_again

    reach_dynamodb()
    print(json.dumps(render_again(args.request_id, args.email_key), indent=2, ensure_ascii=False))
    return EXIT_OK


def _redrive(args) -> int:
    import boto3

    from dbmail.core.settings import website_settings
    from dbmail.outgoing.queue import redrive

    settings = website_settings()
    reach_sqs()
    dead_letter_url = args.dlq_url or os.environ.get("DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL")
    if not dead_letter_url:
        raise BadInput("give --dlq-url (the stack output SendDeadLetterQueueUrl)")
    sqs = boto3.session.Session().client("sqs", region_name=settings.region)
    print(f"{redrive(sqs, dead_letter_url, settings.send_queue_url)} messages moved back to the send queue")
    return EXIT_OK


def _resend(args) -> int:
    from dbmail import wiring
    from dbmail.core.clock import utcnow
    from dbmail.core.settings import website_settings
    from dbmail.outgoing.resend import resend

    reach_dynamodb()
    expander = wiring.expander(website_settings())
    count = resend(expander.store, expander.queue, args.request_id, utcnow(), statuses=args.status)
    print(f"{count} emails of request {args.request_id} queued again")
    return EXIT_OK


# --- their arguments -----------------------------------------------------------------------------


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Requests and their emails; ``command(name, run, summary)`` adds a subcommand (see build_parser)."""
    submit = command("submit", _submit, "validate and submit a MessageRequest from a JSON file")
    submit.add_argument(
        "file",
        help="a JSON object of submit_request's fields: subject, msgtext and recipients "
        "(required), sendto_fn_name, sender, creator, var_dict, special_headers, "
        "processed_by, public, priority_level, sent_by (see examples/request.json, "
        "docs/schema.md); prints the new request's id",
    )
    status = command("status", _status, "a request's state and counts")
    status.add_argument("request_id", help="the id `dbmail submit` (or submit_request) returned")
    render = command("render", _render, "render a (sent) email again from its request")
    render.add_argument("request_id", help="the request the email belongs to")
    render.add_argument("email_key", help="the email's key within the request (its TextOfEmail sort key)")
    again = command("redrive", _redrive, "move failed emails from the send DLQ back to the send queue")
    again.add_argument(
        "--dlq-url",
        help="the send dead-letter queue's URL (stack output SendDeadLetterQueueUrl); "
        "default: the local stack's, DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL",
    )
    resend = command(
        "resend",
        _resend,
        "queue a request's failed emails again once the cause is fixed (each once, with its Message-ID)",
    )
    resend.add_argument("request_id", help="the request whose emails to send again")
    resend.add_argument(
        "--status",
        action="append",
        choices=["failed"],
        default=None,
        help="which emails (default: failed); may be given more than once",
    )
