"""The runner's function URLs (dbmail_local/function_urls.py): HTTP to Lambda's function URL event
(payload 2.0) and the handler's answer back, through a real loopback server."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from dbmail_local.cfn import LocalTarget, Template
from dbmail_local.function_urls import FunctionUrlServer, http_response, request_event, url_variable, urls_from_env
from dbmail_local.lambda_runtime import Invocation
from dbmail_local.stack import choose_port


class EchoFunction:
    """A loaded function stand-in: records each event and answers what the test sets."""

    logical_id = "EchoFunction"

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.answer = Invocation("r-1", response={"statusCode": 200, "body": "ok"})

    def invoke(self, event: dict) -> Invocation:
        self.events.append(event)
        return self.answer


@pytest.fixture
def served():
    function = EchoFunction()
    server = FunctionUrlServer(function, f"http://127.0.0.1:{choose_port(0)}/")
    server.start()
    yield SimpleNamespace(function=function, url=server.url)
    server.stop()


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str = "GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers or {}, method=method), timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_a_form_post_becomes_a_payload_2_event_with_a_text_body(served):
    status, _, body = request(
        served.url + "unsubscribe/t0k.en?x=1&x=2&y=",
        b"List-Unsubscribe=One-Click",
        {"Content-Type": "application/x-www-form-urlencoded", "Cookie": "a=1; b=2", "X-Custom": "v"},
        "POST",
    )
    assert (status, body) == (200, b"ok")
    (event,) = served.function.events
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert (event["rawPath"], event["rawQueryString"]) == ("/unsubscribe/t0k.en", "x=1&x=2&y=")
    assert event["queryStringParameters"] == {"x": "1,2", "y": ""}
    assert event["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert event["headers"]["x-custom"] == "v" and "cookie" not in event["headers"]
    assert event["cookies"] == ["a=1", "b=2"]
    assert (event["body"], event["isBase64Encoded"]) == ("List-Unsubscribe=One-Click", False)
    http = event["requestContext"]["http"]
    assert (http["method"], http["path"], http["sourceIp"]) == ("POST", "/unsubscribe/t0k.en", "127.0.0.1")


def test_a_binary_body_is_base64_and_a_get_has_none(served):
    request(served.url, b"\x00\xff", {"Content-Type": "application/octet-stream"}, "POST")
    request(served.url + "page")
    binary, get = served.function.events
    assert (binary["body"], binary["isBase64Encoded"]) == (base64.b64encode(b"\x00\xff").decode(), True)
    assert "body" not in get and get["isBase64Encoded"] is False and get["rawPath"] == "/page"


def test_the_answer_is_translated_as_lambda_translates_it(served):
    served.function.answer = Invocation(
        "r",
        response={
            "statusCode": 410,
            "headers": {"Content-Type": "text/html", "Cache-Control": "no-store"},
            "cookies": ["s=1; HttpOnly"],
            "body": base64.b64encode("<p>gone ✓</p>".encode()).decode(),
            "isBase64Encoded": True,
        },
    )
    status, headers, body = request(served.url)
    assert (status, headers["Content-Type"], headers["Cache-Control"], headers["Set-Cookie"]) == (
        410,
        "text/html",
        "no-store",
        "s=1; HttpOnly",
    )
    assert body.decode() == "<p>gone ✓</p>"
    # a failed invocation is a 502, as Lambda answers
    served.function.answer = Invocation("r", error=RuntimeError("boom"))
    assert request(served.url)[0] == 502


def test_an_answer_without_a_status_code_is_200_json_of_it():
    assert http_response({"ok": True}) == (200, [("Content-Type", "application/json")], b'{"ok": true}')
    assert http_response("text")[2] == b'"text"'


def test_repeated_headers_are_joined_with_commas():
    event = request_event("GET", "/", [("Accept", "a"), ("accept", "b")], b"", "127.0.0.1", "h:1")
    assert event["headers"] == {"accept": "a,b"}


def test_the_stack_env_names_each_url_function_and_getatt_resolves_to_it():
    template = Template.load(target=LocalTarget())
    assert template.url_functions() == ["UnsubscribeFunction", "ArchiveFunction", "SendGridEventsFunction"]
    env = {url_variable("UnsubscribeFunction"): "http://127.0.0.1:4100/", "OTHER": "x"}
    assert url_variable("UnsubscribeFunction") == "DBMAIL_LOCAL_UNSUBSCRIBEFUNCTION_URL"
    urls = urls_from_env(template, env)
    assert urls == {"UnsubscribeFunction": "http://127.0.0.1:4100/"}
    local = Template.load(target=LocalTarget(function_urls=urls))
    assert local.function_environment("SendFunction")["DBMAIL_UNSUBSCRIBE_URL"] == "http://127.0.0.1:4100/"
    # without the stack's URL, one of Lambda's form (a template only read, never run)
    assert json.dumps(template.get_att("SendGridEventsFunctionUrl", "FunctionUrl")).endswith('.on.aws/"')
