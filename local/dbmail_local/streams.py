"""DynamoDB stream trigger: Lambda's stream event source mapping, against DynamoDB Local.

It polls the table's stream (DescribeStream, GetShardIterator, GetRecords) and honours
StartingPosition, BatchSize, FilterCriteria, ReportBatchItemFailures,
BisectBatchOnFunctionError, MaximumRetryAttempts and an SQS OnFailure destination. The last
fully handled sequence number of each shard is kept under ``<state>/checkpoints``, so a runner
that stops, however abruptly, resumes after it and delivers an unfinished batch again.
Not honoured locally: MaximumRecordAgeInSeconds, ParallelizationFactor, TumblingWindowInSeconds.
"""

import base64
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from .cfn import TemplateError, as_bool
from .event_filter import EventFilter
from .lambda_runtime import Invocation, LocalFunction
from .stack import write_atomically
from .triggers import Runtime, queue_url, utc_timestamp

log = logging.getLogger(__name__)

# Seconds between GetRecords calls that found nothing: short while the stream is active (records
# within ACTIVE_SECONDS), so that a request written then is expanded at once; Lambda's rate once
# it is quiet (about 4 a second per shard). Each empty poll costs the runner and DynamoDB Local
# about 5 ms of CPU between them: at 20 a second, a tenth of a core that a bulk expansion lacked.
POLL_INTERVAL = 0.05
IDLE_POLL_INTERVAL = 0.25
ACTIVE_SECONDS = 2.0
SHARD_REFRESH_INTERVAL = 5.0  # seconds between DescribeStream calls looking for new shards

Record = dict[str, Any]


class Checkpoints:
    """Per shard of one stream: the last fully handled sequence number, and finished shards."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stream_arn = ""
        self.sequences: dict[str, str] = {}
        self.finished: set[str] = set()

    def load(self, stream_arn: str) -> None:
        """Reads the file; checkpoints of another stream (an older table) are dropped."""
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.stream_arn = stream_arn
        if saved.get("stream_arn") == stream_arn:
            self.sequences = saved["sequences"]
            self.finished = set(saved["finished"])
        else:
            self.sequences, self.finished = {}, set()

    def advance(self, shard_id: str, sequence: str) -> None:
        self.sequences[shard_id] = sequence
        self._save()

    def finish(self, shard_id: str) -> None:
        self.finished.add(shard_id)
        self._save()

    def forget(self, shard_id: str) -> None:
        self.sequences.pop(shard_id, None)
        self._save()

    def _save(self) -> None:
        content = {"stream_arn": self.stream_arn, "sequences": self.sequences, "finished": sorted(self.finished)}
        write_atomically(self.path, json.dumps(content, indent=2) + "\n")


@dataclass
class _Shard:
    shard_id: str
    parent_id: str | None
    from_start_position: bool  # present when the trigger started: StartingPosition applies
    iterator: str | None = None
    fresh_iterator: bool = False  # from GetShardIterator, not a page's NextShardIterator


@dataclass
class _Batch:
    records: list[Record]
    attempts: int = 0  # failed invocations so far (the halves of a bisected batch inherit it)


def _json_safe(value: Any) -> Any:
    """What boto3 decoded, back to Lambda's JSON: binary as base64, times as epoch seconds."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return int(value.timestamp())
    return value


def poll_interval(quiet_seconds: float) -> float:
    """The wait after an empty poll, ``quiet_seconds`` after the stream's last records."""
    return POLL_INTERVAL if quiet_seconds < ACTIVE_SECONDS else IDLE_POLL_INTERVAL


def _sequence(record: Record) -> str:
    return record["dynamodb"]["SequenceNumber"]


def _arrival(record: Record) -> str:
    return utc_timestamp(datetime.fromtimestamp(record["dynamodb"]["ApproximateCreationDateTime"], UTC))


