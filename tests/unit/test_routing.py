"""The original mailgate's routing semantics (pure: the directory is a small in-memory table)."""

from dataclasses import replace

import pytest

from dbmail.core.errors import AddressInvalid, RequestInvalid
from dbmail.inbound import routing
from dbmail.inbound.routing import (
    DEFAULT_RULES,
    ClassInfo,
    DirectoryInvalid,
    EmailListRule,
    Person,
    RedirectInvalid,
    Route,
    RuleInvalid,
    Section,
    User,
    canonical_local_part,
    check_class,
    check_redirect,
    check_rule,
    check_user,
    merge_routes,
    parse_destinations,
    route,
)

CLASS = ClassInfo(
    class_id=1234,
    emailcode="E1234",
    program_name="Splash 2026",
    directors_email="directors@example.org",
    teachers=(Person("Tea Cher", "teacher@example.net"), Person("Co Teach", "co@example.net")),
    sections=(
        Section(1, "E1234s1", (Person("Stu One", "s1@example.net"), Person("Tea Cher", "teacher@example.net"))),
        Section(2, "E1234s2", (Person("Stu Two", "s2@example.net"),)),
    ),
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


@pytest.mark.parametrize(
    "local, expected",
    [
        (
            "E1234-class",
            ["directors@example.org", "teacher@example.net", "co@example.net", "s1@example.net", "s2@example.net"],
        ),
        ("E1234-teachers", ["directors@example.org", "teacher@example.net", "co@example.net"]),
        ("E1234-students", ["directors@example.org", "s1@example.net", "teacher@example.net", "s2@example.net"]),
    ],
)
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
    tables = Tables(
        users=[
            User("tcher", "teacher@example.net", "Tea", "Cher", is_teacher=True),
            User("kid", "kid@example.net", "Ki", "D", is_teacher=False),
        ]
    )
    teacher = route("TCher", DEFAULT_RULES, tables, has_list_id=False)
    assert (
        teacher.route.rule.handler == "UserEmail"
        and not teacher.route.group
        and emails(teacher) == ["teacher@example.net"]
    )
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


@pytest.mark.parametrize(
    "destination, bad",
    [
        ("a@example.net,,b@example.net", "(empty entry)"),
        ("a@example.net, not-an-address", "not-an-address"),
        ("", "(empty entry)"),
    ],
)
def test_plain_redirect_validation_names_the_bad_entries(destination, bad):
    with pytest.raises(AddressInvalid, match=bad.replace("(", r"\(").replace(")", r"\)")):
        parse_destinations(destination)


def test_rules_are_checked_when_written():
    with pytest.raises(RequestInvalid, match="unknown EmailList handler"):
        check_rule(EmailListRule("x", ".*", 1, "Mailman"))
    with pytest.raises(RequestInvalid, match="does not compile"):
        check_rule(EmailListRule("x", "(", 1, "PlainList"))


# --- case and subaddresses: every form of an address routes like its canonical form -------------

TEACHERS = Tables(
    users=[User("tcher", "teacher@example.net", "Tea", "Cher", is_teacher=True)],
    redirects={"directors": "a@example.net, B <b@example.net>"},
)


def summary(result):
    return result.route.rule.list_id, result.route.recipients, result.route.subject_prefix, result.route.group


@pytest.mark.parametrize(
    "written, canonical",
    [
        ("E1234-Students", "e1234-students"),
        ("E1234-CLASS", "e1234-class"),
        ("E1234s1-CLASS", "e1234s1-class"),
        ("e1234S2-Teachers", "e1234s2-teachers"),
        ("DIRECTORS", "directors"),
        ("directors+trip", "directors"),
        ("Directors+Trip", "directors"),
        ("E1234-students+parents", "e1234-students"),
        ("TCHER", "tcher"),
        ("TCher+Office", "tcher"),
    ],
)
def test_case_and_plus_variants_route_like_the_canonical_form(written, canonical):
    # given the default rules, a class, a redirect and a teacher
    # when an address is written in capitals or with a +suffix
    result = route(written, DEFAULT_RULES, TEACHERS, has_list_id=False, domain="Example.ORG")
    # then it routes exactly as the canonical local part does, and says which address that was
    expected = route(canonical, DEFAULT_RULES, TEACHERS, has_list_id=False)
    assert result.route is not None and summary(result) == summary(expected)
    assert result.local_part == canonical
    assert result.list_address == result.route.list_address == f"{canonical}@example.org"


def test_a_capitalised_audience_reaches_the_audience_not_only_the_directors():
    # given mail to E1234-Students@ (the reported bug: only the directors got it)
    result = route("E1234-Students", DEFAULT_RULES, Tables(), has_list_id=False)
    # then the students of every section get it as well
    assert emails(result) == ["directors@example.org", "s1@example.net", "teacher@example.net", "s2@example.net"]


@pytest.mark.parametrize(
    "local, expected",
    [
        ("Directors+Trip", "directors"),
        ("a+b+c", "a"),
        ("directors+", "directors"),
        ("+trip", "+trip"),  # nothing would be left: kept whole
        ("  Mixed.Case  ", "mixed.case"),
    ],
)
def test_canonical_local_part(local, expected):
    assert canonical_local_part(local) == expected


def test_subaddressing_can_be_turned_off_or_use_another_separator():
    # given a redirect named with a plus, and subaddressing turned off
    tables = Tables(redirects={"directors+trip": "trip@example.net", "directors": "a@example.net"})
    # then the plus is part of the name
    assert canonical_local_part("Directors+Trip", None) == "directors+trip"
    off = route("directors+trip", DEFAULT_RULES, tables, has_list_id=False, subaddress_separator=None)
    assert emails(off) == ["trip@example.net"]
    # and with '-' as the separator, directors-trip is directors
    dash = route("Directors-Trip", DEFAULT_RULES, tables, has_list_id=False, subaddress_separator="-")
    assert emails(dash) == ["a@example.net"] and dash.local_part == "directors"


def test_an_overlong_local_part_is_not_routed():
    # given a local part over RFC 5321's 64 characters (it also bounds the work a regex can do)
    result = route("a" * 65, DEFAULT_RULES, Tables(redirects={"a" * 65: "x@example.net"}), has_list_id=False)
    assert result.route is None and result.matched_rules == ()


# --- rules are checked: each bad rule is refused with the problem named ---------------------------


@pytest.mark.parametrize(
    "regex, handler, problem",
    [
        (
            r"^staff$",
            "PlainList",
            r"PlainList needs exactly 1 capture group \(redirect name\) but regex '\^staff\$' has none",
        ),
        (r"^staff$", "UserEmail", r"UserEmail needs exactly 1 capture group \(username\) but .* has none"),
        (r"^(sta.*)$", "ClassList", r"ClassList needs exactly 2 capture groups \(class id, audience\) but .* has 1"),
        (
            r"^\w(\d+)-(class|teachers|students)$",
            "SectionList",
            r"SectionList needs exactly 3 capture groups \(class id, section index, audience\) but .* has 2",
        ),
        (r"^(\w)(\d+)-(class|teachers|students)$", "ClassList", "needs exactly 2 capture groups .* has 3; use \\(\\?:"),
        (r"^(a)(b)$", "PlainList", "needs exactly 1 capture group .* has 2"),
        (r"^\w(\w+)-(class|teachers|students)$", "ClassList", r"group 1 \(class id\) .* must match one or more digits"),
        (r"^\w(\d*)-(class|teachers|students)$", "ClassList", r"group 1 \(class id\) .* must match one or more digits"),
        (r"^\w(\d+)s(.+)-(class|teachers|students)$", "SectionList", r"group 2 \(section index\) .* digits"),
        (r"^\w(\d+)-(\w+)$", "ClassList", r"group 2 \(audience\) .* must match only class, teachers, students"),
        (r"^\w(\d+)-(class|teachers|students|all)$", "ClassList", "it also matches 'all'"),
        (r"^(", "PlainList", "does not compile"),
        (r"^(x)a{99999999999}$", "PlainList", "does not compile: OverflowError"),
        (
            r"^(.*)$",
            "Mailman",
            "unknown EmailList handler 'Mailman'; known: SectionList, ClassList, PlainList, UserEmail",
        ),
        ("^(" + "a" * 300 + ")$", "PlainList", "the regex is 304 characters long; at most 256"),
        (r"^((a+)+)$", "PlainList", r"repeat inside a repeat"),
        ("", "PlainList", "the regex is empty"),
    ],
)
def test_each_bad_rule_is_refused_naming_the_problem(regex, handler, problem):
    # given a rule the router could not run, when it is checked, then the error names rule and problem
    with pytest.raises(RuleInvalid, match="EmailList rule 'bad': " + ".*" + problem):
        check_rule(EmailListRule("bad", regex, 1, handler))


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"seq": "ten"}, "seq must be a whole number, not 'ten'"),
        ({"seq": 2.5}, "seq must be a whole number"),
        ({"seq": True}, "seq must be a whole number"),
        ({"from_email": "not an address"}, "from_email: not a single valid email address"),
        ({"subject_prefix": "[x]\r\nBcc: victim@example.com"}, "subject_prefix may not contain CR or LF"),
        ({"admin_hold": "yes"}, "admin_hold must be true or false"),
        ({"accept_automatic": 1}, "accept_automatic must be true or false"),
        ({"list_id": ""}, "list_id must be a non-empty string"),
    ],
)
def test_other_rule_fields_are_checked(changes, problem):
    with pytest.raises(RuleInvalid, match=problem):
        check_rule(replace(DEFAULT_RULES[2], **changes))


