"""Typed settings, read from the environment and validated once, at cold start.

Each Lambda function declares the variables it reads (``ENVIRONMENT["send"]`` and so on) and
builds its settings at import with ``Settings.for_function("send")``: only those variables are
read, and every one must be set, so a missing one stops the cold start with a
ConfigurationError naming it. template.yaml gives each function exactly its variables (the
coupling test checks both ways), and the local runner gives each function its own, as Lambda does.

Secrets (the SendGrid API key, the unsubscribe secret, SendGrid's webhook verification key) are
never in an environment: a ``DBMAIL_*_SECRET_ARN`` variable names the Secrets Manager secret, and
for_function reads its value at cold start (``core/secrets.py``: Powertools Parameters, cached)
into the field that holds it, so nothing that reads settings knows where a value came from.

The website SDK (``dbmail.client``) and the CLI run outside Lambda, with the stack's variables
(``source .local/stack.env``, or the site's own configuration): ``website_settings()`` reads
what they need, and there the optional variables may be left unset (their defaults apply; the
inbound tables are then checked where used, by ``require_inbound``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from dbmail.core import secrets
from dbmail.core.errors import ConfigurationError
from dbmail.core.unsubscribe import DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS, check_secret

PROVIDERS = ("ses", "sendgrid")
SPAM_ACTIONS = ("drop", "hold")


@dataclass(frozen=True)
class Settings:
    """One function's settings (or the website's). Fields a function does not read keep their
    defaults; ``function`` says whose they are."""

    request_table: str = ""
    recipient_table: str = ""
    email_table: str = ""
    send_queue_url: str = ""  # the bulk lane
    priority_send_queue_url: str = ""  # the priority lane (outgoing/expand.is_priority)
    expand_chunk_queue_url: str = ""  # bulk requests' plans and chunks (the expand_chunk function's)
    allowed_sender_domains: tuple[str, ...] = ()
    default_sender: str = ""
    bounces_address: str = ""
    email_host_sender: str = ""
    site_url: str = ""
    region: str = "us-east-1"
    provider: str = "ses"
    sendgrid_api_key: str = ""
    sendgrid_url: str = "https://api.sendgrid.com"
    unsubscribe_secret: str = ""
    # One-click unsubscribe: the unsubscribe function's URL (the links' base) and how long a link works.
    unsubscribe_url: str = ""
    unsubscribe_token_days: int = DEFAULT_TOKEN_DAYS
    # SendGrid's Event Webhook verification key (base64 DER or PEM of its P-256 public key).
    sendgrid_webhook_public_key: str = ""
    dynamodb_endpoint: str | None = None
    max_age: timedelta = timedelta(days=7)
    max_tries: int = 3
    retry_max_delay_seconds: int = 900
    # An email queued (or claimed) this long ago and still not final is stranded: the sweep queues it again.
    stranded_after: timedelta = timedelta(minutes=10)
    # Inbound (the inbound function's, and the website's for managing rules, redirects and held mail).
    inbound_bucket: str = ""
    inbound_prefix: str = "inbound/"
    inbound_table: str = ""
    emaillist_table: str = ""
    redirect_table: str = ""
    directory_table: str = ""
    chapter_domains: tuple[str, ...] = ()
    support_address: str = ""
    moderator_address: str = ""
    spam_action: str = "hold"
    subaddress_separator: str | None = "+"  # directors+trip@ routes as directors@; None: off
    # Feedback: the SES configuration set every SES send names (its events come back to the
    # feedback function), the suppression list, and when soft bounces suppress an address.
    configuration_set: str = ""
    feedback_queue_url: str = ""  # where the SendGrid webhook queues events for the feedback function
    suppression_table: str = ""
    soft_bounce_table: str = ""
    soft_bounce_limit: int = 3
    soft_bounce_window: timedelta = timedelta(days=7)
    # The fleet's send rate (outgoing/send_rate.py): emails/s, 0 = the SES account's quota
    # (SendGrid: no limit); its token bucket's table.
    max_send_rate: float = 0.0
    send_rate_table: str = ""
    function: str = ""  # whose settings these are: a function of ENVIRONMENT, or "website"

    def require_inbound(self) -> Settings:
        """These settings name the inbound tables (the inbound function's always do; the
        website's only if they were set); raise a ConfigurationError naming what is missing."""
        missing = [name for name in INBOUND_VARIABLES if not getattr(self, VARIABLES[name].field)]
        if missing:
            raise ConfigurationError("inbound settings missing: " + ", ".join(missing))
        return self

    @classmethod
    def for_function(
        cls,
        function: str,
        env: Mapping[str, str] | None = None,
        read_secret: Callable[[str, str], str] = secrets.read_secret,
    ) -> Settings:
        """The settings of ``function`` (a key of ENVIRONMENT), read from ``env`` (default:
        os.environ): only the variables it declares, each checked. A function needs every one of
        them; the website may leave the optional ones unset. A secret's variable names its secret
        (an ARN): ``read_secret(variable, arn)`` reads the value (Secrets Manager, cached)."""
        env = os.environ if env is None else env
        if function not in ENVIRONMENT:
            raise ConfigurationError(f"no settings are declared for {function!r}; one of {sorted(ENVIRONMENT)}")
        lenient = function == WEBSITE
        values: dict[str, Any] = {}
        missing = []
        named_secrets: list[tuple[str, Variable, str]] = []
        for name in ENVIRONMENT[function]:
            variable = VARIABLES[name]
            raw = env.get(name)
            if raw is None or (not raw.strip() and not variable.allow_empty):
                if not variable.in_template or (lenient and variable.optional):
                    continue  # the field's default applies
                missing.append(name)
                continue
            if variable.secret:
                named_secrets.append((name, variable, raw))
                continue
            values[variable.field] = variable.parse(name, raw)
        if missing:
            where = "" if lenient else f"the {function} function's environment; "
            raise ConfigurationError(
                "missing settings: "
                + ", ".join(missing)
                + f" ({where}deployed: set by template.yaml; local: source .local/stack.env)"
            )
        for name, variable, arn in named_secrets:  # once every variable is there: no call for a broken start
            value = read_secret(name, arn)
            if not value.strip() and not variable.allow_empty:
                raise ConfigurationError(f"{name}: the secret it names holds no value ({secrets.UNSET!r})")
            values[variable.field] = variable.parse(name, value)
        settings = cls(
            **values,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            dynamodb_endpoint=env.get("AWS_ENDPOINT_URL_DYNAMODB") or env.get("AWS_ENDPOINT_URL") or None,
            function=function,
        )
        if "DBMAIL_PROVIDER" in ENVIRONMENT[function] and settings.provider == "sendgrid":
            if not settings.sendgrid_api_key:
                raise ConfigurationError(
                    "DBMAIL_PROVIDER is sendgrid but the SendGrid API key is not set: the secret "
                    f"DBMAIL_SENDGRID_API_KEY_SECRET_ARN names holds {secrets.UNSET!r} (docs/operations.md)"
                )
        return settings


# ---- the variables ----------------------------------------------------------------------------


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _url(name: str, raw: str) -> str:
    return raw.strip().rstrip("/")


def _domains(name: str, raw: str) -> tuple[str, ...]:
    domains = tuple(d.strip().lower() for d in raw.split(",") if d.strip())
    if not domains:
        raise ConfigurationError(f"{name} lists no domain")
    return domains


def _address(name: str, raw: str) -> str:
    address = raw.strip()
    if "@" not in address:
        raise ConfigurationError(f"{name} must be an email address")
    return address


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ConfigurationError(f"{name} must be one of {allowed}, not {value!r}")
        return value

    return parse


def _seconds(name: str, raw: str) -> int:
    value = raw.strip()
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"{name} must be a whole number of seconds, at least 1, not {value!r}")
    return int(value)


