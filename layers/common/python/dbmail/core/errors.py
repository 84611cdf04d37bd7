"""Errors with messages a chapter admin or an operator can act on.

``RequestInvalid`` and its subclasses are permanent: the request (or email) is recorded as
failed with the message and never retried. ``DeliveryError`` distinguishes a provider refusal
that retrying cannot fix from a transient one that SQS should retry.
"""

from enum import StrEnum


class DbmailError(Exception):
    """Base class for every error dbmail raises on purpose."""


class ConfigurationError(DbmailError):
    """The deployment's settings are missing or malformed."""


class RequestInvalid(DbmailError):
    """A MessageRequest cannot be expanded as written; retrying will not help."""


class TemplateInvalid(RequestInvalid):
    """A subject or body template does not compile or does not render."""


class TemplateLimitExceeded(TemplateInvalid):
    """Rendering broke one of the sandbox's limits (time, loop iterations, output size, memory,
    recursion). Whatever the recipient, the request as a whole fails."""


class UnknownSendToFunction(RequestInvalid):
    """sendto_fn_name names no known send-to function."""


class SenderNotAllowed(RequestInvalid):
    """The From address is outside the allowed (DMARC-aligned) domains."""


class HeaderInvalid(RequestInvalid):
    """A special header has a bad name, a CR/LF in its value, or overrides a managed header."""


class AddressInvalid(RequestInvalid):
    """An email address does not parse as a single plain address."""


class FailureKind(StrEnum):
    """How a provider refusal is treated: a throttle is retried later without spending a try,
    a transient error spends one of the tries, a permanent one fails the email at once."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    THROTTLED = "throttled"


class DeliveryError(DbmailError):
    """The provider did not accept a message; ``kind`` says whether and how to retry, and
    ``retry_after`` how many seconds the provider asked us to wait first (its Retry-After)."""

    def __init__(self, message: str, *, kind: FailureKind = FailureKind.TRANSIENT, retry_after: float | None = None):
        super().__init__(message)
        self.kind = FailureKind(kind)
        self.retry_after = retry_after

    @property
    def permanent(self) -> bool:
        return self.kind is FailureKind.PERMANENT


class ExpansionIncomplete(DbmailError):
    """Expansion stopped early (time budget); it resumes from its saved cursor on retry."""


class NotFound(DbmailError):
    """The named request, message or rule does not exist (or is not in the state asked for)."""
