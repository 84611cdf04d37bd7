"""Inbound routing with the original mailgate's semantics (pure: lookups are injected).

An address is routed by its canonical local part: lower-cased (the original lower-cased the
audience and looked usernames and redirects up case-insensitively) and with a ``+suffix``
removed (Exim, in front of the original, delivered ``directors+trip@`` to ``directors``).

EmailList rules are tried in ascending seq; the first rule whose regex matches the canonical
local part, whose groups parse as its handler needs (digits for a class id, one of the three
audiences, ...) and whose handler decides to send wins. Handlers: SectionList, ClassList,
PlainList, UserEmail.

Rules are checked when written (``check_rule``); a bad rule that reaches the router anyway
(written raw into the table) is skipped with a logged warning, never raised per message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from re import _constants as sre
from re import _parser as sre_parse
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from dbmail.core.addresses import parse_address, unique_mailboxes
from dbmail.core.errors import AddressInvalid, RequestInvalid

logger = Logger(child=True)

SUBADDRESS_SEPARATOR = "+"  # None turns subaddressing off
MAX_LOCAL_PART_CHARS = 64  # RFC 5321; a longer local part is not routed (and bounds regex work)
MAX_REGEX_CHARS = 256
MAX_LIST_ID_CHARS = 100
MAX_SUBJECT_PREFIX_CHARS = 200
MAX_REDIRECT_DESTINATIONS = 50  # also SES's recipients-per-message limit
MAX_USERNAME_CHARS = 254
MAX_EMAILCODE_CHARS = 64

# A class or section list's audiences, each with whom it reaches besides the program's directors:
# the one place they are named (the handlers, the rule checks and the default rules read them).
AUDIENCES = {"class": ("teachers", "students"), "teachers": ("teachers",), "students": ("students",)}
_AUDIENCE_GROUP = "(" + "|".join(AUDIENCES) + ")"  # (class|teachers|students)
BROADCAST_HANDLERS = frozenset({"ClassList", "SectionList"})


class RuleInvalid(RequestInvalid):
    """An EmailList rule the router cannot run: the message names the rule and the problem."""


class RedirectInvalid(RequestInvalid):
    """A PlainRedirect whose original is not a local part, or with too many destinations.
    (A bad destination address is an ``AddressInvalid``.)"""


class DirectoryInvalid(RequestInvalid):
    """Directory data (users, classes) the router could not use: the message names the entries."""


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
    accept_automatic: bool = False  # broadcasting rules refuse automatic mail unless this is set

    @property
    def broadcasts(self) -> bool:
        """A class or section list: one message to many people who did not ask for it."""
        return self.handler in BROADCAST_HANDLERS


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
    list_address: str = ""  # the canonical address routed ("directors@example.org"), set by route()

    @property
    def subject_prefix(self) -> str:
        parts = [f"[{self.subject_tag}]"] if self.subject_tag else []
        if self.rule.subject_prefix:
            parts.append(self.rule.subject_prefix)
        return " ".join(parts)

    @property
    def broadcasts(self) -> bool:
        return self.rule.broadcasts


@dataclass(frozen=True)
class RoutingResult:
    route: Route | None
    matched_rules: tuple[str, ...] = ()
    local_part: str = ""  # canonical: what the rules saw
    list_address: str = ""  # canonical local part @ lower-cased domain (the local part alone without a domain)


DEFAULT_RULES = (
    EmailListRule(
        "default-section",
        rf"^\w(\d+)s(\d+)-{_AUDIENCE_GROUP}$",
        10,
        "SectionList",
        description=f"Section lists: <emailcode>s<n>-{'|'.join(AUDIENCES)}",
    ),
    EmailListRule(
        "default-class",
        rf"^\w(\d+)-{_AUDIENCE_GROUP}$",
        20,
        "ClassList",
        description=f"Class lists: <emailcode>-{'|'.join(AUDIENCES)}",
    ),
    EmailListRule("default-redirect", r"^(.*)$", 30, "PlainList", description="PlainRedirect lookup"),
    EmailListRule("default-user", r"^(.*)$", 40, "UserEmail", description="Mail to a teacher by username"),
)


# ---- addresses ------------------------------------------------------------------------------


def canonical_local_part(local: str, separator: str | None = SUBADDRESS_SEPARATOR) -> str:
    """The local part rules are applied to: stripped, lower-cased, and cut at the first
    ``separator`` (``Directors+Trip`` -> ``directors``). A local part that would be left empty
    (``+trip``) is kept whole. ``separator=None`` (or "") keeps the suffix."""
    local = local.strip().lower()
    if separator:
        base, found, _ = local.partition(separator.lower())
        if found and base:
            return base
    return local


def is_bounces_address(address: str, bounces_address: str) -> bool:
    """``address`` is the bounces address, or a VERP form of it: ``local@domain`` or
    ``local+anything@domain``, case-insensitively (our envelope sender, so DSNs come back there)."""
    try:
        bounces = parse_address(bounces_address).addr_spec.lower()
    except AddressInvalid:
        return False
    bounces_local, _, bounces_domain = bounces.rpartition("@")
    local, _, domain = address.strip().lower().rpartition("@")
    return domain == bounces_domain and (local == bounces_local or local.startswith(bounces_local + "+"))


def _email(person: Person) -> str:
    """A person's address, for ``unique_mailboxes`` (one person a mailbox)."""
    return person.email


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


