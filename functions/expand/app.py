"""DynamoDB stream (INSERT of a MessageRequest) -> dbmail.outgoing.expand."""

from aws_lambda_powertools.utilities.batch import EventType
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.batching import process_batch_counting_outcomes
from dbmail.core.errors import ExpansionIncomplete
from dbmail.core.observability import INCOMPLETE, REQUESTS_EXPANDED, logger, metrics, tracer
from dbmail.core.settings import Settings

settings = Settings.for_function("expand")  # cold start: a missing variable stops here, named


def expand_record(record: DynamoDBRecord, lambda_context: LambdaContext) -> str:
    return wiring.expander(settings).expand(
        record.dynamodb.keys["request_id"],
        owner=f"stream:{lambda_context.aws_request_id}",
        takeover=True,
        time_left=lambda: lambda_context.get_remaining_time_in_millis() / 1000,
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    # ExpansionIncomplete: out of time; the record is retried and resumes from its cursor
    return process_batch_counting_outcomes(
        event,
        context,
        EventType.DynamoDBStreams,
        expand_record,
        REQUESTS_EXPANDED,
        failures={ExpansionIncomplete: INCOMPLETE},
        trigger="stream",
    )
