"""Schedule trigger: EventBridge rules (Schedule) and Scheduler schedules (ScheduleV2).

moto accepts rules but never fires them, so the runner does. Locally every schedule ticks
every DBMAIL_LOCAL_SCHEDULE_SECONDS (default 5), whatever its rate(), so scheduled work happens
while you watch; the real expression is only checked and logged. Only rate() expressions are
accepted: template.yaml's ExpireSchedule (default and local/parameters.json) is one. A tick
invokes the function with the event's Input if it has one, else an EventBridge "Scheduled
Event". A failed tick is logged and not retried: the next tick comes soon.
"""

import json
import logging
import re
import uuid
from typing import Any

from .lambda_runtime import LocalFunction
from .triggers import Runtime, utc_timestamp

log = logging.getLogger(__name__)

_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")


def describe_schedule(expression: str) -> str:
    """What a rate() expression means in AWS, in words; ValueError if it is not a valid one."""
    match = _RATE.fullmatch(expression)
    if match is None:
        raise ValueError(f"{expression!r} is not a rate() expression (the only kind the local stack runs)")
    count, unit = int(match.group(1)), match.group(2)
    if count < 1 or (count == 1) != (not unit.endswith("s")):
        raise ValueError(f"{expression}: rate() needs a positive count and a matching singular/plural unit")
    return f"every {count} {unit}"


class ScheduleTrigger:
    """One Schedule or ScheduleV2 event of a function."""

    concurrency = 1

    def __init__(self, function: LocalFunction, event_name: str, properties: dict[str, Any], runtime: Runtime) -> None:
        self.name = f"{function.logical_id}.{event_name}"
        self.function = function
        self.runtime = runtime
        target = runtime.template.target
        self.expression: str = properties.get("Schedule") or properties["ScheduleExpression"]
        self.meaning = describe_schedule(self.expression)
        raw_input = properties.get("Input")
        self.input = json.loads(raw_input) if isinstance(raw_input, str) else raw_input
        local_name = f"{target.stack_name}-{function.logical_id}{event_name}"
        if "ScheduleExpression" in properties:
            self.source_arn = f"arn:aws:scheduler:{target.region}:{target.account_id}:schedule/default/{local_name}"
        else:
            self.source_arn = f"arn:aws:events:{target.region}:{target.account_id}:rule/{local_name}"

    def run(self) -> None:
        interval = self.runtime.settings.schedule_seconds
        log.info(
            "schedule ticks locally",
            extra={
                "trigger": self.name,
                "schedule": self.expression,
                "in_aws": self.meaning,
                "local_interval_s": interval,
            },
        )
        while not self.runtime.stopping.wait(interval):
            self.function.invoke(self.input if self.input is not None else self._scheduled_event())

    def _scheduled_event(self) -> dict[str, Any]:
        target = self.runtime.template.target
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": target.account_id,
            "time": utc_timestamp().split(".")[0] + "Z",
            "region": target.region,
            "resources": [self.source_arn],
            "detail": {},
        }
