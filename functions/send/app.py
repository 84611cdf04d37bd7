"""SQS (one queued TextOfEmail per message) -> dbmail.outgoing.send, with partial batch responses."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.outgoing.queue import QueuedEmail

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


def send_record(record: SQSRecord, lambda_context: LambdaContext) -> None:
    outcome = wiring.email_sender().deliver(
        QueuedEmail.from_body(record.body),
        claim_id=record.receipt_handle,
        receive_count=int(record.attributes.approximate_receive_count),
        time_left=lambda: lambda_context.get_remaining_time_in_millis() / 1000,
    )
    metrics.add_metric(name=f"Emails_{outcome}", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=send_record, processor=processor, context=context)
