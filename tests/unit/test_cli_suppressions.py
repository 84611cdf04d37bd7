"""`dbmail suppressions list|add|remove|export` on the suppression table (moto, from template.yaml)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from dbmail import wiring
from dbmail.cli import main


@pytest.fixture
def suppressions(moto_stack):
    """The suppression list with a bounce and an unsubscribe recorded by the feedback side."""
    store = wiring.suppression_store(moto_stack.settings)
    store.add("Bounced@Example.net", "bounce", "ses", detail="550 5.1.1 user unknown", request_id="r1")
    store.add("left@example.net", "unsubscribe", "unsubscribe", user_id=42)
    return store


def test_list_shows_each_entry_by_address_and_filters_by_reason(suppressions, capsys):
    assert main(["suppressions", "list"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["bounced@example.net", "bounce"],
        ["left@example.net", "unsubscribe"],
    ]
    assert lines[0].endswith("550 5.1.1 user unknown") and "(by ses, " in lines[0]
    assert captured.err == "2 suppressed addresses\n"
    # and --reason keeps the entries with that reason
    assert main(["suppressions", "list", "--reason", "unsubscribe", "--json"]) == 0
    captured = capsys.readouterr()
    (entry,) = [json.loads(line) for line in captured.out.splitlines()]
    assert (entry["address"], entry["source"], entry["user_id"]) == ("left@example.net", "unsubscribe", 42)
    assert captured.err == "1 suppressed addresses with reason unsubscribe\n"


def test_add_suppresses_an_address_as_an_operator_and_keeps_an_existing_entry(suppressions, capsys):
    # when an operator suppresses a new address with a note
    assert main(["suppressions", "add", "Parent@Example.NET", "--detail", "asked by phone, ticket 12"]) == 0
    assert capsys.readouterr().out == "suppressed parent@example.net (operator)\n"
    # then it is on the list, from the CLI, with the note
    entry = suppressions.get("parent@example.net")
    assert (entry.reason, entry.source, entry.detail) == ("operator", "cli", "asked by phone, ticket 12")
    # and adding an address already suppressed keeps the first entry, and says so
    assert main(["suppressions", "add", "bounced@example.net", "--reason", "complaint"]) == 0
    assert capsys.readouterr().out.startswith("bounced@example.net was already suppressed: bounce (by ses, ")
    assert suppressions.get("bounced@example.net").reason == "bounce"


def test_remove_takes_an_address_off_and_an_unknown_one_exits_2(suppressions, capsys):
    assert main(["suppressions", "remove", "LEFT@example.net"]) == 0
    assert "removed left@example.net" in capsys.readouterr().out
    assert not suppressions.is_suppressed("left@example.net")
    assert main(["suppressions", "remove", "left@example.net"]) == 2
    assert capsys.readouterr().err == "dbmail: 'left@example.net' is not on the suppression list\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["suppressions", "add"], "dbmail: suppressions add needs: address\n"),
        (["suppressions", "add", "not-an-address"], "dbmail: AddressInvalid: "),
        (["suppressions", "add", "a@example.net", "--reason", "soft_bounce"], "dbmail: suppressions add --reason must"),
        (["suppressions", "list", "--format", "csv"], "dbmail: --format is for suppressions export\n"),
        (["suppressions", "remove", "a@example.net", "--detail", "x"], "dbmail: --detail is for suppressions add\n"),
    ],
)
def test_bad_arguments_exit_2_naming_what_is_wrong(moto_stack, capsys, argv, message):
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(message)


def test_export_writes_every_entry_as_csv_or_json(suppressions, capsys):
    assert main(["suppressions", "export"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["address"], r["reason"], r["request_id"]) for r in rows] == [
        ("bounced@example.net", "bounce", "r1"),
        ("left@example.net", "unsubscribe", ""),
    ]
    assert list(rows[0]) == ["address", "reason", "source", "detail", "created_at", "user_id", "request_id"]
    assert main(["suppressions", "export", "--format", "json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [e["address"] for e in exported] == ["bounced@example.net", "left@example.net"]
    assert exported[1]["user_id"] == 42
