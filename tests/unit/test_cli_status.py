"""`dbmail status` for a person (every status's count, the reconciliation), its live progress bar
under --watch, and `dbmail failures`: who did not get the mail and why."""

from __future__ import annotations

import io
import json

import pytest

from dbmail import wiring
from dbmail.cli import main
from dbmail.cli.outgoing import is_finished, progress_line, watch
from dbmail.client import request_failures, request_status
from dbmail.core.clock import utcnow
from dbmail.outgoing.store import Store
from tests.conftest import function_settings
from tests.unit.test_expand import submit

# What became of each of seven emails, in email order: (status, attributes set on it).
OUTCOMES = [
    ("sent", {}),
    ("delivered", {"delivered_at": "now"}),
    ("bounced", {"bounce_type": "permanent", "feedback": "550 5.1.1 user unknown", "feedback_at": "now"}),
    ("complained", {"feedback_at": "now"}),
    ("suppressed", {"error": "suppressed: bounce (by ses, 2026-11-30)"}),
    ("failed", {"error": "SES MessageRejected: Email address is not verified", "tries": 3}),
    ("expired", {"error": "not sent by its sent_by time"}),
]


def expanded(n: int) -> str:
    rid = submit(n=n, sendto_fn_name="")
    wiring.expander(function_settings("expand")).expand(rid, owner="stream:t", takeover=True)
    return rid


def settle(store: Store, rid: str, outcomes=OUTCOMES) -> list:
    """Give the request's emails the outcomes, in email_key order."""
    emails = sorted(store.iter_emails(rid), key=lambda e: e.email_key)
    Email = store.models.TextOfEmail
    for email, (status, attributes) in zip(emails, outcomes, strict=True):
        actions = [Email.status.set(status)]
        for name, value in attributes.items():
            actions.append(getattr(Email, name).set(utcnow() if value == "now" else value))
        email.update(actions=actions)
    return emails


@pytest.fixture
def settled(moto_stack):
    rid = expanded(len(OUTCOMES))
    emails = settle(Store(moto_stack.settings), rid)
    return rid, emails


def test_status_shows_every_status_count_and_the_reconciliation(settled, capsys):
    rid, _ = settled
    # when a person asks for the status
    assert main(["status", rid]) == 0
    out = capsys.readouterr().out
    # then every status is counted, the ones no email has too, in the order an email moves
    counts = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert counts[:9] == [
        ["queued", "0"],
        ["processing", "0"],
        ["sent", "1"],
        ["delivered", "1"],
        ["bounced", "1"],
        ["complained", "1"],
        ["suppressed", "1"],
        ["failed", "1"],
        ["expired", "1"],
    ]
    assert ["final", "7", "of", "7"] in counts
    assert f"request {rid}: processed" in out
    assert "reconciliation: balanced, 0 outstanding, not settled, no failure report sent" in out
    # and it says how many did not get the mail, and where to see who
    assert f"did not get the mail: 5 (dbmail failures {rid})" in out


def test_status_json_is_request_status(settled, capsys):
    rid, _ = settled
    assert main(["status", "--json", rid]) == 0
    assert json.loads(capsys.readouterr().out)["emails_by_status"] == request_status(rid)["emails_by_status"]


