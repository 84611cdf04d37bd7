"""EventBridge schedule -> dbmail.outgoing.expire (the original's cron, every few minutes)."""

from collections import Counter
from collections.abc import Mapping

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from dbmail import wiring
from dbmail.core.observability import (
    EMAILS_SWEPT,
    REQUESTS_EXPANDED,
    REQUESTS_SWEPT,
    count_outcomes,
    logger,
    metrics,
    tracer,
)
from dbmail.core.settings import Settings

settings = Settings.for_function("expire")  # cold start: a missing variable stops here, named

# The run's summary keys as (metric, outcome); "expand_<outcome>" and "resume_<outcome>" are
# expansions (RequestsExpanded, trigger schedule or resume).
EXPANSIONS = {"expand": "schedule", "resume": "resume"}
SWEPT = {
    "emails_expired": (EMAILS_SWEPT, "expired"),
    "emails_requeued": (EMAILS_SWEPT, "requeued"),
    "requests_settled": (REQUESTS_SWEPT, "settled"),
    "failure_reports": (REQUESTS_SWEPT, "reported"),
    "sweep_incomplete": (REQUESTS_SWEPT, "incomplete"),
    "sweep_error": (REQUESTS_SWEPT, "error"),
}


def count_summary(summary: Mapping[str, int]) -> None:
    expanded: dict[str, Counter] = {trigger: Counter() for trigger in EXPANSIONS.values()}
    swept: dict[str, Counter] = {EMAILS_SWEPT: Counter(), REQUESTS_SWEPT: Counter()}
    for key, count in summary.items():
        label, _, outcome = key.partition("_")
        if label in EXPANSIONS:
            expanded[EXPANSIONS[label]][outcome] += count
        elif key in SWEPT:
            name, outcome = SWEPT[key]
            swept[name][outcome] += count
        else:
            logger.warning("expire summary entry without a metric", extra={"entry": key, "count": count})
    for trigger, outcomes in expanded.items():
        count_outcomes(REQUESTS_EXPANDED, outcomes, trigger=trigger)
    for name, outcomes in swept.items():
        count_outcomes(name, outcomes)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # responses may hold addresses
@metrics.log_metrics(capture_cold_start_metric=True)
@event_source(data_class=EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict:
    logger.info("scheduled run", extra={"scheduled_time": event.time})
    summary = wiring.expirer(settings).run(
        owner=f"schedule:{context.aws_request_id}",
        time_left=lambda: context.get_remaining_time_in_millis() / 1000,
    )
    count_summary(summary)
    return summary
