"""`dbmail`: submit requests and inspect them from a shell (website developers and operators).

Settings come from the environment; with none set, `.local/stack.env` (written by `make up`)
is read, so the command works against the local stack out of the box.

Errors never print a traceback: the command prints ONE line on stderr, `dbmail: <what is wrong>`,
and exits with a status that says whose problem it is:

  0  done
  1  internal error, a bug in dbmail: the line names the exception; `dbmail --debug ...` shows the traceback
  2  bad input: an unreadable or malformed request/directory file, a missing argument, an unknown id,
     or a request submit_request refuses (its RequestInvalid subclass is named in the line)
  3  the stack is unreachable or misconfigured: DynamoDB/SQS cannot be reached, settings or AWS
     credentials are missing, or AWS answered with an error

`--debug` re-raises every error with its traceback instead.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shlex
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dbmail.core.errors import ConfigurationError, DbmailError, DeliveryError

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_UNAVAILABLE = 0, 1, 2, 3

EXIT_CODES_EPILOG = """\
exit status:
  0  done
  1  internal error (a bug; rerun with --debug for the traceback)
  2  bad input: a malformed file or argument, an unknown id, a request dbmail refuses
  3  the stack is unreachable or misconfigured (DynamoDB/SQS down, settings or
     credentials missing, an AWS error)
errors are one line on stderr: "dbmail: <what is wrong>"."""

LOCAL_STACK_HINT = "is the local stack up? make up; source .local/stack.env"
AWS_HINT = "check the network, AWS_REGION and AWS_ENDPOINT_URL*"


class BadInput(DbmailError):
    """Input this command refuses before calling dbmail; printed as is, without a type name."""


class Unreachable(Exception):
    """A service's endpoint refuses connections (found before botocore's retries would wait it out)."""

    def __init__(self, service: str, url: str):
        super().__init__(f"cannot reach {service} at {url}")
        self.service, self.url = service, url


def load_env_file(path: Path) -> None:
    """Read `export KEY='value'` lines into os.environ without overriding what is set."""
    for line in path.read_text().splitlines():
        parts = shlex.split(line, comments=True)
        if parts[:1] == ["export"]:
            parts = parts[1:]
        for part in parts:
            key, sep, value = part.partition("=")
            if sep:
                os.environ.setdefault(key, value)


# --- reading and checking input files ---------------------------------------------------------


def _kind(value: Any) -> str:
    """A JSON value's type as a person would name it, with the value itself when it is short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if isinstance(value, int):
        return f"an integer ({shown})"
    if isinstance(value, float):
        return f"a number ({shown})"
    if isinstance(value, str):
        return f"a string ({shown})"
    return type(value).__name__


