"""The comm panel's preview and test send: one recipient's email of a request that is not submitted.

``request`` is what the website would pass to ``submit_request`` (its fields by name, as in a
request file: subject, msgtext, recipients, sendto_fn_name, sender, creator, var_dict, ...).
Neither function reads or writes a table: a test send is never a TextOfEmail and never counts
in any request.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dbmail.core.addresses import parse_address
from dbmail.core.clock import utcnow
from dbmail.core.errors import AddressInvalid
from dbmail.core.settings import Settings, website_settings
from dbmail.outgoing import preview as previews

if TYPE_CHECKING:
    from dbmail.core.transports import Transport

TEST_PREFIX = "[TEST] "


def preview(
    request: Mapping[str, Any],
    *,
    recipient: int | None = None,
    user: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Recipient ``recipient`` (default the first) of ``request``, or ``user`` (recipient
    fields), rendered and composed as it would be sent: ``subject``, ``send_from``, ``send_to``,
    ``html`` (None for a text body), ``text`` (the generated text part), ``eml`` (the MIME
    bytes), ``size`` and ``hints`` (spam-safety sentences for the admin). Raises a
    RequestInvalid subclass for what submit_request would refuse."""
    return previews.preview(request, settings or website_settings(), utcnow(), recipient=recipient, user=user).as_dict()


def send_test(
    request: Mapping[str, Any],
    to: str,
    *,
    recipient: int | None = None,
    user: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    transport: Transport | None = None,
) -> dict[str, str]:
    """Send one rendered copy of recipient ``recipient``'s (or ``user``'s) email to ``to``
    through the configured provider (the send function's: ``wiring.test_send_transport``),
    its subject marked ``[TEST]``, from the request's sender (restricted to the allowed
    domains). Returns the address, the subject, the Message-ID and the provider's message id."""
    settings = settings or website_settings()
    try:
        address = parse_address(to)
    except AddressInvalid as exc:
        raise AddressInvalid(f"--to / to: {exc}") from None
    email = previews.render_email(
        request,
        previews.pick_recipient(request, recipient, user),
        settings,
        utcnow(),
        send_to=[address.addr_spec],
        subject_prefix=TEST_PREFIX,
        request_id=f"test-{uuid.uuid4().hex}",  # a fresh Message-ID: receivers drop repeats
    )
    if transport is None:
        from dbmail import wiring

        transport = wiring.test_send_transport()
    provider_id = transport.send(email)
    return {
        "to": address.addr_spec,
        "subject": email.subject,
        "message_id": email.message_id,
        "provider_id": provider_id,
    }
