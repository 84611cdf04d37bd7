"""The `dbmail` command: submit a JSON request file, then read its status; bad input and an unreachable
stack give one line on stderr and an exit status, never a traceback; every argument is described in --help."""

import argparse
import json
import time

import pytest

from dbmail.cli import build_parser, main
from dbmail.core.settings import website_settings
from tests.conftest import ROOT, clear_caches


def test_submit_then_status(moto_stack, capsys):
    # given the example request file from the README
    assert main(["submit", str(ROOT / "examples" / "request.json")]) == 0
    request_id = capsys.readouterr().out.strip()
    # when its status is asked for (as JSON)
    assert main(["status", "--json", request_id]) == 0
    status = json.loads(capsys.readouterr().out)
    # then it is queued with its two recipients
    assert (status["status"], status["recipients"]) == ("queued", 2)


def test_a_bad_request_file_exits_2_with_the_error(moto_stack, tmp_path, capsys):
    spec = json.loads((ROOT / "examples" / "request.json").read_text())
    spec["sendto_fn_name"] = "send_to_everyone"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    assert main(["submit", str(path)]) == 2
    assert "UnknownSendToFunction" in capsys.readouterr().err


def test_inbound_management_commands(moto_stack, capsys, tmp_path):
    # given the default rules, a directory and a redirect set from the command line
    assert main(["lists", "install-defaults"]) == 0
    assert main(["directory", "load", str(ROOT / "examples" / "directory.json")]) == 0
    assert main(["redirects", "set", "directors", "ada@example.net, bo@example.net"]) == 0
    capsys.readouterr()
    # then they can be listed
    assert main(["lists", "list"]) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [10, 20, 30, 40]
    assert main(["lists", "add", "--regex", "^(announce)$", "--handler", "PlainList"]) == 0
    assert json.loads(capsys.readouterr().out)["seq"] == 45
    # and bad input is refused with the reason
    assert main(["redirects", "set", "oops", "ada@example.net,,nobody"]) == 2
    assert "invalid destination entries" in capsys.readouterr().err
    assert main(["held", "release"]) == 2
    assert "needs: message_id" in capsys.readouterr().err


# --- bad input and an unreachable stack: one line on stderr, never a traceback -------------------


def _request(**changes) -> dict:
    spec = json.loads((ROOT / "examples" / "request.json").read_text(encoding="utf-8"))
    spec.update(changes)
    return spec


def _without(name: str) -> dict:
    spec = _request()
    del spec[name]
    return spec


def _with_recipient(**fields) -> dict:
    spec = _request()
    spec["recipients"][0].update(fields)
    return spec


BAD_REQUEST_FILES = {
    # case: (file content as bytes, or None for no file; words the error line must contain)
    "missing file": (None, ["no such file"]),
    "invalid JSON": (
        b'{\n  "subject": "Hi",\n  "msgtext": "x"\n  "recipients": []\n}',
        ["not valid JSON at line 4 column 3", "Expecting ',' delimiter"],
    ),
    "not UTF-8": ('{"subject": "caf\u00e9"}'.encode("latin-1"), ["not UTF-8"]),
    "an array": (b"[1, 2]", ["must be a JSON object of submit_request's fields, not a list"]),
    "unknown field": (json.dumps(_request(colour="red")).encode(), ["unknown fields ['colour']"]),
    "missing subject": (json.dumps(_without("subject")).encode(), ["lacks the required field 'subject'"]),
    "subject not a string": (json.dumps(_request(subject=["Hi"])).encode(), ["subject must be a string, not a list"]),
    "processed_by tomorrow": (
        json.dumps(_request(processed_by="tomorrow")).encode(),
        ["processed_by: 'tomorrow' is not an ISO 8601 date-time"],
    ),
    "user_id abc": (
        json.dumps(_with_recipient(user_id="abc")).encode(),
        ["recipients[0].user_id must be an integer or null, not a string ('abc')"],
    ),
    "recipients not a list": (
        json.dumps(_request(recipients={"user_id": 1})).encode(),
        ["recipients must be a list of objects, not an object"],
    ),
    "a recipient not an object": (
        json.dumps(_request(recipients=["zoe@example.net"])).encode(),
        ["recipients[0] must be an object, not a string"],
    ),
    "public not a boolean": (json.dumps(_request(public="yes")).encode(), ["public must be true or false"]),
    "priority_level not an integer": (
        json.dumps(_request(priority_level="high")).encode(),
        ["priority_level must be an integer or null"],
    ),
    "var_dict not an object": (json.dumps(_request(var_dict=[1])).encode(), ["var_dict must be an object or null"]),
}


