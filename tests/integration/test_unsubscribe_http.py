"""One-click unsubscribe end to end on the real local stack: the link in a delivered .eml, served
by the runner's function URL, opened in Debian's headless chromium (GET, then the button), and
a raw RFC 8058 POST with urllib; tampered and expired links get a 4xx page and change nothing."""

from __future__ import annotations

import email
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import pytest

from dbmail.cli.preview import CHROMIUM as CHROMIUM_PATH
from dbmail.cli.preview import CHROMIUM_FLAGS
from dbmail.client import submit_request
from dbmail.core.settings import Settings, website_settings
from dbmail.core.unsubscribe import make_token, verify_token
from dbmail.feedback.store import SuppressionStore
from dbmail.outgoing.emails import message_id_for
from tests.conftest import recipient
from tests.integration.test_outgoing import outbox_by_message_id

pytestmark = pytest.mark.integration

CHROMIUM = Path(CHROMIUM_PATH)
CHROMIUM_ARGS = list(CHROMIUM_FLAGS)


@pytest.fixture(scope="module")
def links(local_stack, store):
    """The List-Unsubscribe link of each of three delivered emails, by address."""
    people = [recipient(5100), recipient(5101), recipient(5102)]
    request_id = submit_request(
        subject="Hi", msgtext="Dear {{ user.first_name }}", recipients=people, sender="splash@example.org"
    )

    def expanded():
        items = list(store.iter_emails(request_id))
        return items if len(items) == 3 else None

    def sent():  # in the outbox: SES took them (their status may be sent or, with feedback, delivered)
        by_id = outbox_by_message_id(local_stack.outbox)
        return by_id if all(message_id_for(request_id, i.email_key, i.send_from) in by_id for i in items) else None

    items = local_stack.wait_for(expanded, timeout=60)
    by_id = local_stack.wait_for(sent, timeout=60)
    found = {}
    for item in items:
        (path,) = by_id[message_id_for(request_id, item.email_key, item.send_from)]
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        found[message["To"].addresses[0].addr_spec] = message["List-Unsubscribe"].strip("<>")
    return found


@pytest.fixture(scope="module")
def secret(local_stack) -> str:
    """The stack's unsubscribe secret, read as the unsubscribe function reads it."""
    return Settings.for_function("unsubscribe").unsubscribe_secret


@pytest.fixture(scope="module")
def suppressions(local_stack) -> SuppressionStore:
    website_settings.cache_clear()
    return SuppressionStore(website_settings())


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: ./scripts/setup.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def post_one_click(url: str) -> tuple[int, dict, str]:
    request = urllib.request.Request(
        url,
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_the_links_point_at_the_unsubscribe_function_and_name_their_user_and_address(local_stack, links, secret):
    for address, url in links.items():
        assert url.startswith(local_stack.env["DBMAIL_LOCAL_UNSUBSCRIBEFUNCTION_URL"] + "unsubscribe/")
        token = verify_token(secret, url.rpartition("/")[2])
        assert token.address == address and f"user{token.user_id}@example.net" == address


def test_clicking_the_link_and_the_button_in_chromium_unsubscribes(links, suppressions, browser):
    address = "user5100@example.net"
    assert not suppressions.is_suppressed(address)
    # given a browser with JavaScript off: the page must work without it, and without cookies
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    # when the link is opened
    response = page.goto(links[address])
    # then the page asks, in an accessible way, and nothing has changed yet
    assert response.status == 200 and page.title() == "Unsubscribe"
    assert page.locator("html").get_attribute("lang") == "en"
    assert address in page.locator("main").inner_text()
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert not suppressions.is_suppressed(address)
    # when the button is pressed
    with page.expect_navigation():
        page.get_by_role("button", name="Unsubscribe").click()
    # then a page confirms it, the address is on the suppression list, and no cookie was set
    assert page.title() == "You are unsubscribed"
    entry = suppressions.get(address)
    assert (entry.reason, entry.source, entry.user_id, entry.detail) == (
        "unsubscribe",
        "unsubscribe",
        5100,
        "confirmation page",
    )
    assert context.cookies() == []
    context.close()


def test_a_raw_rfc_8058_post_unsubscribes_at_once(links, suppressions):
    address = "user5101@example.net"
    status, headers, body = post_one_click(links[address])
    assert (status, body) == (200, "unsubscribed\n") and "Set-Cookie" not in headers
    assert suppressions.get(address).detail == "one-click (RFC 8058)"


def test_tampered_and_expired_links_get_a_4xx_page_and_change_nothing(
    local_stack, links, suppressions, secret, browser
):
    address = "user5102@example.net"
    url = links[address]
    base, _, token = url.rpartition("/")
    payload, _, signature = token.partition(".")
    another_payload = links["user5100@example.net"].rpartition("/")[2].partition(".")[0]
    tampered = [
        (f"{base}/{another_payload}.{signature}", 403),  # another user's address under this signature
        (f"{base}/{payload}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}", 403),
        (f"{base}/{payload}", 400),
    ]
    expired = make_token(secret, 5102, address, now=datetime.now(UTC) - timedelta(days=61))
    cases = [*tampered, (f"{base}/{expired}", 410)]
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    for bad, status in cases:
        response = page.goto(bad)
        assert response.status == status, bad
        assert page.title().startswith("This unsubscribe link") and "Nothing was changed." in page.content()
        assert page.get_by_role("button").count() == 0
        assert post_one_click(bad)[0] == status
    context.close()
    assert not suppressions.is_suppressed(address)
