"""Lambda function URL -> dbmail.outgoing.archive: a public request's web page, GET /email/<request_id>."""

from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.observability import logger, metrics, tracer
from dbmail.core.settings import Settings
from dbmail.feedback.one_click import Reply
from dbmail.outgoing.archive import not_found

settings = Settings.for_function("archive")  # cold start: a missing variable stops here, named
app = LambdaFunctionUrlResolver()


def respond(reply: Reply) -> Response:
    return Response(reply.status, reply.content_type, reply.body, headers=reply.headers)


@app.get("/email/<request_id>")
def show(request_id: str) -> Response:
    return respond(wiring.archive(settings).show(request_id))


@app.not_found
def nothing_here(_error: Exception) -> Response:
    return respond(not_found())


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