def _read_json(path: str) -> Any:
    """The file's JSON; a BadInput naming the file and the problem if it cannot be read or parsed."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory, not a JSON file") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _expect(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise BadInput(f"{name} must be {expected}, not {_kind(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(name: str, value: Any, *, optional: bool = True) -> None:
    _expect(
        name,
        value,
        isinstance(value, str) or (optional and value is None),
        "a string or null" if optional else "a string",
    )


def _integer(name: str, value: Any) -> None:
    _expect(name, value, value is None or _is_int(value), "an integer or null")


def _object(name: str, value: Any) -> None:
    _expect(name, value, value is None or isinstance(value, dict), "an object or null")


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
    _expect(name, value, isinstance(value, dict), "an object")
    _integer(f"{name}.user_id", value.get("user_id"))
    for field in string_fields:
        _string(f"{name}.{field}", value.get(field))


def _recipients(name: str, value: Any) -> None:
    from dbmail.outgoing.expand import RECIPIENT_FIELDS

    _expect(name, value, isinstance(value, list), "a list of objects")
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
    _expect(name, value, isinstance(value, bool), "true or false")


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
        raise BadInput(f"request file must be a JSON object of submit_request's fields, not {_kind(spec)}")
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


def _list_of_objects(name: str, value: Any, required: tuple[str, ...]) -> list[dict]:
    _expect(name, value, isinstance(value, list), "a list of objects")
    for index, item in enumerate(value):
        _expect(f"{name}[{index}]", item, isinstance(item, dict), "an object")
        missing = [key for key in required if key not in item]
        if missing:
            raise BadInput(f"{name}[{index}] lacks " + ", ".join(map(repr, missing)))
    return value


def _integer_like(name: str, value: Any) -> None:
    ok = _is_int(value) or (isinstance(value, str) and value.strip().isdigit())
    _expect(name, value, ok, "an integer")


def check_directory(data: Any) -> dict[str, Any]:
    """A directory file: {"users": [...], "classes": [...]} with the keys publish_directory reads."""
    if not isinstance(data, dict):
        raise BadInput(f'directory file must be a JSON object {{"users": [...], "classes": [...]}}, not {_kind(data)}')
    unknown = sorted(set(data) - {"users", "classes"})
    if unknown:
        raise BadInput(f"directory file has unknown fields {unknown} (known: users, classes)")
    _list_of_objects("users", data.get("users", []), ("username", "email"))
    classes = _list_of_objects(
        "classes", data.get("classes", []), ("class_id", "emailcode", "program_name", "directors_email")
    )
    for c, info in enumerate(classes):
        _integer_like(f"classes[{c}].class_id", info["class_id"])
        _list_of_objects(f"classes[{c}].teachers", info.get("teachers") or [], ("email",))
        sections = _list_of_objects(f"classes[{c}].sections", info.get("sections", []), ("index", "emailcode"))
        for s, section in enumerate(sections):
            _integer_like(f"classes[{c}].sections[{s}].index", section["index"])
            _list_of_objects(f"classes[{c}].sections[{s}].students", section.get("students") or [], ("email",))
    return data


# --- the stack -----------------------------------------------------------------------------------


def _reach(service: str, url: str | None) -> None:
    """Fail at once if a custom (local) endpoint refuses connections: botocore would retry with
    backoff first (PynamoDB's five retries take about 20 s) only to fail the same way."""
    try:
        parts = urlsplit(url or "")
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return  # a malformed URL: botocore's own error says what is wrong with it
    if not host or host.endswith(".amazonaws.com"):
        return
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        raise Unreachable(service, (url or "").rstrip("/")) from None


def _reach_dynamodb() -> None:
    from dbmail.core.settings import get_settings

    _reach("DynamoDB", get_settings().dynamodb_endpoint)


# --- the commands --------------------------------------------------------------------------------


def _submit(args) -> int:
    spec = check_request_spec(_read_json(args.file))
    _reach_dynamodb()

    from dbmail.client import submit_request

    print(submit_request(**spec))
    return EXIT_OK


def _status(args) -> int:
    from dbmail.client import request_status

    _reach_dynamodb()
    print(json.dumps(request_status(args.request_id), indent=2))
    return EXIT_OK


def _render(args) -> int:
    from dbmail.client import render_again

    _reach_dynamodb()
    print(json.dumps(render_again(args.request_id, args.email_key), indent=2, ensure_ascii=False))
    return EXIT_OK


def _redrive(args) -> int:
    import boto3

    from dbmail.core.settings import get_settings
    from dbmail.outgoing.queue import redrive

    settings = get_settings()
    _reach("SQS", os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL"))
    dead_letter_url = args.dlq_url or os.environ.get("DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL")
    if not dead_letter_url:
        raise BadInput("give --dlq-url (the stack output SendDeadLetterQueueUrl)")
    sqs = boto3.session.Session().client("sqs", region_name=settings.region)
    print(f"{redrive(sqs, dead_letter_url, settings.send_queue_url)} messages moved back to the send queue")
    return EXIT_OK


def _resend(args) -> int:
    from dbmail import wiring
    from dbmail.core.clock import utcnow
    from dbmail.outgoing.resend import resend

    _reach_dynamodb()
    expander = wiring.expander()
    count = resend(expander.store, expander.queue, args.request_id, utcnow(), statuses=args.status)
    print(f"{count} emails of request {args.request_id} queued again")
    return EXIT_OK


def _require(args, *names: str) -> None:
    missing = [name for name in names if not getattr(args, name)]
    if missing:
        raise BadInput(f"{args.command} {args.action} needs: " + ", ".join(missing))


def _lists(args) -> int:
    from dataclasses import asdict

    from dbmail import client as inbound_client
    from dbmail.core.settings import get_settings
    from dbmail.inbound.store import InboundStore

    _reach_dynamodb()
    if args.action == "install-defaults":
        rules = inbound_client.install_default_email_lists()
    elif args.action == "add":
        _require(args, "regex", "handler")
        rules = [
            inbound_client.add_email_list(
                args.regex,
                args.handler,
                seq=args.seq,
                subject_prefix=args.subject_prefix,
                admin_hold=args.admin_hold,
                cc_all=args.cc_all,
                from_email=args.from_email,
                description=args.description,
                list_id=args.id,
                accept_automatic=args.accept_automatic,
            )
        ]
    elif args.action == "delete":
        _require(args, "id")
        InboundStore(get_settings()).delete_rule(args.id)
        rules = []
    else:
        rules = InboundStore(get_settings()).rules()
    for rule in rules:
        print(json.dumps(asdict(rule)))
    return EXIT_OK


def _redirects(args) -> int:
    from dbmail import client as inbound_client
    from dbmail.core.settings import get_settings
    from dbmail.inbound.store import InboundStore

    _reach_dynamodb()
    if args.action == "set":
        _require(args, "original", "destination")
        inbound_client.set_plain_redirect(args.original, args.destination)
    elif args.action == "delete":
        _require(args, "original")
        InboundStore(get_settings()).delete_redirect(args.original)
    else:
        for redirect in InboundStore(get_settings()).redirects():
            print(f"{redirect.original}\t{redirect.destination}")
    return EXIT_OK


def _directory(args) -> int:
    data = check_directory(_read_json(args.file))
    _reach_dynamodb()

    from dbmail.client import publish_directory

    print(json.dumps(publish_directory(users=data.get("users", ()), classes=data.get("classes", ()))))
    return EXIT_OK


def _show_inbound(item, stuck: bool = False) -> str:
    shown = {
        "message_id": item.message_id,
        "status": item.status,
        "received_at": item.received_at.isoformat(),
        "recipients": list(item.recipients),
        "subject": item.subject,
        "detail": item.detail,
        "attempts": int(item.attempts or 0),
    }
    if stuck:
        shown["stuck"] = "never finished (the invocation timed out or was killed); reprocess it"
    return json.dumps(shown, ensure_ascii=False)


def _held(args) -> int:
    from dbmail import wiring
    from dbmail.core.statuses import InboundStatus

    _reach_dynamodb()
    router = wiring.inbound_router()
    if args.action == "list":
        for item in router.store.with_status(InboundStatus.HELD):
            print(_show_inbound(item))
    elif args.action == "release":
        _require(args, "message_id")
        print(router.release(args.message_id))
    else:
        _require(args, "message_id")
        print(router.reject(args.message_id))
    return EXIT_OK


def _inbound(args) -> int:
    from dbmail import wiring
    from dbmail.core.errors import NotFound
    from dbmail.core.statuses import InboundStatus

    _reach_dynamodb()
    router = wiring.inbound_router()
    if args.action == "show":
        _require(args, "message_id")
        item = router.store.get(args.message_id)
        if item is None:
            raise NotFound(f"no inbound message {args.message_id!r}")
        print(_show_inbound(item))
    elif args.action == "failed":
        from dbmail.core.clock import utcnow

        for item in router.unfinished(utcnow()):
            print(_show_inbound(item, stuck=item.status == InboundStatus.RECEIVED))
    elif args.message_id:
        print(args.message_id, router.reprocess(args.message_id))
    else:
        return _reprocess_all(router)
    return EXIT_OK


def _reprocess_all(router) -> int:
    """Every failed or stuck message, one line each with its outcome; one that fails again is
    reported and the rest go on. Exits 1 if any failed again."""
    from botocore.exceptions import BotoCoreError, ClientError
    from pynamodb.exceptions import PynamoDBException

    from dbmail.core.clock import utcnow

    failed_again = 0
    for item in router.unfinished(utcnow()):
        try:
            outcome = router.reprocess(item.message_id)
        except (DbmailError, BotoCoreError, ClientError, PynamoDBException, OSError, ValueError, LookupError) as exc:
            failed_again += 1
            outcome = f"failed again: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        print(item.message_id, outcome, flush=True)
    return EXIT_INTERNAL if failed_again else EXIT_OK


# --- the parser ----------------------------------------------------------------------------------


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a Python regular expression: {exc}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    """Every positional and option has a help= string (tests/unit/test_cli.py checks each subcommand)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="dbmail", description=__doc__.splitlines()[0], epilog=EXIT_CODES_EPILOG, formatter_class=formatter
    )
    parser.add_argument(
        "--env-file",
        default=".local/stack.env",
        help="settings to read when DBMAIL_* are not set (default: %(default)s)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on any error, raise it with its Python traceback instead of printing one line",
    )
    # A subcommand's own --debug (`dbmail submit x.json --debug`) leaves the top-level one alone when absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on any error, raise it with its Python traceback instead of printing one line",
    )
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do; `dbmail COMMAND --help` describes its arguments",
    )

    def command(name: str, run: Callable[[argparse.Namespace], int], summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=EXIT_CODES_EPILOG,
            formatter_class=formatter,
            parents=[common],
        )
        sub.set_defaults(run=run)
        return sub

    # Outbound: requests and their emails.
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

    # Inbound: routing rules, redirects, the directory and received messages.
    lists = command("lists", _lists, "EmailList rules for inbound mail")
    lists.add_argument(
        "action",
        choices=["list", "add", "delete", "install-defaults"],
        metavar="ACTION",
        help="list: print the rules, one JSON object a line; add: add a rule (or replace the rule "
        "--id); delete: remove the rule --id; install-defaults: write the four default rules",
    )
    lists.add_argument("--id", help="list_id (add: replaces that rule; delete: required)")
    lists.add_argument(
        "--regex",
        type=_regex,
        help="Python regex searched (case-insensitively) in the recipient's local part; its groups "
        "go to the handler (add: required)",
    )
    lists.add_argument(
        "--handler",
        choices=["SectionList", "ClassList", "PlainList", "UserEmail"],
        help="who receives matching mail: a section's or a class's people (groups: class id, "
        "[section index,] audience), a PlainRedirect (local part) or a user (username) "
        "(add: required)",
    )
    lists.add_argument(
        "--seq", type=int, help="the rule's place in the order rules are tried, ascending (default: the last seq + 5)"
    )
    lists.add_argument("--subject-prefix", help="text added after [<emailcode>] to the subject of group forwards")
    lists.add_argument(
        "--admin-hold",
        action="store_true",
        help="hold matching mail for a moderator (dbmail held) instead of forwarding it",
    )
    lists.add_argument(
        "--accept-automatic",
        action="store_true",
        help="let a class or section list broadcast automatic mail (auto-replies, bulk, list mail)",
    )
    lists.add_argument(
        "--cc-all",
        action="store_true",
        help="one message with every recipient in To, instead of one message per recipient",
    )
    lists.add_argument(
        "--from-email",
        help="From of group forwards, in an allowed sender domain (default: "
        '"Name via Site" <noreply@chapter-domain>, Reply-To the sender)',
    )
    lists.add_argument("--description", help="free text for people reading `dbmail lists list`")
    redirects = command("redirects", _redirects, "PlainRedirects: a local part to a list of addresses")
    redirects.add_argument(
        "action",
        choices=["list", "set", "delete"],
        metavar="ACTION",
        help="list: print original<TAB>destination lines; set: redirect original to "
        "destination; delete: remove original's redirect",
    )
    redirects.add_argument(
        "original", nargs="?", help="the local part redirected, e.g. directors (set, delete: required)"
    )
    redirects.add_argument("destination", nargs="?", help="comma-separated addresses (set: required)")
    directory = command("directory", _directory, "publish users and classes for routing")
    directory.add_argument(
        "action", choices=["load"], metavar="ACTION", help="load: write the file's users and classes"
    )
    directory.add_argument("file", help='JSON: {"users": [...], "classes": [...]} (see docs/schema.md)')
    held = command("held", _held, "inbound mail held for moderation")
    held.add_argument(
        "action",
        choices=["list", "release", "reject"],
        metavar="ACTION",
        help="list: print the held messages; release: route a held message on; reject: drop it, marking it rejected",
    )
    held.add_argument(
        "message_id", nargs="?", help="the held message's id, from `dbmail held list` (release, reject: required)"
    )
    inbound = command("inbound", _inbound, "received messages: show one, list failed ones, reprocess")
    inbound.add_argument(
        "action",
        choices=["show", "failed", "reprocess"],
        metavar="ACTION",
        help="show: print one message; failed: print the messages whose routing failed; "
        "reprocess: route a message again from its raw copy",
    )
    inbound.add_argument(
        "message_id", nargs="?", help="the message's id (show: required); reprocess without an id: every failed message"
    )
    return parser


# --- errors: one line, an exit status ------------------------------------------------------------


def _aws_cause(exc: BaseException) -> BaseException | None:
    """The botocore or PynamoDB error behind ``exc`` (itself, a PynamoDB error's cause, a `raise ... from`)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from pynamodb.exceptions import PynamoDBException

    found, seen = None, set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (BotoCoreError, ClientError)):
            return current
        if isinstance(current, PynamoDBException):
            found = found or current
            current = current.cause or current.__cause__
        else:
            current = current.__cause__
    return found


def _service(url: str, via_pynamodb: bool) -> str:
    if via_pynamodb:
        return "DynamoDB"
    for name, label in (("DYNAMODB", "DynamoDB"), ("SQS", "SQS"), ("S3", "S3"), ("SES", "SES"), ("SESV2", "SES")):
        if os.environ.get(f"AWS_ENDPOINT_URL_{name}", "").rstrip("/") == url:
            return label
    host = urlsplit(url).hostname or ""
    for part, label in (("dynamodb", "DynamoDB"), ("sqs", "SQS"), ("s3", "S3"), ("email", "SES")):
        if host.startswith(part + ".") or f".{part}." in host:
            return label
    return "AWS"


def _hint(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return AWS_HINT if host.endswith(".amazonaws.com") else LOCAL_STACK_HINT


def _explain_aws(exc: BaseException, cause: BaseException) -> str:
    from botocore import exceptions as boto
    from pynamodb.exceptions import PynamoDBException

    via_pynamodb = isinstance(exc, PynamoDBException) or isinstance(cause, PynamoDBException)
    if isinstance(cause, PynamoDBException):  # no botocore error behind it
        return f"DynamoDB error: {cause.msg or type(cause).__name__}"
    if isinstance(cause, boto.ClientError):
        error = cause.response.get("Error", {})
        return f"AWS error {error.get('Code', 'Unknown')}: {error.get('Message') or cause}"
    url = str(getattr(cause, "kwargs", {}).get("endpoint_url") or "").rstrip("/")
    if isinstance(cause, (boto.ConnectionError, boto.ConnectionClosedError)) and url:
        return f"cannot reach {_service(url, via_pynamodb)} at {url} ({_hint(url)})"
    if isinstance(cause, boto.ReadTimeoutError) and url:
        return f"{_service(url, via_pynamodb)} at {url} did not answer in time ({_hint(url)})"
    if isinstance(cause, (boto.NoCredentialsError, boto.PartialCredentialsError, boto.NoRegionError)):
        return (
            f"{cause} (set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and AWS_REGION; {LOCAL_STACK_HINT})"
        )
    return f"AWS error: {cause}"


def explain(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one line (without `dbmail: `) for an error a command raised."""
    if isinstance(exc, BadInput):
        return EXIT_BAD_INPUT, str(exc)
    if isinstance(exc, Unreachable):
        return EXIT_UNAVAILABLE, f"{exc} ({_hint(exc.url)})"
    if isinstance(exc, (ConfigurationError, DeliveryError)):
        return EXIT_UNAVAILABLE, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, DbmailError):
        return EXIT_BAD_INPUT, f"{type(exc).__name__}: {exc}"
    cause = _aws_cause(exc)
    if cause is not None:
        return EXIT_UNAVAILABLE, _explain_aws(exc, cause)
    return EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"


def _one_line(message: str) -> str:
    return re.sub(r"\s*\n\s*", " ", message.strip()) or "error"


def _quiet_service_logs(debug: bool) -> None:
    """The services log for CloudWatch (with tracebacks); a person at a shell gets the one-line
    outcomes instead, unless --debug asks for the logs (on stderr)."""
    import logging

    if debug:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    elif not logging.getLogger().handlers:
        logging.getLogger().addHandler(logging.NullHandler())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a usage error exits 2 (argparse's usage line and message)
    _quiet_service_logs(args.debug)
    try:
        if "DBMAIL_REQUEST_TABLE" not in os.environ and Path(args.env_file).is_file():
            try:
                load_env_file(Path(args.env_file))
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"{args.env_file}: cannot read settings: {exc}") from exc
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("dbmail: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        code, message = explain(exc)
        print(f"dbmail: {_one_line(message)}", file=sys.stderr)
        return code
