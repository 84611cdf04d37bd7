"""The original mailgate's routing semantics (pure: the directory is a small in-memory table)."""

from dataclasses import replace

import pytest

from dbmail.errors import AddressInvalid, RequestInvalid
from dbmail.routing import DEFAULT_RULES, ClassInfo, EmailListRule, Person, Section, User, check_rule, parse_destinations, route

CLASS = ClassInfo(
    class_id=1234, emailcode="E1234", program_name="Splash 2026", directors_email="directors@example.org",
    teachers=(Person("Tea Cher", "teacher@example.net"), Person("Co Teach", "co@example.net")),
    sections=(Section(1, "E1234s1", (Person("Stu One", "s1@example.net"), Person("Tea Cher", "teacher@example.net"))),
              Section(2, "E1234s2", (Person("Stu Two", "s2@example.net"),))),
)


class Tables:
    def __init__(self, users=(), redirects=None):
        self.users = {u.username.lower(): u for u in users}
        self.redirects = redirects or {}

    def user_by_username(self, username):
        return self.users.get(username.lower())

    def user_by_email(self, email):
        return next((u for u in self.users.values() if u.email == email), None)

    def class_by_id(self, class_id):
        return CLASS if class_id == CLASS.class_id else None

    def redirect(self, original):
        return self.redirects.get(original)


def emails(result):
    return [p.email for p in result.route.recipients]


@pytest.mark.parametrize("local, expected", [
    ("E1234-class", ["directors@example.org", "teacher@example.net", "co@example.net", "s1@example.net", "s2@example.net"]),
    ("E1234-teachers", ["directors@example.org", "teacher@example.net", "co@example.net"]),
    ("E1234-students", ["directors@example.org", "s1@example.net", "teacher@example.net", "s2@example.net"]),
])
def test_class_lists_reach_directors_plus_the_audience_without_duplicates(local, expected):
    result = route(local, DEFAULT_RULES, Tables(), has_list_id=False)
    assert result.route.rule.handler == "ClassList" and result.route.group
    assert emails(result) == expected
    assert result.route.recipients[0].name == "Splash 2026 Directors"
    assert result.route.subject_prefix == "[E1234]"


def test_a_section_list_reaches_only_that_sections_students():
    result = route("E1234s2-students", DEFAULT_RULES, Tables(), has_list_id=False)
    assert result.route.rule.handler == "SectionList"
    assert emails(result) == ["directors@example.org", "s2@example.net"]
    assert result.route.subject_prefix == "[E1234s2]"


@pytest.mark.parametrize("local", ["E9999-class", "E1234s7-students"])
def test_an_unknown_class_or_section_sends_nothing(local):
    assert route(local, DEFAULT_RULES, Tables(), has_list_id=False).route is None


def test_plain_redirect_is_case_insensitive():
    tables = Tables(redirects={"directors": "a@example.net, B <b@example.net>"})
    result = route("Directors", DEFAULT_RULES, tables, has_list_id=False)
    assert result.route.rule.handler == "PlainList" and emails(result) == ["a@example.net", "b@example.net"]


def test_user_email_reaches_a_teacher_only_or_with_a_list_id():
    tables = Tables(users=[User("tcher", "teacher@example.net", "Tea", "Cher", is_teacher=True),
                           User("kid", "kid@example.net", "Ki", "D", is_teacher=False)])
    teacher = route("TCher", DEFAULT_RULES, tables, has_list_id=False)
    assert teacher.route.rule.handler == "UserEmail" and not teacher.route.group and emails(teacher) == ["teacher@example.net"]
    assert route("kid", DEFAULT_RULES, tables, has_list_id=False).route is None
    assert emails(route("kid", DEFAULT_RULES, tables, has_list_id=True)) == ["kid@example.net"]


def test_rules_run_in_seq_order_and_the_first_that_sends_wins():
    # given a catch-all redirect rule placed before the class rule
    tables = Tables(redirects={"e1234-class": "override@example.net"})
    early = replace(DEFAULT_RULES[2], list_id="early-redirect", seq=5)
    result = route("E1234-class", [*DEFAULT_RULES, early], tables, has_list_id=False)
    assert result.route.rule.list_id == "early-redirect" and emails(result) == ["override@example.net"]


def test_a_rule_that_declines_falls_through_to_the_next():
    tables = Tables(users=[User("E1234-class", "odd@example.net", is_teacher=True)])
    # the class rule matches E9999-class but declines; UserEmail does not know it either
    result = route("E9999-class", DEFAULT_RULES, tables, has_list_id=False)
    assert result.route is None and result.matched_rules == ("default-class", "default-redirect", "default-user")


def test_subject_prefix_of_the_rule_follows_the_code():
    rule = replace(DEFAULT_RULES[1], subject_prefix="[Splash]")
    result = route("E1234-teachers", [rule], Tables(), has_list_id=False)
    assert result.route.subject_prefix == "[E1234] [Splash]"


@pytest.mark.parametrize("destination, bad", [
    ("a@example.net,,b@example.net", "(empty entry)"),
    ("a@example.net, not-an-address", "not-an-address"),
    ("", "(empty entry)"),
])
def test_plain_redirect_validation_names_the_bad_entries(destination, bad):
    with pytest.raises(AddressInvalid, match=bad.replace("(", r"\(").replace(")", r"\)")):
        parse_destinations(destination)


def test_rules_are_checked_when_written():
    with pytest.raises(RequestInvalid, match="unknown EmailList handler"):
        check_rule(EmailListRule("x", ".*", 1, "Mailman"))
    with pytest.raises(RequestInvalid, match="does not compile"):
        check_rule(EmailListRule("x", "(", 1, "PlainList"))
