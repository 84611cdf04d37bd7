"""SES receipt rule (raw message already in S3) -> dbmail.inbound.router routing; and, on the
schedule, the sweep that processes again what failed or was cut off."""

from collections import Counter

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, SESEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.clock import utcnow
from dbmail.core.observability import INBOUND_MESSAGES, count_outcomes, logger, metrics, tracer
from dbmail.core.settings import Settings
from dbmail.core.statuses import InboundStatus

settings = Settings.for_function("inbound")  # cold start: a missing variable stops here, named


def route_message(event: SESEvent) -> dict:
    record = event.record.ses
    outcome = InboundStatus.FAILED  # what an exception leaves (recorded; the raw message is in S3)
    try:
        outcome = wiring.inbound_router(settings).handle(
            message_id=record.mail.message_id,
            recipients=list(record.receipt.recipients),
            spam_verdict=record.receipt.spam_verdict.status,
            virus_verdict=record.receipt.virus_verdict.status,
        )
    finally:
        count_outcomes(INBOUND_MESSAGES, {outcome: 1}, trigger="receipt")
    return {"disposition": "CONTINUE", "outcome": outcome}


def sweep(event: EventBridgeEvent) -> dict:
    logger.info("scheduled inbound sweep", extra={"scheduled_time": event.time})
    summary = wiring.inbound_router(settings).sweep(utcnow())
    outcomes: Counter = Counter()
    for outcome, count in summary.items():
        outcomes[InboundStatus.FAILED if outcome == "failed_again" else outcome] += count
    count_outcomes(INBOUND_MESSAGES, outcomes, trigger="sweep")
    return summary


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    if event.get("source") == "aws.events":
        return sweep(EventBridgeEvent(event))
    return route_message(SESEvent(event))
