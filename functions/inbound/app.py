"""SES receipt rule (raw message already in S3) -> dbmail.inbound routing."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import SESEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics
@event_source(data_class=SESEvent)
def lambda_handler(event: SESEvent, context: LambdaContext) -> dict:
    record = event.record.ses
    outcome = wiring.inbound_router().handle(
        message_id=record.mail.message_id,
        recipients=list(record.receipt.recipients),
        spam_verdict=record.receipt.spam_verdict.status,
        virus_verdict=record.receipt.virus_verdict.status,
    )
    metrics.add_metric(name=f"Inbound_{outcome}", unit=MetricUnit.Count, value=1)
    return {"disposition": "CONTINUE", "outcome": outcome}
