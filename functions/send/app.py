"""SQS (one queued TextOfEmail per message) -> dbmail.outgoing.send, with partial batch responses."""

from functools import partial

from aws_lambda_powertools.utilities.batch import EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.batching import process_batch_counting_outcomes
from dbmail.core.observability import EMAILS_PROCESSED, logger, metrics, tracer
from dbmail.core.settings import Settings
from dbmail.outgoing.send import MAX_BATCH, SendBatch

settings = Settings.for_function("send")  # cold start: a missing variable stops here, named


def send_record(batch: SendBatch, record: SQSRecord, lambda_context: LambdaContext) -> str:
    return batch.deliver(
        record.body,
        claim_id=record.receipt_handle,
        receive_count=int(record.attributes.approximate_receive_count),
        time_left=lambda: lambda_context.get_remaining_time_in_millis() / 1000,
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    # the records of a batch are delivered at once; a record that raises comes back after the
    # visibility timeout (counted as "error")
    sender = wiring.email_sender(settings)  # here, not in the records' threads: built once
    records = len(event.get("Records") or ())
    with sender.batch(records) as batch:  # in waves whose DynamoDB calls are made together
        return process_batch_counting_outcomes(
            event,
            context,
            EventType.SQS,
            partial(send_record, batch),
            EMAILS_PROCESSED,
            concurrency=min(records, MAX_BATCH),
        )
