"""What the command says when something goes wrong: the exit statuses, ONE line on stderr for any
error (AWS and PynamoDB errors included), and the endpoint check that fails at once when the
stack is down instead of after botocore's retries."""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlsplit

from dbmail.core.errors import ConfigurationError, DbmailError, DeliveryError

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130

EXIT_CODES_EPILOG = """\
exit status:
  0  done
  1  internal error (a bug; rerun with --debug for the traceback)
  2  bad input: a malformed file or argument, an unknown id, a request dbmail refuses
  3  the stack is unreachable or misconfigured (DynamoDB/SQS down, settings or
     credentials missing, an AWS error)
errors are one line on stderr: "dbmail: <what is wrong>"."""

LOCAL_STACK_HINT = "is the local stack up? make up; source .local/stack.env"
AWS_HINT = "check the network, AWS_REGION and AWS_ENDPOINT_URL*"


class BadInput(DbmailError):
    """Input this command refuses before calling dbmail; printed as is, without a type name."""


class Unreachable(Exception):
    """A service's endpoint refuses connections (found before botocore's retries would wait it out)."""

    def __init__(self, service: str, url: str):
        super().__init__(f"cannot reach {service} at {url}")
        self.service, self.url = service, url


# --- the stack -----------------------------------------------------------------------------------


def reach(service: str, url: str | None) -> None:
    """Fail at once if a custom (local) endpoint refuses connections: botocore would retry with
    backoff first (PynamoDB's five retries take about 20 s) only to fail the same way."""
    try:
        parts = urlsplit(url or "")
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return  # a malformed URL: botocore's own error says what is wrong with it
    if not host or host.endswith(".amazonaws.com"):
        return
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        raise Unreachable(service, (url or "").rstrip("/")) from None


def reach_dynamodb() -> None:
    from dbmail.core.settings import website_settings

    reach("DynamoDB", website_settings().dynamodb_endpoint)


def reach_sqs() -> None:
    reach("SQS", os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL"))


# --- errors: one line, an exit status ------------------------------------------------------------


def _aws_cause(exc: BaseException) -> BaseException | None:
    """The botocore or PynamoDB error behind ``exc`` (itself, a PynamoDB error's cause, a `raise ... from`)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from pynamodb.exceptions import PynamoDBException

    found, seen = None, set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (BotoCoreError, ClientError)):
            return current
        if isinstance(current, PynamoDBException):
            found = found or current
            current = current.cause or current.__cause__
        else:
            current = current.__cause__
    return found


def _service(url: str, via_pynamodb: bool) -> str:
    if via_pynamodb:
        return "DynamoDB"
    for name, label in (("DYNAMODB", "DynamoDB"), ("SQS", "SQS"), ("S3", "S3"), ("SES", "SES"), ("SESV2", "SES")):
        if os.environ.get(f"AWS_ENDPOINT_URL_{name}", "").rstrip("/") == url:
            return label
    host = urlsplit(url).hostname or ""
    for part, label in (("dynamodb", "DynamoDB"), ("sqs", "SQS"), ("s3", "S3"), ("email", "SES")):
        if host.startswith(part + ".") or f".{part}." in host:
            return label
    return "AWS"


def _hint(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return AWS_HINT if host.endswith(".amazonaws.com") else LOCAL_STACK_HINT


def _explain_aws(exc: BaseException, cause: BaseException) -> str:
    from botocore import exceptions as boto
    from pynamodb.exceptions import PynamoDBException

    via_pynamodb = isinstance(exc, PynamoDBException) or isinstance(cause, PynamoDBException)
    if isinstance(cause, PynamoDBException):  # no botocore error behind it
        return f"DynamoDB error: {cause.msg or type(cause).__name__}"
    if isinstance(cause, boto.ClientError):
        error = cause.response.get("Error", {})
        return f"AWS error {error.get('Code', 'Unknown')}: {error.get('Message') or cause}"
    url = str(getattr(cause, "kwargs", {}).get("endpoint_url") or "").rstrip("/")
    if isinstance(cause, (boto.ConnectionError, boto.ConnectionClosedError)) and url:
        return f"cannot reach {_service(url, via_pynamodb)} at {url} ({_hint(url)})"
    if isinstance(cause, boto.ReadTimeoutError) and url:
        return f"{_service(url, via_pynamodb)} at {url} did not answer in time ({_hint(url)})"
    if isinstance(cause, (boto.NoCredentialsError, boto.PartialCredentialsError, boto.NoRegionError)):
        return (
            f"{cause} (set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and AWS_REGION; {LOCAL_STACK_HINT})"
        )
    return f"AWS error: {cause}"


def explain(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one line (without `dbmail: `) for an error a command raised."""
    if isinstance(exc, BadInput):
        return EXIT_BAD_INPUT, str(exc)
    if isinstance(exc, Unreachable):
        return EXIT_UNAVAILABLE, f"{exc} ({_hint(exc.url)})"
    if isinstance(exc, (ConfigurationError, DeliveryError)):
        return EXIT_UNAVAILABLE, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, DbmailError):
        return EXIT_BAD_INPUT, f"{type(exc).__name__}: {exc}"
    cause = _aws_cause(exc)
    if cause is not None:
        return EXIT_UNAVAILABLE, _explain_aws(exc, cause)
    return EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"


def one_line(message: str) -> str:
    return re.sub(r"\s*\n\s*", " ", message.strip()) or "error"
