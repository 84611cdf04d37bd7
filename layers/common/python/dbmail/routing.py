"""Inbound routing with the original mailgate's semantics (pure: lookups are injected).

EmailList rules are tried in ascending seq; the first rule whose regex matches the local part
and whose handler decides to send wins. Handlers: SectionList, ClassList, PlainList, UserEmail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dbmail.addresses import parse_address
from dbmail.errors import AddressInvalid, RequestInvalid


@dataclass(frozen=True)
class Person:
    name: str | None
    email: str


@dataclass(frozen=True)
class Section:
    index: int
    emailcode: str
    students: tuple[Person, ...] = ()


@dataclass(frozen=True)
class ClassInfo:
    class_id: int
    emailcode: str
    program_name: str
    directors_email: str
    teachers: tuple[Person, ...] = ()
    sections: tuple[Section, ...] = ()


@dataclass(frozen=True)
class User:
    username: str
    email: str
    first_name: str | None = None
    last_name: str | None = None
    is_teacher: bool = False


@dataclass(frozen=True)
class EmailListRule:
    list_id: str
    regex: str
    seq: int
    handler: str
    subject_prefix: str | None = None
    admin_hold: bool = False
    cc_all: bool = False
    from_email: str | None = None
    description: str | None = None


class Directory(Protocol):
    def user_by_username(self, username: str) -> User | None: ...
    def user_by_email(self, email: str) -> User | None: ...
    def class_by_id(self, class_id: int) -> ClassInfo | None: ...
    def redirect(self, original: str) -> str | None: ...


@dataclass(frozen=True)
class Route:
    """A decision to send: to whom, how (group forward or untouched), under which rule."""

    rule: EmailListRule
    recipients: tuple[Person, ...]
    group: bool
    subject_tag: str | None = None  # the class or section emailcode

    @property
    def subject_prefix(self) -> str:
        parts = [f"[{self.subject_tag}]"] if self.subject_tag else []
        if self.rule.subject_prefix:
            parts.append(self.rule.subject_prefix)
        return " ".join(parts)


@dataclass(frozen=True)
class RoutingResult:
    route: Route | None
    matched_rules: tuple[str, ...] = field(default_factory=tuple)


AUDIENCES = ("class", "teachers", "students")

DEFAULT_RULES = (
    EmailListRule("default-section", r"^\w(\d+)s(\d+)-(class|teachers|students)$", 10, "SectionList",
                  description="Section lists: <emailcode>s<n>-class|teachers|students"),
    EmailListRule("default-class", r"^\w(\d+)-(class|teachers|students)$", 20, "ClassList",
                  description="Class lists: <emailcode>-class|teachers|students"),
    EmailListRule("default-redirect", r"^(.*)$", 30, "PlainList", description="PlainRedirect lookup"),
    EmailListRule("default-user", r"^(.*)$", 40, "UserEmail", description="Mail to a teacher by username"),
)


def unique_people(people: Iterable[Person]) -> tuple[Person, ...]:
    """Duplicates removed by address, order kept."""
    seen: set[str] = set()
    kept = []
    for person in people:
        key = person.email.strip().lower()
        if key and key not in seen:
            seen.add(key)
            kept.append(person)
    return tuple(kept)


def _class_audience(cls: ClassInfo, audience: str, sections: Sequence[Section]) -> tuple[Person, ...]:
    people = [Person(f"{cls.program_name} Directors", cls.directors_email)]
    if audience in ("teachers", "class"):
        people += cls.teachers
    if audience in ("students", "class"):
        for section in sections:
            people += section.students
    return unique_people(people)


def section_list(rule: EmailListRule, groups: Sequence[str], directory: Directory, has_list_id: bool) -> Route | None:
    class_id, section_index, audience = groups
    cls = directory.class_by_id(int(class_id))
    section = next((s for s in cls.sections if s.index == int(section_index)), None) if cls else None
    if section is None:
        return None
    return Route(rule, _class_audience(cls, audience, [section]), group=True, subject_tag=section.emailcode)


def class_list(rule: EmailListRule, groups: Sequence[str], directory: Directory, has_list_id: bool) -> Route | None:
    class_id, audience = groups
    cls = directory.class_by_id(int(class_id))
    if cls is None:
        return None
    return Route(rule, _class_audience(cls, audience, cls.sections), group=True, subject_tag=cls.emailcode)


def plain_list(rule: EmailListRule, groups: Sequence[str], directory: Directory, has_list_id: bool) -> Route | None:
    destination = directory.redirect(groups[0].lower())
    if not destination:
        return None
    people = [Person(a.display_name or None, a.addr_spec) for a in parse_destinations(destination)]
    return Route(rule, unique_people(people), group=True)


def user_email(rule: EmailListRule, groups: Sequence[str], directory: Directory, has_list_id: bool) -> Route | None:
    user = directory.user_by_username(groups[0].lower())
    if user is None or not (user.is_teacher or has_list_id):
        return None
    name = " ".join(p for p in (user.first_name, user.last_name) if p) or None
    return Route(rule, (Person(name, user.email),), group=False)


HANDLERS = {
    "SectionList": section_list,
    "ClassList": class_list,
    "PlainList": plain_list,
    "UserEmail": user_email,
}


def parse_destinations(destination: str):
    """A PlainRedirect destination: comma-separated valid addresses, no empty entries.
    The error names every bad entry."""
    entries = destination.split(",")
    bad = []
    addresses = []
    for entry in entries:
        try:
            addresses.append(parse_address(entry.strip()))
        except AddressInvalid:
            bad.append(entry.strip() or "(empty entry)")
    if bad:
        raise AddressInvalid("invalid destination entries: " + ", ".join(repr(b) for b in bad))
    return addresses


def check_rule(rule: EmailListRule) -> EmailListRule:
    """A rule the router can run: a compiling regex and a known handler."""
    if rule.handler not in HANDLERS:
        raise RequestInvalid(f"unknown EmailList handler {rule.handler!r}; known: {', '.join(HANDLERS)}")
    try:
        re.compile(rule.regex)
    except re.error as exc:
        raise RequestInvalid(f"EmailList regex {rule.regex!r} does not compile: {exc}") from exc
    return rule


def route(local_part: str, rules: Iterable[EmailListRule], directory: Directory, has_list_id: bool) -> RoutingResult:
    """The first matching rule whose handler sends; ``matched_rules`` tells what matched but declined."""
    matched = []
    for rule in sorted(rules, key=lambda r: r.seq):
        handler = HANDLERS.get(rule.handler)
        try:
            match = re.search(rule.regex, local_part, re.IGNORECASE) if handler else None
        except re.error:
            match = None  # rules are checked when written; a broken one never blocks the others
        if not match:
            continue
        matched.append(rule.list_id)
        decided = handler(rule, match.groups(), directory, has_list_id)
        if decided is not None and decided.recipients:
            return RoutingResult(decided, tuple(matched))
    return RoutingResult(None, tuple(matched))
