"""Lambda function URL -> dbmail.feedback.one_click: RFC 8058 one-click unsubscribe and its page."""

from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.observability import logger, metrics, tracer
from dbmail.core.settings import Settings
from dbmail.feedback.one_click import Reply, not_found

settings = Settings.for_function("unsubscribe")  # cold start: a missing variable stops here, named
app = LambdaFunctionUrlResolver()


def respond(reply: Reply) -> Response:
    return Response(reply.status, reply.content_type, reply.body, headers=reply.headers)


@app.get("/unsubscribe/<token>")
def show(token: str) -> Response:
    return respond(wiring.one_click_unsubscribe(settings).show(token))


@app.post("/unsubscribe/<token>")
def submit(token: str) -> Response:
    event = app.current_event
    return respond(
        wiring.one_click_unsubscribe(settings).submit(
            token,
            event.body,
            base64_encoded=bool(event.is_base64_encoded),
            content_type=event.headers.get("content-type"),
        )
    )


@app.not_found
def nothing_here(_error: Exception) -> Response:
    return respond(not_found())


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # pages name the address
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
