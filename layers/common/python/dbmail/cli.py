"""`dbmail`: submit requests and inspect them from a shell (website developers and operators).

Settings come from the environment; with none set, `.local/stack.env` (written by `make up`)
is read, so the command works against the local stack out of the box.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from dbmail.errors import DbmailError


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


def _submit(args) -> int:
    from dbmail.client import submit_request

    spec = json.loads(Path(args.file).read_text(encoding="utf-8"))
    allowed = {"subject", "msgtext", "recipients", "sendto_fn_name", "sender", "creator", "var_dict",
               "special_headers", "processed_by", "public", "priority_level", "sent_by"}
    unknown = set(spec) - allowed
    if unknown:
        raise DbmailError(f"unknown fields in {args.file}: {sorted(unknown)}")
    print(submit_request(**spec))
    return 0


def _status(args) -> int:
    from dbmail.client import request_status

    print(json.dumps(request_status(args.request_id), indent=2))
    return 0


def _render(args) -> int:
    from dbmail.client import render_again

    print(json.dumps(render_again(args.request_id, args.email_key), indent=2, ensure_ascii=False))
    return 0


def _redrive(args) -> int:
    import boto3

    from dbmail.queue import redrive
    from dbmail.settings import get_settings

    settings = get_settings()
    dead_letter_url = args.dlq_url or os.environ.get("DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL")
    if not dead_letter_url:
        raise DbmailError("give --dlq-url (the stack output SendDeadLetterQueueUrl)")
    sqs = boto3.session.Session().client("sqs", region_name=settings.region)
    print(f"{redrive(sqs, dead_letter_url, settings.send_queue_url)} messages moved back to the send queue")
    return 0


def _require(args, *names: str) -> None:
    missing = [name for name in names if not getattr(args, name)]
    if missing:
        raise DbmailError(f"{args.command} {args.action} needs: " + ", ".join(missing))


def _lists(args) -> int:
    from dataclasses import asdict

    from dbmail import inbound_client
    from dbmail.inbound_store import InboundStore
    from dbmail.settings import get_settings

    if args.action == "install-defaults":
        rules = inbound_client.install_default_email_lists()
    elif args.action == "add":
        _require(args, "regex", "handler")
        rules = [inbound_client.add_email_list(
            args.regex, args.handler, seq=args.seq, subject_prefix=args.subject_prefix, admin_hold=args.admin_hold,
            cc_all=args.cc_all, from_email=args.from_email, description=args.description, list_id=args.id)]
    elif args.action == "delete":
        _require(args, "id")
        InboundStore(get_settings()).delete_rule(args.id)
        rules = []
    else:
        rules = InboundStore(get_settings()).rules()
    for rule in rules:
        print(json.dumps(asdict(rule)))
    return 0


def _redirects(args) -> int:
    from dbmail import inbound_client
    from dbmail.inbound_store import InboundStore
    from dbmail.settings import get_settings

    if args.action == "set":
        _require(args, "original", "destination")
        inbound_client.set_plain_redirect(args.original, args.destination)
    elif args.action == "delete":
        _require(args, "original")
        InboundStore(get_settings()).delete_redirect(args.original)
    else:
        for redirect in InboundStore(get_settings()).redirects():
            print(f"{redirect.original}\t{redirect.destination}")
    return 0


def _directory(args) -> int:
    from dbmail.inbound_client import publish_directory

    data = json.loads(Path(args.file).read_text(encoding="utf-8"))
    print(json.dumps(publish_directory(users=data.get("users", ()), classes=data.get("classes", ()))))
    return 0


def _show_inbound(item) -> str:
    return json.dumps({"message_id": item.message_id, "status": item.status, "received_at": item.received_at.isoformat(),
                       "recipients": list(item.recipients), "subject": item.subject, "detail": item.detail,
                       "attempts": int(item.attempts or 0)}, ensure_ascii=False)


def _held(args) -> int:
    from dbmail import wiring
    from dbmail.models import InboundStatus

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
    return 0


def _inbound(args) -> int:
    from dbmail import wiring
    from dbmail.errors import NotFound
    from dbmail.models import InboundStatus

    router = wiring.inbound_router()
    if args.action == "show":
        _require(args, "message_id")
        item = router.store.get(args.message_id)
        if item is None:
            raise NotFound(f"no inbound message {args.message_id!r}")
        print(_show_inbound(item))
    elif args.action == "failed":
        for item in router.store.with_status(InboundStatus.FAILED):
            print(_show_inbound(item))
    else:
        ids = [args.message_id] if args.message_id else [i.message_id for i in router.store.with_status(InboundStatus.FAILED)]
        for message_id in ids:
            print(message_id, router.reprocess(message_id))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dbmail", description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", default=".local/stack.env",
                        help="settings to read when DBMAIL_* are not set (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="validate and submit a MessageRequest from a JSON file")
    submit.add_argument("file")
    submit.set_defaults(run=_submit)
    status = commands.add_parser("status", help="a request's state and counts")
    status.add_argument("request_id")
    status.set_defaults(run=_status)
    render = commands.add_parser("render", help="render a (sent) email again from its request")
    render.add_argument("request_id")
    render.add_argument("email_key")
    render.set_defaults(run=_render)

    again = commands.add_parser("redrive", help="move failed emails from the send DLQ back to the send queue")
    again.add_argument("--dlq-url", help="default: the local stack's send DLQ")
    again.set_defaults(run=_redrive)

    lists = commands.add_parser("lists", help="EmailList rules for inbound mail")
    lists.add_argument("action", choices=["list", "add", "delete", "install-defaults"])
    lists.add_argument("--id", help="list_id (add: replaces that rule; delete: required)")
    lists.add_argument("--regex")
    lists.add_argument("--handler", choices=["SectionList", "ClassList", "PlainList", "UserEmail"])
    lists.add_argument("--seq", type=int, help="default: the last seq + 5")
    lists.add_argument("--subject-prefix")
    lists.add_argument("--admin-hold", action="store_true")
    lists.add_argument("--cc-all", action="store_true")
    lists.add_argument("--from-email")
    lists.add_argument("--description")
    lists.set_defaults(run=_lists)
    redirects = commands.add_parser("redirects", help="PlainRedirects: a local part to a list of addresses")
    redirects.add_argument("action", choices=["list", "set", "delete"])
    redirects.add_argument("original", nargs="?")
    redirects.add_argument("destination", nargs="?", help="comma-separated addresses")
    redirects.set_defaults(run=_redirects)
    directory = commands.add_parser("directory", help="publish users and classes for routing")
    directory.add_argument("action", choices=["load"])
    directory.add_argument("file", help='JSON: {"users": [...], "classes": [...]} (see docs/schema.md)')
    directory.set_defaults(run=_directory)
    held = commands.add_parser("held", help="inbound mail held for moderation")
    held.add_argument("action", choices=["list", "release", "reject"])
    held.add_argument("message_id", nargs="?")
    held.set_defaults(run=_held)
    inbound = commands.add_parser("inbound", help="received messages: show one, list failed ones, reprocess")
    inbound.add_argument("action", choices=["show", "failed", "reprocess"])
    inbound.add_argument("message_id", nargs="?", help="reprocess without an id: every failed message")
    inbound.set_defaults(run=_inbound)

    args = parser.parse_args(argv)
    if "DBMAIL_REQUEST_TABLE" not in os.environ and Path(args.env_file).is_file():
        load_env_file(Path(args.env_file))
    try:
        return args.run(args)
    except DbmailError as exc:
        print(f"dbmail: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