class StreamTrigger:
    """One DynamoDB event of a function: a single poller, one batch at a time per shard."""

    concurrency = 1

    def __init__(self, function: LocalFunction, event_name: str, properties: dict[str, Any], runtime: Runtime) -> None:
        self.name = f"{function.logical_id}.{event_name}"
        self.function = function
        self.runtime = runtime
        self.stream_arn: str = properties["Stream"]
        self.table_name = self.stream_arn.split("/")[1]
        self.starting_position = properties.get("StartingPosition", "LATEST")
        if self.starting_position not in ("TRIM_HORIZON", "LATEST"):
            raise TemplateError(f"{self.name}: StartingPosition {self.starting_position} is not valid for DynamoDB")
        self.batch_size = int(properties.get("BatchSize", 100))
        self.bisect = as_bool(properties.get("BisectBatchOnFunctionError", False))
        self.max_retries = int(properties.get("MaximumRetryAttempts", -1))  # -1: until it succeeds
        self.partial_responses = "ReportBatchItemFailures" in properties.get("FunctionResponseTypes", [])
        self.filter = EventFilter(properties.get("FilterCriteria"))
        destination = properties.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        self.on_failure_url = queue_url(runtime, destination) if destination else None
        self.checkpoints = Checkpoints(runtime.state.checkpoints / f"{self.name}.json")
        self._streams = runtime.client("dynamodbstreams")
        self._shards: dict[str, _Shard] = {}
        self._next_refresh = 0.0

    def _fields(self, **more: Any) -> dict[str, Any]:
        return {"trigger": self.name, **more}

    def run(self) -> None:
        self.checkpoints.load(self.stream_arn)
        self._shards = {}
        self._next_refresh = 0.0
        log.info(
            "polling stream", extra=self._fields(stream=self.stream_arn, resumes_shards=len(self.checkpoints.sequences))
        )
        stopping = self.runtime.stopping
        last_records = time.monotonic()
        while not stopping.is_set():
            try:
                busy = self._poll()
            except ClientError as error:
                if error.response["Error"]["Code"] != "ResourceNotFoundException":
                    raise
                self._follow_new_stream()
                busy = False
            if busy:
                last_records = time.monotonic()
            else:
                stopping.wait(poll_interval(time.monotonic() - last_records))

    def _follow_new_stream(self) -> None:
        """The table was recreated: read its new stream from the start."""
        stream_arn = self.runtime.template.target.stream_arn(self.table_name)  # type: ignore[misc]
        log.warning("stream gone; following the table's new stream", extra=self._fields(stream=stream_arn))
        self.stream_arn = stream_arn
        self.checkpoints.load(stream_arn)
        self._shards = {}
        self._next_refresh = 0.0

    def _poll(self) -> bool:
        if time.monotonic() >= self._next_refresh:
            self._refresh_shards()
        busy = False
        for shard in list(self._shards.values()):
            if self.runtime.stopping.is_set():
                break
            if shard.shard_id in self.checkpoints.finished or not self._parent_done(shard):
                continue
            busy = self._read(shard) or busy
        return busy

    def _parent_done(self, shard: _Shard) -> bool:
        """Lambda reads a child shard only after its parent, to keep each key's order."""
        parent = shard.parent_id
        return parent is None or parent not in self._shards or parent in self.checkpoints.finished

    def _refresh_shards(self) -> None:
        first_listing = not self._shards
        request: dict[str, Any] = {"StreamArn": self.stream_arn}
        while True:
            description = self._streams.describe_stream(**request)["StreamDescription"]
            for shard in description["Shards"]:
                if shard["ShardId"] not in self._shards:
                    self._shards[shard["ShardId"]] = _Shard(shard["ShardId"], shard.get("ParentShardId"), first_listing)
            if not description.get("LastEvaluatedShardId"):
                break
            request["ExclusiveStartShardId"] = description["LastEvaluatedShardId"]
        self._next_refresh = time.monotonic() + SHARD_REFRESH_INTERVAL

    def _iterator(self, shard: _Shard) -> str:
        request = {"StreamArn": self.stream_arn, "ShardId": shard.shard_id}
        sequence = self.checkpoints.sequences.get(shard.shard_id)
        if sequence:
            request |= {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": sequence}
        elif shard.from_start_position:
            request["ShardIteratorType"] = self.starting_position
        else:  # a shard that appeared later is read from its start, as Lambda does
            request["ShardIteratorType"] = "TRIM_HORIZON"
        return self._streams.get_shard_iterator(**request)["ShardIterator"]

    def _read(self, shard: _Shard) -> bool:
        """Reads and handles one page of the shard; True if it had records."""
        if shard.iterator is None:
            shard.iterator, shard.fresh_iterator = self._iterator(shard), True
        try:
            page = self._streams.get_records(ShardIterator=shard.iterator, Limit=self.batch_size)
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "ExpiredIteratorException":
                shard.iterator = None  # a new one from the checkpoint
                return True
            if code == "TrimmedDataAccessException":
                # DynamoDB Local also says so for an iterator taken while the shard was empty,
                # once other tables have written: a new iterator from the checkpoint is enough.
                if shard.fresh_iterator:  # the checkpoint itself is older than the stream
                    log.warning(
                        "records after the checkpoint were trimmed; reading from the oldest",
                        extra=self._fields(shard=shard.shard_id),
                    )
                    self.checkpoints.forget(shard.shard_id)
                shard.iterator, shard.from_start_position = None, False
                return True
            raise
        records = page.get("Records", [])
        if records and not self._handle(shard.shard_id, [self._lambda_record(raw) for raw in records]):
            return False  # stopping: the rest is delivered again from the checkpoint
        shard.iterator, shard.fresh_iterator = page.get("NextShardIterator"), False
        if shard.iterator is None:
            log.info("shard finished", extra=self._fields(shard=shard.shard_id))
            self.checkpoints.finish(shard.shard_id)
            self._next_refresh = 0.0  # look for its children now
        return bool(records)

    def _lambda_record(self, raw: Record) -> Record:
        record = {key: raw[key] for key in ("eventID", "eventName", "eventVersion", "eventSource") if key in raw}
        record["awsRegion"] = self.runtime.template.target.region  # DynamoDB Local says "ddblocal"
        record["dynamodb"] = _json_safe(raw["dynamodb"])
        if "userIdentity" in raw:
            record["userIdentity"] = raw["userIdentity"]
        record["eventSourceARN"] = self.stream_arn
        return record

    def _handle(self, shard_id: str, records: list[Record]) -> bool:
        """Delivers one page of records; False if the runner stopped before all were handled.

        A failed batch is split in halves (BisectBatchOnFunctionError, on errors) or retried
        from its first failed record (partial responses); splitting does not count as a
        retry. After MaximumRetryAttempts the rest of the batch goes to the OnFailure queue.
        Filtered-out records are skipped and checkpointed with the rest.
        """
        stopping = self.runtime.stopping
        matching = [record for record in records if self.filter.matches(record)]
        pending = deque([_Batch(matching)] if matching else [])
        while pending:
            if stopping.is_set():
                return False
            batch = pending.popleft()
            invocation = self.function.invoke({"Records": batch.records})
            failed = invocation.failed_positions([_sequence(r) for r in batch.records], self.partial_responses)
            if not failed:
                self.checkpoints.advance(shard_id, _sequence(batch.records[-1]))
                continue
            if failed[0] > 0:
                self.checkpoints.advance(shard_id, _sequence(batch.records[failed[0] - 1]))
            rest = batch.records[failed[0] :]
            if stopping.is_set():
                return False  # delivered again after a restart
            if invocation.error is not None and self.bisect and len(rest) > 1:
                half = len(rest) // 2
                pending.extendleft([_Batch(rest[half:], batch.attempts), _Batch(rest[:half], batch.attempts)])
                log.warning("batch failed; bisecting it", extra=self._fields(records=len(rest)))
                continue
            attempts = batch.attempts + 1
            if 0 <= self.max_retries < attempts:
                self._give_up(shard_id, rest, invocation, attempts)
                self.checkpoints.advance(shard_id, _sequence(rest[-1]))
                continue
            log.warning("batch failed; retrying it", extra=self._fields(records=len(rest), attempt=attempts + 1))
            if stopping.wait(self.runtime.settings.retry_delay):
                return False
            pending.appendleft(_Batch(rest, attempts))
        self.checkpoints.advance(shard_id, _sequence(records[-1]))
        return True

    def _give_up(self, shard_id: str, records: list[Record], invocation: Invocation, invoke_count: int) -> None:
        """Sends Lambda's on-failure record for ``records`` (retries exhausted); they are skipped."""
        failure = {
            "requestContext": {
                "requestId": invocation.request_id,
                "functionArn": self.function.arn,
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": invoke_count,
            },
            "responseContext": invocation.response_context(),
            "version": "1.0",
            "timestamp": utc_timestamp(),
            "DDBStreamBatchInfo": {
                "shardId": shard_id,
                "startSequenceNumber": _sequence(records[0]),
                "endSequenceNumber": _sequence(records[-1]),
                "approximateArrivalOfFirstRecord": _arrival(records[0]),
                "approximateArrivalOfLastRecord": _arrival(records[-1]),
                "batchSize": len(records),
                "streamArn": self.stream_arn,
            },
        }
        fields = self._fields(records=len(records), first=_sequence(records[0]), invocations=invoke_count)
        if self.on_failure_url is None:
            log.error("retries exhausted; records skipped (no OnFailure destination)", extra=fields)
            return
        self.runtime.client("sqs").send_message(QueueUrl=self.on_failure_url, MessageBody=json.dumps(failure))
        log.error("retries exhausted; records skipped and sent to the OnFailure queue", extra=fields)
