"""The original's send-to functions: which addresses a request reaches for one recipient user."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dbmail.core.addresses import format_address, unique_mailboxes
from dbmail.core.errors import UnknownSendToFunction


class RecipientLike(Protocol):
    first_name: str | None
    last_name: str | None
    email: str | None
    guardian_name: str | None
    guardian_email: str | None
    emergency_name: str | None
    emergency_email: str | None


@dataclass(frozen=True)
class Destination:
    """One address for one user, formatted '"Name" <email>'."""

    send_to: str
    email: str


def _self(r: RecipientLike) -> tuple[str | None, str | None]:
    name = " ".join(p for p in (r.first_name, r.last_name) if p)
    return name, r.email


def _guardian(r: RecipientLike) -> tuple[str | None, str | None]:
    return r.guardian_name, r.guardian_email


def _emergency(r: RecipientLike) -> tuple[str | None, str | None]:
    return r.emergency_name, r.emergency_email


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

    def destinations(recipient: RecipientLike) -> list[Destination]:
        # one email a mailbox; no address there means no email for this user, not an error
        found = unique_mailboxes((part(recipient) for part in parts), lambda name_and_email: name_and_email[1])
        return [Destination(send_to=format_address(name, email.strip()), email=email.strip()) for name, email in found]

    return destinations