def test_good_rules_pass_and_come_back_normalised():
    # given the default rules and some hand-written ones, then each passes
    for rule in DEFAULT_RULES:
        assert check_rule(rule) == rule
    assert check_rule(EmailListRule("s", r"^\w([0-9]{1,6})s(\d+)-([Cc]lass|teachers|students)$", 1, "SectionList"))
    assert check_rule(EmailListRule("c", r"^(?:x|y)(\d+)-(students)$", 1, "ClassList"))
    assert check_rule(EmailListRule("o", r"^(?>(\w+))$", 1, "UserEmail"))
    # and a seq DynamoDB returned as 15.0, or empty optional fields, are normalised
    checked = check_rule(replace(DEFAULT_RULES[2], seq=15.0, from_email="", subject_prefix=""))
    assert (checked.seq, checked.from_email, checked.subject_prefix) == (15, None, None) and isinstance(
        checked.seq, int
    )


def test_broadcasts_is_true_for_class_and_section_lists_only():
    assert [r.broadcasts for r in DEFAULT_RULES] == [True, True, False, False]
    result = route("E1234-class", DEFAULT_RULES, Tables(), has_list_id=False)
    assert result.route.broadcasts and not result.route.rule.accept_automatic


# --- bad rules at routing time: skipped with a warning, never raised ---------------------------


