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
import warnings
from collections.abc import Mapping

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

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
