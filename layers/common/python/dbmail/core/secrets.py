"""Secrets from AWS Secrets Manager, cached.

A function's environment never holds a secret, only the ARN of each secret it uses (the
``DBMAIL_*_SECRET_ARN`` variables); ``Settings.for_function`` reads the values at cold start
through ``read_secret``, so the Settings fields (``sendgrid_api_key``, ``unsubscribe_secret``,
``sendgrid_webhook_public_key``) hold them as before and nothing that reads settings changes.

Each value is kept for ``MAX_AGE_SECONDS``: settings built again in the same process (the local
runner runs every function in one) do not call Secrets Manager again. The read is one
GetSecretValue through botocore (dbmail.core.aws), imported on first use, never at import: the
website's settings and the domain read no secret and never load the SDK for one. (Powertools
Parameters would do the same through boto3, which costs a cold start about a tenth of a second.)

Secrets Manager cannot hold an empty value, so a secret that holds ``UNSET`` ("none", the
template's default for the SendGrid secrets) is not set: its Settings field keeps its default.
"""

from __future__ import annotations

import os
import threading
import time
from functools import lru_cache

from dbmail.core.errors import ConfigurationError

MAX_AGE_SECONDS = 300
UNSET = "none"

_cache: dict[tuple[str | None, str], tuple[float, str]] = {}  # (region, secret id) -> (read at, value)
_lock = threading.Lock()


def read_secret(variable: str, secret_id: str) -> str:
    """The value of the secret ``secret_id`` (an ARN or a name) that ``variable`` names; "" when it
    holds UNSET. Raises a ConfigurationError naming the variable when it cannot be read."""
    value = _cached_value(variable, secret_id.strip())
    return "" if value.strip() == UNSET else value


def _cached_value(variable: str, secret_id: str) -> str:
    key = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"), secret_id)
    with _lock:
        cached = _cache.get(key)
        if cached and time.monotonic() - cached[0] < MAX_AGE_SECONDS:
            return cached[1]
    value = _get_secret_value(variable, secret_id, key[0])
    with _lock:
        _cache[key] = (time.monotonic(), value)
    return value


def _get_secret_value(variable: str, secret_id: str, region: str | None) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = _client(region).get_secret_value(SecretId=secret_id)
    except (BotoCoreError, ClientError) as exc:
        raise ConfigurationError(f"{variable}: cannot read the secret {secret_id!r}: {exc}") from exc
    if "SecretString" not in response:
        raise ConfigurationError(f"{variable}: the secret {secret_id!r} holds binary data, not text")
    return response["SecretString"]


@lru_cache(maxsize=4)
def _client(region: str | None):
    """One Secrets Manager client for a cold start's reads (each new client costs tens of ms)."""
    from dbmail.core import aws

    return aws.client("secretsmanager", region)


def clear() -> None:
    """Forget every cached secret and the client (tests: each stack has its own)."""
    with _lock:
        _cache.clear()
    _client.cache_clear()
