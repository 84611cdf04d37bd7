"""One measured run in a process of its own, so that its peak RSS (VmHWM) and its AWS calls
are its own:

    python -m bench.worker expand STATE_DIR RESULT_FILE REQUEST_ID [--capture FILE]
    python -m bench.worker send STATE_DIR RESULT_FILE EMAILS [--capture FILE]

``expand``: the expand functions (the stream's, and the chunk queue's when the template has one)
run here with their triggers; the clock starts when they poll and stops when the request is
processed. ``send``: the send function is invoked with the queued messages, in batches of its
Queued/Urgent events' BatchSize (the lane's), one invocation at a time; the clock is the invocations' time
(Lambda's poller, receiving and deleting, is not dbmail's). RESULT_FILE gets JSON (stdout has
the functions' logs). ``--capture`` keeps the parameters of the calls the floors replay.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import boto3

from bench.cpu import CpuSpan
from bench.host import load_function, stack_runtime, triggers_running
from bench.instrument import Instruments
from dbmail_local.sqs import lambda_record
from dbmail_local.stack import StatePaths
from dbmail_local.triggers import Runtime

EXPAND_FUNCTIONS = ["ExpandFunction", "ExpandChunkFunction"]
EXPAND_REPLAYED = {"BatchWriteItem", "SendMessageBatch"}  # bench/floors.py: the write floor
SEND_REPLAYED = {"SendEmail"}  # bench/floors.py: the SES floor
SEND_QUEUES = ["SendQueue", "PrioritySendQueue"]
FINISHED = {"processed", "failed", "expired"}
# The request's status is read after each invocation ends (a request is finished by one), and
# every STATUS_CHECK_SECONDS besides: reads every POLL_SECONDS cost DynamoDB Local 0.4 CPU
# seconds in a 10-second expansion that its floor does not spend.
POLL_SECONDS = 0.01
STATUS_CHECK_SECONDS = 1.0
RECEIVE_MAX = 10  # SQS's ReceiveMessage limit


def peak_rss_mib() -> float:
    """The process's own high-water RSS: /proc/self/status's VmHWM. Not ``ru_maxrss``: Linux
    carries that over exec from the forking process, so a worker started by a 300 MiB bench
    reports 300 MiB whatever it used itself."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:", 1)[1].split()[0]) / 1024  # kB


def rss_mib() -> float:
    """The process's RSS now (Linux: /proc/self/statm's resident pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def expand(runtime: Runtime, request_id: str, instruments: Instruments, timeout: float) -> dict[str, Any]:
    table = runtime.template.physical_name("MessageRequestTable")
    dynamodb = boto3.client("dynamodb")
    durations: dict[str, list[float]] = {}
    instruments.install()  # after the clock's client: its polls are not counted
    rss: list[tuple[float, float]] = []  # (seconds, MiB): whether the peak is a climb or a plateau
    cpu = CpuSpan(runtime.state)
    with triggers_running(runtime, EXPAND_FUNCTIONS, durations) as functions:
        started = time.perf_counter()
        cpu.start()
        checked_after, checked_at = -1, 0.0
        while True:
            rss.append((time.perf_counter() - started, rss_mib()))
            invocations = sum(map(len, durations.values()))
            if invocations == checked_after and time.perf_counter() < checked_at + STATUS_CHECK_SECONDS:
                time.sleep(POLL_SECONDS)
                continue
            checked_after, checked_at = invocations, time.perf_counter()
            item = dynamodb.get_item(
                TableName=table,
                Key={"request_id": {"S": request_id}},
                ConsistentRead=True,
                ProjectionExpression="#s, email_count",
                ExpressionAttributeNames={"#s": "status"},
            ).get("Item", {})
            status = item.get("status", {}).get("S", "")
            if status in FINISHED or time.perf_counter() > started + timeout:
                break
        seconds = time.perf_counter() - started
        cpu_seconds = cpu.stop()
    return {
        "seconds": seconds,
        "status": status,
        "emails": int(item.get("email_count", {}).get("N", 0)),
        "functions": functions,
        "durations": durations,
        "rss_mib_over_time": rss[:: max(1, len(rss) // 10)],
        "rss_plateau_mib": statistics.median(mib for _, mib in rss[len(rss) // 2 :]),  # the second half's
        "cpu_seconds": cpu_seconds,
    }


def _batch_sizes(runtime: Runtime) -> dict[str, int]:
    """The send function's BatchSize by queue (logical id), as its events say."""
    events = runtime.template.properties("SendFunction")["Events"].values()
    return {
        event["Properties"]["Queue"]["Fn::GetAtt"][0]: int(event["Properties"].get("BatchSize", 10)) for event in events
    }


