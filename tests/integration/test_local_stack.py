"""The local stack against its real processes: resources and stack.env from template.yaml, and
the runner's Lambda behaviour the product relies on (Lambda-shaped stream and SQS records,
bisect, retries and the on-failure queue, partial batches and the DLQ, the schedule event, a
stop and restart that resumes at the checkpoint).

The runner is checked with the test-only functions of selftest/template.yaml, run by a second
runner against the session's emulators. (Every outbox, `up` and CLI path is exercised by the
product's own tests and test_local_cli.py.)
"""

import base64
import json
import subprocess
import time
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dbmail.cli.files import read_env_file
from dbmail_local import DEFAULT_PARAMETERS
from dbmail_local.cfn import LocalTarget, Template
from dbmail_local.function_urls import urls_from_env
from dbmail_local.resources import create_resources
from dbmail_local.stack import write_env_file

pytestmark = pytest.mark.integration

SELFTEST = Path(__file__).parent / "selftest"
SELFTEST_RUNNER = "selftest-runner"


# ---- the stack ------------------------------------------------------------------------


def test_tables_queues_and_ses_identities_are_those_of_the_template_and_creating_them_again_changes_nothing(
    local_stack,
):
    dynamodb, sqs = local_stack.client("dynamodb"), local_stack.client("sqs")
    table = dynamodb.describe_table(TableName=local_stack.env["DBMAIL_REQUEST_TABLE"])["Table"]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == ["ByStatus"]
    assert table["GlobalSecondaryIndexes"][0]["KeySchema"] == [
        {"AttributeName": "status", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
    recipients = dynamodb.describe_table(TableName=local_stack.env["DBMAIL_RECIPIENT_TABLE"])["Table"]
    assert {key["AttributeName"] for key in recipients["KeySchema"]} == {"request_id", "recipient_key"}

    attributes = sqs.get_queue_attributes(QueueUrl=local_stack.env["DBMAIL_SEND_QUEUE_URL"], AttributeNames=["All"])
    assert attributes["Attributes"]["VisibilityTimeout"] == "180"
    assert json.loads(attributes["Attributes"]["RedrivePolicy"]) == {
        "deadLetterTargetArn": local_stack.env["DBMAIL_LOCAL_SENDDEADLETTERQUEUE_ARN"],
        "maxReceiveCount": 3,
    }
    for variable in ("DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL", "DBMAIL_LOCAL_EXPANDFAILUREQUEUE_URL"):
        sqs.get_queue_attributes(QueueUrl=local_stack.env[variable], AttributeNames=["QueueArn"])

    identities = local_stack.client("ses").list_identities(IdentityType="Domain")["Identities"]
    assert set(identities) == {"example.org", "learningu.org"}

    # creating them again (a second `up` on running emulators) changes nothing
    template = Template.load(target=LocalTarget(sqs_url=local_stack.env["AWS_ENDPOINT_URL_SQS"]))
    existing_tables = set(local_stack.client("dynamodb").list_tables()["TableNames"])
    created = create_resources(template, local_stack.client)
    # every table and queue the template declares, by its local name, and nothing new was made
    assert created.tables == [template.physical_name(t) for t in template.resources("AWS::DynamoDB::Table")]
    assert created.queues == [template.physical_name(q) for q in template.resources("AWS::SQS::Queue")]
    assert {"dbmail-MessageRequestTable", "dbmail-InboundMessageTable"} <= set(created.tables)
    assert set(local_stack.client("dynamodb").list_tables()["TableNames"]) == existing_tables


def test_stack_env_holds_every_function_variable_and_bash_reads_back_exactly_what_was_written(local_stack, tmp_path):
    target = LocalTarget(sqs_url=local_stack.env["AWS_ENDPOINT_URL_SQS"])
    urls = urls_from_env(Template.load(target=target), local_stack.env)  # the function URLs `up` chose
    template = Template.load(target=replace(target, function_urls=urls))
    expected = template.environment()
    assert {name: local_stack.env[name] for name in expected} == expected
    # the send function's unsubscribe links point at the runner's URL of the unsubscribe function
    assert set(urls) == {"UnsubscribeFunction", "SendGridEventsFunction", "ArchiveFunction"}
    assert local_stack.env["DBMAIL_UNSUBSCRIBE_URL"] == urls["UnsubscribeFunction"]
    assert urls["UnsubscribeFunction"].startswith("http://127.0.0.1:") and urls["UnsubscribeFunction"].endswith("/")
    assert local_stack.env["DBMAIL_SITE_URL"] == json.loads(DEFAULT_PARAMETERS.read_text())["SiteUrl"]
    assert local_stack.env["DBMAIL_SEND_QUEUE_URL"] == local_stack.env["DBMAIL_LOCAL_SENDQUEUE_URL"]

    shown = subprocess.run(
        ["bash", "-c", f"set -eu; source {local_stack.state.env_file}; env -0"],
        env={"PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    ).stdout.decode()
    sourced = dict(line.split("=", 1) for line in shown.split("\0") if "=" in line)
    assert {name: sourced.get(name) for name in local_stack.env} == local_stack.env
    assert sourced["DBMAIL_DEFAULT_SENDER"] == "ESP Website <info@example.org>"

    # values a parameter file may hold: quotes, $, backquotes, spaces, nothing
    awkward = {"QUOTES": 'it\'s "quoted" $HOME `cmd`', "EMPTY": "", "SPACES": "ESP Website <info@example.org>"}
    path = tmp_path / "stack.env"
    write_env_file(path, awkward)
    assert read_env_file(path) == awkward
    for name, value in awkward.items():
        shown = subprocess.run(["bash", "-c", f'source {path}; printf %s "${name}"'], check=True, capture_output=True)
        assert shown.stdout.decode() == value


# ---- the runner, with the test-only functions -------------------------------------------


class Selftest:
    """The selftest template's resources in the session's emulators, and a runner for its functions."""

    def __init__(self, local_stack, out: Path) -> None:
        self.stack = local_stack
        self.out = out
        self.template = Template.load(
            SELFTEST / "template.yaml",
            SELFTEST / "parameters.json",
            LocalTarget(sqs_url=local_stack.env["AWS_ENDPOINT_URL_SQS"]),
        )
        create_resources(self.template, local_stack.client)
        self.table = self.template.physical_name("ProbeTable")

    def start(self) -> int:
        return self.stack.start_runner(
            SELFTEST_RUNNER,
            template=SELFTEST / "template.yaml",
            parameters=SELFTEST / "parameters.json",
            extra_env={
                "SELFTEST_OUT": str(self.out),
                "DBMAIL_LOCAL_RETRY_DELAY": "0",
                "DBMAIL_LOCAL_SCHEDULE_SECONDS": "1",
            },
        )

    def stop(self) -> str:
        return self.stack.stop_runner(SELFTEST_RUNNER)

    @property
    def log(self) -> Path:
        return self.stack.state.log_file(SELFTEST_RUNNER)

    def url(self, queue: str) -> str:
        return self.template.ref(queue)

    def invocations(self, kind: str) -> list[dict[str, Any]]:
        entries = [json.loads(path.read_text()) for path in self.out.glob(f"{kind}-*.json")]
        return sorted(entries, key=lambda entry: entry["time"])

    def stream_deliveries(self, key: str) -> list[dict[str, Any]]:
        """The stream invocations whose batch held the item ``key``."""
        return [
            entry
            for entry in self.invocations("stream")
            if key in [record["dynamodb"]["Keys"]["pk"]["S"] for record in entry["event"]["Records"]]
        ]

    def handled(self, key: str) -> list[dict[str, Any]]:
        """The stream invocations that succeeded for the item ``key``."""
        return [
            entry for entry in self.invocations("stream") if not entry.get("raised") and key in entry.get("handled", [])
        ]

    def put(self, key: str, **attributes: Any) -> None:
        item = {"pk": {"S": key}} | {name: _attribute(value) for name, value in attributes.items()}
        self.stack.client("dynamodb").put_item(TableName=self.table, Item=item)

    def sequence(self, key: str) -> str:
        for entry in self.stream_deliveries(key):
            for record in entry["event"]["Records"]:
                if record["dynamodb"]["Keys"]["pk"]["S"] == key:
                    return record["dynamodb"]["SequenceNumber"]
        raise AssertionError(f"{key} was never delivered")

    def checkpoint(self) -> int:
        saved = json.loads((self.stack.state.checkpoints / "ProbeStreamFunction.Changes.json").read_text())
        (sequence,) = saved["sequences"].values()
        return int(sequence)


def _attribute(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, bytes):
        return {"B": value}
    return {"S": str(value)}


@pytest.fixture(scope="module")
def selftest(local_stack, tmp_path_factory):
    probe = Selftest(local_stack, tmp_path_factory.mktemp("selftest-out"))
    probe.start()
    yield probe
    probe.stop()


def _run_id() -> str:
    return uuid.uuid4().hex[:8]


def test_schedule_invokes_with_a_scheduled_event(selftest):
    entry = selftest.stack.wait_for(lambda: selftest.invocations("schedule"), timeout=5)[0]
    event = entry["event"]
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events" and event["detail"] == {}
    assert event["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/dbmail-ProbeScheduleFunctionTick"]
    assert (event["account"], event["region"], event["version"]) == ("123456789012", "us-east-1", "0")
    assert time.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ")


def test_sqs_deletes_only_successes_and_a_message_that_always_fails_reaches_the_dlq(selftest):
    run = _run_id()
    sqs = selftest.stack.client("sqs")
    bodies = [{"id": f"{run}-{mode}", "mode": mode} for mode in ("ok", "fail", "raise_once", "also-ok")]
    sqs.send_message_batch(
        QueueUrl=selftest.url("ProbeQueue"),
        Entries=[{"Id": str(n), "MessageBody": json.dumps(body)} for n, body in enumerate(bodies)],
    )

    def dead_letters() -> list[dict[str, Any]]:
        return sqs.receive_message(QueueUrl=selftest.url("ProbeDeadLetterQueue"), WaitTimeSeconds=1).get("Messages", [])

    dead = selftest.stack.wait_for(dead_letters, timeout=20)
    assert [json.loads(message["Body"])["id"] for message in dead] == [f"{run}-fail"]

    def drained() -> bool:
        counts = sqs.get_queue_attributes(QueueUrl=selftest.url("ProbeQueue"), AttributeNames=["All"])["Attributes"]
        return counts["ApproximateNumberOfMessages"] == counts["ApproximateNumberOfMessagesNotVisible"] == "0"

    selftest.stack.wait_for(drained)  # successes deleted; nothing left in flight

    deliveries: dict[str, list[tuple[str, str]]] = {}  # id -> (receive count, outcome)
    for entry in selftest.invocations("queue"):
        for record in entry["event"]["Records"]:
            body = json.loads(record["body"])
            if body["id"].startswith(run):
                failed = entry.get("raised") or record["messageId"] in entry["failed"]
                deliveries.setdefault(body["id"], []).append(
                    (record["attributes"]["ApproximateReceiveCount"], "failed" if failed else "ok")
                )
    assert deliveries[f"{run}-fail"] == [("1", "failed"), ("2", "failed"), ("3", "failed")]
    for ok in (f"{run}-ok", f"{run}-also-ok", f"{run}-raise_once"):
        assert [outcome for _, outcome in deliveries[ok]].count("ok") == 1
    raised = [entry for entry in selftest.invocations("queue") if entry.get("raised")]
    assert len(raised) == 1
    for record in raised[0]["event"]["Records"]:  # a handler error deletes nothing: all come again
        later = deliveries[json.loads(record["body"])["id"]][-1]
        assert int(later[0]) > int(record["attributes"]["ApproximateReceiveCount"])


def test_sqs_event_and_context_are_lambda_shaped(selftest):
    sqs = selftest.stack.client("sqs")
    sqs.send_message(
        QueueUrl=selftest.url("ProbeQueue"),
        MessageBody=json.dumps({"id": _run_id(), "mode": "ok"}),
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "probe"}},
    )
    entry = selftest.stack.wait_for(
        lambda: [e for e in selftest.invocations("queue") if "kind" in e["event"]["Records"][0]["messageAttributes"]]
    )[0]
    record = entry["event"]["Records"][0]
    assert set(record) == {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "md5OfMessageAttributes",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert (record["eventSource"], record["awsRegion"]) == ("aws:sqs", "us-east-1")
    assert record["eventSourceARN"] == selftest.template.get_att("ProbeQueue", "Arn")
    assert {"ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp"} <= set(
        record["attributes"]
    )
    assert record["messageAttributes"]["kind"] == {
        "stringValue": "probe",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }

    context = entry["context"]
    assert context["function_name"] == "dbmail-ProbeQueueFunction"
    assert context["invoked_function_arn"] == "arn:aws:lambda:us-east-1:123456789012:function:dbmail-ProbeQueueFunction"
    assert (context["function_version"], context["memory_limit_in_mb"]) == ("$LATEST", "256")
    assert context["log_group_name"] == "/aws/lambda/dbmail-ProbeQueueFunction"
    assert 0 < entry["remaining_at_start"] <= 5000
    request_ids = [e["context"]["aws_request_id"] for e in selftest.invocations("queue")]
    assert len(set(request_ids)) == len(request_ids)

    assert entry["environment"] == {
        "PROBE_QUEUE_URL": selftest.url("ProbeQueue"),
        "PROBE_LABELS": "first+second",
        "PROBE_WHERE": "us-east-1/dbmail-ProbeTable/dbmail-ProbeQueue",
    }


def test_stream_records_are_lambda_shaped_and_only_inserts_pass_the_filter(selftest):
    # (the filter is template.yaml's: {"eventName": ["INSERT"]})
    run = _run_id()
    keep, end = f"keep-{run}", f"keep-{run}-end"
    dynamodb = selftest.stack.client("dynamodb")
    selftest.put(keep, blob=b"\x00\xff")
    dynamodb.update_item(
        TableName=selftest.table,
        Key={"pk": {"S": keep}},
        UpdateExpression="SET note = :n",
        ExpressionAttributeValues={":n": {"S": "changed"}},
    )
    dynamodb.delete_item(TableName=selftest.table, Key={"pk": {"S": keep}})
    selftest.put(end)
    selftest.stack.wait_for(lambda: selftest.handled(end))

    events = [
        record["eventName"]
        for entry in selftest.stream_deliveries(keep)
        for record in entry["event"]["Records"]
        if record["dynamodb"]["Keys"]["pk"]["S"] == keep
    ]
    assert events == ["INSERT"]  # MODIFY and REMOVE filtered out
    assert selftest.checkpoint() >= int(selftest.sequence(end))  # and checkpointed past with the rest

    record = next(
        r for e in selftest.stream_deliveries(keep) for r in e["event"]["Records"] if r["eventName"] == "INSERT"
    )
    stream_arn = dynamodb.describe_table(TableName=selftest.table)["Table"]["LatestStreamArn"]
    assert list(record) == [
        "eventID",
        "eventName",
        "eventVersion",
        "eventSource",
        "awsRegion",
        "dynamodb",
        "eventSourceARN",
    ]
    assert (record["eventSource"], record["awsRegion"], record["eventSourceARN"]) == (
        "aws:dynamodb",
        "us-east-1",
        stream_arn,
    )
    data = record["dynamodb"]
    assert data["Keys"] == {"pk": {"S": keep}}
    assert data["NewImage"]["blob"] == {"B": base64.b64encode(b"\x00\xff").decode()}
    assert isinstance(data["ApproximateCreationDateTime"], int) and data["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert {"SequenceNumber", "SizeBytes"} <= set(data)


def test_failing_stream_record_is_bisected_retried_then_sent_to_the_failure_queue(selftest):
    run = _run_id()
    before = f"{run}-before"
    selftest.put(before)
    selftest.stack.wait_for(lambda: selftest.handled(before))
    assert selftest.stop() == "stopped"

    keys = [f"{run}-1", f"{run}-2", f"{run}-3", f"{run}-4"]
    modes = {keys[1]: "raise"}
    selftest.stack.client("dynamodb").batch_write_item(
        RequestItems={
            selftest.table: [
                {"PutRequest": {"Item": {"pk": {"S": key}, "mode": {"S": modes.get(key, "ok")}}}} for key in keys
            ]
        }
    )
    pid = selftest.start()

    sqs = selftest.stack.client("sqs")
    failures = selftest.stack.wait_for(
        lambda: sqs.receive_message(QueueUrl=selftest.url("ProbeStreamFailureQueue"), WaitTimeSeconds=1).get(
            "Messages"
        ),
        timeout=20,
    )
    failure = json.loads(failures[0]["Body"])
    poison = selftest.sequence(keys[1])
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failure["requestContext"]["approximateInvokeCount"] == 3  # MaximumRetryAttempts 2
    assert failure["requestContext"]["functionArn"].endswith(":function:dbmail-ProbeStreamFunction")
    assert failure["responseContext"]["functionError"] == "Unhandled"
    info = failure["DDBStreamBatchInfo"]
    assert (info["batchSize"], info["startSequenceNumber"], info["endSequenceNumber"]) == (1, poison, poison)
    stream_arn = selftest.stack.client("dynamodb").describe_table(TableName=selftest.table)["Table"]["LatestStreamArn"]
    assert info["streamArn"] == stream_arn and info["shardId"].startswith("shardId-")

    assert [len(entry["event"]["Records"]) for entry in selftest.stream_deliveries(keys[1])] == [4, 2, 1, 1, 1]
    for key in (keys[0], keys[2], keys[3]):
        selftest.stack.wait_for(partial(selftest.handled, key))
        assert len(selftest.handled(key)) == 1
    assert pid not in [entry["pid"] for entry in selftest.stream_deliveries(before)]  # not delivered again


def test_stopping_mid_invocation_leaves_no_time_and_the_restart_resumes_at_the_checkpoint(selftest):
    run = _run_id()
    slow, during, after = f"{run}-slow", f"{run}-during", f"{run}-after"
    selftest.put(slow, mode="wait")
    selftest.stack.wait_for((selftest.out / f"waiting-{slow}").exists)
    selftest.put(during)

    started = time.monotonic()
    assert selftest.stop() == "stopped"
    assert time.monotonic() - started < 5  # the handler saw no time left (its Timeout is 20 s)
    (interrupted,) = selftest.stream_deliveries(slow)
    assert interrupted["remaining_at_end"] == 0 and interrupted["failed"][0] == selftest.sequence(slow)
    assert selftest.checkpoint() < int(selftest.sequence(slow))

    selftest.put(after)
    pid = selftest.start()
    selftest.stack.wait_for(lambda: selftest.handled(after))
    for key in (slow, during, after):
        assert [entry["pid"] for entry in selftest.handled(key)] == [pid]
    first_again = min(
        int(record["dynamodb"]["SequenceNumber"])
        for entry in selftest.invocations("stream")
        if entry["pid"] == pid
        for record in entry["event"]["Records"]
    )
    assert first_again == int(selftest.sequence(slow))  # nothing before the checkpoint came again