def test_failures_lists_who_did_not_get_the_mail_and_why(settled, capsys):
    rid, emails = settled
    # when the failures are asked for
    assert main(["failures", rid]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    # then there is one line per email that did not get through: bounced, complained, suppressed,
    # failed, expired, each with its address and why (sent and delivered are not listed)
    assert [line.split()[0] for line in lines] == ["bounced", "complained", "suppressed", "failed", "expired"]
    by_status = {line.split()[0]: line for line in lines}
    assert emails[2].send_to in by_status["bounced"]
    assert by_status["bounced"].endswith("bounced (permanent): 550 5.1.1 user unknown")
    assert "complained: the recipient marked it as spam" in by_status["complained"]
    assert by_status["suppressed"].endswith("suppressed: bounce (by ses, 2026-11-30)")
    assert by_status["failed"].endswith("failed after 3 tries: SES MessageRejected: Email address is not verified")
    assert by_status["expired"].endswith("expired: not sent by its sent_by time")
    assert captured.err == f"5 emails of request {rid} did not get the mail\n"


def test_failures_json_has_the_fields_of_each(settled, capsys):
    rid, emails = settled
    assert main(["failures", "--json", rid]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    bounced = records[0]
    assert {k: bounced[k] for k in ("email_key", "status", "bounce_type", "diagnostic", "tries")} == {
        "email_key": emails[2].email_key,
        "status": "bounced",
        "bounce_type": "permanent",
        "diagnostic": "550 5.1.1 user unknown",
        "tries": 0,
    }
    assert bounced["at"] is not None
    assert [(r["status"], r["tries"]) for r in records][3] == ("failed", 3)
    assert [r.as_dict() for r in request_failures(rid)] == records


def test_failures_of_an_unknown_request_exits_2(moto_stack, capsys):
    assert main(["failures", "0123456789abcdef"]) == 2
    assert capsys.readouterr().err == "dbmail: RequestInvalid: no request '0123456789abcdef'\n"


def test_a_request_everyone_got_has_no_failures(moto_stack, capsys):
    rid = expanded(2)
    settle(Store(moto_stack.settings), rid, [("delivered", {}), ("sent", {})])
    assert main(["failures", rid]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"0 emails of request {rid} did not get the mail\n")


# --- --watch ----------------------------------------------------------------------------------------


def fake_status(status: str, **counts: int) -> dict:
    total = sum(counts.values())
    outstanding = counts.get("queued", 0) + counts.get("processing", 0)
    return {
        "request_id": "r1",
        "status": status,
        "emails": total,
        "render_failed": 0,
        "emails_by_status": counts,
        "reconciliation": {"emails": total, "final": total - outstanding, "outstanding": outstanding},
    }


PROGRESS = [
    fake_status("processing", queued=4),
    fake_status("processed", queued=2, sent=1, delivered=1),
    fake_status("processed", queued=2, sent=1, delivered=1),
    fake_status("processed", sent=1, delivered=2, bounced=1),
]


def test_the_progress_line_is_a_bar_of_final_over_total_with_each_count():
    assert progress_line(PROGRESS[1]) == (
        "[###############---------------] 2/4 final  processed  queued 2  sent 1  delivered 1"
    )
    assert progress_line(PROGRESS[-1]).startswith("[" + "#" * 30 + "] 4/4 final")
    assert progress_line(fake_status("queued")) == "[" + "-" * 30 + "] 0/0 final  queued"
    # finished: the request and every email final; a processing request with all final is not
    assert [is_finished(s) for s in PROGRESS] == [False, False, False, True]
    assert not is_finished(fake_status("processing", sent=3))


def test_watch_prints_a_line_per_change_when_not_a_terminal_until_all_are_final():
    # given statuses that move on, and one that repeats
    reads, sleeps, out = iter(PROGRESS), [], io.StringIO()
    # when watched on a pipe
    last = watch(lambda: next(reads), out, 0.5, tty=False, sleep=sleeps.append)
    # then each new state is one plain line (no control characters), and it stops once all are final
    assert out.getvalue().splitlines() == [progress_line(s) for s in (PROGRESS[0], PROGRESS[1], PROGRESS[3])]
    assert "\r" not in out.getvalue() and "\033" not in out.getvalue()
    assert last is PROGRESS[-1] and sleeps == [0.5, 0.5, 0.5]


def test_watch_redraws_one_line_on_a_terminal():
    reads, out = iter(PROGRESS), io.StringIO()
    watch(lambda: next(reads), out, 1, tty=True, sleep=lambda seconds: None)
    text = out.getvalue()
    assert text.count("\r") == 4 and text.count("\033[K") == 4 and text.endswith("\n") and text.count("\n") == 1


def test_watch_ends_its_line_when_interrupted():
    # given a watch interrupted by Ctrl-C while it waits
    def interrupt(seconds):
        raise KeyboardInterrupt

    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        watch(lambda: PROGRESS[0], out, 1, tty=True, sleep=interrupt)
    # then the terminal's line is ended (the shell's prompt is not glued to the bar)
    assert out.getvalue().endswith("\033[K\n")


def test_status_watch_of_a_finished_request_prints_the_bar_then_the_status(settled, capsys):
    rid, _ = settled
    assert main(["status", rid, "--watch", "--interval", "0.1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[" + "#" * 30 + "] 7/7 final  processed  sent 1  delivered 1  bounced 1")
    assert lines[1] == f"request {rid}: processed"


def test_status_watch_with_no_interval_is_refused(moto_stack, capsys):
    assert main(["status", "abc", "--watch", "--interval", "0"]) == 2
    assert capsys.readouterr().err == "dbmail: --interval must be more than 0 seconds, not 0.0\n"
