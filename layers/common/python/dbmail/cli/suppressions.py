"""The suppression list from a shell: list it (by reason), add an operator entry, remove an
address, export it all as CSV or JSON. Nothing is sent to a suppressed address: the send function
records its email as `suppressed`, with the entry's reason."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from dbmail.cli.errors import EXIT_OK, BadInput, reach_dynamodb

EXPORT_FIELDS = ("address", "reason", "source", "detail", "created_at", "user_id", "request_id")
# What an operator may give as the reason of an entry they add (the others come from feedback too).
OPERATOR_REASONS = ("operator", "bounce", "complaint", "unsubscribe")


def _store():
    from dbmail import wiring
    from dbmail.core.settings import website_settings

    reach_dynamodb()
    return wiring.suppression_store(website_settings())


def entry_dict(entry) -> dict[str, Any]:
    return {
        "address": entry.address,
        "reason": entry.reason,
        "source": entry.source,
        "detail": entry.detail,
        "created_at": entry.created_at.isoformat() if entry.created_at else None,
        "user_id": int(entry.user_id) if entry.user_id is not None else None,
        "request_id": entry.request_id,
    }


def _entries(reason: str | None = None) -> Iterator[dict[str, Any]]:
    """Every entry (of ``reason``), by address."""
    entries = (entry_dict(entry) for entry in _store().iter_all())
    return iter(sorted((e for e in entries if reason is None or e["reason"] == reason), key=lambda e: e["address"]))


def _list(args) -> int:
    count = 0
    for entry in _entries(args.reason):
        count += 1
        if args.json:
            print(json.dumps(entry, ensure_ascii=False))
        else:
            detail = f"  {entry['detail']}" if entry["detail"] else ""
            print(f"{entry['address']}  {entry['reason']} (by {entry['source']}, {entry['created_at']}){detail}")
    print(f"{count} suppressed addresses" + (f" with reason {args.reason}" if args.reason else ""), file=sys.stderr)
    return EXIT_OK


def _add(args) -> int:
    reason = args.reason or "operator"
    if reason not in OPERATOR_REASONS:
        raise BadInput(f"suppressions add --reason must be one of {', '.join(OPERATOR_REASONS)}, not {reason!r}")
    store = _store()
    if store.add(args.address, reason, "cli", detail=args.detail):
        print(f"suppressed {args.address.strip().lower()} ({reason})")
        return EXIT_OK
    existing = entry_dict(store.get(args.address))
    print(
        f"{existing['address']} was already suppressed: {existing['reason']} "
        f"(by {existing['source']}, {existing['created_at']}); kept as it was"
    )
    return EXIT_OK


def _remove(args) -> int:
    if not _store().remove(args.address):
        raise BadInput(f"{args.address.strip()!r} is not on the suppression list")
    print(f"removed {args.address.strip().lower()} from the suppression list: mail to it is sent again")
    return EXIT_OK


def _export(args) -> int:
    entries = list(_entries(args.reason))
    if args.format == "json":
        json.dump(entries, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(entries)
    return EXIT_OK


ACTIONS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "list": ("every suppressed address, with its reason, source and date", _list),
    "add": ("suppress ADDRESS (an operator's entry; an existing entry is kept as it is)", _add),
    "remove": ("take ADDRESS off the list: mail to it is sent again", _remove),
    "export": ("the whole list as CSV or JSON (--format), for a spreadsheet or another system", _export),
}


def _suppressions(args) -> int:
    if args.action in ("add", "remove"):
        if not args.address:
            raise BadInput(f"suppressions {args.action} needs: address")
        from dbmail.core.addresses import parse_address

        parse_address(args.address)  # AddressInvalid (exit 2) names what is wrong
    if args.format and args.action != "export":
        raise BadInput("--format is for suppressions export")
    if args.detail and args.action != "add":
        raise BadInput("--detail is for suppressions add")
    return ACTIONS[args.action][1](args)


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``dbmail suppressions list|add|remove|export``; ``command(name, run, summary)`` adds a subcommand."""
    from dbmail.feedback.store import REASONS

    sub = command(
        "suppressions",
        _suppressions,
        "the suppression list: addresses nothing is sent to (bounces, complaints, unsubscribes, operators)",
    )
    sub.add_argument(
        "action",
        choices=list(ACTIONS),
        metavar="ACTION",
        help="; ".join(f"{action}: {does}" for action, (does, _) in ACTIONS.items()),
    )
    sub.add_argument("address", nargs="?", help="the address to add or remove (add, remove: required)")
    sub.add_argument(
        "--reason",
        choices=sorted(REASONS),
        help="list, export: only the entries with this reason; add: why (operator, the default, "
        "bounce, complaint or unsubscribe)",
    )
    sub.add_argument("--detail", help="add: a note kept with the entry (who asked, a ticket)")
    sub.add_argument("--format", choices=("csv", "json"), help="export: csv (the default) or json")
    sub.add_argument("--json", action="store_true", help="list: one JSON object per line instead of text")
