"""The inbound side of the `dbmail` command: rules, redirects, the directory, held messages and
received messages, each through main([...]) against the moto stack (what it prints, what it stores,
its exit status)."""

from __future__ import annotations

import json

import pytest

from dbmail import wiring
from dbmail.cli import main
from dbmail.core.settings import website_settings
from dbmail.core.statuses import InboundStatus
from dbmail.inbound.store import InboundStore
from tests.conftest import DIRECTORY, inbound_message
from tests.unit.test_inbound import receive


def cli_router():
    """The router the command builds (from the website's settings, cached by wiring)."""
    return wiring.inbound_router(website_settings())


def lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def ses_down_for_the_cli(monkeypatch):
    def broken(*args, **kwargs):
        raise ConnectionError("SES unreachable")

    # on the transport's class: the handler's router (function settings) and the command's
    # (website settings) are two instances
    monkeypatch.setattr(type(cli_router().transport), "send_raw", broken)


# --- lists ----------------------------------------------------------------------------------------


def test_lists_delete_removes_the_rule_and_needs_its_id(moto_stack, capsys):
    # given the default rules
    assert main(["lists", "install-defaults"]) == 0
    ids = [json.loads(line)["list_id"] for line in lines(capsys)]
    assert len(ids) == 4
    # when one is deleted by id
    assert main(["lists", "delete", "--id", ids[0]]) == 0
    assert capsys.readouterr().out == ""
    # then it is no longer listed, and the others are
    assert main(["lists", "list"]) == 0
    assert [json.loads(line)["list_id"] for line in lines(capsys)] == ids[1:]
    # and delete without --id is refused, naming what it needs, with nothing removed
    assert main(["lists", "delete"]) == 2
    assert capsys.readouterr().err == "dbmail: lists delete needs: id\n"
    assert len(InboundStore(website_settings()).rules()) == 3


def test_lists_add_without_regex_or_handler_is_refused(moto_stack, capsys):
    assert main(["lists", "add"]) == 2
    assert capsys.readouterr().err == "dbmail: lists add needs: regex, handler\n"
    assert InboundStore(website_settings()).rules() == []


def test_lists_add_refuses_a_regex_that_does_not_compile(moto_stack, capsys):
    # when the regex is not a Python regular expression, then argparse refuses it (usage error, exit 2)
    with pytest.raises(SystemExit) as exited:
        main(["lists", "add", "--regex", "(unclosed", "--handler", "PlainList"])
    assert exited.value.code == 2
    assert "not a Python regular expression" in capsys.readouterr().err
    assert InboundStore(website_settings()).rules() == []


# --- redirects ------------------------------------------------------------------------------------


def test_redirects_list_and_delete(moto_stack, capsys):
    # given two redirects
    assert main(["redirects", "set", "directors", "ada@example.net"]) == 0
    assert main(["redirects", "set", "info", "bo@example.net, cy@example.net"]) == 0
    # when they are listed, then each is one original<TAB>destination line
    assert main(["redirects", "list"]) == 0
    assert sorted(lines(capsys)) == ["directors\tada@example.net", "info\tbo@example.net, cy@example.net"]
    # when one is deleted, then only the other is left
    assert main(["redirects", "delete", "info"]) == 0
    assert main(["redirects", "list"]) == 0
    assert lines(capsys) == ["directors\tada@example.net"]
    # and set/delete without their operands are refused, naming them
    assert main(["redirects", "delete"]) == 2
    assert capsys.readouterr().err == "dbmail: redirects delete needs: original\n"
    assert main(["redirects", "set", "x"]) == 2
    assert capsys.readouterr().err == "dbmail: redirects set needs: destination\n"


# --- directory ------------------------------------------------------------------------------------


