"""SES email receiving on the local stack: the runner's SMTP front for receipt rules, as far as
the inbound function relies on it (SMTP front, S3, an asynchronous SES receipt event with Lambda's
retries and on-failure queue, a stop that keeps the unfinished event).

Real SMTP (smtplib, CRLF bytes) goes to the session stack's runner (template.yaml's InboundRule)
and to a second runner for selftest/inbound.yaml, whose probe function records every SES
receipt event it gets and raises or waits when the mail's X-Probe-Mode header asks it to. What
the product does with real-world, malformed and large mail is in test_inbound*.py and
test_operations.py.
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


def test_the_template_rule_takes_mail_for_the_chapter_domains_only_and_stores_it_in_its_bucket(local_stack):
    env = local_stack.env
    assert env["DBMAIL_LOCAL_SMTP_HOST"] == "127.0.0.1"
    port = int(env["DBMAIL_LOCAL_SMTP_PORT"])
    with smtplib.SMTP(env["DBMAIL_LOCAL_SMTP_HOST"], port, timeout=10) as client:
        client.ehlo("client.outside.test")
        assert client.esmtp_features["size"] == str(SIZE_LIMIT)  # over SES's 40 MB: the product's check is tested
        client.mail(SENDER)
        for refused in ("someone@not-a-chapter.example", "x@sub.example.org", "x@example.org.evil"):
            code, reply = client.rcpt(refused)
            assert (code, reply[:5]) == (550, b"5.7.1"), refused
        assert client.rcpt("Nobody-Here@Example.ORG")[0] == 250

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
    sent = _message(
        From=f"Zoë Sender <{SENDER}>",
        To="Class One <class-1@inbound.test>",
        Subject="Wëlcome to class",
        Message_ID="<probe-1@outside.test>",
    )
    recipients = ["class-1@inbound.test", "Class-2@Inbound.Test"]
    message_id = inbound.send(sent, recipients)

    # SES's trace headers on top of the message as sent, stored before the 250 reply
    trace = _trace(inbound.stored(f"probe/{message_id}"), sent)
    assert [line.split(":")[0] for line in trace] == [
        "Return-Path",
        "Received",
        "X-SES-Spam-Verdict",
        "X-SES-Virus-Verdict",
    ]
    assert trace[0] == f"Return-Path: <{SENDER}>"
    assert f"with SMTP id {message_id};" in trace[1]
    assert trace[2:] == ["X-SES-Spam-Verdict: PASS", "X-SES-Virus-Verdict: PASS"]

    # the event has SES's shape (what `sam local generate-event` gives), with what the
    # inbound function reads: the message id (its S3 key), the recipients and the verdicts
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
    assert (record["eventSource"], record["eventVersion"]) == ("aws:ses", "1.0")

    mail, receipt = record["ses"]["mail"], record["ses"]["receipt"]
    assert (mail["messageId"], mail["source"], mail["destination"]) == (message_id, SENDER, recipients)
    assert mail["commonHeaders"]["subject"] == "Wëlcome to class"
    assert receipt["recipients"] == recipients
    assert receipt["timestamp"] == mail["timestamp"]
    assert time.strptime(mail["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    for verdict in ("spamVerdict", "virusVerdict", "spfVerdict", "dkimVerdict", "dmarcVerdict"):
        assert receipt[verdict] == {"status": "PASS"}
    assert receipt["action"] == {"type": "Lambda", "functionArn": inbound.function_arn, "invocationType": "Event"}
    inbound.stack.wait_for(lambda: not inbound.spooled())  # done with: nothing left queued


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
