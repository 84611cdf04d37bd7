"""Typed settings, read from the environment and validated once, at cold start.

Each Lambda function declares the variables it reads (``ENVIRONMENT["send"]`` and so on) and
builds its settings at import with ``Settings.for_function("send")``: only those variables are
read, and every one must be set, so a missing one stops the cold start with a
ConfigurationError naming it. template.yaml gives each function exactly its variables (the
coupling test checks both ways), and the local runner gives each function its own, as Lambda does.

The website SDK (``dbmail.client``) and the CLI run outside Lambda, with the stack's variables
(``source .local/stack.env``, or the site's own configuration): ``website_settings()`` reads
what they need, and there the optional variables may be left unset (their defaults apply; the
inbound tables are then checked where used, by ``require_inbound``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from dbmail.core.errors import ConfigurationError
from dbmail.core.unsubscribe import check_secret

PROVIDERS = ("ses", "sendgrid")
SPAM_ACTIONS = ("drop", "hold")


@dataclass(frozen=True)
class Settings:
    """One function's settings (or the website's). Fields a function does not read keep their
    defaults; ``function`` says whose they are."""

    request_table: str = ""
    recipient_table: str = ""
    email_table: str = ""
    send_queue_url: str = ""
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
    function: str = ""  # whose settings these are: a function of ENVIRONMENT, or "website"

    def require_inbound(self) -> Settings:
        """These settings name the inbound tables (the inbound function's always do; the
        website's only if they were set); raise a ConfigurationError naming what is missing."""
        missing = [name for name in INBOUND_VARIABLES if not getattr(self, VARIABLES[name].field)]
        if missing:
            raise ConfigurationError("inbound settings missing: " + ", ".join(missing))
        return self

    @classmethod
    def for_function(cls, function: str, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of ``function`` (a key of ENVIRONMENT), read from ``env`` (default:
        os.environ): only the variables it declares, each checked. A function needs every one of
        them; the website may leave the optional ones unset."""
        env = os.environ if env is None else env
        if function not in ENVIRONMENT:
            raise ConfigurationError(f"no settings are declared for {function!r}; one of {sorted(ENVIRONMENT)}")
        lenient = function == WEBSITE
        values: dict[str, Any] = {}
        missing = []
        for name in ENVIRONMENT[function]:
            variable = VARIABLES[name]
            raw = env.get(name)
            if raw is None or (not raw.strip() and not variable.allow_empty):
                if not variable.in_template or (lenient and variable.optional):
                    continue  # the field's default applies
                missing.append(name)
                continue
            values[variable.field] = variable.parse(name, raw)
        if missing:
            where = "" if lenient else f"the {function} function's environment; "
            raise ConfigurationError(
                "missing settings: "
                + ", ".join(missing)
                + f" ({where}deployed: set by template.yaml; local: source .local/stack.env)"
            )
        settings = cls(
            **values,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            dynamodb_endpoint=env.get("AWS_ENDPOINT_URL_DYNAMODB") or env.get("AWS_ENDPOINT_URL") or None,
            function=function,
        )
        if "DBMAIL_PROVIDER" in ENVIRONMENT[function] and settings.provider == "sendgrid":
            if not settings.sendgrid_api_key:
                raise ConfigurationError("DBMAIL_PROVIDER is sendgrid but DBMAIL_SENDGRID_API_KEY is empty")
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


def _separator(name: str, raw: str) -> str | None:
    return raw.strip() or None


def _secret(name: str, raw: str) -> str:
    try:
        check_secret(raw)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None
    return raw


@dataclass(frozen=True)
class Variable:
    """One DBMAIL_* variable: the Settings field it fills and how its text is checked.

    ``allow_empty``: set but empty is a value (a function needs it set all the same).
    ``optional``: the website and the CLI may leave it unset (the field's default applies); a
    function never may. ``in_template``: template.yaml sets it; False marks an override for tests
    and the local stack, which nobody needs to set.
    """

    field: str
    parse: Callable[[str, str], Any] = _text
    allow_empty: bool = False
    optional: bool = False
    in_template: bool = True


VARIABLES: Mapping[str, Variable] = {
    "DBMAIL_REQUEST_TABLE": Variable("request_table"),
    "DBMAIL_RECIPIENT_TABLE": Variable("recipient_table"),
    "DBMAIL_EMAIL_TABLE": Variable("email_table"),
    "DBMAIL_SEND_QUEUE_URL": Variable("send_queue_url"),
    "DBMAIL_ALLOWED_SENDER_DOMAINS": Variable("allowed_sender_domains", _domains),
    "DBMAIL_DEFAULT_SENDER": Variable("default_sender"),
    "DBMAIL_BOUNCES_ADDRESS": Variable("bounces_address", _address),
    "DBMAIL_EMAIL_HOST_SENDER": Variable("email_host_sender", allow_empty=True, optional=True),
    "DBMAIL_SITE_URL": Variable("site_url", _url),
    "DBMAIL_PROVIDER": Variable("provider", _choice(*PROVIDERS)),
    "DBMAIL_SENDGRID_API_KEY": Variable("sendgrid_api_key", allow_empty=True),  # empty unless sendgrid
    "DBMAIL_SENDGRID_URL": Variable("sendgrid_url", _url, in_template=False),
    "DBMAIL_UNSUBSCRIBE_SECRET": Variable("unsubscribe_secret", _secret),
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
    "DBMAIL_ALLOWED_SENDER_DOMAINS",  # the sender's domain is checked
    "DBMAIL_DEFAULT_SENDER",
    "DBMAIL_EMAIL_HOST_SENDER",  # a template variable
    "DBMAIL_SITE_URL",  # the request's public URL
)
_TRANSPORT = ("DBMAIL_PROVIDER", "DBMAIL_SENDGRID_API_KEY", "DBMAIL_SENDGRID_URL")
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
)
WEBSITE = "website"
ENVIRONMENT: Mapping[str, tuple[str, ...]] = {
    "expand": _EXPAND,
    "send": (
        "DBMAIL_REQUEST_TABLE",  # the request's special headers
        "DBMAIL_EMAIL_TABLE",
        "DBMAIL_SEND_QUEUE_URL",  # retries are queued again with a delay
        "DBMAIL_BOUNCES_ADDRESS",
        "DBMAIL_SITE_URL",  # unsubscribe links
        *_TRANSPORT,
        "DBMAIL_UNSUBSCRIBE_SECRET",
        "DBMAIL_RETRY_MAX_DELAY_SECONDS",
    ),
    # expire expands scheduled requests and mails failure reports
    "expire": (*_EXPAND, "DBMAIL_BOUNCES_ADDRESS", *_TRANSPORT, "DBMAIL_STRANDED_AFTER_SECONDS"),
    "inbound": _INBOUND,
    # submit, status, render, resend, redrive; EmailLists, redirects, the directory, held mail
    WEBSITE: tuple(dict.fromkeys((*_EXPAND, *_INBOUND))),
}


@lru_cache(maxsize=1)
def website_settings() -> Settings:
    """The website SDK's and the CLI's settings, read once from os.environ."""
    return Settings.for_function(WEBSITE)
