"""Fixtures shared by the unit tests (the moto stack itself is in tests/conftest.py)."""

import pytest

from dbmail.client import install_default_email_lists, publish_directory, set_plain_redirect
from tests.conftest import DIRECTORY


@pytest.fixture
def inbound(moto_stack):
    """The moto stack with the original's default rules, the sample directory and a directors redirect."""
    install_default_email_lists()
    publish_directory(**DIRECTORY)
    set_plain_redirect("directors", "dir1@example.net, Dir Two <dir2@example.net>")
    return moto_stack
