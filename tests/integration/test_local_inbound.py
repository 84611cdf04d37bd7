"""SES email receiving on the local stack: the runner's SMTP front for receipt rules.

Real SMTP (smtplib, CRLF bytes) goes to the session stack's runner (template.yaml's InboundRule)
and to a second runner for selftest/inbound.yaml, whose probe function records every SES
receipt event it gets and raises or waits when the mail's X-Probe-Mode header asks it to.
"""

import json
import re
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from dbmail_local import stack
from dbmail_local.cfn import LocalTarget, Template
from dbmail_local.resources import create_resources

pytestmark = pytest.mark.integration

SELFTEST = Path(__file__).parent / "selftest"
INBOUND_RUNNER = "inbound-selftest-runner"
SENDER = "zoe@outside.test"
SES_MESSAGE_ID = re.compile(r"[0-9a-v]{40}")
SIZE_LIMIT = 45 * 1024 * 1024


def _message(body: str = "Hello class.\n", **headers: str) -> bytes:
    message = EmailMessage(policy=SMTP)
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


def _send(port: int, raw: bytes, recipients: list[str], sender: str = SENDER) -> str:
    """Sends over SMTP and returns SES's message id from the 250 reply to DATA."""
    with smtplib.SMTP(stack.HOST, port, timeout=60) as client:
        client.ehlo("client.outside.test")
        assert client.mail(sender)[0] == 250
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        code, reply = client.data(raw)
    assert code == 250, reply
    ok, message_id = reply.decode().split()
    assert ok == "Ok" and SES_MESSAGE_ID.fullmatch(message_id)
    return message_id


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((stack.HOST, port), timeout=1):
            return True
    except OSError:
        return False


class Inbound:
    """selftest/inbound.yaml's resources in the session's emulators, and a runner for them."""

    def __init__(self, local_stack, out: Path) -> None:
        self.stack = local_stack
        self.out = out
        self.template = Template.load(
            SELFTEST / "inbound.yaml",
            SELFTEST / "inbound-parameters.json",
            LocalTarget(sqs_url=local_stack.env["AWS_ENDPOINT_URL_SQS"]),
        )
        create_resources(self.template, local_stack.client)
        self.port = stack.choose_port(0, taken={int(local_stack.env["DBMAIL_LOCAL_SMTP_PORT"])})
        self.bucket = self.template.physical_name("InboundProbeBucket")
        self.failure_queue = self.template.ref("InboundProbeFailureQueue")
        self.function_arn = self.template.get_att("InboundProbeFunction", "Arn")
        self.spool = local_stack.state.async_events / "InboundProbeFunction"

    def start(self) -> int:
        return self.stack.start_runner(
            INBOUND_RUNNER,
            template=SELFTEST / "inbound.yaml",
            parameters=SELFTEST / "inbound-parameters.json",
            extra_env={"SELFTEST_OUT": str(self.out), "DBMAIL_LOCAL_RETRY_DELAY": "0"},
            smtp_port=self.port,
        )

    def stop(self) -> str:
        return self.stack.stop_runner(INBOUND_RUNNER)

    def send(self, raw: bytes, recipients: list[str], sender: str = SENDER) -> str:
        return _send(self.port, raw, recipients, sender)

    def stored(self, key: str) -> bytes:
        return self.stack.client("s3").get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self) -> set[str]:
        pages = self.stack.client("s3").get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def receipts(self, message_id: str) -> list[dict[str, Any]]:
        """The probe function's invocations for this message, in order."""
        entries = [json.loads(path.read_text()) for path in self.out.glob("receipt-*.json")]
        mine = [entry for entry in entries if entry["event"]["Records"][0]["ses"]["mail"]["messageId"] == message_id]
        return sorted(mine, key=lambda entry: entry["time"])

    def event(self, message_id: str) -> dict[str, Any]:
        """The one SES receipt event the probe function got for this message."""
        (entry,) = self.stack.wait_for(lambda: self.receipts(message_id))
        return entry["event"]

    @property
    def log(self) -> Path:
        return self.stack.state.log_file(INBOUND_RUNNER)

    def spooled(self) -> list[Path]:
        return sorted(self.spool.glob("*.json"))


