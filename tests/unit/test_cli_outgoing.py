"""The outgoing side of the `dbmail` command, and how main() reads its settings and reports what
goes wrong: render, redrive, resend, the env file, an interrupt, `python -m dbmail.cli`."""

from __future__ import annotations

import json
import os
import runpy
import shlex

import pytest

from dbmail import wiring
from dbmail.cli import main
from dbmail.outgoing.store import Store
from tests.conftest import ROOT, clear_caches, drain, function_settings
from tests.unit.test_expand import submit


def expanded(n=1, **kwargs) -> str:
    rid = submit(n=n, sendto_fn_name="", **kwargs)
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    return rid


# --- render ---------------------------------------------------------------------------------------


def test_render_prints_the_email_rendered_again(moto_stack, capsys):
    # given an expanded request whose email's body was cleared once sent
    rid = expanded(n=1)
    store = Store(moto_stack.settings)
    (email,) = store.iter_emails(rid)
    # when it is rendered again from the command line
    assert main(["render", rid, email.email_key]) == 0
    # then the recipient, sender, subject and body are printed as JSON (non-ASCII kept)
    out = capsys.readouterr().out
    assert "Zoë" in out
    assert json.loads(out) == {
        "send_to": '"Zoë Ng1" <user1@example.net>',
        "send_from": "Splash <splash@example.org>",
        "subject": "Hi Zoë",
        "msgtext": "Dear Zoë Splash",
    }


def test_render_of_an_unknown_email_exits_2(moto_stack, capsys):
    rid = expanded(n=1)
    assert main(["render", rid, "u9999999999#0"]) == 2
    assert capsys.readouterr().err == f"dbmail: RequestInvalid: no email 'u9999999999#0' in request {rid!r}\n"


def test_render_when_the_recipient_is_gone_exits_2(moto_stack, capsys):
    # given an email whose recipient item was removed
    rid = expanded(n=1)
    store = Store(moto_stack.settings)
    (email,) = store.iter_emails(rid)
    store.delete_recipients(rid)
    # when it is rendered again, then the missing recipient is named
    assert main(["render", rid, email.email_key]) == 2
    assert capsys.readouterr().err == (
        f"dbmail: RequestInvalid: recipient {email.recipient_key!r} of request {rid!r} is gone\n"
    )


def test_status_of_an_unknown_request_exits_2(moto_stack, capsys):
    assert main(["status", "0123456789abcdef"]) == 2
    assert capsys.readouterr().err == "dbmail: RequestInvalid: no request '0123456789abcdef'\n"


# --- redrive --------------------------------------------------------------------------------------


def test_redrive_moves_the_dead_letters_back_to_the_send_queue(moto_stack, capsys):
    # given three messages on the send dead-letter queue
    bodies = [json.dumps({"request_id": "r", "email_key": f"k{i}"}) for i in range(3)]
    for body in bodies:
        moto_stack.sqs.send_message(QueueUrl=moto_stack.dlq_url, MessageBody=body)
    # when they are redriven
    assert main(["redrive", "--dlq-url", moto_stack.dlq_url]) == 0
    # then the command says how many moved, the send queue has them, and the DLQ is empty
    assert capsys.readouterr().out == "3 messages moved back to the send queue\n"
    moved = drain(moto_stack.sqs, moto_stack.settings.send_queue_url)
    assert sorted(m["Body"] for m in moved) == sorted(bodies)
    assert drain(moto_stack.sqs, moto_stack.dlq_url) == []


def test_redrive_defaults_to_the_local_stacks_dlq(moto_stack, monkeypatch, capsys):
    # given the local stack's DLQ URL in the environment and one dead letter
    monkeypatch.setenv("DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL", moto_stack.dlq_url)
    moto_stack.sqs.send_message(QueueUrl=moto_stack.dlq_url, MessageBody="{}")
    # when redrive runs without --dlq-url, then it uses that queue
    assert main(["redrive"]) == 0
    assert capsys.readouterr().out == "1 messages moved back to the send queue\n"


def test_redrive_without_a_dlq_url_is_bad_input(moto_stack, monkeypatch, capsys):
    monkeypatch.delenv("DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL", raising=False)
    assert main(["redrive"]) == 2
    assert capsys.readouterr().err == "dbmail: give --dlq-url (the stack output SendDeadLetterQueueUrl)\n"


# --- resend ---------------------------------------------------------------------------------------