@pytest.fixture
def logged(monkeypatch):
    seen = []
    monkeypatch.setattr(routing.logger, "warning", lambda message, **kw: seen.append((message, kw.get("extra", {}))))
    return seen


def test_bad_rules_given_to_the_router_are_skipped_and_later_rules_still_route(logged):
    # given rules written raw, past the checks: the reported ClassList on ^(sta.*)$, a PlainList
    # without a group, an unknown handler, a regex that does not compile and a seq that is not a number
    tables = Tables(redirects={"staff": "staff@example.net"})
    raw = [
        EmailListRule("sta-class", r"^(sta.*)$", 1, "ClassList"),
        EmailListRule("no-group", r"^staff$", 2, "PlainList"),
        EmailListRule("mailman", r"^(.*)$", 3, "Mailman"),
        EmailListRule("broken", r"^(", 4, "PlainList"),
        EmailListRule("bad-seq", r"^(.*)$", None, "PlainList"),
    ]
    # when mail comes for staff@
    result = route("staff", [*raw, *DEFAULT_RULES], tables, has_list_id=False)
    # then the default redirect rule sends it, and each bad rule was named in a warning
    assert result.route.rule.list_id == "default-redirect" and emails(result) == ["staff@example.net"]
    assert result.matched_rules == ("default-redirect",)
    assert sorted(extra["list_id"] for _, extra in logged) == ["bad-seq", "broken", "mailman", "no-group", "sta-class"]
    assert any("ClassList needs exactly 2 capture groups" in extra["error"] for _, extra in logged)


def test_groups_that_do_not_parse_make_the_rule_not_match(logged):
    # given a class rule whose class id group is optional, before the default rules
    optional = EmailListRule("optional-id", r"^\w(\d+)?-(class|teachers|students)$", 1, "ClassList")
    tables = Tables(redirects={"e-class": "fallback@example.net"})
    # when the group is missing (E-class) or holds non-ASCII digits (E١٢٣٤-class)
    for local in ("E-class", "E\u0661\u0662\u0663\u0664-class"):
        result = route(local, [optional, *DEFAULT_RULES], tables, has_list_id=False)
        # then that rule does not match (nothing raised) and routing goes on
        assert "optional-id" not in result.matched_rules
    assert emails(route("E-class", [optional, *DEFAULT_RULES], tables, has_list_id=False)) == ["fallback@example.net"]
    assert logged == []


def test_a_stored_redirect_with_a_bad_entry_forwards_to_the_valid_ones(logged):
    # given a redirect written raw with one bad entry
    tables = Tables(redirects={"directors": "a@example.net, not-an-address, ,b@example.net"})
    result = route("directors", DEFAULT_RULES, tables, has_list_id=False)
    assert emails(result) == ["a@example.net", "b@example.net"]
    ((_, extra),) = logged
    assert extra["original"] == "directors" and extra["invalid_entries"] == 2


# --- one copy per person ---------------------------------------------------------------------


def people(*addresses):
    return tuple(Person(None, a) for a in addresses)


def test_merge_routes_gives_each_person_one_copy():
    # given a class list and a redirect of one transaction that share people (in other case)
    cls = route("E1234-class", DEFAULT_RULES, Tables(), has_list_id=False).route
    redirect = Route(DEFAULT_RULES[2], people("Teacher@Example.net", "other@example.net"), group=True)
    # when merged
    merged = merge_routes([cls, redirect])
    # then the class list keeps everyone, the redirect only the person the class did not reach
    assert merged[0] == cls
    assert [p.email for p in merged[1].recipients] == ["other@example.net"] and merged[1].rule == redirect.rule