@pytest.fixture(scope="module")
def inbound(local_stack, tmp_path_factory):
    probe = Inbound(local_stack, tmp_path_factory.mktemp("inbound-out"))
    probe.start()
    yield probe
    probe.stop()


def _ses_reference_event() -> dict[str, Any]:
    """`sam local generate-event ses email-receiving`: the shape to match."""
    sam = Path(sys.executable).parent / "sam"
    shown = subprocess.run([sam, "local", "generate-event", "ses", "email-receiving"], capture_output=True, check=True)
    return json.loads(shown.stdout)["Records"][0]


def _trace(stored: bytes, sent: bytes) -> list[str]:
    """The header lines SES put on top of what was sent."""
    assert stored.endswith(sent)
    return stored[: len(stored) - len(sent)].decode().split("\r\n")[:-1]


# ---- template.yaml's receipt rule on the session's runner --------------------------------


def test_stack_env_names_the_smtp_front_and_the_template_rule_stores_mail_in_its_bucket(local_stack):
    env = local_stack.env
    assert env["DBMAIL_LOCAL_SMTP_HOST"] == "127.0.0.1"
    port = int(env["DBMAIL_LOCAL_SMTP_PORT"])
    with smtplib.SMTP(env["DBMAIL_LOCAL_SMTP_HOST"], port, timeout=10) as client:
        client.ehlo("client.outside.test")
        assert client.esmtp_features["size"] == str(SIZE_LIMIT)
        client.mail(SENDER)
        code, reply = client.rcpt("someone@not-a-chapter.example")
        assert (code, reply[:5]) == (550, b"5.7.1")

    sent = _message(From=f"Zoë <{SENDER}>", To="nobody-here@example.org", Subject="local inbound check")
    message_id = _send(port, sent, ["nobody-here@example.org"])
    stored = (
        local_stack.client("s3")
        .get_object(Bucket=env["DBMAIL_INBOUND_BUCKET"], Key=env["DBMAIL_INBOUND_PREFIX"] + message_id)["Body"]
        .read()
    )
    assert _trace(stored, sent)[0] == f"Return-Path: <{SENDER}>"
    # Whatever InboundFunction does with it is done before the next tests look at the outbox.
    spool = local_stack.state.async_events / "InboundFunction"
    local_stack.wait_for(lambda: not list(spool.glob("*.json")), timeout=30)


# ---- selftest/inbound.yaml on its own runner --------------------------------------------