# ---- handlers -------------------------------------------------------------------------------
# Each gets the rule, its regex groups already parsed (see _parse_groups), the directory and
# whether the message has a List-Id; None (or nobody) means it declines to send.


def _class_audience(cls: ClassInfo, audience: str, sections: Sequence[Section]) -> tuple[Person, ...]:
    people = [Person(f"{cls.program_name} Directors", cls.directors_email)]
    reaches = AUDIENCES[audience]
    if "teachers" in reaches:
        people += cls.teachers
    if "students" in reaches:
        for section in sections:
            people += section.students
    return unique_mailboxes(people, _email)


def section_list(rule: EmailListRule, args: Sequence[Any], directory: Directory, has_list_id: bool) -> Route | None:
    class_id, section_index, audience = args
    cls = directory.class_by_id(class_id)
    section = next((s for s in cls.sections if s.index == section_index), None) if cls else None
    if section is None:
        return None
    return Route(rule, _class_audience(cls, audience, [section]), group=True, subject_tag=section.emailcode)


def class_list(rule: EmailListRule, args: Sequence[Any], directory: Directory, has_list_id: bool) -> Route | None:
    class_id, audience = args
    cls = directory.class_by_id(class_id)
    if cls is None:
        return None
    return Route(rule, _class_audience(cls, audience, cls.sections), group=True, subject_tag=cls.emailcode)


def plain_list(rule: EmailListRule, args: Sequence[Any], directory: Directory, has_list_id: bool) -> Route | None:
    (original,) = args
    destination = directory.redirect(original)
    if not destination or not isinstance(destination, str):
        return None
    people, bad = [], 0
    for entry in destination.split(","):
        try:
            address = parse_address(entry.strip())
        except AddressInvalid:
            bad += 1  # checked when written; a raw bad entry does not stop the others
            continue
        people.append(Person(address.display_name or None, address.addr_spec))
    if bad:
        logger.warning(
            "PlainRedirect has invalid destination entries; forwarding to the valid ones",
            extra={"original": original, "invalid_entries": bad, "valid_entries": len(people)},
        )
    return Route(rule, unique_mailboxes(people, _email), group=True) if people else None


def user_email(rule: EmailListRule, args: Sequence[Any], directory: Directory, has_list_id: bool) -> Route | None:
    (username,) = args
    user = directory.user_by_username(username)
    if user is None or not user.email or not (user.is_teacher or has_list_id):
        return None
    name = " ".join(p for p in (user.first_name, user.last_name) if p) or None
    return Route(rule, (Person(name, user.email),), group=False)


