"""The cost of email on AWS from what the bench measured per email, and a projection to a larger
request. Prices: us-east-1 list prices (on-demand DynamoDB, x86 Lambda, standard SQS, SES
outbound), as of 2025; free tiers left out."""

from __future__ import annotations

import math
from dataclasses import dataclass

LAMBDA_GB_SECOND = 0.0000166667
LAMBDA_REQUEST = 0.20 / 1e6
SQS_REQUEST = 0.40 / 1e6  # each 64 KiB of a request's payload is billed as one request
DYNAMODB_WRITE_UNIT = 0.625 / 1e6
DYNAMODB_READ_UNIT = 0.125 / 1e6
SES_EMAIL = 0.10 / 1000
SQS_BILLING_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FunctionUse:
    """One function's measured share of the work: invocations and their total duration."""

    name: str
    memory_mb: int
    invocations: int
    seconds: float


@dataclass(frozen=True)
class PerEmail:
    """What the bench measured, divided by the emails it sent."""

    functions: tuple[FunctionUse, ...]  # totals over ``emails`` emails
    emails: int
    sqs_requests: float  # per email, billed requests (64 KiB chunks)
    write_units: float  # per email, DynamoDB write request units (all tables, indexes included)
    read_units: float  # per email


def sqs_billed_requests(payload_bytes: int) -> int:
    """Requests SQS bills for one call carrying ``payload_bytes`` (at least one)."""
    return max(1, math.ceil(payload_bytes / SQS_BILLING_CHUNK))


def cost_lines(measured: PerEmail, emails: int) -> list[tuple[str, str, float]]:
    """(item, quantity, dollars) for ``emails`` emails at the measured rates."""
    scale = emails / measured.emails
    lines = []
    for use in measured.functions:
        if not use.invocations:
            continue
        gb_seconds = use.seconds * use.memory_mb / 1024 * scale
        requests = use.invocations * scale
        lines.append(
            (
                f"Lambda {use.name} ({use.memory_mb} MB)",
                f"{gb_seconds:,.1f} GB-s, {requests:,.0f} invocations",
                gb_seconds * LAMBDA_GB_SECOND + requests * LAMBDA_REQUEST,
            )
        )
    sqs = measured.sqs_requests * emails
    writes, reads = measured.write_units * emails, measured.read_units * emails
    lines += [
        ("SQS", f"{sqs:,.0f} requests", sqs * SQS_REQUEST),
        ("DynamoDB writes", f"{writes:,.0f} write units", writes * DYNAMODB_WRITE_UNIT),
        ("DynamoDB reads", f"{reads:,.0f} read units", reads * DYNAMODB_READ_UNIT),
        ("SES", f"{emails:,} emails", emails * SES_EMAIL),
    ]
    return lines


@dataclass(frozen=True)
class Projection:
    emails: int
    queue_seconds: float
    send_seconds: dict[float, float]  # quota (emails/s) -> seconds
    peak_rss_mib: float


def project(
    recipients: int, emails_per_recipient: float, queue_rate: float, quotas: list[float], peak_rss_mib: float
) -> Projection:
    """A request of ``recipients`` at the measured expansion rate (emails queued per second) and
    memory (flat in the number of recipients, as measured), sent at each quota."""
    emails = round(recipients * emails_per_recipient)
    return Projection(
        emails=emails,
        queue_seconds=emails / queue_rate,
        send_seconds={quota: emails / quota for quota in quotas},
        peak_rss_mib=peak_rss_mib,
    )
