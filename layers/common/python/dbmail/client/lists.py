"""Managing inbound routing: EmailList rules, PlainRedirects and the directory the website publishes.

Everything is checked before it is written, and the error (a ``RequestInvalid`` subclass) names
what is wrong: ``RuleInvalid`` for a rule the router could not run, ``RedirectInvalid`` /
``AddressInvalid`` for a redirect, ``DirectoryInvalid`` for users and classes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from dbmail.core.addresses import check_sender
from dbmail.core.errors import RequestInvalid
from dbmail.core.settings import Settings, website_settings
from dbmail.inbound.routing import (
    DEFAULT_RULES,
    SUBADDRESS_SEPARATOR,
    ClassInfo,
    DirectoryInvalid,
    EmailListRule,
    Person,
    RuleInvalid,
    Section,
    User,
    check_class,
    check_rule,
    check_user,
)
from dbmail.inbound.store import InboundStore

MAX_LISTED_PROBLEMS = 10


def _store(store: InboundStore | None, settings: Settings | None) -> tuple[InboundStore, Settings]:
    settings = settings or website_settings()
    return store or InboundStore(settings), settings


def install_default_email_lists(
    *, store: InboundStore | None = None, settings: Settings | None = None
) -> list[EmailListRule]:
    """The original's four rules for a new site (seq 10-40); re-running rewrites them unchanged."""
    store, _ = _store(store, settings)
    return [store.put_rule(rule) for rule in DEFAULT_RULES]


def _seq(seq: Any) -> Any:
    """A seq as given on a command line or in JSON ("15" or 15); anything else is left to check_rule."""
    if isinstance(seq, str) and seq.strip().lstrip("-").isdigit():
        return int(seq)
    return seq


def add_email_list(
    regex: str,
    handler: str,
    seq: int | None = None,
    subject_prefix: str | None = None,
    admin_hold: bool = False,
    cc_all: bool = False,
    from_email: str | None = None,
    description: str | None = None,
    list_id: str | None = None,
    *,
    accept_automatic: bool = False,
    store: InboundStore | None = None,
    settings: Settings | None = None,
) -> EmailListRule:
    """Add (or replace, by list_id) a rule. A missing seq becomes the last seq + 5.

    Refused with ``RuleInvalid`` (naming the rule and the problem) unless the router can run it:
    see ``routing.check_rule``. ``accept_automatic`` lets a class or section list forward
    automatic mail (auto-replies, bulk mail), which broadcasting rules refuse by default."""
    store, settings = _store(store, settings)
    rule = EmailListRule(
        list_id=list_id or uuid.uuid4().hex[:12],
        regex=regex,
        seq=store.next_seq() if seq is None else _seq(seq),
        handler=handler,
        subject_prefix=subject_prefix or None,
        admin_hold=admin_hold,
        cc_all=cc_all,
        from_email=from_email or None,
        description=description or None,
        accept_automatic=accept_automatic,
    )
    try:
        rule = check_rule(rule)
    except RuleInvalid as exc:
        if list_id:
            raise
        # a generated list_id means nothing to the person adding the rule
        raise RuleInvalid(str(exc).replace(f"EmailList rule {rule.list_id!r}:", "new EmailList rule:", 1)) from None
    if rule.from_email:
        check_sender(rule.from_email, settings.allowed_sender_domains)
    return store.put_rule(rule)


def set_plain_redirect(
    original: str,
    destination: str,
    *,
    store: InboundStore | None = None,
    settings: Settings | None = None,
    subaddress_separator: str | None = SUBADDRESS_SEPARATOR,
) -> None:
    """The original is one valid local part (no '@', no subaddress separator); the destination is
    1 to 50 comma-separated valid addresses; the error names the bad ones."""
    store, _ = _store(store, settings)
    store.put_redirect(original, destination, subaddress_separator=subaddress_separator)


def _problems(problems: list[str]) -> DirectoryInvalid:
    listed = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    return DirectoryInvalid("directory not published: " + "; ".join(listed) + (f"; and {more} more" if more else ""))


def _fields(item: Any, where: str, required: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise DirectoryInvalid(f"{where} must be an object, not {type(item).__name__}")
    missing = [name for name in required if item.get(name) is None]
    if missing:
        raise DirectoryInvalid(f"{where} lacks " + ", ".join(repr(m) for m in missing))
    return item


def _people(items: Any, where: str) -> tuple[Person, ...]:
    if items is None:
        return ()
    if isinstance(items, (str, Mapping)) or not isinstance(items, Iterable):
        raise DirectoryInvalid(f"{where} must be a list of people")
    people = []
    for i, item in enumerate(items):
        p = _fields(item, f"{where}[{i}]", ("email",))
        people.append(Person(p.get("name"), p["email"]))
    return tuple(people)


def _user(u: Any, where: str) -> User:
    u = _fields(u, where, ("username", "email"))
    return check_user(
        User(
            username=u["username"],
            email=u["email"],
            first_name=u.get("first_name"),
            last_name=u.get("last_name"),
            is_teacher=bool(u.get("is_teacher")),
        ),
        where,
    )


def _class(c: Any, where: str) -> ClassInfo:
    c = _fields(c, where, ("class_id", "emailcode", "program_name", "directors_email"))
    sections = c.get("sections") or ()
    if isinstance(sections, (str, Mapping)) or not isinstance(sections, Iterable):
        raise DirectoryInvalid(f"{where}.sections must be a list of sections")
    built = []
    for s, section in enumerate(sections):
        here = f"{where}.sections[{s}]"
        section = _fields(section, here, ("index", "emailcode"))
        built.append(
            Section(section["index"], section["emailcode"], _people(section.get("students"), f"{here}.students"))
        )
    return check_class(
        ClassInfo(
            class_id=c["class_id"],
            emailcode=c["emailcode"],
            program_name=c["program_name"],
            directors_email=c["directors_email"],
            teachers=_people(c.get("teachers"), f"{where}.teachers"),
            sections=tuple(built),
        ),
        where,
    )


def check_directory_data(
    users: Iterable[Mapping[str, Any]] = (), classes: Iterable[Mapping[str, Any]] = ()
) -> tuple[list[User], list[ClassInfo]]:
    """The users and classes as routing stores them, or one DirectoryInvalid naming every bad entry
    (users: a username and a valid bare email; classes: a whole class_id, an emailcode, a
    program_name, a valid directors_email, valid teacher and student emails, distinct section indexes)."""
    problems: list[str] = []
    checked_users, checked_classes = [], []
    for i, u in enumerate(users or ()):
        try:
            checked_users.append(_user(u, f"users[{i}]"))
        except RequestInvalid as exc:
            problems.append(str(exc))
    for i, c in enumerate(classes or ()):
        try:
            checked_classes.append(_class(c, f"classes[{i}]"))
        except RequestInvalid as exc:
            problems.append(str(exc))
    if problems:
        raise _problems(problems)
    return checked_users, checked_classes


def publish_directory(
    users: Iterable[Mapping[str, Any]] = (),
    classes: Iterable[Mapping[str, Any]] = (),
    *,
    store: InboundStore | None = None,
    settings: Settings | None = None,
) -> dict[str, int]:
    """Write the users and classes routing needs (the website calls this when they change).
    Nothing is written unless every entry is valid (``check_directory_data``)."""
    store, _ = _store(store, settings)
    checked_users, checked_classes = check_directory_data(users, classes)
    return {"users": store.put_users(checked_users), "classes": store.put_classes(checked_classes)}