def test_merge_routes_a_class_and_its_section():
    cls = route("E1234-students", DEFAULT_RULES, Tables(), has_list_id=False).route
    section = route("E1234s2-students", DEFAULT_RULES, Tables(), has_list_id=False).route
    # the section's directors and students are all in the class: the section route is dropped
    assert merge_routes([cls, section]) == [cls]
    # written the other way round, the section keeps its people and the class the rest
    first, second = merge_routes([section, cls])
    assert first == section
    assert [p.email for p in second.recipients] == ["s1@example.net", "teacher@example.net"]
    assert second.subject_prefix == "[E1234]"


def test_merge_routes_direct_copies_win_over_list_copies():
    # given the class list first and then the teacher written to directly (UserEmail)
    cls = route("E1234-teachers", DEFAULT_RULES, Tables(), has_list_id=False).route
    direct = route("tcher", DEFAULT_RULES, TEACHERS, has_list_id=False).route
    # then the teacher gets the direct, unmodified copy only; the order of the routes is kept
    merged = merge_routes([cls, direct])
    assert [r.group for r in merged] == [True, False]
    assert [p.email for p in merged[0].recipients] == ["directors@example.org", "co@example.net"]
    assert merged[1] == direct


def test_merge_routes_drops_repeats_and_empty_routes():
    a = Route(DEFAULT_RULES[2], people("a@example.net", "b@example.net"), group=True)
    assert merge_routes([a, a, Route(DEFAULT_RULES[2], (), group=True)]) == [a]
    assert merge_routes([]) == []


# --- redirects and directory data are checked when written ------------------------------------


@pytest.mark.parametrize(
    "original, problem",
    [
        ("directors@example.org", "original is the local part only"),
        ("", "original is the local part only"),
        ("dir ectors", "is not a valid local part"),
        ("a..b", "is not a valid local part"),
        (".directors", "is not a valid local part"),
        ("x" * 65, "is not a valid local part"),
        ("directors+trip", "contains '\\+', which starts a subaddress: mail to it is routed as 'directors'"),
    ],
)
def test_a_redirect_original_must_be_a_reachable_local_part(original, problem):
    with pytest.raises(RedirectInvalid, match=problem):
        check_redirect(original, "a@example.net")


def test_a_redirect_has_1_to_50_valid_destinations():
    fifty = ", ".join(f"d{i}@example.net" for i in range(50))
    assert check_redirect(" Directors ", f" {fifty} ") == ("directors", fifty)
    with pytest.raises(RedirectInvalid, match="has 51 destinations; at most 50"):
        check_redirect("directors", fifty + ", d50@example.net")
    with pytest.raises(AddressInvalid, match="invalid destination entries: 'nobody'"):
        check_redirect("directors", "a@example.net, nobody")
    # with subaddressing off, a plus in the original is just a character
    assert check_redirect("a+b", "a@example.net", subaddress_separator=None) == ("a+b", "a@example.net")


@pytest.mark.parametrize(
    "user, problem",
    [
        (User("", "a@example.net"), r"users\[0\].username must be a non-empty string"),
        (User("kid", "not an address"), r"users\[0\].email 'not an address' is not a valid email address"),
        (User("kid", "Ki D <kid@example.net>"), "must be the bare address"),
        (User("kid", None), "must be an email address"),
        (User("kid\n", "kid@example.net"), "on one line"),
    ],
)
def test_directory_users_are_checked(user, problem):
    with pytest.raises(DirectoryInvalid, match=problem):
        check_user(user, "users[0]")


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"class_id": "12a"}, r"classes\[0\].class_id must be a whole number"),
        ({"class_id": True}, "class_id must be a whole number"),
        ({"class_id": -1}, "class_id must not be negative"),
        ({"emailcode": ""}, "emailcode must be a non-empty string"),
        ({"directors_email": "directors"}, "directors_email 'directors' is not a valid email address"),
        ({"teachers": (Person("T", "t@"),)}, r"classes\[0\].teachers\[0\].email"),
        ({"sections": (Section(1, "E1s1"), Section(1, "E1s1b"))}, r"sections\[1\].index 1 appears twice"),
        ({"sections": (Section(1, "E1s1", (Person("S", "bad"),)),)}, r"sections\[0\].students\[0\].email 'bad'"),
    ],
)
def test_directory_classes_are_checked(changes, problem):
    with pytest.raises(DirectoryInvalid, match=problem):
        check_class(replace(CLASS, **changes), "classes[0]")


def test_a_good_class_passes_unchanged():
    assert check_class(CLASS) == CLASS
    assert check_class(replace(CLASS, class_id="1234")).class_id == 1234