@pytest.mark.parametrize("case", BAD_REQUEST_FILES)
def test_a_bad_request_file_is_one_line_naming_the_problem(case, moto_stack, tmp_path, capsys):
    # given a request file that cannot be submitted as written
    content, words = BAD_REQUEST_FILES[case]
    path = tmp_path / "request.json"
    if content is not None:
        path.write_bytes(content)
    # when it is submitted
    code = main(["submit", str(path)])
    # then the command exits 2 with one line on stderr that names the problem, and no traceback
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dbmail: "), err
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in err + out
    assert out == ""


def test_a_file_error_names_the_file(moto_stack, tmp_path, capsys):
    # given a file that is not JSON
    path = tmp_path / "x.json"
    path.write_text("{oops")
    # when it is submitted, then the line starts with the file's name
    assert main(["submit", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"dbmail: {path}: not valid JSON at line 1 column 2")


def test_submit_request_refusals_are_still_printed_with_their_type(moto_stack, tmp_path, capsys):
    # given a request whose checks only submit_request makes (an address that does not parse)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(_with_recipient(email="not an address")))
    # when it is submitted, then the RequestInvalid subclass is named, on one line
    assert main(["submit", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dbmail: AddressInvalid: recipient 0") and len(err.splitlines()) == 1


def test_a_bad_directory_file_is_one_line(moto_stack, tmp_path, capsys):
    # given directory files that are a list, and a class lacking its emailcode
    listed, partial = tmp_path / "list.json", tmp_path / "partial.json"
    listed.write_text("[]")
    partial.write_text(
        json.dumps({"classes": [{"class_id": 1, "program_name": "P", "directors_email": "d@example.org"}]})
    )
    # when they are loaded, then each gives exit 2 and one line naming the problem
    assert main(["directory", "load", str(listed)]) == 2
    assert "directory file must be a JSON object" in capsys.readouterr().err
    assert main(["directory", "load", str(partial)]) == 2
    assert capsys.readouterr().err == "dbmail: classes[0] lacks 'emailcode'\n"


UNREACHABLE = (
    "dbmail: cannot reach DynamoDB at http://127.0.0.1:1 (is the local stack up? make up; source .local/stack.env)\n"
)


@pytest.fixture
def dynamodb_unreachable(moto_stack, monkeypatch):
    """The stack's settings, but a DynamoDB endpoint that refuses connections (nothing listens on port 1)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    clear_caches()
    assert website_settings().dynamodb_endpoint == "http://127.0.0.1:1"
    monkeypatch.setattr("botocore.endpoint.time.sleep", lambda seconds: None)  # botocore's retry backoff
    return moto_stack


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "0123456789abcdef"],
        ["render", "0123456789abcdef", "k"],
        ["lists", "list"],
        ["redirects", "list"],
        ["held", "list"],
        ["inbound", "failed"],
        ["submit", str(ROOT / "examples" / "request.json")],
    ],
)
def test_with_dynamodb_unreachable_a_command_says_so_at_once_and_exits_3(argv, dynamodb_unreachable, capsys):
    # given DynamoDB unreachable; when a command that reads or writes it runs
    started = time.monotonic()
    code = main(argv)
    # then it says, on one line and quickly, that DynamoDB cannot be reached, and exits 3
    out, err = capsys.readouterr()
    assert time.monotonic() - started < 10
    assert (code, err) == (3, UNREACHABLE)
    assert "Traceback" not in out + err


def test_pynamodbs_own_connection_error_gives_the_same_line(dynamodb_unreachable, monkeypatch, capsys):
    # given the endpoint check skipped, so that PynamoDB meets the refused connection (a GetError whose
    # cause is botocore's EndpointConnectionError) after its retries
    monkeypatch.setattr("dbmail.cli.errors.reach", lambda service, url: None)
    started = time.monotonic()
    # when a request's status is asked for
    code = main(["status", "0123456789abcdef"])
    # then the line and the exit status are the same
    out, err = capsys.readouterr()
    assert time.monotonic() - started < 10
    assert (code, err) == (3, UNREACHABLE)
    assert "Traceback" not in out + err


def test_aws_errors_are_one_line_and_exit_3(moto_stack, monkeypatch, capsys):
    # given DynamoDB answering with an error (a table that does not exist)
    monkeypatch.setenv("DBMAIL_REQUEST_TABLE", "no-such-table")
    clear_caches()
    # when a request's status is asked for, then AWS's code and message are shown
    assert main(["status", "0123456789abcdef"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("dbmail: AWS error ResourceNotFoundException: ") and len(err.splitlines()) == 1


def test_missing_settings_exit_3(moto_stack, monkeypatch, tmp_path, capsys):
    # given no DBMAIL_* settings and no env file
    monkeypatch.delenv("DBMAIL_REQUEST_TABLE")
    clear_caches()
    # when a status is asked for, then the missing settings are named
    assert main(["--env-file", str(tmp_path / "none.env"), "status", "abc"]) == 3
    assert capsys.readouterr().err.startswith("dbmail: ConfigurationError: missing settings: DBMAIL_REQUEST_TABLE")


def test_an_unexpected_error_is_one_line_unless_debug(moto_stack, monkeypatch, capsys):
    # given a bug deep inside a command
    def broken(request_id):
        raise KeyError("surprise")

    monkeypatch.setattr("dbmail.client.request_status", broken)
    # when it runs, then the user sees one line and exit 1
    assert main(["status", "abc"]) == 1
    err = capsys.readouterr().err
    assert err == "dbmail: internal error: KeyError: 'surprise' (run with --debug for the traceback)\n"
    # and with --debug (before or after the command) the exception itself is raised
    for argv in (["--debug", "status", "abc"], ["status", "abc", "--debug"]):
        with pytest.raises(KeyError):
            main(argv)


# --- help: every argument of every subcommand is described ---------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_argument_of_every_subcommand_has_help(capsys):
    # given the parser, and every subcommand it has
    parser = build_parser()
    subcommands = _subcommands(parser)
    assert {"submit", "status", "render", "redrive", "lists", "redirects", "directory", "held", "inbound"} <= set(
        subcommands
    )
    # then each action (positional, option, subcommand) carries a help string
    for name, sub in {"dbmail": parser, **subcommands}.items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    # and `dbmail COMMAND --help` shows them, with the exit statuses, and exits 0
    for name, sub in subcommands.items():
        with pytest.raises(SystemExit) as exited:
            main([name, "--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert "exit status:" in out
        for action in sub._actions:
            for option in action.option_strings or [action.metavar or action.dest]:
                if option not in ("-h",) and not isinstance(action, argparse._SubParsersAction):
                    assert option in out, (name, option)


def test_lists_add_can_let_a_class_list_take_automatic_mail(moto_stack, capsys):
    assert (
        main(
            [
                "lists",
                "add",
                "--regex",
                r"^\w(\d+)-(class|teachers|students)$",
                "--handler",
                "ClassList",
                "--seq",
                "15",
                "--id",
                "auto-ok",
                "--accept-automatic",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["accept_automatic"] is True
