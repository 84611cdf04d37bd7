"""Test-only handlers: each invocation is written to $SELFTEST_OUT as a JSON file, so the tests
can see exactly what the local runner delivered and what the handler answered.

What a record asks for is in its item's ``mode`` attribute (streams) or its JSON body (SQS):
``ok``; ``fail`` (reported in batchItemFailures); ``raise`` (the handler raises);
``raise_once`` (raises the first time only); ``wait`` (the first time, waits until the context
says no time is left, then reports itself and the rest of the batch as not processed).
SES receipt events (inbound.yaml) take theirs from the mail's ``X-Probe-Mode`` header:
``raise`` always raises; ``wait`` the first time waits until no time is left, then raises.
"""

import json
import os
import time
from pathlib import Path

OUT = Path(os.environ["SELFTEST_OUT"])
ENVIRONMENT_AT_IMPORT = {name: os.environ.get(name) for name in ("PROBE_QUEUE_URL", "PROBE_LABELS", "PROBE_WHERE")}


def _record(kind, event, context, **outcome):
    entry = {
        "kind": kind,
        "pid": os.getpid(),
        "time": time.time(),
        "event": event,
        "context": {
            "function_name": context.function_name,
            "function_version": context.function_version,
            "invoked_function_arn": context.invoked_function_arn,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "aws_request_id": context.aws_request_id,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
        },
        "environment": ENVIRONMENT_AT_IMPORT,
        **outcome,
    }
    # Asynchronous retries keep their request id: the time tells their records apart. Written
    # aside and renamed, so a test polling OUT never reads a half-written file.
    path = OUT / f"{kind}-{context.aws_request_id}-{time.time_ns()}.json"
    written = path.with_suffix(".part")
    written.write_text(json.dumps(entry))
    written.replace(path)


def _failures(identifiers):
    return {"batchItemFailures": [{"itemIdentifier": identifier} for identifier in identifiers]}


def _first_time(marker):
    path = OUT / marker
    if path.exists():
        return False
    path.touch()
    return True


def stream_handler(event, context):
    remaining_at_start = context.get_remaining_time_in_millis()
    handled, failed = [], []
    for position, record in enumerate(event["Records"]):
        data = record["dynamodb"]
        key = data["Keys"]["pk"]["S"]
        mode = data.get("NewImage", {}).get("mode", {}).get("S", "ok")
        if mode == "raise":
            _record("stream", event, context, raised=True, handled=handled, remaining_at_start=remaining_at_start)
            raise RuntimeError(f"probe: {key} always fails")
        if mode == "wait" and _first_time(f"waiting-{key}"):
            while context.get_remaining_time_in_millis() > 0:
                time.sleep(0.02)
            failed += [later["dynamodb"]["SequenceNumber"] for later in event["Records"][position:]]
            _record(
                "stream",
                event,
                context,
                handled=handled,
                failed=failed,
                remaining_at_start=remaining_at_start,
                remaining_at_end=context.get_remaining_time_in_millis(),
            )
            return _failures(failed)
        if mode == "fail":
            failed.append(data["SequenceNumber"])
        else:
            handled.append(key)
    _record("stream", event, context, handled=handled, failed=failed, remaining_at_start=remaining_at_start)
    return _failures(failed)


def queue_handler(event, context):
    remaining_at_start = context.get_remaining_time_in_millis()
    failed = []
    for record in event["Records"]:
        body = json.loads(record["body"])
        if body["mode"] == "fail":
            failed.append(record["messageId"])
        elif body["mode"] == "raise_once" and _first_time(f"raised-{body['id']}"):
            _record("queue", event, context, raised=True, remaining_at_start=remaining_at_start)
            raise RuntimeError(f"probe: {body['id']} fails once")
    _record("queue", event, context, failed=failed, remaining_at_start=remaining_at_start)
    return _failures(failed)


def schedule_handler(event, context):
    _record("schedule", event, context)


def receipt_handler(event, context):
    mail = event["Records"][0]["ses"]["mail"]
    mode = next((h["value"] for h in mail["headers"] if h["name"].lower() == "x-probe-mode"), "ok")
    if mode == "wait" and _first_time(f"waiting-{mail['messageId']}"):
        while context.get_remaining_time_in_millis() > 0:
            time.sleep(0.02)
        _record("receipt", event, context, raised=True, interrupted=True)
        raise RuntimeError(f"probe: {mail['messageId']} was interrupted")
    if mode == "raise":
        _record("receipt", event, context, raised=True)
        raise RuntimeError(f"probe: {mail['messageId']} always fails")
    _record("receipt", event, context)
    return {"disposition": "CONTINUE"}
