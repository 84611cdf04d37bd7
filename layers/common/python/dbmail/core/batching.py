"""Partial batch processing for the SQS- and stream-triggered handlers (expand, expand chunk,
send, feedback): Powertools' BatchProcessor, with records in progress at once and each
invocation's outcomes counted. Apart from observability so that the other handlers' cold start
never loads Powertools' batch utility."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import wait

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

from dbmail.core.observability import ERROR, count_outcomes
from dbmail.core.parallel import pooled


class ConcurrentBatchProcessor(BatchProcessor):
    """Powertools' BatchProcessor with up to ``concurrency`` records in progress at once, on
    threads kept between invocations (the records' calls are I/O: SES and DynamoDB round trips
    overlap). Each record still succeeds or fails on its own, and the failed ones are the
    batchItemFailures."""

    def __init__(self, event_type: EventType, concurrency: int):
        super().__init__(event_type=event_type)
        self.concurrency = concurrency

    def process(self) -> list[tuple]:
        workers = min(self.concurrency, len(self.records))
        if workers <= 1:
            return super().process()
        with pooled(workers, "record") as submit:
            futures = [submit(self._process_record, record) for record in self.records]
            wait(futures)  # each record's outcome is its own: _process_record returns failures
        return [future.result() for future in futures]


def process_batch_counting_outcomes(
    event: dict,
    context,
    event_type: EventType,
    record_handler: Callable,
    metric: str,
    failures: Mapping[type[BaseException], str] | None = None,
    concurrency: int = 1,
    **dimensions: str,
) -> dict:
    """Powertools' partial batch processing, with the invocation's outcomes counted in ``metric``.

    ``record_handler(record, context)`` returns the record's outcome. An exception reports the
    record as failed (it is retried) and counts as the outcome ``failures`` names for its type,
    else as ``error``. With ``concurrency`` > 1, that many records are handled at once (the
    handler must be thread-safe). A processor per invocation: the local runner runs invocations
    at once."""
    outcomes: Counter = Counter()
    counting = threading.Lock()
    failures = dict(failures or {})

    def handle(record, lambda_context) -> None:
        try:
            outcome = record_handler(record, lambda_context)
        except Exception as exc:
            with counting:
                outcomes[next((name for kind, name in failures.items() if isinstance(exc, kind)), ERROR)] += 1
            raise
        with counting:
            outcomes[outcome] += 1

    processor = ConcurrentBatchProcessor(event_type, concurrency)
    try:
        return process_partial_response(event=event, record_handler=handle, processor=processor, context=context)
    finally:
        count_outcomes(metric, outcomes, **dimensions)
