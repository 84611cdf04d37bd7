"""The one typed settings object, read from the environment and validated once per process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

from dbmail.core.errors import ConfigurationError

PROVIDERS = ("ses", "sendgrid")


@dataclass(frozen=True)
class Settings:
    request_table: str
    recipient_table: str
    email_table: str
    send_queue_url: str
    allowed_sender_domains: tuple[str, ...]
    default_sender: str
    bounces_address: str
    email_host_sender: str
    site_url: str
    region: str
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
    # Inbound (set on the inbound function only; checked where used, by inbound_settings()).
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

    def require_inbound(self) -> Settings:
        """The inbound settings are complete; raise a ConfigurationError naming what is missing."""
        missing = [
            name
            for name in (
                "inbound_bucket",
                "inbound_table",
                "emaillist_table",
                "redirect_table",
                "directory_table",
                "chapter_domains",
            )
            if not getattr(self, name)
        ]
        if missing:
            raise ConfigurationError("inbound settings missing: " + ", ".join(missing))
        if self.spam_action not in ("drop", "hold"):
            raise ConfigurationError(f"DBMAIL_SPAM_ACTION must be drop or hold, not {self.spam_action!r}")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        missing = [
            name
            for name in (
                "DBMAIL_REQUEST_TABLE",
                "DBMAIL_RECIPIENT_TABLE",
                "DBMAIL_EMAIL_TABLE",
                "DBMAIL_SEND_QUEUE_URL",
                "DBMAIL_ALLOWED_SENDER_DOMAINS",
                "DBMAIL_DEFAULT_SENDER",
                "DBMAIL_BOUNCES_ADDRESS",
                "DBMAIL_SITE_URL",
            )
            if not env.get(name)
        ]
        if missing:
            raise ConfigurationError(
                "missing settings: "
                + ", ".join(missing)
                + " (deployed: set by template.yaml; local: source .local/stack.env)"
            )
        provider = env.get("DBMAIL_PROVIDER", "ses").strip().lower()
        if provider not in PROVIDERS:
            raise ConfigurationError(f"DBMAIL_PROVIDER must be one of {PROVIDERS}, not {provider!r}")
        domains = tuple(d.strip().lower() for d in env["DBMAIL_ALLOWED_SENDER_DOMAINS"].split(",") if d.strip())
        if not domains:
            raise ConfigurationError("DBMAIL_ALLOWED_SENDER_DOMAINS lists no domain")
        bounces = env["DBMAIL_BOUNCES_ADDRESS"].strip()
        if "@" not in bounces:
            raise ConfigurationError("DBMAIL_BOUNCES_ADDRESS must be an email address")
        return cls(
            request_table=env["DBMAIL_REQUEST_TABLE"],
            recipient_table=env["DBMAIL_RECIPIENT_TABLE"],
            email_table=env["DBMAIL_EMAIL_TABLE"],
            send_queue_url=env["DBMAIL_SEND_QUEUE_URL"],
            allowed_sender_domains=domains,
            default_sender=env["DBMAIL_DEFAULT_SENDER"].strip(),
            bounces_address=bounces,
            email_host_sender=env.get("DBMAIL_EMAIL_HOST_SENDER", "").strip(),
            site_url=env["DBMAIL_SITE_URL"].rstrip("/"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            provider=provider,
            sendgrid_api_key=env.get("DBMAIL_SENDGRID_API_KEY", ""),
            sendgrid_url=env.get("DBMAIL_SENDGRID_URL", "https://api.sendgrid.com").rstrip("/"),
            unsubscribe_secret=env.get("DBMAIL_UNSUBSCRIBE_SECRET", ""),
            dynamodb_endpoint=env.get("AWS_ENDPOINT_URL_DYNAMODB") or env.get("AWS_ENDPOINT_URL") or None,
            retry_max_delay_seconds=_positive_int(env, "DBMAIL_RETRY_MAX_DELAY_SECONDS", 900),
            stranded_after=timedelta(seconds=_positive_int(env, "DBMAIL_STRANDED_AFTER_SECONDS", 600)),
            inbound_bucket=env.get("DBMAIL_INBOUND_BUCKET", ""),
            inbound_prefix=env.get("DBMAIL_INBOUND_PREFIX", "inbound/"),
            inbound_table=env.get("DBMAIL_INBOUND_TABLE", ""),
            emaillist_table=env.get("DBMAIL_EMAILLIST_TABLE", ""),
            redirect_table=env.get("DBMAIL_REDIRECT_TABLE", ""),
            directory_table=env.get("DBMAIL_DIRECTORY_TABLE", ""),
            chapter_domains=tuple(
                d.strip().lower() for d in env.get("DBMAIL_CHAPTER_DOMAINS", "").split(",") if d.strip()
            ),
            support_address=env.get("DBMAIL_SUPPORT_ADDRESS", "").strip(),
            moderator_address=env.get("DBMAIL_MODERATOR_ADDRESS", "").strip(),
            spam_action=env.get("DBMAIL_SPAM_ACTION", "hold").strip().lower(),
            subaddress_separator=env.get("DBMAIL_SUBADDRESS_SEPARATOR", "+").strip() or None,
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"{name} must be a whole number of seconds, at least 1, not {value!r}")
    return int(value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once (a Lambda container's environment never changes)."""
    return Settings.from_env()