def test_resend_of_an_unknown_request_exits_2_and_queues_nothing(moto_stack, capsys):
    assert main(["resend", "0123456789abcdef"]) == 2
    assert capsys.readouterr().err == "dbmail: NotFound: no request '0123456789abcdef'\n"
    assert drain(moto_stack.sqs, moto_stack.settings.send_queue_url) == []


def test_resend_refuses_emails_that_are_not_failed(moto_stack):
    # given a request (resend's service call, as the command makes it, with another status)
    from dbmail.core.clock import utcnow
    from dbmail.core.errors import RequestInvalid
    from dbmail.outgoing.resend import resend

    rid = expanded(n=1)
    drain(moto_stack.sqs, moto_stack.settings.send_queue_url)
    expander = wiring.expander(moto_stack.settings)
    # when emails that are sent (or queued) are asked for, then it is refused and nothing is queued
    with pytest.raises(RequestInvalid, match=r"only emails in .*failed.* can be resent, not .*sent"):
        resend(expander.store, expander.queue, rid, utcnow(), statuses=["sent", "failed"])
    assert drain(moto_stack.sqs, moto_stack.settings.send_queue_url) == []
    assert int(expander.store.get_request(rid).resent_count or 0) == 0


def test_resends_refusal_names_the_statuses_by_their_values(moto_stack):
    from dbmail.core.clock import utcnow
    from dbmail.core.errors import RequestInvalid
    from dbmail.outgoing.resend import resend

    rid = expanded(n=1)
    expander = wiring.expander(moto_stack.settings)
    with pytest.raises(RequestInvalid) as refused:
        resend(expander.store, expander.queue, rid, utcnow(), statuses=["sent"])
    assert str(refused.value) == "only emails in ['failed'] can be resent, not ['sent']"


def test_resend_with_no_failed_emails_queues_none(moto_stack, capsys):
    # given a request whose only email is still queued
    rid = expanded(n=1)
    drain(moto_stack.sqs, moto_stack.settings.send_queue_url)
    # when it is resent, then none is queued again and the request's resent count stays 0
    assert main(["resend", rid, "--status", "failed"]) == 0
    assert capsys.readouterr().out == f"0 emails of request {rid} queued again\n"
    assert drain(moto_stack.sqs, moto_stack.settings.send_queue_url) == []
    assert int(Store(moto_stack.settings).get_request(rid).resent_count or 0) == 0


# --- settings from the env file -------------------------------------------------------------------


def test_with_no_settings_in_the_environment_the_env_file_is_read(moto_stack, monkeypatch, tmp_path, capsys):
    # given the stack's settings only in an env file (as `make up` writes .local/stack.env)
    rid = submit(n=2, sendto_fn_name="")
    settings = {name: value for name, value in os.environ.items() if name.startswith("DBMAIL_")}
    env_file = tmp_path / "stack.env"
    env_file.write_text(
        "# written by make up\n" + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in settings.items())
    )
    for name in settings:
        monkeypatch.delenv(name)  # restored (to the same values) after the test
    clear_caches()
    # when a status is asked for with that file
    assert main(["--env-file", str(env_file), "status", "--json", rid]) == 0
    # then the file's settings are used
    assert json.loads(capsys.readouterr().out)["recipients"] == 2
    assert {name: os.environ[name] for name in settings} == settings


def test_settings_in_the_environment_win_over_the_env_file(moto_stack, tmp_path, capsys):
    # given an env file naming another request table, while the environment has the stack's
    rid = submit(n=1, sendto_fn_name="")
    env_file = tmp_path / "stack.env"
    env_file.write_text("export DBMAIL_REQUEST_TABLE=elsewhere\n")
    table = os.environ["DBMAIL_REQUEST_TABLE"]
    # when a status is asked for, then the environment's table is read, the file ignored
    assert main(["--env-file", str(env_file), "status", "--json", rid]) == 0
    assert json.loads(capsys.readouterr().out)["request_id"] == rid
    assert os.environ["DBMAIL_REQUEST_TABLE"] == table