DIGITS, AUDIENCE, TEXT = "digits", "audience", "text"


@dataclass(frozen=True)
class Handler:
    """What a handler reads from the match: one (description, kind) per capture group, in order."""

    groups: tuple[tuple[str, str], ...]
    decide: Callable[[EmailListRule, Sequence[Any], Directory, bool], Route | None]


HANDLERS = {
    "SectionList": Handler((("class id", DIGITS), ("section index", DIGITS), ("audience", AUDIENCE)), section_list),
    "ClassList": Handler((("class id", DIGITS), ("audience", AUDIENCE)), class_list),
    "PlainList": Handler((("redirect name", TEXT),), plain_list),
    "UserEmail": Handler((("username", TEXT),), user_email),
}


def _parse_groups(handler: Handler, groups: Sequence[str | None]) -> tuple | None:
    """The match's groups as the handler reads them, or None when they do not parse (the rule
    then does not match): a class id or section index of ASCII digits, a known audience, a
    non-empty name."""
    if len(groups) != len(handler.groups):
        return None
    parsed: list[Any] = []
    for (_, kind), value in zip(handler.groups, groups):
        if value is None:
            return None
        value = value.strip().lower()
        if kind == DIGITS:
            if not (value.isascii() and value.isdigit()) or len(value) > 18:
                return None
            parsed.append(int(value))
        elif kind == AUDIENCE:
            if value not in AUDIENCES:
                return None
            parsed.append(value)
        else:
            if not value:
                return None
            parsed.append(value)
    return tuple(parsed)


# ---- rule checks ----------------------------------------------------------------------------
# The regex is examined through the standard library's own parser (re._parser), so that what is
# checked is exactly what re compiles.

_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT)
_MAX_STRINGS = 64


def _items(tree) -> list:
    return list(getattr(tree, "data", tree))


def _children(op, av) -> list:
    if op is sre.SUBPATTERN:
        return [av[3]]
    if op is sre.BRANCH:
        return list(av[1])
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        return [av[2]]
    if op is sre.ATOMIC_GROUP:
        return [av]
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return [av[1]]
    if op is sre.GROUPREF_EXISTS:
        return [p for p in av[1:] if p is not None]
    return []


def _group_tree(tree, group: int):
    for op, av in _items(tree):
        if op is sre.SUBPATTERN and av[0] == group:
            return av[3]
        for child in _children(op, av):
            found = _group_tree(child, group)
            if found is not None:
                return found
    return None


def _has_repeat(tree, need_unbounded: bool) -> bool:
    """A backtracking repeat of more than one inside ``tree`` (unbounded when asked)."""
    for op, av in _items(tree):
        if op in _REPEATS and av[1] > 1 and (not need_unbounded or av[1] == sre.MAXREPEAT):
            return True
        if op is not sre.ATOMIC_GROUP and any(_has_repeat(c, need_unbounded) for c in _children(op, av)):
            return True
    return False


def _nested_repeat(tree) -> bool:
    """A repeat inside a repeat, one of them unbounded: ``(a+)+``, ``(.*)*``, ``(\\w+){5}``. Such a
    regex can take exponential (or high-polynomial) time on a local part that almost matches."""
    for op, av in _items(tree):
        if op in _REPEATS and av[1] > 1 and _has_repeat(av[2], need_unbounded=av[1] != sre.MAXREPEAT):
            return True
        if op is not sre.ATOMIC_GROUP and any(_nested_repeat(c) for c in _children(op, av)):
            return True
    return False


