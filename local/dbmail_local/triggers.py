"""What the runner's triggers (its stand-ins for Lambda event sources) share.

A trigger has a ``name``, a ``concurrency`` (how many threads run it) and a ``run()`` that
polls until ``runtime.stopping`` is set. Each kind is built from a function and one of its
resolved template Events: ``Kind(function, event_name, properties, runtime)``.
"""

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .cfn import Template, TemplateError
from .lambda_runtime import LocalFunction
from .resources import ClientFactory
from .stack import StatePaths


@dataclass(frozen=True)
class RunnerSettings:
    """The runner's two local accelerations, from the environment it was started with.

    ``retry_delay`` (DBMAIL_LOCAL_RETRY_DELAY, default 1 s): how soon a failed SQS message
    becomes visible again (Lambda waits for the queue's visibility timeout) and how long a
    stream trigger waits before retrying a failed batch.
    ``schedule_seconds`` (DBMAIL_LOCAL_SCHEDULE_SECONDS, default 5 s): how often Schedule events
    fire locally, whatever their rate() (the only kind of expression the runner accepts).
    """

    retry_delay: float = 1.0
    schedule_seconds: float = 5.0

    @classmethod
    def from_environ(cls) -> "RunnerSettings":
        settings = cls(
            retry_delay=float(os.environ.get("DBMAIL_LOCAL_RETRY_DELAY", cls.retry_delay)),
            schedule_seconds=float(os.environ.get("DBMAIL_LOCAL_SCHEDULE_SECONDS", cls.schedule_seconds)),
        )
        if settings.retry_delay < 0 or settings.schedule_seconds <= 0:
            raise ValueError("DBMAIL_LOCAL_RETRY_DELAY must be >= 0 and DBMAIL_LOCAL_SCHEDULE_SECONDS > 0")
        return settings


@dataclass(frozen=True)
class Runtime:
    """What every trigger of one runner shares."""

    template: Template
    client: ClientFactory
    settings: RunnerSettings
    state: StatePaths
    stopping: threading.Event


class Trigger(Protocol):
    name: str
    concurrency: int

    def run(self) -> None: ...


TriggerKind = Callable[[LocalFunction, str, dict[str, Any], Runtime], Trigger]


def utc_timestamp(moment: datetime | None = None) -> str:
    """ISO 8601 with milliseconds and a Z, as AWS writes times in event payloads."""
    return (moment or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def queue_url(runtime: Runtime, arn: str) -> str:
    """The URL of the SQS queue with this ARN (event sources and destinations name queues by ARN)."""
    if not arn.startswith("arn:aws:sqs:"):
        raise TemplateError(f"{arn}: only SQS queues are supported here locally")
    return runtime.client("sqs").get_queue_url(QueueName=arn.rsplit(":", 1)[1])["QueueUrl"]
