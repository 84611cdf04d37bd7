"""Logging, tracing and metrics, configured once for the four handlers.

Metric names are fixed, and what became of each thing is the ``outcome`` dimension (a status or
outcome StrEnum's value), so one alarm or graph covers a name and picks outcomes by dimension:

- ``RequestsExpanded`` {trigger: stream | schedule | resume, outcome: expand.Outcome, incomplete, error}
- ``EmailsProcessed`` {outcome: send.SendOutcome, error}
- ``EmailsSwept`` {outcome: expired | requeued} and ``RequestsSwept`` {outcome: settled | reported |
  incomplete | error}: the expire run
- ``InboundMessages`` {trigger: receipt | sweep, outcome: InboundStatus}
- ``FeedbackEvents`` {outcome: recorder.RecordOutcome, invalid, retry, error}: SES and SendGrid events alike

Every metric also has Powertools' ``service`` dimension. EMF gives every metric of one blob the
same dimension values, so a batch's outcomes cannot share the handler's ``metrics`` blob (which
``log_metrics`` flushes, with the cold-start metric): ``count_outcomes`` writes one blob per
outcome with ``single_metric``, its value the number of records with that outcome.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

# Read at cold start: Powertools' own variables (template.yaml's Globals), with the same defaults.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "dbmail"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "dbmail"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)

# Outcomes go to single metrics; an invocation that only has those has no application metrics.
warnings.filterwarnings("ignore", "No application metrics to publish*")

# metric names
REQUESTS_EXPANDED = "RequestsExpanded"
EMAILS_PROCESSED = "EmailsProcessed"
EMAILS_SWEPT = "EmailsSwept"
REQUESTS_SWEPT = "RequestsSwept"
INBOUND_MESSAGES = "InboundMessages"
FEEDBACK_EVENTS = "FeedbackEvents"
METRIC_NAMES = (REQUESTS_EXPANDED, EMAILS_PROCESSED, EMAILS_SWEPT, REQUESTS_SWEPT, INBOUND_MESSAGES, FEEDBACK_EVENTS)

# dimensions
OUTCOME = "outcome"
TRIGGER = "trigger"

# outcomes of a handler's own, beside the domain's enums
INCOMPLETE = "incomplete"  # ran out of time; it resumes on the next attempt
ERROR = "error"  # an unforeseen exception: the record or event is retried
INVALID = "invalid"  # a malformed record: logged and acknowledged (retrying cannot fix it)
RETRY = "retry"  # not recordable yet (its email not found or not sent yet): retried


def count_outcomes(name: str, outcomes: Mapping[str, int], **dimensions: str) -> None:
    """One EMF blob per outcome with a count: metric ``name``, dimensions service, ``dimensions``
    and outcome. Call it once per invocation with the invocation's tally."""
    for outcome, count in sorted(outcomes.items()):
        if count <= 0:
            continue
        with single_metric(
            name=name,
            unit=MetricUnit.Count,
            value=count,
            namespace=NAMESPACE,
            default_dimensions={"service": SERVICE, **dimensions},
        ) as metric:
            metric.add_dimension(name=OUTCOME, value=str(outcome))


class ConcurrentBatchProcessor(BatchProcessor):
    """Powertools' BatchProcessor with up to ``concurrency`` records in progress at once, on a
    thread pool (the records' calls are I/O: SES and DynamoDB round trips overlap). Each record
    still succeeds or fails on its own, and the failed ones are the batchItemFailures."""

    def __init__(self, event_type: EventType, concurrency: int):
        super().__init__(event_type=event_type)
        self.concurrency = concurrency

    def process(self) -> list[tuple]:
        workers = min(self.concurrency, len(self.records))
        if workers <= 1:
            return super().process()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="record") as pool:
            return list(pool.map(self._process_record, self.records))


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
