"""The fake SendGrid v3 mail/send server accepts what the documented contract allows
and rejects, with the documented error shape, what it forbids (tests/fakes/sendgrid.py)."""

from __future__ import annotations

import copy
import json
import threading
import urllib.error
import urllib.request

import pytest

from tests.fakes.sendgrid import (
    MAX_BODY_BYTES,
    RESERVED_HEADERS,
    FakeSendGrid,
    validate_mail_send,
)

NOW = 1_700_000_000


def valid_body() -> dict:
    """A request using most documented features, with non-ASCII names and subjects."""
    return {
        "personalizations": [
            {
                "to": [{"email": "zoë@example.org", "name": "Zoë Ångström"}, {"email": "bob@example.org"}],
                "cc": [{"email": "carol@example.org", "name": '"Doe, Carol"'}],
                "bcc": [{"email": "archive@example.net"}],
                "subject": "Grüße aus Köln — 会议",
                "headers": {"X-Chapter": "köln"},
                "custom_args": {"message_request": "42"},
                "substitutions": {"-name-": "Zoë"},
                "send_at": NOW + 3600,
            },
            {"to": [{"email": "zoe@example.org"}], "subject": "Second envelope"},
        ],
        "from": {"email": "noreply@esp.example.org", "name": "ESP Département"},
        "reply_to": {"email": "chapter@esp.example.org", "name": "Chapter"},
        "subject": "Fallback subject ✓",
        "content": [
            {"type": "text/plain", "value": "Hallo Zoë"},
            {"type": "text/html", "value": "<p>Hallo Zoë</p>"},
            {"type": "text/calendar", "value": "BEGIN:VCALENDAR"},
        ],
        "attachments": [
            {"content": "aGVsbG8=", "filename": "a.txt", "type": "text/plain", "disposition": "attachment"}
        ],
        "headers": {"List-Unsubscribe": "<mailto:unsub@esp.example.org>", "X-Entity-Ref-ID": "1"},
        "custom_args": {"env": "test"},
        "categories": ["dbmail", "outgoing"],
        "send_at": NOW,
        "tracking_settings": {"click_tracking": {"enable": False}},
    }


def fields(errors: list[dict]) -> set:
    return {e["field"] for e in errors}


# ---------------------------------------------------------------- validate_mail_send ---


def test_valid_body_has_no_errors():
    # given a request using text+html, headers, custom_args, reply_to and non-ASCII text
    body = valid_body()
    # when it is validated
    errors = validate_mail_send(body, now=NOW)
    # then nothing is wrong
    assert errors == []


@pytest.mark.parametrize(
    "body",
    [
        {
            "personalizations": [{"to": [{"email": "a@example.org"}]}],
            "from": {"email": "b@example.org"},
            "subject": "s",
            "content": [{"type": "text/plain", "value": "x"}],
        },
        {
            "personalizations": [{"to": [{"email": "a@example.org"}]}],
            "from": {"email": "b@example.org"},
            "template_id": "d-123",
        },
        {
            "personalizations": [
                {"to": [{"email": "a@example.org"}], "subject": "one"},
                {"to": [{"email": "a@example.org"}], "subject": "two"},
            ],
            "from": {"email": "b@example.org"},
            "content": [{"type": "text/html", "value": "<p>x</p>"}],
        },
    ],
    ids=["minimal", "template-needs-no-subject-or-content", "subject-in-every-personalization"],
)
def test_other_valid_shapes_have_no_errors(body):
    # given a minimal, a template, or a per-personalization-subject request
    # when it is validated
    # then it is accepted (the same address in two personalizations is allowed)
    assert validate_mail_send(body, now=NOW) == []


def _set(path: str, value):
    """A mutation that sets body[path] (dotted, with list indices) to value."""

    def mutate(body):
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str):
    def mutate(body):
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return mutate