def _queued(runtime: Runtime, emails: int) -> tuple[list[list[dict]], dict[str, str]]:
    """Every queued send message, in batches of its lane's BatchSize, as Lambda's events carry
    them, and the send queues' URLs by ARN."""
    sqs = boto3.client("sqs")
    region = runtime.template.target.region
    batches, urls = [], {}
    sizes = _batch_sizes(runtime)
    for logical_id in SEND_QUEUES:
        if logical_id not in runtime.template.resources("AWS::SQS::Queue"):
            continue
        batch = sizes[logical_id]
        name = runtime.template.physical_name(logical_id)
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        arn = runtime.template.get_att(logical_id, "Arn")
        urls[arn] = url
        records: list[dict] = []
        while True:
            messages = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=RECEIVE_MAX,
                VisibilityTimeout=900,
                WaitTimeSeconds=1,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not messages:
                break
            records += [lambda_record(message, arn, region) for message in messages]
        batches += [records[start : start + batch] for start in range(0, len(records), batch)]
    if sum(map(len, batches)) != emails:
        raise RuntimeError(f"{sum(map(len, batches))} send messages queued, {emails} expected")
    return batches, urls


def _delete(batches: list[list[dict]], urls: dict[str, str]) -> None:
    """What Lambda's poller does after the invocations (untimed): the messages leave the queue."""
    sqs = boto3.client("sqs")
    for batch in batches:
        url = urls[batch[0]["eventSourceARN"]]
        entries = [{"Id": str(n), "ReceiptHandle": record["receiptHandle"]} for n, record in enumerate(batch)]
        sqs.delete_message_batch(QueueUrl=url, Entries=entries)


def send(runtime: Runtime, emails: int, instruments: Instruments) -> dict[str, Any]:
    batches, urls = _queued(runtime, emails)
    instruments.install()
    durations: dict[str, list[float]] = {}
    function = load_function(runtime, "SendFunction", durations)
    failed = 0
    for batch in batches:
        invocation = function.invoke({"Records": batch})
        failed += len(invocation.failed_positions([record["messageId"] for record in batch], True))
    _delete(batches, urls)
    spent = durations["SendFunction"]
    return {
        "seconds": sum(spent),
        "emails": emails,
        "failed": failed,
        "durations": durations,
        "batches": [len(batch) for batch in batches],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["expand", "send"])
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("result_file", type=Path)
    parser.add_argument("subject", help="expand: the request id; send: how many emails are queued")
    parser.add_argument("--capture", type=Path)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    runtime = stack_runtime(StatePaths.resolve(args.state_dir))
    replayed = EXPAND_REPLAYED if args.kind == "expand" else SEND_REPLAYED
    instruments = Instruments(capture=replayed, capture_file=args.capture)
    if args.kind == "expand":
        result = expand(runtime, args.subject, instruments, args.timeout)
    else:
        result = send(runtime, int(args.subject), instruments)
    instruments.close()
    result |= {"max_rss_mib": peak_rss_mib(), "pid": os.getpid(), **instruments.summary()}
    args.result_file.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
