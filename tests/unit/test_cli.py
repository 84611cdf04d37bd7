"""The `dbmail` command: submit a JSON request file, then read its status."""

import json

from dbmail.cli import main
from tests.conftest import ROOT


def test_submit_then_status(moto_stack, capsys):
    # given the example request file from the README
    assert main(["submit", str(ROOT / "examples" / "request.json")]) == 0
    request_id = capsys.readouterr().out.strip()
    # when its status is asked for
    assert main(["status", request_id]) == 0
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
    assert main(["lists", "add", "--regex", "^announce$", "--handler", "PlainList"]) == 0
    assert json.loads(capsys.readouterr().out)["seq"] == 45
    # and bad input is refused with the reason
    assert main(["redirects", "set", "oops", "ada@example.net,,nobody"]) == 2
    assert "invalid destination entries" in capsys.readouterr().err
    assert main(["held", "release"]) == 2
    assert "needs: message_id" in capsys.readouterr().err
