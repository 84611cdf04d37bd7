"""Outgoing mail from a shell: submit a request file, a request's status (once, or live with
--watch), who did not get its mail and why, render an email again, redrive the send dead-letter
queue, resend failed emails."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

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
    "template_dialect": _string,
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


# --- a request's progress --------------------------------------------------------------------

BAR_WIDTH = 30


def status_counts(status: Mapping[str, Any]) -> dict[str, int]:
    """Every email status, in the order an email moves through them, with its count (0 included)."""
    from dbmail.core.statuses import EmailStatus

    counts = status["emails_by_status"]
    return {str(s): int(counts.get(s, 0)) for s in EmailStatus} | {
        name: int(count) for name, count in counts.items() if name not in set(EmailStatus)
    }


def _total(status: Mapping[str, Any]) -> int:
    """Emails the request has, or will have once expanded (the expansion's count, when larger)."""
    return max(status["reconciliation"]["emails"], status["emails"] + status["render_failed"])


def is_finished(status: Mapping[str, Any]) -> bool:
    """The request is final and so is every one of its emails."""
    from dbmail.core.statuses import RequestStatus

    return status["status"] in RequestStatus.FINAL and status["reconciliation"]["outstanding"] == 0


def progress_line(status: Mapping[str, Any]) -> str:
    """``[#######-----]  341/1003 final  queued 600 processing 62 sent 300 ...`` (counts that are not 0)."""
    total, final = _total(status), status["reconciliation"]["final"]
    filled = BAR_WIDTH if total and final >= total else (BAR_WIDTH * final // total if total else 0)
    counts = "  ".join(f"{name} {count}" for name, count in status_counts(status).items() if count)
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {final}/{total} final  {status['status']}  {counts}".rstrip()


def status_text(status: Mapping[str, Any]) -> str:
    """The request's state, every status's count, the reconciliation and what is stuck, for a person."""
    reconciled = status["reconciliation"]
    lines = [
        f"request {status['request_id']}: {status['status']}" + (f" ({status['error']})" if status["error"] else ""),
        f"created {status['created_at']}"
        + (f", processed {status['processed_at']}" if status["processed_at"] else "")
        + (f", scheduled for {status['processed_by']}" if status["processed_by"] else ""),
        f"recipients {status['recipients']}, emails {status['emails']} (skipped, no address: "
        f"{status['skipped_no_address']}; render failed: {status['render_failed']}; resent: {status['resent']})",
        "",
    ]
    counts = status_counts(status)
    width = max(map(len, counts))
    lines += [f"  {name:<{width}}  {count:>7}" for name, count in counts.items()]
    lines += [
        f"  {'final':<{width}}  {reconciled['final']:>7} of {_total(status)}",
        "",
        "reconciliation: "
        + ", ".join(
            [
                "balanced" if reconciled["balanced"] else "NOT BALANCED (emails missing or in an unknown state)",
                f"{reconciled['outstanding']} outstanding",
                "settled" if reconciled["settled"] else "not settled",
                "failure report sent" if reconciled["failure_report_sent"] else "no failure report sent",
            ]
        ),
    ]
    missed = sum(counts[name] for name in ("bounced", "complained", "suppressed", "failed", "expired"))
    if missed:
        lines.append(f"did not get the mail: {missed} (dbmail failures {status['request_id']})")
    lines += [f"stuck: {sentence}" for sentence in status["stuck"]]
    return "\n".join(lines)


def watch(
    read_status: Callable[[], Mapping[str, Any]],
    out: TextIO,
    interval: float,
    *,
    tty: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> Mapping[str, Any]:
    """Show the progress line until the request and all its emails are final; returns the last
    status. On a terminal the line is redrawn in place; otherwise a line is printed each time it changes."""
    shown = None
    try:
        while True:
            status = read_status()
            line = progress_line(status)
            if tty:
                out.write("\r" + line + "\033[K")
                out.flush()
            elif line != shown:
                out.write(line + "\n")
                out.flush()
            shown = line
            if is_finished(status):
                return status
            sleep(interval)
    finally:
        if tty and shown is not None:
            out.write("\n")  # the prompt (or "dbmail: interrupted") starts on a line of its own
            out.flush()


def _status(args) -> int:
    from dbmail.client import request_status

    if args.watch and args.interval <= 0:
        raise BadInput(f"--interval must be more than 0 seconds, not {args.interval}")
    reach_dynamodb()
    if args.watch:
        status = watch(lambda: request_status(args.request_id), sys.stdout, args.interval, tty=sys.stdout.isatty())
    else:
        status = request_status(args.request_id)
    print(json.dumps(status, indent=2) if args.json else status_text(status))
    return EXIT_OK


def _failures(args) -> int:
    from dbmail.client import request_failures

    reach_dynamodb()
    failures = request_failures(args.request_id)
    for failure in failures:
        if args.json:
            print(json.dumps(failure.as_dict(), ensure_ascii=False))
        else:
            print(f"{failure.status:<10}  {failure.send_to}  {failure.why}")
    if not args.json:
        print(f"{len(failures)} emails of request {args.request_id} did not get the mail", file=sys.stderr)
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
    stack = getattr(args, "stack", None)
    dead_letter_url = (
        args.dlq_url
        or (stack.send_dead_letter_queue_url if stack else None)
        or os.environ.get("DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL")
    )
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
    status = command(
        "status",
        _status,
        "a request's state, its emails by status (queued to expired), the reconciliation and what is stuck",
    )
    status.add_argument("request_id", help="the id `dbmail submit` (or submit_request) returned")
    status.add_argument("--json", action="store_true", help="print request_status's JSON object instead of text")
    status.add_argument(
        "--watch",
        action="store_true",
        help="show a live progress bar (final / total and each status's count) until every email is "
        "final, then the status; Ctrl-C stops it (a line per change when stdout is not a terminal)",
    )
    status.add_argument(
        "--interval", type=float, default=2.0, help="seconds between reads under --watch (default: %(default)s)"
    )
    failures = command(
        "failures",
        _failures,
        "every email of a request that did not get the mail, and why: bounced, complained, suppressed, "
        "failed, expired (one line each)",
    )
    failures.add_argument("request_id", help="the request whose emails to list")
    failures.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: email_key, send_to, user_id, status, why, bounce_type, "
        "diagnostic, error, tries, at",
    )
    render = command("render", _render, "render a (sent) email again from its request")
    render.add_argument("request_id", help="the request the email belongs to")
    render.add_argument("email_key", help="the email's key within the request (its TextOfEmail sort key)")
    again = command("redrive", _redrive, "move failed emails from the send DLQ back to the send queue")
    again.add_argument(
        "--dlq-url",
        help="the send dead-letter queue's URL; default: with --stack-name the stack's output "
        "SendDeadLetterQueueUrl, else the local stack's, DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL",
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