def _only_digits(tree) -> bool:
    def digit_item(op, av) -> bool:
        if op is sre.CATEGORY:
            return av is sre.CATEGORY_DIGIT
        if op is sre.LITERAL:
            return 48 <= av <= 57
        if op is sre.RANGE:
            return 48 <= av[0] <= av[1] <= 57
        return False

    for op, av in _items(tree):
        if op is sre.LITERAL:
            ok = 48 <= av <= 57
        elif op is sre.IN:
            ok = all(digit_item(o, a) for o, a in av)
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT, sre.SUBPATTERN, sre.ATOMIC_GROUP):
            ok = all(_only_digits(c) for c in _children(op, av))
        elif op is sre.BRANCH:
            ok = all(_only_digits(b) for b in av[1])
        elif op is sre.AT:
            ok = True
        else:
            ok = False
        if not ok:
            return False
    return True


def _strings(tree) -> set[str] | None:
    """Every string ``tree`` can match, when that is a small finite set; else None."""
    results = {""}
    for op, av in _items(tree):
        options = _options(op, av)
        if options is None:
            return None
        results = {a + b for a in results for b in options}
        if len(results) > _MAX_STRINGS:
            return None
    return results


def _options(op, av) -> set[str] | None:
    if op is sre.LITERAL:
        return {chr(av)}
    if op is sre.AT:
        return {""}
    if op is sre.IN:
        chars: set[str] = set()
        for o, a in av:
            if o is sre.LITERAL:
                chars.add(chr(a))
            elif o is sre.RANGE and a[1] - a[0] < _MAX_STRINGS:
                chars.update(chr(c) for c in range(a[0], a[1] + 1))
            else:
                return None
        return chars
    if op in (sre.SUBPATTERN, sre.ATOMIC_GROUP, sre.BRANCH):
        out: set[str] = set()
        for child in _children(op, av):
            strings = _strings(child)
            if strings is None:
                return None
            out |= strings
        return out
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        low, high, body = av
        strings = _strings(body)
        if strings is None or high > 8:
            return None
        out, power = set(), {""}
        for count in range(high + 1):
            if count >= low:
                out |= power
            power = {a + b for a in power for b in strings}
            if len(power) > _MAX_STRINGS:
                return None
        return out
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@lru_cache(maxsize=256)
def compile_rule_regex(regex: str, handler_name: str) -> re.Pattern:
    """The compiled regex of a rule for ``handler_name``; RuleInvalid (without the rule's name)
    says what is wrong: length, compilation, nested repeats, the number and kind of groups."""
    handler = HANDLERS[handler_name]
    if not regex:
        raise RuleInvalid("the regex is empty")
    if len(regex) > MAX_REGEX_CHARS:
        raise RuleInvalid(f"the regex is {len(regex)} characters long; at most {MAX_REGEX_CHARS} are allowed")
    try:
        tree = sre_parse.parse(regex, re.IGNORECASE)
        pattern = re.compile(regex, re.IGNORECASE)
    except re.error as exc:
        raise RuleInvalid(f"regex {regex!r} does not compile: {exc}") from None
    except (OverflowError, RecursionError, MemoryError, ValueError, TypeError) as exc:
        raise RuleInvalid(f"regex {regex!r} does not compile: {type(exc).__name__}: {exc}") from None
    if _nested_repeat(tree):
        raise RuleInvalid(
            f"regex {regex!r} has a repeat inside a repeat (like (a+)+), which can take "
            "exponential time to fail; write it without the nesting"
        )
    wanted = handler.groups
    names = ", ".join(name for name, _ in wanted)
    if pattern.groups != len(wanted):
        has = "none" if pattern.groups == 0 else str(pattern.groups)
        raise RuleInvalid(
            f"{handler_name} needs exactly {_plural(len(wanted), 'capture group')} ({names}) but regex {regex!r} "
            f"has {has}; use (?:...) for a group the handler should not get"
        )
    for number, (name, kind) in enumerate(wanted, start=1):
        group = _group_tree(tree, number)
        if kind == DIGITS and not (group is not None and _only_digits(group) and group.getwidth()[0] >= 1):
            raise RuleInvalid(
                f"{handler_name} group {number} ({name}) of regex {regex!r} must match one or "
                r"more digits and nothing else, e.g. (\d+)"
            )
        if kind == AUDIENCE:
            strings = _strings(group) if group is not None else None
            words = None if strings is None else {s.lower() for s in strings}
            if not words or not words <= set(AUDIENCES):
                extra = (
                    ""
                    if not words
                    else "; it also matches " + ", ".join(repr(w) for w in sorted(words - set(AUDIENCES)))
                )
                raise RuleInvalid(
                    f"{handler_name} group {number} ({name}) of regex {regex!r} must match only "
                    f"{', '.join(AUDIENCES)}, e.g. {_AUDIENCE_GROUP}{extra}"
                )
    return pattern


