"""Inbound rules, redirects and directory data in DynamoDB (moto): checked when written, and a bad
item written raw is skipped at routing time, never failing a message; addresses route whatever
their case or +suffix."""

from __future__ import annotations

import email
import uuid
from email import policy

import boto3
import pytest

from dbmail import wiring
from dbmail.cli import main
from dbmail.client import add_email_list, publish_directory, set_plain_redirect
from dbmail.core.errors import AddressInvalid
from dbmail.core.statuses import InboundStatus
from dbmail.inbound import routing
from dbmail.inbound import store as inbound_store
from dbmail.inbound.routing import DEFAULT_RULES, DirectoryInvalid, RedirectInvalid, RuleInvalid, route
from dbmail.inbound.store import InboundStore
from tests.conftest import DIRECTORY, function_settings, inbound_message


@pytest.fixture
def store(inbound):
    return InboundStore(inbound.settings)


@pytest.fixture
def logged(monkeypatch):
    """Warnings of the store and the router: (message, extra)."""
    seen = []
    for module in (inbound_store, routing):
        monkeypatch.setattr(module.logger, "warning", lambda message, **kw: seen.append((message, kw.get("extra", {}))))
    return seen


def put_raw_rule(settings, **attributes):
    """An EmailList item written straight to DynamoDB, past every check (as a careless script would)."""
    item = {name: value if isinstance(value, dict) else {"S": value} for name, value in attributes.items()}
    boto3.client("dynamodb", region_name="us-east-1").put_item(TableName=settings.emaillist_table, Item=item)


def receive(stack, to: str):
    """What SES's receipt rule does (the raw mail in S3, then the router); returns (status, destinations)."""
    ses = wiring.inbound_router(function_settings("inbound")).transport._ses
    sent = []

    def capture(params, **_):
        if "Destination" in params:
            sent.extend(params["Destination"]["ToAddresses"])
        else:
            message = email.message_from_bytes(params["Content"]["Raw"]["Data"], policy=policy.default)
            sent.extend(a.addr_spec for h in ("To", "Cc", "Bcc") for a in (message[h].addresses if message[h] else ()))

    ses.meta.events.register("provide-client-params.sesv2.SendEmail", capture)
    message_id = uuid.uuid4().hex
    boto3.client("s3", region_name="us-east-1").put_object(
        Bucket=stack.settings.inbound_bucket,
        Key=f"{stack.settings.inbound_prefix}{message_id}",
        Body=inbound_message(to=to),
    )
    status = wiring.inbound_router(function_settings("inbound")).handle(message_id, [to], "PASS", "PASS")
    ses.meta.events.unregister("provide-client-params.sesv2.SendEmail", capture)
    return status, sorted(sent)


# --- addresses in any case, with or without a +suffix ------------------------------------------


@pytest.mark.parametrize(
    "to, expected",
    [
        ("E1234-Students@example.org", ["directors@example.org", "s1@example.net", "s2@example.net"]),
        ("E1234s1-CLASS@example.org", ["directors@example.org", "s1@example.net", "teacher@example.net"]),
        ("DIRECTORS@example.org", ["dir1@example.net", "dir2@example.net"]),
        ("directors+trip@example.org", ["dir1@example.net", "dir2@example.net"]),
        ("Directors+Trip@Example.org", ["dir1@example.net", "dir2@example.net"]),
        ("TCHER@example.org", ["teacher@example.net"]),
    ],
)
def test_case_and_plus_variants_are_forwarded_like_the_canonical_address(inbound, to, expected):
    # given the default rules, the directory and a directors redirect
    # when mail arrives for the address in capitals or with a +suffix
    status, destinations = receive(inbound, to)
    # then everyone the canonical address reaches gets it
    assert status == InboundStatus.FORWARDED and destinations == expected


def test_the_directory_store_answers_routing_case_insensitively(store):
    result = route("Directors+Trip", store.rules(), store, has_list_id=False, domain="example.org")
    assert [p.email for p in result.route.recipients] == ["dir1@example.net", "dir2@example.net"]
    assert result.route.list_address == "directors@example.org"


# --- rules are checked when written --------------------------------------------------------------


