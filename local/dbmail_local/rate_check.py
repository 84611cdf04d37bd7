"""The send rate against an SES that refuses what is above it: a local stack whose SES takes at
most R emails/s (DBMAIL_LOCAL_SES_MAX_RATE; MaxSendRate 0 reads that quota), one bulk request
to N recipients, and what came of it: how many sends SES throttled (none, if the fleet's token
bucket holds the rate) and the average rate from the first accepted send to the last.

    with throttled_stack(50, tmp_dir) as state:
        result = run(state, 1000)      # RateRun(emails=1000, throttles=0, average=..., ...)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dbmail.cli.files import read_env_file

from . import stack
from .demo import generate_recipients
from .lambda_runtime import temporary_environment
from .ses_quota import RATE_VARIABLE, read_counts

SENDER = "Splash <splash@example.org>"


@dataclass(frozen=True)
class RateRun:
    emails: int  # accepted by SES in the run
    throttles: int  # sends SES refused in the run
    average: float  # emails/s from the first accepted send to the last
    max_send_rate: float  # SES's


@contextmanager
def throttled_stack(rate: float, state_dir: Path) -> Iterator[stack.StatePaths]:
    """A local stack in ``state_dir`` (free ports) whose SES takes at most ``rate`` emails/s;
    stopped at the end whatever happened."""
    state = stack.StatePaths(state_dir)
    try:
        with temporary_environment({RATE_VARIABLE: str(rate)}):  # the moto server inherits it
            stack.up(state, dynamodb_port=0, moto_port=0, smtp_port=0)
        yield state
    finally:
        stack.down(state)


def sent_at(eml: Path) -> float:
    """When SES accepted an outbox file (its name: ``<UTC %Y%m%dT%H%M%S%fZ>-<n>.eml``)."""
    stamp = eml.name.partition("-")[0]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC).timestamp()


def run(state: stack.StatePaths, emails: int, timeout: float = 600.0) -> RateRun:
    """One bulk request to ``emails`` recipients on the stack (its stack.env in this process while
    it runs); returns once SES has accepted that many more emails (TimeoutError after ``timeout``)."""
    from dbmail.client import submit_request  # reads the stack's settings: under its environment
    from dbmail.core import models, settings

    before = set(state.outbox.glob("*.eml"))
    refused = read_counts(state.root)["throttled"]
    with temporary_environment(read_env_file(state.env_file)):
        settings.website_settings.cache_clear()
        models.bind_models.cache_clear()
        try:
            submit_request(
                subject="Rate check {{ user.first_name }}",
                msgtext="Dear {{ user.first_name }}, one of many.",
                recipients=generate_recipients(emails),
                sender=SENDER,
            )
        finally:
            settings.website_settings.cache_clear()
            models.bind_models.cache_clear()
    deadline = time.monotonic() + timeout
    while len(sent := set(state.outbox.glob("*.eml")) - before) < emails:
        if time.monotonic() > deadline:
            raise TimeoutError(f"SES accepted {len(sent)} of {emails} emails within {timeout:.0f} s")
        time.sleep(0.2)
    times = sorted(sent_at(eml) for eml in sent)
    counts = read_counts(state.root)
    return RateRun(
        emails=len(times),
        throttles=counts["throttled"] - refused,
        average=(len(times) - 1) / (times[-1] - times[0]),
        max_send_rate=counts["max_send_rate"],
    )
