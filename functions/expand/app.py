"""DynamoDB stream (INSERT of a MessageRequest) -> dbmail.outgoing.expand."""

from collections import Counter
from functools import partial

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.errors import ExpansionIncomplete
from dbmail.core.observability import ERROR, INCOMPLETE, REQUESTS_EXPANDED, count_outcomes, logger, metrics, tracer
from dbmail.core.settings import Settings

settings = Settings.for_function("expand")  # cold start: a missing variable stops here, named


def expand_record(record: DynamoDBRecord, lambda_context: LambdaContext, outcomes: Counter) -> None:
    try:
        outcome = wiring.expander(settings).expand(
            record.dynamodb.keys["request_id"],
            owner=f"stream:{lambda_context.aws_request_id}",
            takeover=True,
            time_left=lambda: lambda_context.get_remaining_time_in_millis() / 1000,
        )
    except ExpansionIncomplete:
        outcomes[INCOMPLETE] += 1  # reported for retry: the next attempt resumes from the cursor
        raise
    except Exception:
        outcomes[ERROR] += 1
        raise
    outcomes[outcome] += 1


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    outcomes: Counter = Counter()
    try:
        return process_partial_response(
            event=event,
            record_handler=partial(expand_record, outcomes=outcomes),
            processor=BatchProcessor(event_type=EventType.DynamoDBStreams),  # one per invocation: they run at once
            context=context,
        )
    finally:
        count_outcomes(REQUESTS_EXPANDED, outcomes, trigger="stream")