def _many_recipients(body):
    body["personalizations"] = [
        {"to": [{"email": f"r{i}-{j}@example.org"} for j in range(500)], "subject": "s"} for i in range(2)
    ]
    body["personalizations"][1]["to"].append({"email": "one-too-many@example.org"})


def _drop_personalization_subjects_and_top(body):
    del body["subject"]
    del body["personalizations"][1]["subject"]


def _big_custom_args(body):
    body["personalizations"][0]["custom_args"] = {f"k{i}": "v" * 100 for i in range(100)}


# (rule, mutation, expected field set, fragment of the expected message)
VIOLATIONS = [
    ("P1-missing", _delete("personalizations"), {"personalizations"}, "at least one personalization"),
    ("P1-empty", _set("personalizations", []), {"personalizations"}, "at least one personalization"),
    ("P1-not-array", _set("personalizations", {"to": []}), {"personalizations"}, "must be an array"),
    (
        "P1-too-many",
        _set("personalizations", [{"to": [{"email": f"u{i}@example.org"}], "subject": "s"} for i in range(1001)]),
        {"personalizations"},
        "limited to 1000 personalizations",
    ),
    ("P2-to-missing", _delete("personalizations.0.to"), {"personalizations.0.to"}, "to parameter is required"),
    ("P2-to-empty", _set("personalizations.0.to", []), {"personalizations.0.to"}, "at least one recipient"),
    ("P2-cc-empty", _set("personalizations.0.cc", []), {"personalizations.0.cc"}, "at least one recipient"),
    (
        "P2-to-not-object",
        _set("personalizations.0.to.1", "bob@example.org"),
        {"personalizations.0.to.1"},
        "must be an object",
    ),
    (
        "P3-invalid-email",
        _set("personalizations.0.to.1.email", "bob.example.org"),
        {"personalizations.0.to.1.email"},
        "valid address",
    ),
    (
        "P3-email-with-space",
        _set("personalizations.0.bcc.0.email", "ar chive@example.net"),
        {"personalizations.0.bcc.0.email"},
        "valid address",
    ),
    (
        "P3-email-missing",
        _set("personalizations.0.to.1", {"name": "Bob"}),
        {"personalizations.0.to.1.email"},
        "valid address",
    ),
    (
        "P3-email-too-long",
        _set("personalizations.0.to.1.email", "b" * 310 + "@example.org"),
        {"personalizations.0.to.1.email"},
        "320 characters",
    ),
    (
        "P3-name-with-comma",
        _set("personalizations.0.cc.0.name", "Doe, Carol"),
        {"personalizations.0.cc.0.name"},
        "may not contain",
    ),
    (
        "P3-name-not-string",
        _set("personalizations.0.to.0.name", 7),
        {"personalizations.0.to.0.name"},
        "must be a string",
    ),
    ("P4-too-many-recipients", _many_recipients, {"personalizations"}, "1000 total recipients"),
    (
        "P5-duplicate-address",
        _set("personalizations.0.cc.0.email", "BOB@example.org"),
        {"personalizations.0.cc.0.email"},
        "only be included once",
    ),
    ("F1-from-missing", _delete("from"), {"from"}, "must be provided"),
    ("F1-from-not-object", _set("from", "noreply@esp.example.org"), {"from"}, "must be an object"),
    ("F1-from-invalid", _set("from.email", "noreply@"), {"from.email"}, "valid address"),
    ("R1-reply-to-invalid", _set("reply_to.email", "chapter"), {"reply_to.email"}, "valid address"),
    ("R1-reply-to-list-invalid", _set("reply_to_list", [{"email": "x"}]), {"reply_to_list.0.email"}, "valid address"),
    ("S1-empty-subject", _set("subject", ""), {"subject"}, "at least one character"),
    ("S1-subject-not-string", _set("subject", 5), {"subject"}, "at least one character"),
    (
        "S1-empty-personalization-subject",
        _set("personalizations.0.subject", ""),
        {"personalizations.0.subject"},
        "at least one character",
    ),
    ("S2-subject-required", _drop_personalization_subjects_and_top, {"subject"}, "subject is required"),
    ("C1-content-missing", _delete("content"), {"content"}, "content param is required"),
    ("C1-content-empty", _set("content", []), {"content"}, "at least one defined content block"),
    ("C2-empty-value", _set("content.1.value", ""), {"content.1.value"}, "at least one character"),
    ("C2-empty-type", _set("content.0.type", ""), {"content.0.type"}, "length of at least one"),
    (
        "C2-type-with-semicolon",
        _set("content.2.type", "text/calendar; method=REQUEST"),
        {"content.2.type"},
        "Cannot contain",
    ),
    (
        "C3-html-before-plain",
        _set("content", [{"type": "text/html", "value": "<p>x</p>"}, {"type": "text/plain", "value": "x"}]),
        {"content"},
        "text/plain needs to be first",
    ),
    (
        "C3-other-before-html",
        _set(
            "content",
            [
                {"type": "text/plain", "value": "x"},
                {"type": "text/calendar", "value": "c"},
                {"type": "text/html", "value": "<p>x</p>"},
            ],
        ),
        {"content"},
        "text/plain needs to be first",
    ),
    (
        "C3-plain-twice",
        _set("content", [{"type": "text/plain", "value": "x"}, {"type": "text/plain", "value": "y"}]),
        {"content"},
        "text/plain needs to be first",
    ),
    (
        "C4-duplicate-type",
        _set(
            "content",
            [
                {"type": "text/plain", "value": "x"},
                {"type": "text/calendar", "value": "c"},
                {"type": "TEXT/CALENDAR", "value": "again"},
            ],
        ),
        {"content.2.type"},
        "may only be included once",
    ),
    ("D1-header-value-not-string", _set("headers.X-Entity-Ref-ID", 1), {"headers"}, "must be strings"),
    ("D1-header-key-with-space", _set("headers.X Bad", "v"), {"headers"}, "non-ASCII characters or empty spaces"),
    ("D1-header-key-non-ascii", _set("headers.X-Grüße", "v"), {"headers"}, "non-ASCII characters or empty spaces"),
    (
        "D1-header-duplicate-key",
        _set("headers.list-unsubscribe", "<mailto:x@example.org>"),
        {"headers"},
        "duplicate keys",
    ),
    (
        "D1-personalization-header-reserved",
        _set("personalizations.0.headers.Reply-To", "x@example.org"),
        {"personalizations.0.headers"},
        "reserved keys",
    ),
    ("D1-headers-not-object", _set("headers", ["X-A: b"]), {"headers"}, "must be an object"),
    ("A1-custom-arg-not-string", _set("custom_args.env", 1), {"custom_args"}, "must be strings"),
    ("A1-custom-args-empty", _set("custom_args", {}), {"custom_args"}, "cannot be empty"),
    (
        "A1-personalization-custom-arg-not-string",
        _set("personalizations.0.custom_args.message_request", 42),
        {"personalizations.0.custom_args"},
        "must be strings",
    ),
    ("A1-custom-args-too-big", _big_custom_args, {"personalizations.0.custom_args"}, "10,000 bytes"),
    (
        "K1-too-many-categories",
        _set("categories", [f"c{i}" for i in range(11)]),
        {"categories"},
        "limit of 10 categories",
    ),
    ("K1-category-not-string", _set("categories", ["ok", 3]), {"categories"}, "array of strings"),
    ("K1-category-too-long", _set("categories.0", "c" * 256), {"categories.0"}, "255 characters"),
    ("K1-category-non-ascii", _set("categories.0", "grüße"), {"categories.0"}, "non-ASCII"),
    ("K1-category-duplicate", _set("categories.1", "dbmail"), {"categories.1"}, "unique list"),
    ("T1-send-at-string", _set("send_at", str(NOW)), {"send_at"}, "as an integer"),
    ("T1-send-at-float", _set("send_at", NOW + 0.5), {"send_at"}, "as an integer"),
    ("T1-send-at-bool", _set("send_at", True), {"send_at"}, "as an integer"),
    ("T1-send-at-too-far", _set("send_at", NOW + 72 * 3600 + 1), {"send_at"}, "72 hours"),
    (
        "T1-personalization-send-at",
        _set("personalizations.0.send_at", "soon"),
        {"personalizations.0.send_at"},
        "as an integer",
    ),
    ("M1-attachment-not-base64", _set("attachments.0.content", "not base64!"), {"attachments.0.content"}, "base64"),
    (
        "M1-attachment-no-filename",
        _delete("attachments.0.filename"),
        {"attachments.0.filename"},
        "filename is required",
    ),
    (
        "M1-attachment-bad-disposition",
        _set("attachments.0.disposition", "download"),
        {"attachments.0.disposition"},
        "inline",
    ),
    ("M2-template-id-not-string", _set("template_id", 123), {"template_id"}, "must be a string"),
    (
        "M2-substitution-not-string",
        _set("personalizations.0.substitutions.-name-", 1),
        {"personalizations.0.substitutions"},
        "must be strings",
    ),
    ("M2-asm-not-object", _set("asm", 5), {"asm"}, "must be an object"),
    ("U1-unknown-top-level-key", _set("reply-to", {"email": "x@example.org"}), {"reply-to"}, "Unknown"),
    (
        "U1-unknown-personalization-key",
        _set("personalizations.0.recipients", []),
        {"personalizations.0.recipients"},
        "Unknown",
    ),
    ("U1-unknown-content-key", _set("content.0.charset", "utf-8"), {"content.0.charset"}, "Unknown"),
]


