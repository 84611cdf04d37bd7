"""Secrets from AWS Secrets Manager, read through Powertools Parameters and cached.

A function's environment never holds a secret, only the ARN of each secret it uses (the
``DBMAIL_*_SECRET_ARN`` variables); ``Settings.for_function`` reads the values at cold start
through ``read_secret``, so the Settings fields (``sendgrid_api_key``, ``unsubscribe_secret``,
``sendgrid_webhook_public_key``) hold them as before and nothing that reads settings changes.

Powertools keeps each value for ``MAX_AGE_SECONDS``: settings built again in the same process
(the local runner runs every function in one) do not call Secrets Manager again. Powertools (and
with it boto3) is imported on first use, never at import: the website's settings and the domain
read no secret and never load the SDK for one.

Secrets Manager cannot hold an empty value, so a secret that holds ``UNSET`` ("none", the
template's default for the SendGrid secrets) is not set: its Settings field keeps its default.
"""

from __future__ import annotations

from dbmail.core.errors import ConfigurationError

MAX_AGE_SECONDS = 300
UNSET = "none"


def read_secret(variable: str, secret_id: str) -> str:
    """The value of the secret ``secret_id`` (an ARN or a name) that ``variable`` names; "" when it
    holds UNSET. Raises a ConfigurationError naming the variable when it cannot be read."""
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    try:
        value = parameters.get_secret(secret_id.strip(), max_age=MAX_AGE_SECONDS)
    except GetParameterError as exc:
        raise ConfigurationError(f"{variable}: cannot read the secret {secret_id.strip()!r}: {exc}") from exc
    if not isinstance(value, str):
        raise ConfigurationError(f"{variable}: the secret {secret_id.strip()!r} holds binary data, not text")
    return "" if value.strip() == UNSET else value


def clear() -> None:
    """Forget every cached secret (tests: each stack has its own)."""
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
