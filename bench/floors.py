"""The floors: the same work as dbmail's, on the same emulators, without dbmail's logic.

- SES floor: the SendEmail calls dbmail's send made (captured: the same raw bytes, sender,
  destination, configuration set and tags), replayed with ``concurrency`` (10) calls in flight.
- Write floor: the BatchWriteItem and SendMessageBatch calls an expansion made (captured: the
  same items, the same message bodies, in the same order), replayed with as many calls in flight
  as the expansion had at its peak; the items go to a fresh copy of the email table (same keys,
  same index, same stream), so that every write is a new item as the expansion's were, and the
  messages to fresh queues (copy_queues), so that the replay leaves nothing in the stack's
  queues: a replayed plan or chunk task would otherwise be the next expansion's work.
- Bare stream: a PutItem until its record is read from the table's stream (GetRecords polled
  every POLL_SECONDS).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

POLL_SECONDS = 0.005
TIMEOUT_SECONDS = 30.0
STREAM_TABLE = "bench-bare-stream"


def _replay(calls: Iterable[Callable[[], Any]], concurrency: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()
    return time.perf_counter() - started


def ses_floor(sesv2, captured: list[tuple[str, dict]], concurrency: int) -> float:
    """Seconds to make the captured SendEmail calls again, ``concurrency`` in flight."""
    return _replay(
        [lambda p=params: sesv2.send_email(**p) for op, params in captured if op == "SendEmail"], concurrency
    )


def copy_table(dynamodb, table: str) -> str:
    """A new empty table with ``table``'s keys, indexes and stream; returns its name."""
    description = dynamodb.describe_table(TableName=table)["Table"]
    name = f"{table}-floor-{uuid.uuid4().hex[:8]}"
    request: dict[str, Any] = {
        "TableName": name,
        "KeySchema": description["KeySchema"],
        "AttributeDefinitions": description["AttributeDefinitions"],
        "BillingMode": "PAY_PER_REQUEST",
    }
    indexes = [
        {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
        for index in description.get("GlobalSecondaryIndexes", [])
    ]
    if indexes:
        request["GlobalSecondaryIndexes"] = indexes
    if description.get("StreamSpecification", {}).get("StreamEnabled"):
        request["StreamSpecification"] = description["StreamSpecification"]
    dynamodb.create_table(**request)
    dynamodb.get_waiter("table_exists").wait(TableName=name)
    return name


def copy_queues(sqs, captured: list[tuple[str, dict]]) -> dict[str, str]:
    """A new empty queue for each queue the captured SendMessageBatches wrote: {url: its copy's url}."""
    urls = sorted({params["QueueUrl"] for operation, params in captured if operation == "SendMessageBatch"})
    suffix = uuid.uuid4().hex[:8]
    return {url: sqs.create_queue(QueueName=f"{url.rsplit('/', 1)[-1]}-floor-{suffix}")["QueueUrl"] for url in urls}


def _batch_write(dynamodb, request_items: dict) -> None:
    while request_items:
        request_items = dynamodb.batch_write_item(RequestItems=request_items).get("UnprocessedItems") or {}


def write_floor(
    dynamodb,
    sqs,
    captured: list[tuple[str, dict]],
    email_table: str,
    floor_table: str,
    floor_queues: dict[str, str],
    concurrency: int,
) -> float:
    """Seconds to make the captured writes again, ``concurrency`` in flight: the email table's
    BatchWriteItems into ``floor_table``, the SendMessageBatches into ``floor_queues``' copies."""
    calls: list[Callable[[], Any]] = []
    for operation, params in captured:
        if operation == "BatchWriteItem" and email_table in params["RequestItems"]:
            items = {floor_table: params["RequestItems"][email_table]}
            calls.append(lambda items=items: _batch_write(dynamodb, items))
        elif operation == "SendMessageBatch":
            moved = {**params, "QueueUrl": floor_queues[params["QueueUrl"]]}
            calls.append(lambda p=moved: sqs.send_message_batch(**p))
    return _replay(calls, concurrency)


def _records_until(streams, iterator: str, key: str) -> tuple[bool, str | None]:
    """Reads pages from ``iterator`` while they have records; whether ``key``'s record was among
    them, and the iterator to go on with."""
    while iterator:
        page = streams.get_records(ShardIterator=iterator)
        if any(record["dynamodb"]["Keys"]["k"]["S"] == key for record in page.get("Records", [])):
            return True, None
        iterator = page.get("NextShardIterator")
        if not page.get("Records"):
            break
    return False, iterator


def bare_stream(dynamodb, streams, writes: int) -> list[float]:
    """Seconds from each PutItem to its record read from the stream. The table holds only these
    writes, read from the shard's start (DynamoDB Local trims an iterator taken while its shard
    was empty, once other tables have written: a new one from the start is taken then)."""
    try:
        dynamodb.create_table(
            TableName=STREAM_TABLE,
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"},
        )
    except dynamodb.exceptions.ResourceInUseException:
        pass
    stream_arn = dynamodb.describe_table(TableName=STREAM_TABLE)["Table"]["LatestStreamArn"]

    def from_start() -> str:
        shards = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
        shard = next(shard for shard in shards if "EndingSequenceNumber" not in shard["SequenceNumberRange"])
        return streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]

    seconds = []
    for n in range(writes):
        key = f"{n}-{uuid.uuid4().hex}"
        try:
            _, iterator = _records_until(streams, from_start(), key)  # past the earlier writes' records
        except streams.exceptions.TrimmedDataAccessException:
            iterator = None
        started = time.perf_counter()
        dynamodb.put_item(TableName=STREAM_TABLE, Item={"k": {"S": key}})
        while time.perf_counter() < started + TIMEOUT_SECONDS:
            try:
                found, iterator = _records_until(streams, iterator or from_start(), key)
            except streams.exceptions.TrimmedDataAccessException:
                found, iterator = False, None
            if found:
                break
            time.sleep(POLL_SECONDS)
        else:
            raise TimeoutError(f"a write did not reach the stream within {TIMEOUT_SECONDS} s")
        seconds.append(time.perf_counter() - started)
    return seconds
