"""SES receipt rule (raw message already in S3) -> dbmail.inbound.router routing; and, on the
schedule, the sweep that processes again what failed or was cut off."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, SESEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.clock import utcnow

logger = Logger()
tracer = Tracer()
metrics = Metrics()


def route_message(event: SESEvent) -> dict:
    record = event.record.ses
    outcome = wiring.inbound_router().handle(
        message_id=record.mail.message_id,
        recipients=list(record.receipt.recipients),
        spam_verdict=record.receipt.spam_verdict.status,
        virus_verdict=record.receipt.virus_verdict.status,
    )
    metrics.add_metric(name=f"Inbound_{outcome}", unit=MetricUnit.Count, value=1)
    return {"disposition": "CONTINUE", "outcome": outcome}


def sweep(event: EventBridgeEvent) -> dict:
    logger.info("scheduled inbound sweep", extra={"scheduled_time": event.time})
    summary = wiring.inbound_router().sweep(utcnow())
    for outcome, count in summary.items():
        metrics.add_metric(name=f"InboundSwept_{outcome}", unit=MetricUnit.Count, value=count)
    return summary


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    if event.get("source") == "aws.events":
        return sweep(EventBridgeEvent(event))
    return route_message(SESEvent(event))
