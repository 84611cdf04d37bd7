"""Managing inbound routing: EmailList rules, PlainRedirects and the directory the website publishes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from dbmail.addresses import check_sender
from dbmail.errors import RequestInvalid
from dbmail.inbound_store import InboundStore
from dbmail.routing import DEFAULT_RULES, ClassInfo, EmailListRule, Person, Section, User
from dbmail.settings import Settings, get_settings


def _store(store: InboundStore | None, settings: Settings | None) -> tuple[InboundStore, Settings]:
    settings = settings or get_settings()
    return store or InboundStore(settings), settings


def install_default_email_lists(*, store: InboundStore | None = None, settings: Settings | None = None) -> list[EmailListRule]:
    """The original's four rules for a new site (seq 10-40); re-running rewrites them unchanged."""
    store, _ = _store(store, settings)
    return [store.put_rule(rule) for rule in DEFAULT_RULES]


def add_email_list(regex: str, handler: str, seq: int | None = None, subject_prefix: str | None = None,
                   admin_hold: bool = False, cc_all: bool = False, from_email: str | None = None,
                   description: str | None = None, list_id: str | None = None, *,
                   store: InboundStore | None = None, settings: Settings | None = None) -> EmailListRule:
    """Add (or replace, by list_id) a rule. A missing seq becomes the last seq + 5."""
    store, settings = _store(store, settings)
    if from_email:
        check_sender(from_email, settings.allowed_sender_domains)
    if subject_prefix and re.search(r"[\r\n]", subject_prefix):
        raise RequestInvalid("subject_prefix may not contain CR or LF")
    rule = EmailListRule(
        list_id=list_id or uuid.uuid4().hex[:12], regex=regex, seq=store.next_seq() if seq is None else int(seq),
        handler=handler, subject_prefix=subject_prefix or None, admin_hold=admin_hold, cc_all=cc_all,
        from_email=from_email or None, description=description or None,
    )
    return store.put_rule(rule)


def set_plain_redirect(original: str, destination: str, *, store: InboundStore | None = None,
                       settings: Settings | None = None) -> None:
    """Every comma-separated destination must be a valid address; the error names the bad ones."""
    store, _ = _store(store, settings)
    if not original.strip() or "@" in original:
        raise RequestInvalid("original is the local part only, e.g. 'directors'")
    store.put_redirect(original, destination)


def _people(items: Iterable[Mapping[str, Any]] | None) -> tuple[Person, ...]:
    return tuple(Person(p.get("name"), p["email"]) for p in items or ())


def publish_directory(users: Iterable[Mapping[str, Any]] = (), classes: Iterable[Mapping[str, Any]] = (), *,
                      store: InboundStore | None = None, settings: Settings | None = None) -> dict[str, int]:
    """Write the users and classes routing needs (the website calls this when they change)."""
    store, _ = _store(store, settings)
    user_count = store.put_users(
        User(username=u["username"], email=u["email"], first_name=u.get("first_name"),
             last_name=u.get("last_name"), is_teacher=bool(u.get("is_teacher")))
        for u in users
    )
    class_count = store.put_classes(
        ClassInfo(class_id=int(c["class_id"]), emailcode=c["emailcode"], program_name=c["program_name"],
                  directors_email=c["directors_email"], teachers=_people(c.get("teachers")),
                  sections=tuple(Section(int(s["index"]), s["emailcode"], _people(s.get("students")))
                                 for s in c.get("sections", ())))
        for c in classes
    )
    return {"users": user_count, "classes": class_count}
