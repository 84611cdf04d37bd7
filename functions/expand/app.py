"""DynamoDB stream (INSERT of a MessageRequest) -> dbmail.outgoing.expand."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


def expand_record(record: DynamoDBRecord, lambda_context: LambdaContext) -> None:
    outcome = wiring.expander().expand(
        record.dynamodb.keys["request_id"],
        owner=f"stream:{lambda_context.aws_request_id}",
        takeover=True,
        time_left=lambda: lambda_context.get_remaining_time_in_millis() / 1000,
    )
    metrics.add_metric(name=f"Requests_{outcome}", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=expand_record, processor=processor, context=context)
