"""Inbound mail from a shell: EmailList rules, PlainRedirects, the directory, held messages, and
received messages (show one, list the failed ones, reprocess)."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import Any

from dbmail.cli.errors import EXIT_INTERNAL, EXIT_OK, BadInput, reach_dynamodb
from dbmail.cli.files import expect, is_int, kind, read_json
from dbmail.core.errors import DbmailError

# --- the directory file --------------------------------------------------------------------------


def _list_of_objects(name: str, value: Any, required: tuple[str, ...]) -> list[dict]:
    expect(name, value, isinstance(value, list), "a list of objects")
    for index, item in enumerate(value):
        expect(f"{name}[{index}]", item, isinstance(item, dict), "an object")
        missing = [key for key in required if key not in item]
        if missing:
            raise BadInput(f"{name}[{index}] lacks " + ", ".join(map(repr, missing)))
    return value


def _integer_like(name: str, value: Any) -> None:
    ok = is_int(value) or (isinstance(value, str) and value.strip().isdigit())
    expect(name, value, ok, "an integer")


def check_directory(data: Any) -> dict[str, Any]:
    """A directory file: {"users": [...], "classes": [...]} with the keys publish_directory reads."""
    if not isinstance(data, dict):
        raise BadInput(f'directory file must be a JSON object {{"users": [...], "classes": [...]}}, not {kind(data)}')
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


# --- the commands --------------------------------------------------------------------------------


def _require(args, *names: str) -> None:
    missing = [name for name in names if not getattr(args, name)]
    if missing:
        raise BadInput(f"{args.command} {args.action} needs: " + ", ".join(missing))


def _lists(args) -> int:
    from dataclasses import asdict

    from dbmail import client as inbound_client
    from dbmail.core.settings import website_settings
    from dbmail.inbound.store import InboundStore

    reach_dynamodb()
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
        InboundStore(website_settings()).delete_rule(args.id)
        rules = []
    else:
        rules = InboundStore(website_settings()).rules()
    for rule in rules:
        print(json.dumps(asdict(rule)))
    return EXIT_OK


def _redirects(args) -> int:
    from dbmail import client as inbound_client
    from dbmail.core.settings import website_settings
    from dbmail.inbound.store import InboundStore

    reach_dynamodb()
    if args.action == "set":
        _require(args, "original", "destination")
        inbound_client.set_plain_redirect(args.original, args.destination)
    elif args.action == "delete":
        _require(args, "original")
        InboundStore(website_settings()).delete_redirect(args.original)
    else:
        for redirect in InboundStore(website_settings()).redirects():
            print(f"{redirect.original}\t{redirect.destination}")
    return EXIT_OK


def _directory(args) -> int:
    data = check_directory(read_json(args.file))
    reach_dynamodb()

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
    from dbmail.core.settings import website_settings
    from dbmail.core.statuses import InboundStatus

    reach_dynamodb()
    router = wiring.inbound_router(website_settings())
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
    from dbmail.core.settings import website_settings
    from dbmail.core.statuses import InboundStatus

    reach_dynamodb()
    router = wiring.inbound_router(website_settings())
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


# --- their arguments -----------------------------------------------------------------------------


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a Python regular expression: {exc}") from None
    return value


# What each ACTION does (the help of the command's ACTION argument; its choices are the keys).
LISTS_ACTIONS = {
    "list": "print the rules, one JSON object a line",
    "add": "add a rule (or replace the rule --id)",
    "delete": "remove the rule --id",
    "install-defaults": "write the four default rules",
}
REDIRECTS_ACTIONS = {
    "list": "print original<TAB>destination lines",
    "set": "redirect original to destination",
    "delete": "remove original's redirect",
}
DIRECTORY_ACTIONS = {"load": "write the file's users and classes"}
HELD_ACTIONS = {
    "list": "print the held messages",
    "release": "route a held message on",
    "reject": "drop it, marking it rejected",
}
INBOUND_ACTIONS = {
    "show": "print one message",
    "failed": "print the messages whose routing failed",
    "reprocess": "route a message again from its raw copy",
}


def _action(sub: argparse.ArgumentParser, actions: dict[str, str], *operands: tuple[str, str]) -> None:
    """``COMMAND ACTION [operand ...]``: what to do, one of ``actions`` (each with what it does),
    then the optional positionals it acts on, each a (name, help); an action that needs one says so."""
    described = "; ".join(f"{action}: {does}" for action, does in actions.items())
    sub.add_argument("action", choices=list(actions), metavar="ACTION", help=described)
    for name, operand_help in operands:
        sub.add_argument(name, nargs="?", help=operand_help)


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Routing rules, redirects, the directory and received messages; ``command(name, run, summary)``
    adds a subcommand (see build_parser)."""
    lists = command("lists", _lists, "EmailList rules for inbound mail")
    _action(lists, LISTS_ACTIONS)
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
    _action(
        command("redirects", _redirects, "PlainRedirects: a local part to a list of addresses"),
        REDIRECTS_ACTIONS,
        ("original", "the local part redirected, e.g. directors (set, delete: required)"),
        ("destination", "comma-separated addresses (set: required)"),
    )
    directory = command("directory", _directory, "publish users and classes for routing")
    _action(directory, DIRECTORY_ACTIONS)
    directory.add_argument("file", help='JSON: {"users": [...], "classes": [...]} (see docs/schema.md)')
    _action(
        command("held", _held, "inbound mail held for moderation"),
        HELD_ACTIONS,
        ("message_id", "the held message's id, from `dbmail held list` (release, reject: required)"),
    )
    _action(
        command("inbound", _inbound, "received messages: show one, list failed ones, reprocess"),
        INBOUND_ACTIONS,
        ("message_id", "the message's id (show: required); reprocess without an id: every failed message"),
    )