def test_directory_load_publishes_the_file_and_prints_the_counts(moto_stack, tmp_path, capsys):
    # given the sample directory as a file
    path = tmp_path / "directory.json"
    path.write_text(json.dumps(DIRECTORY))
    # when it is loaded
    assert main(["directory", "load", str(path)]) == 0
    # then the command prints publish_directory's summary, and routing can find the class's people
    assert json.loads(capsys.readouterr().out) == {"users": 3, "classes": 1}
    store = InboundStore(website_settings())
    assert store.user_by_username("tcher").email == "teacher@example.net"
    assert store.class_by_id(1234).emailcode == "E1234"


DIRECTORY_PROBLEMS = {
    "unknown top-level field": (
        {"users": [], "teachers": []},
        "directory file has unknown fields ['teachers'] (known: users, classes)",
    ),
    "users not a list": ({"users": {"username": "a"}}, "users must be a list of objects, not an object"),
    "a user lacking email": ({"users": [{"username": "a"}]}, "users[0] lacks 'email'"),
    "a user not an object": (
        {"users": ["a@example.net"]},
        "users[0] must be an object, not a string ('a@example.net')",
    ),
    "class_id not an integer": (
        {"classes": [{"class_id": "12a", "emailcode": "E1", "program_name": "P", "directors_email": "d@x.org"}]},
        "classes[0].class_id must be an integer, not a string ('12a')",
    ),
    "a section index not an integer": (
        {
            "classes": [
                {
                    "class_id": "12",
                    "emailcode": "E12",
                    "program_name": "P",
                    "directors_email": "d@x.org",
                    "sections": [{"index": 1.5, "emailcode": "E12s1"}],
                }
            ]
        },
        "classes[0].sections[0].index must be an integer, not a number (1.5)",
    ),
    "a student lacking email": (
        {
            "classes": [
                {
                    "class_id": 12,
                    "emailcode": "E12",
                    "program_name": "P",
                    "directors_email": "d@x.org",
                    "sections": [{"index": 1, "emailcode": "E12s1", "students": [{"name": "S"}]}],
                }
            ]
        },
        "classes[0].sections[0].students[0] lacks 'email'",
    ),
}