def test_a_message_is_stored_like_ses_and_the_function_gets_the_receipt_event(inbound):
    long_value = "a header long enough that the SMTP policy folds it over more than one line " * 3
    sent = _message(
        From=f"Zoë Sender <{SENDER}>",
        To="Class One <class-1@inbound.test>, exact@elsewhere.test",
        Cc='"Doe, Jane" <jane@outside.test>',
        Subject="Wëlcome to class",
        Date="Wed, 07 Oct 2015 12:34:56 -0700",
        Message_ID="<probe-1@outside.test>",
        X_Long=long_value,
    )
    assert re.search(rb"X-Long: [^\r]+\r\n [^\r]", sent)  # folded
    recipients = ["class-1@inbound.test", "Exact@Elsewhere.test", "list@second.test"]
    message_id = inbound.send(sent, recipients)

    # Both rules store the message, each under its prefix; the first rule's StopAction keeps
    # its recipients from the second rule, so only list@second.test reaches it.
    stored = inbound.stored(f"probe/{message_id}")
    assert inbound.stored(f"second/{message_id}") == stored
    trace = _trace(stored, sent)
    assert [line.split(":")[0] for line in trace] == [
        "Return-Path",
        "Received",
        "X-SES-Spam-Verdict",
        "X-SES-Virus-Verdict",
    ]
    assert trace[0] == f"Return-Path: <{SENDER}>"
    assert f"with SMTP id {message_id};" in trace[1]
    assert trace[2:] == ["X-SES-Spam-Verdict: PASS", "X-SES-Virus-Verdict: PASS"]

    (entry,) = inbound.stack.wait_for(lambda: inbound.receipts(message_id))
    assert entry["context"]["invoked_function_arn"] == inbound.function_arn
    record = entry["event"]["Records"][0]
    reference = _ses_reference_event()
    assert list(entry["event"]) == ["Records"] and len(entry["event"]["Records"]) == 1
    assert set(record) == set(reference)
    assert set(record["ses"]) == {"mail", "receipt"}
    assert set(record["ses"]["mail"]) == set(reference["ses"]["mail"])
    assert set(record["ses"]["receipt"]) == set(reference["ses"]["receipt"]) | {"dmarcVerdict"}
    assert set(record["ses"]["receipt"]["action"]) == set(reference["ses"]["receipt"]["action"])
    assert set(record["ses"]["mail"]["commonHeaders"]) == set(reference["ses"]["mail"]["commonHeaders"]) | {"cc"}
    assert (record["eventSource"], record["eventVersion"]) == ("aws:ses", "1.0")

    mail, receipt = record["ses"]["mail"], record["ses"]["receipt"]
    assert (mail["messageId"], mail["source"], mail["destination"]) == (message_id, SENDER, recipients)
    assert mail["headersTruncated"] is False
    assert [header["name"] for header in mail["headers"]] == [
        "Return-Path",
        "Received",
        "X-SES-Spam-Verdict",
        "X-SES-Virus-Verdict",
        "From",
        "To",
        "Cc",
        "Subject",
        "Date",
        "Message-ID",
        "X-Long",
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
    ]
    headers = {header["name"]: header["value"] for header in mail["headers"]}
    assert headers["Subject"].startswith("=?utf-8?q?W=C3=ABlcome")  # as sent; commonHeaders has it decoded
    assert headers["X-Long"].split() == long_value.split() and "\n" not in headers["X-Long"]  # unfolded
    assert mail["commonHeaders"] == {
        "returnPath": SENDER,
        "from": [f"Zoë Sender <{SENDER}>"],
        "date": "Wed, 07 Oct 2015 12:34:56 -0700",
        "to": ["Class One <class-1@inbound.test>", "exact@elsewhere.test"],
        "cc": ['"Doe, Jane" <jane@outside.test>'],
        "messageId": "<probe-1@outside.test>",
        "subject": "Wëlcome to class",
    }

    assert receipt["recipients"] == ["class-1@inbound.test", "Exact@Elsewhere.test"]
    assert receipt["timestamp"] == mail["timestamp"]
    assert time.strptime(mail["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert isinstance(receipt["processingTimeMillis"], int) and receipt["processingTimeMillis"] >= 0
    for verdict in ("spamVerdict", "virusVerdict", "spfVerdict", "dkimVerdict", "dmarcVerdict"):
        assert receipt[verdict] == {"status": "PASS"}
    assert receipt["action"] == {"type": "Lambda", "functionArn": inbound.function_arn, "invocationType": "Event"}
    inbound.stack.wait_for(lambda: not inbound.spooled())  # done with: nothing left queued


def test_recipients_no_rule_matches_are_refused(inbound):
    before = inbound.keys()
    with smtplib.SMTP(stack.HOST, inbound.port, timeout=10) as client:
        client.ehlo("client.outside.test")
        client.mail(SENDER)
        for refused in ("someone@elsewhere.test", "x@sub.inbound.test", "x@disabled.test", "x@inbound.test.evil"):
            code, reply = client.rcpt(refused)
            assert (code, reply[:5]) == (550, b"5.7.1"), refused
        assert client.rcpt("CLASS-9@Inbound.Test")[0] == 250
    with pytest.raises(smtplib.SMTPRecipientsRefused), smtplib.SMTP(stack.HOST, inbound.port, timeout=10) as client:
        client.sendmail(SENDER, ["someone@elsewhere.test"], _message(Subject="nobody takes this"))
    assert inbound.keys() == before


def test_local_verdict_headers_set_the_verdicts(inbound):
    sent = _message(
        From=SENDER,
        To="class-1@inbound.test",
        Subject="cheap pills",
        X_Dbmail_Local_Spam_Verdict="FAIL",
        X_Dbmail_Local_Dkim_Verdict="gray",
    )
    message_id = inbound.send(sent, ["class-1@inbound.test"])
    receipt = inbound.event(message_id)["Records"][0]["ses"]["receipt"]
    assert receipt["spamVerdict"] == {"status": "FAIL"} and receipt["dkimVerdict"] == {"status": "GRAY"}
    assert receipt["virusVerdict"] == receipt["spfVerdict"] == receipt["dmarcVerdict"] == {"status": "PASS"}
    trace = _trace(inbound.stored(f"probe/{message_id}"), sent)
    assert trace[2:] == ["X-SES-Spam-Verdict: FAIL", "X-SES-Virus-Verdict: PASS"]


def test_a_function_that_always_raises_is_retried_twice_then_reported_to_the_failure_queue(inbound):
    sent = _message(From=SENDER, To="class-1@inbound.test", Subject="poison", X_Probe_Mode="raise")
    message_id = inbound.send(sent, ["class-1@inbound.test"])
    sqs = inbound.stack.client("sqs")

    def failure_records() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=inbound.failure_queue, WaitTimeSeconds=1).get("Messages", [])
        for message in messages:
            sqs.delete_message(QueueUrl=inbound.failure_queue, ReceiptHandle=message["ReceiptHandle"])
        return [json.loads(message["Body"]) for message in messages]

    (failure,) = inbound.stack.wait_for(failure_records, timeout=20)
    attempts = inbound.receipts(message_id)
    assert len(attempts) == 3 and all(attempt["raised"] for attempt in attempts)  # 1 + MaximumRetryAttempts 2
    request_id = attempts[0]["context"]["aws_request_id"]
    assert {attempt["context"]["aws_request_id"] for attempt in attempts} == {request_id}  # as Lambda retries

    assert list(failure) == [
        "version",
        "timestamp",
        "requestContext",
        "requestPayload",
        "responseContext",
        "responsePayload",
    ]
    assert failure["version"] == "1.0" and time.strptime(failure["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert failure["requestContext"] == {
        "requestId": request_id,
        "functionArn": f"{inbound.function_arn}:$LATEST",
        "condition": "RetriesExhausted",
        "approximateInvokeCount": 3,
    }
    assert failure["requestPayload"] == attempts[0]["event"]
    assert failure["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    payload = failure["responsePayload"]
    assert payload["errorType"] == "RuntimeError" and payload["requestId"] == request_id
    assert payload["errorMessage"] == f"probe: {message_id} always fails"
    assert "receipt_handler" in payload["stackTrace"][-1] and "dbmail_local" not in "".join(payload["stackTrace"])
    assert not inbound.spooled()


def test_malformed_mail_still_produces_an_event(inbound):
    junk = (
        b"Subject: caf\xe9 \xff report\r\n"
        b"X-Junk: \x80\x81 eight-bit\r\n"
        b"\tfolded \xc3\r\n"
        b"To: class-2@inbound.test\r\n"
        b"this line is not a header\r\n"
        b"X-After: part of the body now\r\n"
        b"\r\n"
        b"body \xff\r\n"
    )
    message_id = inbound.send(junk, ["class-2@inbound.test"], sender="")  # MAIL FROM:<>, as bounces have
    assert inbound.stored(f"probe/{message_id}").endswith(junk)
    mail = inbound.event(message_id)["Records"][0]["ses"]["mail"]
    assert mail["source"] == ""
    own = [(header["name"], header["value"]) for header in mail["headers"][4:]]
    assert own == [
        ("Subject", "caf\ufffd \ufffd report"),
        ("X-Junk", "\ufffd\ufffd eight-bit\tfolded \ufffd"),
        ("To", "class-2@inbound.test"),
    ]
    assert mail["commonHeaders"] == {
        "returnPath": "",
        "to": ["class-2@inbound.test"],
        "subject": "caf\ufffd \ufffd report",
    }

    no_headers = b"just a body, no header at all\r\n"
    message_id = inbound.send(no_headers, ["class-3@inbound.test"])
    mail = inbound.event(message_id)["Records"][0]["ses"]["mail"]
    assert mail["commonHeaders"] == {"returnPath": SENDER}
    assert [header["name"] for header in mail["headers"]] == [
        "Return-Path",
        "Received",
        "X-SES-Spam-Verdict",
        "X-SES-Virus-Verdict",
    ]


def test_headers_over_10_kb_are_cut_from_the_event_but_not_from_the_message(inbound):
    padding = "".join(f"X-Pad-{n:03d}: {'p' * 80}\r\n" for n in range(150))  # about 14 KB
    sent = f"From: {SENDER}\r\nSubject: padded\r\n{padding}\r\nbody\r\n".encode()
    message_id = inbound.send(sent, ["class-1@inbound.test"])
    assert inbound.stored(f"probe/{message_id}").endswith(sent)
    mail = inbound.event(message_id)["Records"][0]["ses"]["mail"]
    assert mail["headersTruncated"] is True
    names = [header["name"] for header in mail["headers"]]
    assert names[4:7] == ["From", "Subject", "X-Pad-000"] and 100 < len(names) < 4 + 2 + 150
    assert sum(len(h["name"]) + len(h["value"]) + 4 for h in mail["headers"]) <= 10 * 1024
    assert mail["commonHeaders"]["subject"] == "padded"


def test_messages_over_40_mb_are_accepted_up_to_the_local_limit(inbound):
    with smtplib.SMTP(stack.HOST, inbound.port, timeout=10) as client:
        client.ehlo("client.outside.test")
        assert client.esmtp_features["size"] == str(SIZE_LIMIT)
        code, _ = client.mail(SENDER, [f"SIZE={SIZE_LIMIT + 1}"])
        assert code == 552
    line = b"x" * 998 + b"\r\n"
    big = b"From: " + SENDER.encode() + b"\r\nSubject: big\r\n\r\n" + line * (41 * 1024 * 1024 // len(line))
    message_id = inbound.send(big, ["class-1@inbound.test"])
    head = inbound.stack.client("s3").head_object(Bucket=inbound.bucket, Key=f"probe/{message_id}")
    assert head["ContentLength"] > 41 * 1000 * 1000
    assert inbound.event(message_id)["Records"][0]["ses"]["mail"]["commonHeaders"]["subject"] == "big"


def test_each_accepted_message_is_logged_without_addresses_or_content(inbound):
    sent = _message(From=SENDER, To="class-4@inbound.test, class-5@inbound.test", Subject="secret plans")
    message_id = inbound.send(sent, ["class-4@inbound.test", "class-5@inbound.test"])
    inbound.event(message_id)
    log_text = inbound.log.read_text()
    # (the runner may be writing a later line about the message right now: complete lines only)
    (accepted,) = [
        json.loads(line)
        for line in log_text.splitlines(keepends=True)
        if message_id in line and '"message accepted"' in line and line.endswith("\n")
    ]
    assert accepted["message"] == "message accepted"
    assert (accepted["recipients"], accepted["bytes"], accepted["rules"]) == (2, len(sent), ["probe-mail"])
    for secret in (SENDER, "inbound.test", "elsewhere.test", "secret plans", "Hello class"):
        assert secret not in log_text


def test_stopping_the_runner_stops_the_smtp_front_and_keeps_the_unfinished_event(inbound):
    sent = _message(From=SENDER, To="class-1@inbound.test", Subject="slow", X_Probe_Mode="wait")
    message_id = inbound.send(sent, ["class-1@inbound.test"])
    inbound.stack.wait_for((inbound.out / f"waiting-{message_id}").exists)

    started = time.monotonic()
    assert inbound.stop() == "stopped"
    assert time.monotonic() - started < 5  # the handler saw no time left and returned (Timeout is 20 s)
    assert not _listening(inbound.port)
    logged = [json.loads(line)["message"] for line in inbound.log.read_text().splitlines() if line.startswith("{")]
    assert logged.index("SMTP front stopped") < logged.index("runner stopped")
    (interrupted,) = inbound.receipts(message_id)
    assert interrupted["interrupted"]
    (queued,) = inbound.spooled()  # failed while stopping: still queued, not given up
    assert json.loads(queued.read_text())["attempts"] == 1

    inbound.start()
    assert _listening(inbound.port)
    finished = inbound.stack.wait_for(lambda: [e for e in inbound.receipts(message_id) if not e.get("raised")])
    assert finished[0]["context"]["aws_request_id"] == interrupted["context"]["aws_request_id"]
    inbound.stack.wait_for(lambda: not inbound.spooled())
    inbound.event(inbound.send(_message(From=SENDER, Subject="after"), ["class-1@inbound.test"]))
