"""The archive function fed events/archive_get.json, as Lambda's function URL invokes it."""

from __future__ import annotations

import copy

from tests.conftest import load_event, recipient
from tests.handlers.conftest import load_handler


def at(path: str) -> dict:
    event = copy.deepcopy(load_event("archive_get.json"))
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    return event


def test_the_sample_get_of_a_public_request_is_its_page_and_others_are_404(moto_stack, context):
    from dbmail.client import submit_request

    handler = load_handler("archive")
    public, private = (
        submit_request(
            subject="Splash {{ year }} schedule",
            msgtext="Hello {{ user.first_name }}",
            recipients=[recipient(1)],
            var_dict={"year": 2026},
            public=flag,
        )
        for flag in (True, False)
    )
    page = handler(at(f"/email/{public}"), context)
    assert page["statusCode"] == 200 and page["headers"]["Content-Type"] == "text/html; charset=utf-8"
    assert "<h1>Splash 2026 schedule</h1>" in page["body"] and "<pre>Hello Reader</pre>" in page["body"]
    assert page["headers"]["Content-Security-Policy"].startswith("default-src 'none'")
    hidden, unknown = handler(at(f"/email/{private}"), context), handler(load_event("archive_get.json"), context)
    assert hidden["statusCode"] == unknown["statusCode"] == 404 and hidden["body"] == unknown["body"]
    assert handler(at("/email/not%20an%20id"), context)["statusCode"] == 400
    assert handler(at("/elsewhere"), context)["statusCode"] == 404