def test_an_unreadable_env_file_exits_3_naming_it(moto_stack, monkeypatch, tmp_path, capsys):
    # given no settings in the environment and an env file with an unclosed quote
    monkeypatch.delenv("DBMAIL_REQUEST_TABLE")
    clear_caches()
    env_file = tmp_path / "stack.env"
    env_file.write_text("export DBMAIL_REQUEST_TABLE='unclosed\n")
    # when a command runs, then it exits 3 with one line naming the file
    assert main(["--env-file", str(env_file), "status", "abc"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"dbmail: ConfigurationError: {env_file}: cannot read settings: ")
    assert "No closing quotation" in err and len(err.splitlines()) == 1
    assert "DBMAIL_REQUEST_TABLE" not in os.environ


# --- an interrupt, --debug, python -m -------------------------------------------------------------


def test_an_interrupt_is_one_line_and_exit_130_unless_debug(moto_stack, monkeypatch, capsys):
    # given a command interrupted by ^C
    def interrupted(request_id):
        raise KeyboardInterrupt

    monkeypatch.setattr("dbmail.client.request_status", interrupted)
    # when it runs, then it says so and exits 130
    assert main(["status", "abc"]) == 130
    assert capsys.readouterr().err == "dbmail: interrupted\n"
    # and with --debug the interrupt propagates
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "status", "abc"])


def test_debug_sends_the_services_logs_to_stderr(moto_stack, capsys):
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        # when a command runs with --debug, then the root logger writes INFO to stderr
        assert main(["--debug", "status", submit(n=1, sendto_fn_name="")]) == 0
        assert root.level == logging.INFO
        assert any(getattr(h, "stream", None) is not None for h in root.handlers)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_python_m_dbmail_cli_runs_main_and_exits_with_its_status(moto_stack, monkeypatch, capsys):
    # given `python -m dbmail.cli submit examples/request.json`
    monkeypatch.setattr("sys.argv", ["dbmail", "submit", str(ROOT / "examples" / "request.json")])
    # when it runs, then it exits 0 having printed the new request's id
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("dbmail.cli", run_name="__main__")
    assert exited.value.code == 0
    request_id = capsys.readouterr().out.strip()
    assert Store(moto_stack.settings).get_request(request_id) is not None


# --- the request file: how a wrong value is named -------------------------------------------------


def _request_file(tmp_path, **changes) -> str:
    spec = json.loads((ROOT / "examples" / "request.json").read_text(encoding="utf-8"))
    spec.update(changes)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "changes, line",
    [
        ({"subject": None}, "subject must be a string, not null"),
        ({"subject": True}, "subject must be a string, not a boolean (true)"),
        ({"priority_level": 1.5}, "priority_level must be an integer or null, not a number (1.5)"),
        (
            {"sender": 12345678901234567890123456789012345678901234567890},
            "sender must be a string or null, not an integer (1234567890123456789012345678901234567...)",
        ),
        ({"creator": "ada@example.net"}, "creator must be an object, not a string ('ada@example.net')"),
        ({"creator": {"user_id": 1, "email": ["a"]}}, "creator.email must be a string or null, not a list"),
        ({"special_headers": {"X-Note": 1}}, "special_headers['X-Note'] must be a string, not an integer (1)"),
    ],
)
def test_a_wrong_value_is_named_with_its_type_and_short_value(changes, line, moto_stack, tmp_path, capsys):
    assert main(["submit", _request_file(tmp_path, **changes)]) == 2
    assert capsys.readouterr().err == f"dbmail: {line}\n"
    assert Store(moto_stack.settings).models.MessageRequest.count() == 0


def test_null_optional_fields_are_accepted(moto_stack, tmp_path, capsys):
    # given a request file whose optional fields are null
    path = _request_file(tmp_path, creator=None, processed_by=None, sent_by=None, var_dict=None, priority_level=None)
    # when submitted, then it is written, unscheduled and without a creator
    assert main(["submit", path]) == 0
    request = Store(moto_stack.settings).get_request(capsys.readouterr().out.strip())
    assert (request.creator, request.processed_by, request.sent_by) == (None, None, None)


def test_a_directory_or_an_unreadable_path_is_named(moto_stack, tmp_path, capsys):
    # a directory given as the request file
    assert main(["submit", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"dbmail: {tmp_path}: is a directory, not a JSON file\n"
    # a path the system cannot open (a name too long)
    long = str(tmp_path / ("x" * 300))
    assert main(["submit", long]) == 2
    assert capsys.readouterr().err == f"dbmail: {long}: cannot read: File name too long\n"


def test_without_debug_the_services_logs_go_nowhere(moto_stack, capsys):
    import logging

    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        for handler in handlers:
            root.removeHandler(handler)
        # given no logging configured; when a command runs, then a NullHandler swallows the logs
        assert main(["status", submit(n=1, sendto_fn_name="")]) == 0
        assert [type(h) for h in root.handlers] == [logging.NullHandler]
        assert capsys.readouterr().err == ""
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