@pytest.mark.parametrize(
    "regex, handler, problem",
    [
        (
            r"^staff$",
            "PlainList",
            r"PlainList needs exactly 1 capture group \(redirect name\) but regex '\^staff\$' has none",
        ),
        (r"^(sta.*)$", "ClassList", r"ClassList needs exactly 2 capture groups \(class id, audience\) but .* has 1"),
        (r"^(\w)(\d+)-(class|teachers|students)$", "ClassList", "needs exactly 2 capture groups .* has 3"),
        (r"^\w(\w+)-(class|teachers|students)$", "ClassList", r"group 1 \(class id\) .* one or more digits"),
        (r"^\w(\d+)s(\d+)-(everyone)$", "SectionList", r"group 3 \(audience\) .* it also matches 'everyone'"),
        (r"^(", "PlainList", "does not compile"),
        (r"^(.*)$", "Mailman", "unknown EmailList handler 'Mailman'"),
        ("^(" + "x" * 260 + ")$", "PlainList", "at most 256 are allowed"),
        (r"^(\w+)+$", "UserEmail", "repeat inside a repeat"),
    ],
)
def test_add_email_list_refuses_a_rule_the_router_cannot_run(store, regex, handler, problem):
    # given the default rules; when a bad rule is added, then it is refused naming the problem
    with pytest.raises(RuleInvalid, match="EmailList rule 'staff': .*" + problem):
        add_email_list(regex, handler, list_id="staff")
    # and nothing was written
    assert [r.list_id for r in store.rules()] == [r.list_id for r in DEFAULT_RULES]


def test_a_new_rule_without_an_id_is_named_as_new(store):
    with pytest.raises(RuleInvalid, match="^new EmailList rule: PlainList needs exactly 1 capture group"):
        add_email_list(r"^announce$", "PlainList")


