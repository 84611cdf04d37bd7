"""The website's SDK: one import for everything the ESP Website asks of dbmail.

Outgoing: ``submit_request``, ``request_status``, ``request_failures`` (who did not get the mail
and why), ``render_again``, ``preview`` and ``send_test`` (one recipient's email of an
unsubmitted request: rendered with spam-safety hints, or sent once marked [TEST]).
Inbound: ``add_email_list``, ``set_plain_redirect``, ``install_default_email_lists``,
``check_directory_data``, ``publish_directory``.
"""

from dbmail.client.failures import request_failures
from dbmail.client.lists import (
    add_email_list,
    check_directory_data,
    install_default_email_lists,
    publish_directory,
    set_plain_redirect,
)
from dbmail.client.preview import preview, send_test
from dbmail.client.requests import recipient_key, render_again, request_status, submit_request

__all__ = [
    "add_email_list",
    "check_directory_data",
    "install_default_email_lists",
    "preview",
    "publish_directory",
    "recipient_key",
    "render_again",
    "request_failures",
    "request_status",
    "send_test",
    "set_plain_redirect",
    "submit_request",
]
