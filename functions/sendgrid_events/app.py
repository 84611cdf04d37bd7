"""Lambda function URL -> dbmail.feedback.sendgrid_webhook: SendGrid's signed Event Webhook."""

from aws_lambda_powertools.utilities.data_classes import LambdaFunctionUrlEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.observability import logger, metrics, tracer
from dbmail.core.settings import Settings

settings = Settings.for_function("sendgrid_events")  # cold start: a missing variable stops here, named
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # events name recipients
@metrics.log_metrics(capture_cold_start_metric=True)
@event_source(data_class=LambdaFunctionUrlEvent)
def lambda_handler(event: LambdaFunctionUrlEvent, context: LambdaContext) -> dict:
    if event.request_context.http.method != "POST":
        return {"statusCode": 405, "headers": {**NO_STORE, "Allow": "POST"}, "body": ""}
    reply = wiring.sendgrid_events(settings).handle(
        event.headers, event.body, base64_encoded=bool(event.is_base64_encoded)
    )
    return {"statusCode": reply.status, "headers": {**NO_STORE, "Content-Type": reply.content_type}, "body": reply.body}
