"""EventBridge schedule -> dbmail.outgoing.expire (the original's cron, every few minutes)."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics
@event_source(data_class=EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict:
    logger.info("scheduled run", extra={"scheduled_time": event.time})
    summary = wiring.expirer().run(
        owner=f"schedule:{context.aws_request_id}",
        time_left=lambda: context.get_remaining_time_in_millis() / 1000,
    )
    for name, value in summary.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    return summary
