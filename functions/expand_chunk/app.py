"""SQS (the expand-chunk queue: a bulk MessageRequest's plan, or one of its chunks) -> dbmail.outgoing.expand."""

from aws_lambda_powertools.utilities.batch import EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.batching import process_batch_counting_outcomes
from dbmail.core.errors import ExpansionIncomplete
from dbmail.core.observability import INCOMPLETE, REQUESTS_EXPANDED, logger, metrics, tracer
from dbmail.core.settings import Settings
from dbmail.outgoing.expand import ExpandTask

settings = Settings.for_function("expand_chunk")  # cold start: a missing variable stops here, named


def expand_task(record: SQSRecord, lambda_context: LambdaContext) -> str:
    return wiring.expander(settings).run_task(
        ExpandTask.from_body(record.body),
        time_left=lambda: lambda_context.get_remaining_time_in_millis() / 1000,
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    # a task that raises comes back after the visibility timeout; a chunk stopped part-way is
    # expanded carefully then (ExpansionIncomplete: out of time)
    return process_batch_counting_outcomes(
        event,
        context,
        EventType.SQS,
        expand_task,
        REQUESTS_EXPANDED,
        failures={ExpansionIncomplete: INCOMPLETE},
        trigger="chunk",
    )