@pytest.mark.parametrize("case", DIRECTORY_PROBLEMS)
def test_a_bad_directory_file_names_the_field(case, moto_stack, tmp_path, capsys):
    # given a directory file with one problem
    data, expected = DIRECTORY_PROBLEMS[case]
    path = tmp_path / "directory.json"
    path.write_text(json.dumps(data))
    # when it is loaded, then exit 2 and one line naming the field, and nothing is written
    assert main(["directory", "load", str(path)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"dbmail: {expected}\n")


# --- held -----------------------------------------------------------------------------------------


def test_held_list_release_and_reject(inbound, capsys):
    # given two messages held as spam
    first, status = receive(inbound, inbound_message(subject="one"), spam="FAIL")
    assert status == InboundStatus.HELD
    second, _ = receive(inbound, inbound_message(subject="two"), spam="FAIL")
    # when the held messages are listed, then each is one JSON line with its id, status and subject
    assert main(["held", "list"]) == 0
    shown = {item["message_id"]: item for item in map(json.loads, lines(capsys))}
    assert set(shown) == {first, second}
    assert shown[first]["status"] == "held" and shown[first]["subject"] == "one"
    assert shown[first]["recipients"] == ["E1234-class@example.org"] and "stuck" not in shown[first]
    # when one is released and the other rejected, then each prints its new status
    assert main(["held", "release", first]) == 0
    assert lines(capsys) == ["released"]
    assert main(["held", "reject", second]) == 0
    assert lines(capsys) == ["rejected"]
    store = cli_router().store
    assert (store.get(first).status, store.get(second).status) == (InboundStatus.RELEASED, InboundStatus.REJECTED)
    # and nothing is held any more; rejecting again is an unknown id (exit 2)
    assert main(["held", "list"]) == 0
    assert lines(capsys) == []
    assert main(["held", "reject", second]) == 2
    assert capsys.readouterr().err == f"dbmail: NotFound: no held message {second!r}\n"
    assert main(["held", "reject"]) == 2
    assert capsys.readouterr().err == "dbmail: held reject needs: message_id\n"


# --- inbound: show, failed, reprocess -------------------------------------------------------------


def test_inbound_show_prints_one_message_and_an_unknown_id_exits_2(inbound, capsys):
    # given a forwarded message
    message_id, status = receive(inbound, inbound_message(subject="Field trip"))
    assert status == InboundStatus.FORWARDED
    # when it is shown, then its stored state is printed as one JSON object
    assert main(["inbound", "show", message_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["message_id"], shown["status"], shown["subject"]) == (message_id, "forwarded", "Field trip")
    assert shown["attempts"] >= 1
    # and an unknown id, or none at all, exits 2 naming the problem
    assert main(["inbound", "show", "nope"]) == 2
    assert capsys.readouterr().err == "dbmail: NotFound: no inbound message 'nope'\n"
    assert main(["inbound", "show"]) == 2
    assert capsys.readouterr().err == "dbmail: inbound show needs: message_id\n"


def test_inbound_failed_then_reprocess_one(inbound, monkeypatch, capsys):
    # given a message whose forward failed (SES unreachable)
    ses_down_for_the_cli(monkeypatch)
    with pytest.raises(ConnectionError):
        receive(inbound, inbound_message())
    (failed,) = cli_router().store.with_status(InboundStatus.FAILED)
    # when the failed messages are listed, then it is there with its error and not marked stuck
    assert main(["inbound", "failed"]) == 0
    (shown,) = map(json.loads, lines(capsys))
    assert shown["message_id"] == failed.message_id and shown["status"] == "failed"
    assert "SES unreachable" in shown["detail"] and "stuck" not in shown
    # when SES is back and that message is reprocessed, then it is forwarded and no longer failed
    monkeypatch.undo()
    assert main(["inbound", "reprocess", failed.message_id]) == 0
    assert lines(capsys) == [f"{failed.message_id} forwarded"]
    assert main(["inbound", "failed"]) == 0
    assert lines(capsys) == []


def test_inbound_failed_marks_a_message_stuck_in_received(inbound, monkeypatch, capsys):
    # given a message whose invocation died before it finished (left `received`), long ago
    from datetime import timedelta

    from dbmail.core.clock import utcnow
    from dbmail.inbound.router import STUCK_AFTER

    message_id, _ = receive(inbound, inbound_message())
    store = cli_router().store
    item = store.get(message_id)
    item.update(actions=[item.__class__.status.set(InboundStatus.RECEIVED)])
    later = utcnow() + STUCK_AFTER + timedelta(minutes=1)
    monkeypatch.setattr("dbmail.core.clock.utcnow", lambda: later)
    # when the failed messages are listed, then it is shown as stuck, with what to do
    assert main(["inbound", "failed"]) == 0
    (shown,) = map(json.loads, lines(capsys))
    assert shown["message_id"] == message_id and shown["status"] == "received"
    assert "reprocess it" in shown["stuck"]


def test_inbound_reprocess_without_an_id_goes_through_every_failed_message(inbound, monkeypatch, capsys):
    # given two messages that failed
    ses_down_for_the_cli(monkeypatch)
    for subject in ("one", "two"):
        with pytest.raises(ConnectionError):
            receive(inbound, inbound_message(subject=subject))
    failed = sorted(i.message_id for i in cli_router().store.with_status(InboundStatus.FAILED))
    assert len(failed) == 2
    # when all are reprocessed while SES is still down, then each fails again, is reported on its
    # own line, and the command exits 1
    assert main(["inbound", "reprocess"]) == 1
    out = lines(capsys)
    assert sorted(line.split(" ", 1)[0] for line in out) == failed
    assert all(line.split(" ", 1)[1] == "failed again: ConnectionError: SES unreachable" for line in out)
    # when SES is back, then both are forwarded and the command exits 0
    monkeypatch.undo()
    assert main(["inbound", "reprocess"]) == 0
    assert sorted(lines(capsys)) == sorted(f"{message_id} forwarded" for message_id in failed)
    assert list(cli_router().store.with_status(InboundStatus.FAILED)) == []
