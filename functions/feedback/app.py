"""SQS (one provider event per message: an SES event from the configuration set's SNS topic, or
a SendGrid event the sendgrid_events function queued) -> dbmail.feedback, with partial batch responses.

A body that is not an event we record (malformed, too large, another event type) is logged
as ``invalid`` and acknowledged: retrying cannot fix it, and it must not hold up the batch. An
event whose email is not found yet (young) or not recorded as sent yet raises and comes back
after the visibility timeout (``retry``); any other error too (``error``), and after
FeedbackQueue's maxReceiveCount it goes to FeedbackDeadLetterQueue.
"""

from aws_lambda_powertools.utilities.batch import EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.batching import process_batch_counting_outcomes
from dbmail.core.observability import FEEDBACK_EVENTS, INVALID, RETRY, logger, metrics, tracer
from dbmail.core.settings import Settings
from dbmail.feedback.events import FeedbackInvalid, from_queue_body, parse_body
from dbmail.feedback.recorder import FeedbackNotYetMatched

settings = Settings.for_function("feedback")  # cold start: a missing variable stops here, named


def feedback_record(record: SQSRecord, lambda_context: LambdaContext) -> str:
    try:
        event = from_queue_body(parse_body(record.body))
    except FeedbackInvalid as exc:
        logger.warning(
            "not a provider event we record; acknowledged", extra={"message_id": record.message_id, "error": str(exc)}
        )
        return INVALID
    return wiring.feedback_recorder(settings).record(event)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_batch_counting_outcomes(
        event, context, EventType.SQS, feedback_record, FEEDBACK_EVENTS, {FeedbackNotYetMatched: RETRY}
    )
