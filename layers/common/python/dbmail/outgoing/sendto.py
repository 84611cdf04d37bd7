"""The original's send-to functions: which addresses a request reaches for one recipient user."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from dbmail.core.addresses import format_address, mailbox_key, unique_mailboxes
from dbmail.core.errors import UnknownSendToFunction


class RecipientLike(Protocol):
    """A PynamoDB EmailRequest, or a namespace of its fields (a preview's, the archive's)."""

    first_name: str | None
    last_name: str | None
    email: str | None
    guardian_name: str | None
    guardian_email: str | None
    emergency_name: str | None
    emergency_email: str | None


class Destination(NamedTuple):
    """One address for one user, formatted '"Name" <email>' (a tuple: one is made per recipient)."""

    send_to: str
    email: str


def recipient_fields(recipient: RecipientLike) -> Mapping[str, Any]:
    """A PynamoDB item's own dict of its fields (a read through a field's descriptor costs ten
    times the dict's), else the namespace's."""
    return getattr(recipient, "attribute_values", None) or vars(recipient)


def _self(fields: Mapping[str, Any]) -> tuple[str | None, str | None]:
    name = " ".join([p for p in (fields.get("first_name"), fields.get("last_name")) if p])
    return name, fields.get("email")


def _guardian(fields: Mapping[str, Any]) -> tuple[str | None, str | None]:
    return fields.get("guardian_name"), fields.get("guardian_email")


def _emergency(fields: Mapping[str, Any]) -> tuple[str | None, str | None]:
    return fields.get("emergency_name"), fields.get("emergency_email")


_PARTS = {"self": _self, "guardian": _guardian, "emergency": _emergency}

# sendto_fn_name -> the parts it concatenates, in the original's order.
SENDTO_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "": ("self",),
    "send_to_self": ("self",),
    "send_to_guardian": ("guardian",),
    "send_to_emergency": ("emergency",),
    "send_to_self_and_guardian": ("self", "guardian"),
    "send_to_self_and_emergency": ("self", "emergency"),
    "send_to_guardian_and_emergency": ("guardian", "emergency"),
    "send_to_self_and_guardian_and_emergency": ("self", "guardian", "emergency"),
}


def get_sendto_function(name: str | None) -> Callable[[RecipientLike], list[Destination]]:
    """Resolve sendto_fn_name once per request; an unknown name is a configuration error."""
    key = (name or "").strip()
    if key not in SENDTO_FUNCTIONS:
        known = ", ".join(repr(k) for k in SENDTO_FUNCTIONS)
        raise UnknownSendToFunction(f"unknown send-to function {name!r}; known: {known}")
    parts = [_PARTS[p] for p in SENDTO_FUNCTIONS[key]]
    if len(parts) == 1:
        (part,) = parts

        def destination(recipient: RecipientLike) -> list[Destination]:
            """``destinations`` for one part (most requests): unique_mailboxes keeps it if it has an address."""
            name, email = part(recipient_fields(recipient))
            if not mailbox_key(email):
                return []
            email = email.strip()
            return [Destination(send_to=format_address(name, email), email=email)]

        return destination

    def destinations(recipient: RecipientLike) -> list[Destination]:
        # one email a mailbox; no address there means no email for this user, not an error
        fields = recipient_fields(recipient)
        found = unique_mailboxes((part(fields) for part in parts), lambda name_and_email: name_and_email[1])
        return [Destination(send_to=format_address(name, email.strip()), email=email.strip()) for name, email in found]

    return destinations