def _has_crlf(value: str) -> bool:
    return "\r" in value or "\n" in value


def check_rule(rule: EmailListRule) -> EmailListRule:
    """The rule as the router will run it (seq a whole number, "" fields as None), or RuleInvalid
    naming the rule and what is wrong with it."""
    name = rule.list_id
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_LIST_ID_CHARS or _has_crlf(name):
        raise RuleInvalid(
            f"EmailList rule {name!r}: list_id must be a non-empty string of at most "
            f"{MAX_LIST_ID_CHARS} characters on one line"
        )

    def invalid(problem: str) -> RuleInvalid:
        return RuleInvalid(f"EmailList rule {name!r}: {problem}")

    if not isinstance(rule.handler, str) or rule.handler not in HANDLERS:
        raise invalid(f"unknown EmailList handler {rule.handler!r}; known: {', '.join(HANDLERS)}")
    seq = rule.seq
    if isinstance(seq, (float, Decimal)):  # a number DynamoDB holds as 10.0
        try:
            seq = int(seq) if seq == int(seq) else seq
        except (ValueError, OverflowError, ArithmeticError):
            pass
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise invalid(f"seq must be a whole number, not {rule.seq!r}")
    if not isinstance(rule.regex, str):
        raise invalid(f"the regex must be a string, not {type(rule.regex).__name__}")
    try:
        compile_rule_regex(rule.regex, rule.handler)
    except RuleInvalid as exc:
        raise invalid(str(exc)) from None
    prefix = rule.subject_prefix or None
    if prefix is not None and (
        not isinstance(prefix, str) or _has_crlf(prefix) or len(prefix) > MAX_SUBJECT_PREFIX_CHARS
    ):
        raise invalid(
            f"subject_prefix may not contain CR or LF and must be at most {MAX_SUBJECT_PREFIX_CHARS} characters"
        )
    from_email = rule.from_email or None
    if from_email is not None:
        try:
            parse_address(from_email)
        except AddressInvalid as exc:
            raise invalid(f"from_email: {exc}") from None
    for flag in ("admin_hold", "cc_all", "accept_automatic"):
        if not isinstance(getattr(rule, flag), bool):
            raise invalid(f"{flag} must be true or false, not {getattr(rule, flag)!r}")
    description = rule.description or None
    if description is not None and not isinstance(description, str):
        raise invalid("description must be a string")
    return replace(rule, seq=seq, subject_prefix=prefix, from_email=from_email, description=description)


def runnable_rules(rules: Iterable[EmailListRule]) -> list[EmailListRule]:
    """The rules that pass ``check_rule``, in (seq, list_id) order; each bad one is skipped with a
    logged warning naming it (a rule written raw into the table never fails a message)."""
    good = []
    for rule in rules:
        try:
            good.append(check_rule(rule))
        except Exception as exc:
            logger.warning(
                "EmailList rule skipped: it cannot be run",
                extra={"list_id": str(getattr(rule, "list_id", None)), "error": str(exc)},
            )
    return sorted(good, key=lambda r: (r.seq, r.list_id))


# ---- routing --------------------------------------------------------------------------------


