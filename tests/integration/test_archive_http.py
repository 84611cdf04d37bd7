"""The public archive on the real local stack: the archive function served by the runner's
function URL (DBMAIL_LOCAL_ARCHIVEFUNCTION_URL), opened in Debian's headless chromium."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from dbmail.client import submit_request
from tests.conftest import recipient
from tests.integration.test_unsubscribe_http import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.integration

BODY = (
    "<html><body><h2>Hello {{ user.first_name }}</h2><p>{{ program }} registration opens Monday.</p>"
    '<p><a href="{{ user.get_confirmation_link }}">Confirm</a></p></body></html>'
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def requests(local_stack) -> dict[str, str]:
    """A public and a private request, by name (their recipient is a real user with her own link)."""
    people = [recipient(5300, vars={"get_confirmation_link": "https://esp.example.org/confirm/private-5300"})]
    return {
        name: submit_request(
            subject="{{ program }} is coming",
            msgtext=BODY,
            recipients=people,
            sender="splash@example.org",
            var_dict={"program": "Splash 2026"},
            public=public,
        )
        for name, public in (("public", True), ("private", False))
    }


def archive_url(local_stack, request_id: str) -> str:
    return f"{local_stack.env['DBMAIL_LOCAL_ARCHIVEFUNCTION_URL']}email/{request_id}"


def test_a_public_request_page_loads_in_chromium_with_its_subject_and_no_recipient_data(local_stack, requests, browser):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    response = page.goto(archive_url(local_stack, requests["public"]))
    assert response.status == 200 and page.title() == "Splash 2026 is coming"
    assert page.locator("h1").inner_text() == "Splash 2026 is coming"
    frame = page.frame_locator("iframe")
    assert frame.locator("h2").inner_text() == "Hello Reader"
    assert "Splash 2026 registration opens Monday." in frame.locator("body").inner_text()
    assert "private-5300" not in page.content() and "Zoë" not in page.content()
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    context.close()


def test_a_private_request_and_an_unknown_id_give_the_same_404(local_stack, requests, browser):
    page = browser.new_page()
    private = page.goto(archive_url(local_stack, requests["private"]))
    private_text = page.locator("main").inner_text()
    unknown = page.goto(archive_url(local_stack, "f" * 32))
    assert private.status == unknown.status == 404 and page.locator("main").inner_text() == private_text
    assert "Splash" not in private_text
    page.close()
    try:
        urllib.request.urlopen(archive_url(local_stack, "bad%20id"), timeout=10)
    except urllib.error.HTTPError as error:
        assert error.code == 400
    else:
        pytest.fail("a malformed id was not refused")
