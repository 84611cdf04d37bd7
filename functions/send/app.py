"""SQS (one queued TextOfEmail per message) -> dbmail.outgoing.send, with partial batch responses."""

from collections import Counter
from functools import partial

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.observability import EMAILS_PROCESSED, ERROR, count_outcomes, logger, metrics, tracer
from dbmail.core.settings import Settings
from dbmail.outgoing.queue import QueuedEmail

settings = Settings.for_function("send")  # cold start: a missing variable stops here, named


def send_record(record: SQSRecord, lambda_context: LambdaContext, outcomes: Counter) -> None:
    try:
        outcome = wiring.email_sender(settings).deliver(
            QueuedEmail.from_body(record.body),
            claim_id=record.receipt_handle,
            receive_count=int(record.attributes.approximate_receive_count),
            time_left=lambda: lambda_context.get_remaining_time_in_millis() / 1000,
        )
    except Exception:
        outcomes[ERROR] += 1  # the message comes back after the visibility timeout
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
            record_handler=partial(send_record, outcomes=outcomes),
            processor=BatchProcessor(event_type=EventType.SQS),  # one per invocation: they run at once
            context=context,
        )
    finally:
        count_outcomes(EMAILS_PROCESSED, outcomes)