def _timedelta(name: str, raw: str) -> timedelta:
    return timedelta(seconds=_seconds(name, raw))


def _count(name: str, raw: str) -> int:
    value = raw.strip()
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"{name} must be a whole number, at least 1, not {value!r}")
    return int(value)


def _rate(name: str, raw: str) -> float:
    value = raw.strip()
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not (math.isfinite(rate) and rate >= 0):
        raise ConfigurationError(f"{name} must be emails per second, 0 or more (0: the quota), not {value!r}")
    return rate


def _days(name: str, raw: str) -> timedelta:
    return timedelta(days=_count(name, raw))


def _separator(name: str, raw: str) -> str | None:
    return raw.strip() or None


def _secret(name: str, raw: str) -> str:
    try:
        check_secret(raw)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None
    return raw


def _token_days(name: str, raw: str) -> int:
    value = raw.strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_TOKEN_DAYS:
        raise ConfigurationError(f"{name} must be a whole number of days from 1 to {MAX_TOKEN_DAYS}, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class Variable:
    """One DBMAIL_* variable: the Settings field it fills and how its text is checked.

    ``allow_empty``: set but empty is a value (a function needs it set all the same).
    ``optional``: the website and the CLI may leave it unset (the field's default applies); a
    function never may. ``in_template``: template.yaml sets it; False marks an override for tests
    and the local stack, which nobody needs to set. ``secret``: the variable holds the ARN of a
    Secrets Manager secret, whose value (read at cold start) is what ``parse`` checks and the field
    holds; an environment never holds a secret itself.
    """

    field: str
    parse: Callable[[str, str], Any] = _text
    allow_empty: bool = False
    optional: bool = False
    in_template: bool = True
    secret: bool = False


VARIABLES: Mapping[str, Variable] = {
    "DBMAIL_REQUEST_TABLE": Variable("request_table"),
    "DBMAIL_RECIPIENT_TABLE": Variable("recipient_table"),
    "DBMAIL_EMAIL_TABLE": Variable("email_table"),
    "DBMAIL_SEND_QUEUE_URL": Variable("send_queue_url"),
    "DBMAIL_PRIORITY_SEND_QUEUE_URL": Variable("priority_send_queue_url"),
    "DBMAIL_EXPAND_CHUNK_QUEUE_URL": Variable("expand_chunk_queue_url", optional=True),
    "DBMAIL_ALLOWED_SENDER_DOMAINS": Variable("allowed_sender_domains", _domains),
    "DBMAIL_DEFAULT_SENDER": Variable("default_sender"),
    "DBMAIL_BOUNCES_ADDRESS": Variable("bounces_address", _address),
    "DBMAIL_EMAIL_HOST_SENDER": Variable("email_host_sender", allow_empty=True, optional=True),
    "DBMAIL_SITE_URL": Variable("site_url", _url),
    "DBMAIL_PROVIDER": Variable("provider", _choice(*PROVIDERS)),
    # empty unless sendgrid
    "DBMAIL_SENDGRID_API_KEY_SECRET_ARN": Variable("sendgrid_api_key", allow_empty=True, secret=True),
    "DBMAIL_SENDGRID_URL": Variable("sendgrid_url", _url, in_template=False),
    "DBMAIL_UNSUBSCRIBE_SECRET_ARN": Variable("unsubscribe_secret", _secret, secret=True),
    "DBMAIL_UNSUBSCRIBE_URL": Variable("unsubscribe_url", _url),
    "DBMAIL_UNSUBSCRIBE_TOKEN_DAYS": Variable("unsubscribe_token_days", _token_days),
    "DBMAIL_SENDGRID_WEBHOOK_PUBLIC_KEY_SECRET_ARN": Variable(
        "sendgrid_webhook_public_key", allow_empty=True, secret=True
    ),
    "DBMAIL_RETRY_MAX_DELAY_SECONDS": Variable("retry_max_delay_seconds", _seconds),
    "DBMAIL_STRANDED_AFTER_SECONDS": Variable("stranded_after", _timedelta, optional=True),
    "DBMAIL_INBOUND_BUCKET": Variable("inbound_bucket", optional=True),
    "DBMAIL_INBOUND_PREFIX": Variable("inbound_prefix", optional=True),
    "DBMAIL_INBOUND_TABLE": Variable("inbound_table", optional=True),
    "DBMAIL_EMAILLIST_TABLE": Variable("emaillist_table", optional=True),
    "DBMAIL_REDIRECT_TABLE": Variable("redirect_table", optional=True),
    "DBMAIL_DIRECTORY_TABLE": Variable("directory_table", optional=True),
    "DBMAIL_CHAPTER_DOMAINS": Variable("chapter_domains", _domains, optional=True),
    "DBMAIL_SUPPORT_ADDRESS": Variable("support_address", allow_empty=True, optional=True),
    "DBMAIL_MODERATOR_ADDRESS": Variable("moderator_address", allow_empty=True, optional=True),
    "DBMAIL_SPAM_ACTION": Variable("spam_action", _choice(*SPAM_ACTIONS), optional=True),
    "DBMAIL_SUBADDRESS_SEPARATOR": Variable("subaddress_separator", _separator, allow_empty=True, optional=True),
    "DBMAIL_CONFIGURATION_SET": Variable("configuration_set", optional=True),
    "DBMAIL_FEEDBACK_QUEUE_URL": Variable("feedback_queue_url"),
    "DBMAIL_SUPPRESSION_TABLE": Variable("suppression_table", optional=True),
    "DBMAIL_SOFT_BOUNCE_TABLE": Variable("soft_bounce_table"),
    "DBMAIL_SOFT_BOUNCE_LIMIT": Variable("soft_bounce_limit", _count),
    "DBMAIL_SOFT_BOUNCE_WINDOW_DAYS": Variable("soft_bounce_window", _days),
    "DBMAIL_MAX_SEND_RATE": Variable("max_send_rate", _rate),
    "DBMAIL_SEND_RATE_TABLE": Variable("send_rate_table"),
}

# What each reader of settings reads. A Lambda function's variables are exactly what template.yaml
# gives it (tests/unit/test_template_coupling.py); "website" is what the SDK and the CLI read.
INBOUND_VARIABLES = (
    "DBMAIL_INBOUND_BUCKET",
    "DBMAIL_INBOUND_TABLE",
    "DBMAIL_EMAILLIST_TABLE",
    "DBMAIL_REDIRECT_TABLE",
    "DBMAIL_DIRECTORY_TABLE",
    "DBMAIL_CHAPTER_DOMAINS",
)
_EXPAND = (
    "DBMAIL_REQUEST_TABLE",
    "DBMAIL_RECIPIENT_TABLE",
    "DBMAIL_EMAIL_TABLE",
    "DBMAIL_SEND_QUEUE_URL",
    "DBMAIL_PRIORITY_SEND_QUEUE_URL",
    "DBMAIL_EXPAND_CHUNK_QUEUE_URL",  # a bulk request is expanded in chunks (the expand_chunk function)
    "DBMAIL_ALLOWED_SENDER_DOMAINS",  # the sender's domain is checked
    "DBMAIL_DEFAULT_SENDER",
    "DBMAIL_EMAIL_HOST_SENDER",  # a template variable
    "DBMAIL_SITE_URL",  # the request's public URL
)
# every function that sends draws from the fleet's send rate (outgoing/send_rate.py)
_SEND_RATE = ("DBMAIL_MAX_SEND_RATE", "DBMAIL_SEND_RATE_TABLE")
# every function that sends names the configuration set (SES sends only; SendGrid ignores it)
_TRANSPORT = (
    "DBMAIL_PROVIDER",
    "DBMAIL_SENDGRID_API_KEY_SECRET_ARN",
    "DBMAIL_SENDGRID_URL",
    "DBMAIL_CONFIGURATION_SET",
    *_SEND_RATE,
)
# what recording provider feedback reads (wiring.feedback_recorder): the feedback function's,
# and any other function that records feedback (DSNs, webhooks) includes these
FEEDBACK_VARIABLES = (
    "DBMAIL_EMAIL_TABLE",
    "DBMAIL_SUPPRESSION_TABLE",
    "DBMAIL_SOFT_BOUNCE_TABLE",
    "DBMAIL_SOFT_BOUNCE_LIMIT",
    "DBMAIL_SOFT_BOUNCE_WINDOW_DAYS",
)
_INBOUND = (
    *INBOUND_VARIABLES,
    "DBMAIL_INBOUND_PREFIX",
    "DBMAIL_SUPPORT_ADDRESS",
    "DBMAIL_MODERATOR_ADDRESS",
    "DBMAIL_SPAM_ACTION",
    "DBMAIL_SUBADDRESS_SEPARATOR",
    "DBMAIL_DEFAULT_SENDER",  # the site's name in notices
    "DBMAIL_BOUNCES_ADDRESS",  # the notices' envelope sender
    "DBMAIL_STRANDED_AFTER_SECONDS",  # the sweep's quiet period
    "DBMAIL_CONFIGURATION_SET",  # forwards and notices go through SES
)
WEBSITE = "website"
ENVIRONMENT: Mapping[str, tuple[str, ...]] = {
    "expand": _EXPAND,
    "expand_chunk": _EXPAND,  # plans bulk requests and expands their chunks
    "send": (
        "DBMAIL_REQUEST_TABLE",  # the request's special headers
        "DBMAIL_EMAIL_TABLE",
        "DBMAIL_SEND_QUEUE_URL",  # retries are queued again with a delay, in their lane
        "DBMAIL_PRIORITY_SEND_QUEUE_URL",
        "DBMAIL_BOUNCES_ADDRESS",
        "DBMAIL_UNSUBSCRIBE_URL",  # one-click unsubscribe links (the unsubscribe function's URL)
        "DBMAIL_UNSUBSCRIBE_TOKEN_DAYS",
        *_TRANSPORT,
        "DBMAIL_UNSUBSCRIBE_SECRET_ARN",
        "DBMAIL_RETRY_MAX_DELAY_SECONDS",
        "DBMAIL_SUPPRESSION_TABLE",  # suppressed addresses are skipped
        # an email whose message did not carry its body is rendered again, as expansion renders it
        "DBMAIL_RECIPIENT_TABLE",
        "DBMAIL_ALLOWED_SENDER_DOMAINS",
        "DBMAIL_DEFAULT_SENDER",
        "DBMAIL_EMAIL_HOST_SENDER",
        "DBMAIL_SITE_URL",
    ),
    # expire expands scheduled requests and mails failure reports (to the sender, a copy to support)
    "expire": (
        *_EXPAND,
        "DBMAIL_BOUNCES_ADDRESS",
        "DBMAIL_SUPPORT_ADDRESS",
        *_TRANSPORT,
        "DBMAIL_STRANDED_AFTER_SECONDS",
    ),
    "inbound": (*_INBOUND, *FEEDBACK_VARIABLES, *_SEND_RATE),  # DSNs to the bounces address are recorded
    "feedback": FEEDBACK_VARIABLES,
    # the HTTP functions (function URLs): one-click unsubscribe, SendGrid's signed Event Webhook, the archive
    "unsubscribe": ("DBMAIL_UNSUBSCRIBE_SECRET_ARN", "DBMAIL_SUPPRESSION_TABLE"),
    "sendgrid_events": ("DBMAIL_FEEDBACK_QUEUE_URL", "DBMAIL_SENDGRID_WEBHOOK_PUBLIC_KEY_SECRET_ARN"),
    # the public archive (GET /email/<request_id>): a public request rendered as expansion renders it
    "archive": (
        "DBMAIL_REQUEST_TABLE",
        "DBMAIL_ALLOWED_SENDER_DOMAINS",
        "DBMAIL_DEFAULT_SENDER",
        "DBMAIL_EMAIL_HOST_SENDER",
        "DBMAIL_SITE_URL",
    ),
    # submit, status, render, resend, redrive; EmailLists, redirects, the directory, held mail
    WEBSITE: tuple(dict.fromkeys((*_EXPAND, *_INBOUND, "DBMAIL_SUPPRESSION_TABLE"))),
}


@lru_cache(maxsize=1)
def website_settings() -> Settings:
    """The website SDK's and the CLI's settings, read once from os.environ."""
    return Settings.for_function(WEBSITE)