@pytest.mark.parametrize(
    "mutate, expected_fields, fragment", [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS]
)
def test_each_rule_violation_is_reported_on_its_field(mutate, expected_fields, fragment):
    # given a valid request broken in exactly one documented way
    body = valid_body()
    mutate(body)
    # when it is validated
    errors = validate_mail_send(body, now=NOW)
    # then exactly that field is reported, with the documented message and error shape
    assert fields(errors) == expected_fields, errors
    assert any(fragment in e["message"] for e in errors), errors
    for e in errors:
        assert set(e) == {"message", "field", "help"}
        assert e["help"].endswith("#message." + ".".join(p for p in e["field"].split(".") if not p.isdigit()))


@pytest.mark.parametrize("name", sorted(RESERVED_HEADERS) + ["Content-type", "REPLY-TO", "Dkim-Signature"])
def test_every_reserved_header_is_rejected_in_any_case(name):
    # given a request with a reserved header among the documented twelve
    body = valid_body()
    body["headers"][name] = "x"
    # when it is validated
    errors = validate_mail_send(body, now=NOW)
    # then the headers field is reported as using a reserved key
    assert fields(errors) == {"headers"}
    assert "reserved keys" in errors[0]["message"]


def test_reserved_header_list_matches_the_documented_twelve():
    # given the list published on the v3 Mail Send overview and errors pages
    documented = {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
    # then the fake reserves exactly those
    assert documented == RESERVED_HEADERS


def test_every_problem_is_listed_not_only_the_first():
    # given a request with three independent problems
    body = valid_body()
    body["from"]["email"] = "nope"
    body["headers"]["Subject"] = "x"
    body["categories"] = ["c"] * 11
    # when it is validated
    errors = validate_mail_send(body, now=NOW)
    # then all three are reported
    assert {"from.email", "headers", "categories"} <= fields(errors)


@pytest.mark.parametrize("body", [None, [], "text", 3])
def test_a_body_that_is_not_an_object_is_rejected(body):
    # given a JSON value that is not an object; when validated; then one field-less error
    assert validate_mail_send(body) == [
        {"message": "The request body must be a JSON object.", "field": None, "help": None}
    ]


# ---------------------------------------------------------------------- the server ---


@pytest.fixture
def sendgrid():
    with FakeSendGrid() as fake:
        yield fake


def post(
    fake: FakeSendGrid,
    body=None,
    *,
    raw: bytes | None = None,
    key: str | None = "default",
    content_type: str = "application/json",
    method: str = "POST",
    path: str = "/v3/mail/send",
):
    """Send a request; return (status, headers, decoded JSON body or b"")."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(fake.url + path, data=data, method=method)
    request.add_header("Content-Type", content_type)
    if key is not None:
        request.add_header("Authorization", f"Bearer {fake.api_key}" if key == "default" else key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
            return response.status, response.headers, payload
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        return exc.code, exc.headers, json.loads(payload) if payload else b""


def test_valid_request_gets_202_empty_body_and_message_id(sendgrid):
    # given a valid request with non-ASCII names and subjects (send_at in the past is allowed)
    body = valid_body()
    # when it is posted with the right key
    status, headers, payload = post(sendgrid, body)
    # then SendGrid's success answer comes back and the body is recorded unchanged
    assert status == 202
    assert payload == b""
    assert headers["X-Message-Id"]
    assert sendgrid.accepted == [body]
    assert sendgrid.message_ids == [headers["X-Message-Id"]]
    assert sendgrid.rejected == []
    assert sendgrid.request_count == 1


@pytest.mark.parametrize(
    "key",
    [None, "Bearer wrong-key", "Basic dXNlcjpwYXNz", "Bearer", "SG.fake-key.for-tests"],
    ids=["missing", "wrong-key", "basic-scheme", "no-token", "no-scheme"],
)
def test_missing_or_invalid_bearer_token_gets_401(sendgrid, key):
    # given a valid body but no usable bearer token
    # when it is posted
    status, headers, payload = post(sendgrid, valid_body(), key=key)
    # then 401 with SendGrid's documented error body, and nothing is accepted
    assert status == 401
    assert headers["Content-Type"] == "application/json"
    assert payload == {
        "errors": [
            {"message": "The provided authorization grant is invalid, expired, or revoked", "field": None, "help": None}
        ]
    }
    assert sendgrid.accepted == []
    assert sendgrid.rejected == [(401, payload["errors"])]


def test_auth_is_checked_before_the_body(sendgrid):
    # given an invalid body and a wrong key; when posted; then the key problem wins
    status, _, _ = post(sendgrid, {"nonsense": True}, key="Bearer nope")
    assert status == 401


def test_invalid_body_gets_400_listing_every_error(sendgrid):
    # given a body with two problems
    body = valid_body()
    body["from"] = {"email": "not-an-address"}
    body["headers"]["DKIM-Signature"] = "forged"
    # when it is posted
    status, headers, payload = post(sendgrid, body)
    # then 400 with both errors in the documented shape
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert {"from.email", "headers"} <= fields(payload["errors"])
    assert sendgrid.accepted == []
    assert sendgrid.rejected == [(400, payload["errors"])]


@pytest.mark.parametrize(
    "raw, content_type, status, message",
    [
        (b'{"a": 1}', "text/plain", 415, "application/json"),
        (b'{"subject": "\xff"}', "application/json", 415, "Invalid UTF8 in request"),
        (b'{"personalizations": [', "application/json", 400, "Bad Request"),
        (b"[1, 2]", "application/json", 400, "must be a JSON object"),
    ],
    ids=["wrong-content-type", "invalid-utf8", "invalid-json", "json-array"],
)
def test_unusable_request_bodies_are_rejected(sendgrid, raw, content_type, status, message):
    # given a body SendGrid cannot read as a JSON object
    # when it is posted
    got_status, _, payload = post(sendgrid, raw=raw, content_type=content_type)
    # then the documented status and one field-less error
    assert got_status == status
    assert len(payload["errors"]) == 1
    assert message in payload["errors"][0]["message"]
    assert payload["errors"][0]["field"] is None


def test_content_type_with_charset_is_accepted(sendgrid):
    # given a media type with a charset parameter; when posted; then accepted
    status, _, _ = post(sendgrid, valid_body(), content_type="application/json; charset=utf-8")
    assert status == 202


def test_body_over_the_size_limit_gets_413():
    # given a fake with a small limit (the real one is 30 MB)
    assert FakeSendGrid().max_body_bytes == MAX_BODY_BYTES == 30 * 1024 * 1024
    with FakeSendGrid(max_body_bytes=2_000) as fake:
        body = valid_body()
        body["content"][0]["value"] = "x" * 2_000
        # when a larger body is posted
        status, _, payload = post(fake, body)
    # then 413 Payload Too Large
    assert status == 413
    assert "30MB" in payload["errors"][0]["message"]


def test_other_methods_get_405_and_other_paths_404(sendgrid):
    # given the fake; when it is asked for something other than POST /v3/mail/send
    assert post(sendgrid, method="GET")[0] == 405
    assert post(sendgrid, valid_body(), path="/v3/mail/batch")[0] == 404
    # then nothing counts as a mail send
    assert sendgrid.request_count == 0


def test_fail_next_429_with_retry_after_then_success(sendgrid):
    # given the next two sends are rate limited
    sendgrid.fail_next(2, 429, retry_after=3)
    body = valid_body()
    # when the client sends three times
    answers = [post(sendgrid, body) for _ in range(3)]
    # then two 429s with Retry-After and X-RateLimit-* headers, then a 202
    assert [a[0] for a in answers] == [429, 429, 202]
    for status, headers, payload in answers[:2]:
        assert headers["Retry-After"] == "3"
        assert headers["X-RateLimit-Remaining"] == "0"
        assert int(headers["X-RateLimit-Reset"]) > 0
        assert payload["errors"][0]["message"] == "too many requests"
    assert sendgrid.accepted == [body]
    assert [status for status, _ in sendgrid.rejected] == [429, 429]
    assert sendgrid.request_count == 3


def test_fail_next_500_then_success(sendgrid):
    # given the next send fails on SendGrid's side
    sendgrid.fail_next(status=500)
    # when the client sends twice
    statuses = [post(sendgrid, valid_body())[0] for _ in range(2)]
    # then a 500 and then a 202
    assert statuses == [500, 202]


def test_injected_failure_does_not_hide_a_bad_key(sendgrid):
    # given a pending failure; when a bad key is used; then 401, and the failure stays pending
    sendgrid.fail_next(status=503)
    assert post(sendgrid, valid_body(), key="Bearer wrong")[0] == 401
    assert post(sendgrid, valid_body())[0] == 503


def test_concurrent_sends_are_all_recorded(sendgrid):
    # given 20 clients sending at once
    statuses = []

    def send(i):
        body = valid_body()
        body["custom_args"] = {"n": str(i)}
        statuses.append(post(sendgrid, body)[0])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then every send is accepted and recorded with its own message id
    assert statuses == [202] * 20
    assert sorted(b["custom_args"]["n"] for b in sendgrid.accepted) == sorted(str(i) for i in range(20))
    assert len(set(sendgrid.message_ids)) == 20


def test_lifecycle_url_reset_and_start_stop():
    # given a fake started explicitly
    fake = FakeSendGrid(api_key="SG.other").start()
    try:
        # then it listens on loopback and accepts its own key
        assert fake.url.startswith("http://127.0.0.1:")
        assert post(fake, valid_body())[0] == 202
        with pytest.raises(RuntimeError):
            fake.start()
        # when reset, the record is cleared
        fake.fail_next(status=500)
        fake.reset()
        assert (fake.accepted, fake.rejected, fake.request_count) == ([], [], 0)
        assert post(fake, valid_body())[0] == 202
    finally:
        fake.stop()
    # then after stop it has no url
    with pytest.raises(RuntimeError):
        fake.url


def test_valid_body_is_not_mutated_by_validation():
    body = valid_body()
    before = copy.deepcopy(body)
    validate_mail_send(body, now=NOW)
    assert body == before