def route(
    local_part: str,
    rules: Iterable[EmailListRule],
    directory: Directory,
    has_list_id: bool,
    *,
    domain: str = "",
    subaddress_separator: str | None = SUBADDRESS_SEPARATOR,
) -> RoutingResult:
    """The first matching rule whose handler sends; ``matched_rules`` tells what matched but declined.

    The local part is canonicalised first (``canonical_local_part``). A rule matches when its regex
    is found in the canonical local part (case-insensitively) and its groups parse as its handler
    needs; a rule that cannot be run is skipped. ``domain``, when given, completes
    ``list_address`` (on the result and on the route) as the canonical address."""
    local = canonical_local_part(local_part, subaddress_separator)
    address = f"{local}@{domain.strip().lower()}" if domain else local
    matched: list[str] = []
    if not local or len(local) > MAX_LOCAL_PART_CHARS:
        return RoutingResult(None, (), local, address)
    for rule in runnable_rules(rules):
        handler = HANDLERS[rule.handler]
        match = compile_rule_regex(rule.regex, rule.handler).search(local)
        args = _parse_groups(handler, match.groups()) if match else None
        if args is None:
            continue
        matched.append(rule.list_id)
        decided = handler.decide(rule, args, directory, has_list_id)
        if decided is not None and decided.recipients:
            return RoutingResult(replace(decided, list_address=address), tuple(matched), local, address)
    return RoutingResult(None, tuple(matched), local, address)


def merge_routes(routes: Iterable[Route]) -> list[Route]:
    """One copy per person across the routes of one SMTP transaction.

    Each person (each mailbox, as ``unique_mailboxes`` tells them apart) stays in exactly one route:
    direct (non-group, UserEmail) routes claim people first, then group forwards, each kind in the
    order given (envelope order).
    A person written to directly therefore gets the direct, unmodified copy and not the list copy
    as well (like Mailman's "avoid duplicates"). Routes keep their order; a route left with nobody
    is dropped. Call it with the routes that will actually be sent (after holds and refusals)."""
    routes = list(routes)
    claim_order = sorted(range(len(routes)), key=lambda i: routes[i].group)  # stable: direct first
    seen: set[str] = set()
    merged: list[Route | None] = [None] * len(routes)
    for i in claim_order:
        kept = unique_mailboxes(routes[i].recipients, _email, seen=seen)
        merged[i] = routes[i] if len(kept) == len(routes[i].recipients) else replace(routes[i], recipients=kept)
    return [r for r in merged if r is not None and r.recipients]


# ---- redirects and directory data -----------------------------------------------------------

_LOCAL_PART = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


def check_redirect(
    original: str, destination: str, *, subaddress_separator: str | None = SUBADDRESS_SEPARATOR
) -> tuple[str, str]:
    """A PlainRedirect as stored: (the lower-cased original, the trimmed destination).

    The original is one valid local part (no domain) of at most 64 characters that routing can
    reach (no subaddress separator in it); the destination is 1 to 50 comma-separated valid
    addresses (``parse_destinations`` names the bad entries)."""
    if not isinstance(original, str) or not original.strip() or "@" in original:
        raise RedirectInvalid(f"original is the local part only, e.g. 'directors', not {original!r}")
    key = original.strip().lower()
    if len(key) > MAX_LOCAL_PART_CHARS or not _LOCAL_PART.match(key):
        raise RedirectInvalid(
            f"redirect original {original!r} is not a valid local part (letters, digits and "
            f"!#$%&'*+/=?^_`{{|}}~.- only, no leading, trailing or double dot, at most "
            f"{MAX_LOCAL_PART_CHARS} characters)"
        )
    if subaddress_separator and subaddress_separator.lower() in key:
        raise RedirectInvalid(
            f"redirect original {original!r} contains {subaddress_separator!r}, which starts a "
            f"subaddress: mail to it is routed as {canonical_local_part(key, subaddress_separator)!r}, "
            "so this redirect could never be used"
        )
    if not isinstance(destination, str):
        raise AddressInvalid("invalid destination entries: the destination must be a string of addresses")
    addresses = parse_destinations(destination)
    if len(addresses) > MAX_REDIRECT_DESTINATIONS:
        raise RedirectInvalid(
            f"redirect {key!r} has {len(addresses)} destinations; at most "
            f"{MAX_REDIRECT_DESTINATIONS} are allowed (use a class list or a mailing list for more)"
        )
    return key, destination.strip()