def test_lists_add_refuses_the_reported_rule_with_one_line(inbound, capsys):
    # given the command that was accepted before, then every staff@ mail failed with ValueError
    assert main(["lists", "add", "--regex", "^(sta.*)$", "--handler", "ClassList"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dbmail: RuleInvalid: new EmailList rule: ClassList needs exactly 2 capture groups")
    assert len(err.splitlines()) == 1


def test_other_fields_are_checked_on_add(store):
    with pytest.raises(RuleInvalid, match="seq must be a whole number, not 'soon'"):
        add_email_list(r"^(x)$", "PlainList", seq="soon", list_id="x")
    with pytest.raises(RuleInvalid, match="from_email: not a single valid email address"):
        add_email_list(r"^(x)$", "PlainList", from_email="lists@", list_id="x")
    with pytest.raises(RuleInvalid, match="subject_prefix may not contain CR or LF"):
        add_email_list(r"^(x)$", "PlainList", subject_prefix="[x]\nBcc: v@example.com", list_id="x")
    # a seq given as text on a command line is a number
    assert add_email_list(r"^(x)$", "PlainList", seq="15", list_id="x").seq == 15


def test_accept_automatic_is_stored_and_read_back(inbound, store):
    # given a class rule that accepts automatic mail, and the defaults (which do not)
    add_email_list(r"^\w(\d+)-(class|teachers|students)$", "ClassList", seq=1, accept_automatic=True, list_id="auto")
    # and an item written before the attribute existed
    put_raw_rule(inbound.settings, list_id="old", regex=r"^(old)$", seq={"N": "50"}, handler="PlainList")
    # then each reads back as written, the old one as not accepting automatic mail
    rules = {r.list_id: r for r in store.rules()}
    assert rules["auto"].accept_automatic is True and rules["auto"].broadcasts
    assert rules["default-class"].accept_automatic is False
    assert rules["old"].accept_automatic is False and not rules["old"].broadcasts


# --- bad items written raw: skipped at routing, later rules still route ---------------------------


def test_bad_raw_rules_are_skipped_with_a_warning_and_mail_still_routes(inbound, store, logged):
    # given raw items: the reported ClassList on ^(sta.*)$, a PlainList without a group, an unknown
    # handler, a regex that does not compile, a seq stored as text, and an item lacking its regex
    settings = inbound.settings
    put_raw_rule(settings, list_id="sta-class", regex="^(sta.*)$", seq={"N": "1"}, handler="ClassList")
    put_raw_rule(settings, list_id="no-group", regex="^staff$", seq={"N": "2"}, handler="PlainList")
    put_raw_rule(settings, list_id="mailman", regex="^(.*)$", seq={"N": "3"}, handler="Mailman")
    put_raw_rule(settings, list_id="broken", regex="^(", seq={"N": "4"}, handler="PlainList")
    put_raw_rule(settings, list_id="text-seq", regex="^(.*)$", seq="five", handler="PlainList")
    put_raw_rule(settings, list_id="no-regex", seq={"N": "6"}, handler="PlainList")
    set_plain_redirect("staff", "staff@example.net")
    # when the rules are read, then only the runnable ones come back, and each other is named
    assert [r.list_id for r in store.rules()] == [r.list_id for r in DEFAULT_RULES]
    skipped = sorted(extra["list_id"] for _, extra in logged)
    assert skipped == ["broken", "mailman", "no-group", "no-regex", "sta-class", "text-seq"]
    invalid = dict(store.invalid_rules())
    assert "ClassList needs exactly 2 capture groups" in invalid["sta-class"]
    assert "seq" in invalid["text-seq"]
    # and mail to staff@ is forwarded by the default redirect rule instead of failing
    status, destinations = receive(inbound, "staff@example.org")
    assert status == InboundStatus.FORWARDED and destinations == ["staff@example.net"]
    # and the next rule added gets seq 45 (the skipped items do not count)
    assert add_email_list(r"^(x)$", "PlainList").seq == 45


def test_a_raw_redirect_with_a_bad_entry_forwards_to_the_valid_ones(inbound, store, logged):
    store.models.PlainRedirect(original="office", destination="a@example.net, nobody, b@example.net").save()
    status, destinations = receive(inbound, "Office@example.org")
    assert status == InboundStatus.FORWARDED and destinations == ["a@example.net", "b@example.net"]
    assert [extra["original"] for _, extra in logged] == ["office"]


# --- redirects and directory data are checked when written ------------------------------------------


@pytest.mark.parametrize(
    "original, destination, error, problem",
    [
        ("office@example.org", "a@example.net", RedirectInvalid, "original is the local part only"),
        ("dir ectors", "a@example.net", RedirectInvalid, "is not a valid local part"),
        ("office+trip", "a@example.net", RedirectInvalid, "which starts a subaddress"),
        (
            "office",
            "a@example.net,,nobody",
            AddressInvalid,
            "invalid destination entries: '\\(empty entry\\)', 'nobody'",
        ),
        (
            "office",
            ", ".join(f"d{i}@example.net" for i in range(51)),
            RedirectInvalid,
            "has 51 destinations; at most 50",
        ),
    ],
)
def test_set_plain_redirect_refuses_bad_redirects(store, original, destination, error, problem):
    # given a redirect the router could not use; when it is set, then it is refused naming the problem
    with pytest.raises(error, match=problem):
        set_plain_redirect(original, destination)
    # and nothing was written
    assert {r.original for r in store.redirects()} == {"directors"}


def test_set_plain_redirect_stores_the_lower_cased_original(store):
    set_plain_redirect("  Office ", " a@example.net ")
    assert store.redirect("office") == "a@example.net"
    # with subaddressing off a plus is allowed in the name
    set_plain_redirect("a+b", "b@example.net", subaddress_separator=None)
    assert store.redirect("a+b") == "b@example.net"


def test_publish_directory_refuses_bad_entries_and_writes_nothing(moto_stack):
    # given users and classes with several problems, among good entries
    users = [
        {"username": "good", "email": "good@example.net"},
        {"username": "bad", "email": "not an address"},
        {"email": "nameless@example.net"},
    ]
    classes = [
        {"class_id": "12x", "emailcode": "E12", "program_name": "P", "directors_email": "d@example.org"},
        {"class_id": 7, "emailcode": "E7", "program_name": "P", "directors_email": "directors"},
        {"class_id": 8, "program_name": "P", "directors_email": "d@example.org"},
        {
            "class_id": 9,
            "emailcode": "E9",
            "program_name": "P",
            "directors_email": "d@example.org",
            "sections": [{"index": 1, "emailcode": "E9s1", "students": [{"name": "S", "email": "s@"}]}],
        },
    ]
    # when published, then one error names every bad entry
    with pytest.raises(DirectoryInvalid) as caught:
        publish_directory(users=users, classes=classes)
    message = str(caught.value)
    for problem in (
        "users[1].email 'not an address' is not a valid email address",
        "users[2] lacks 'username'",
        "classes[0].class_id must be a whole number",
        "classes[1].directors_email 'directors'",
        "classes[2] lacks 'emailcode'",
        "classes[3].sections[0].students[0].email 's@'",
    ):
        assert problem in message
    # and nothing was written, not even the good user
    store = InboundStore(moto_stack.settings)
    assert store.user_by_username("good") is None and store.class_by_id(9) is None


def test_publish_directory_writes_good_data(moto_stack):
    assert publish_directory(**DIRECTORY) == {"users": 3, "classes": 1}
    store = InboundStore(moto_stack.settings)
    assert store.user_by_username("TCHER").email == "teacher@example.net"
    assert [s.index for s in store.class_by_id(1234).sections] == [1, 2]