def _bare_email(value: Any, where: str) -> str:
    """One plain addr-spec ('a@example.org'), as the directory stores it."""
    if not isinstance(value, str):
        raise DirectoryInvalid(f"{where} must be an email address, not {type(value).__name__}")
    try:
        address = parse_address(value)
    except AddressInvalid:
        raise DirectoryInvalid(f"{where} {value!r} is not a valid email address") from None
    if address.display_name or "<" in value:
        raise DirectoryInvalid(f"{where} {value!r} must be the bare address, without a name")
    return value.strip()


def _one_line(value: Any, where: str, max_chars: int, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()) or _has_crlf(value) or len(value) > max_chars:
        raise DirectoryInvalid(
            f"{where} must be a {'non-empty ' if required else ''}string of at most "
            f"{max_chars} characters on one line, not {value!r}"
        )
    return value


def _whole(value: Any, where: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, str))
        or (isinstance(value, str) and not (value.strip().isascii() and value.strip().isdigit()))
    ):
        raise DirectoryInvalid(f"{where} must be a whole number, not {value!r}")
    number = int(value)
    if number < 0:
        raise DirectoryInvalid(f"{where} must not be negative, not {value!r}")
    return number


def _person(person: Any, where: str) -> Person:
    if not isinstance(person, Person):
        raise DirectoryInvalid(f"{where} must be a person with an email")
    return Person(
        _one_line(person.name, f"{where}.name", 200, required=False) or None,
        _bare_email(person.email, f"{where}.email"),
    )


def check_user(user: User, where: str = "user") -> User:
    """A user as the directory stores it: a username (one line) and a valid bare email."""
    username = _one_line(user.username, f"{where}.username", MAX_USERNAME_CHARS)
    email = _bare_email(user.email, f"{where}.email")
    first = _one_line(user.first_name, f"{where}.first_name", 200, required=False)
    last = _one_line(user.last_name, f"{where}.last_name", 200, required=False)
    return User(
        username=username.strip(), email=email, first_name=first, last_name=last, is_teacher=bool(user.is_teacher)
    )


def check_class(cls: ClassInfo, where: str = "class") -> ClassInfo:
    """A class as the directory stores it: a whole class id, an emailcode, a valid directors_email,
    and valid emails for every teacher and student; section indexes whole and distinct."""
    class_id = _whole(cls.class_id, f"{where}.class_id")
    emailcode = _one_line(cls.emailcode, f"{where}.emailcode", MAX_EMAILCODE_CHARS).strip()
    program_name = _one_line(cls.program_name, f"{where}.program_name", 200, required=False) or ""
    directors = _bare_email(cls.directors_email, f"{where}.directors_email")
    teachers = tuple(_person(p, f"{where}.teachers[{i}]") for i, p in enumerate(cls.teachers or ()))
    sections, indexes = [], set()
    for s, section in enumerate(cls.sections or ()):
        here = f"{where}.sections[{s}]"
        index = _whole(section.index, f"{here}.index")
        if index in indexes:
            raise DirectoryInvalid(f"{here}.index {index} appears twice in {where}")
        indexes.add(index)
        sections.append(
            Section(
                index,
                _one_line(section.emailcode, f"{here}.emailcode", MAX_EMAILCODE_CHARS).strip(),
                tuple(_person(p, f"{here}.students[{i}]") for i, p in enumerate(section.students or ())),
            )
        )
    return ClassInfo(
        class_id=class_id,
        emailcode=emailcode,
        program_name=program_name,
        directors_email=directors,
        teachers=teachers,
        sections=tuple(sections),
    )
