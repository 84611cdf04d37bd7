"""DynamoDB access for inbound mail: EmailList rules, PlainRedirects, the directory the
website publishes, and the record of every received message."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from dbmail.models import BoundModels, DirectoryPerson, DirectorySection, InboundMessageBase, bind_models, get_or_none
from dbmail.routing import ClassInfo, EmailListRule, Person, Section, User, check_rule, parse_destinations
from dbmail.settings import Settings

MAX_DETAIL_CHARS = 1000
RULE_FIELDS = ("list_id", "regex", "seq", "handler", "subject_prefix", "admin_hold", "cc_all", "from_email", "description")


def _person(p: DirectoryPerson) -> Person:
    return Person(p.name, p.email)


class InboundStore:
    def __init__(self, settings: Settings, models: BoundModels | None = None):
        self.models = models or bind_models(settings.require_inbound())

    # ---- EmailList ----------------------------------------------------------------------
    def rules(self) -> list[EmailListRule]:
        """Every rule, in seq order (a handful of items: a scan is the right tool)."""
        rules = [
            EmailListRule(**{f: getattr(item, f) for f in RULE_FIELDS}) for item in self.models.EmailList.scan()
        ]
        return sorted(rules, key=lambda r: (int(r.seq), r.list_id))

    def put_rule(self, rule: EmailListRule) -> EmailListRule:
        check_rule(rule)
        self.models.EmailList(**{f: getattr(rule, f) for f in RULE_FIELDS}).save()
        return rule

    def next_seq(self) -> int:
        """A missing seq becomes the last seq + 5, as in the original."""
        rules = self.rules()
        return int(rules[-1].seq) + 5 if rules else 10

    def delete_rule(self, list_id: str) -> None:
        self.models.EmailList(list_id).delete()

    # ---- PlainRedirect -----------------------------------------------------------------
    def put_redirect(self, original: str, destination: str) -> None:
        parse_destinations(destination)
        self.models.PlainRedirect(original=original.strip().lower(), destination=destination.strip()).save()

    def redirects(self) -> Iterator:
        return self.models.PlainRedirect.scan()

    def delete_redirect(self, original: str) -> None:
        self.models.PlainRedirect(original.strip().lower()).delete()

    # ---- directory ---------------------------------------------------------------------
    def put_users(self, users: Iterable[User]) -> int:
        """A user is written twice: by username (UserEmail) and by address (is the sender known?)."""
        Entry = self.models.DirectoryEntry
        count = 0
        with Entry.batch_write() as batch:
            for user in users:
                fields = dict(username=user.username, email=user.email, first_name=user.first_name,
                              last_name=user.last_name, is_teacher=user.is_teacher)
                batch.save(Entry(entry_key=f"user#{user.username.lower()}", **fields))
                batch.save(Entry(entry_key=f"email#{user.email.strip().lower()}", **fields))
                count += 1
        return count

    def put_classes(self, classes: Iterable[ClassInfo]) -> int:
        Entry = self.models.DirectoryEntry
        count = 0
        with Entry.batch_write() as batch:
            for cls in classes:
                batch.save(Entry(
                    entry_key=f"class#{int(cls.class_id)}", class_id=cls.class_id, emailcode=cls.emailcode,
                    program_name=cls.program_name, directors_email=cls.directors_email,
                    teachers=[DirectoryPerson(name=p.name, email=p.email) for p in cls.teachers],
                    sections=[DirectorySection(index=s.index, emailcode=s.emailcode,
                                               students=[DirectoryPerson(name=p.name, email=p.email) for p in s.students])
                              for s in cls.sections],
                ))
                count += 1
        return count

    def _user(self, key: str) -> User | None:
        entry = get_or_none(self.models.DirectoryEntry, key)
        if entry is None:
            return None
        return User(username=entry.username, email=entry.email, first_name=entry.first_name,
                    last_name=entry.last_name, is_teacher=bool(entry.is_teacher))

    def user_by_username(self, username: str) -> User | None:
        return self._user(f"user#{username.lower()}")

    def user_by_email(self, email: str) -> User | None:
        return self._user(f"email#{email.strip().lower()}")

    def class_by_id(self, class_id: int) -> ClassInfo | None:
        entry = get_or_none(self.models.DirectoryEntry, f"class#{int(class_id)}")
        if entry is None:
            return None
        return ClassInfo(
            class_id=int(entry.class_id), emailcode=entry.emailcode, program_name=entry.program_name,
            directors_email=entry.directors_email,
            teachers=tuple(_person(p) for p in entry.teachers or ()),
            sections=tuple(Section(int(s.index), s.emailcode, tuple(_person(p) for p in s.students or ()))
                           for s in entry.sections or ()),
        )

    def redirect(self, original: str) -> str | None:
        redirect = get_or_none(self.models.PlainRedirect, original.lower())
        return redirect.destination if redirect else None

    # ---- received messages -------------------------------------------------------------
    def begin(self, message_id: str, s3_key: str, recipients: list[str], now: datetime,
              verdicts: dict[str, str]) -> InboundMessageBase:
        """The message's record, created on first sight; every attempt is counted."""
        Message = self.models.InboundMessage
        item = get_or_none(Message, message_id)
        if item is None:
            item = Message(message_id=message_id, received_at=now, s3_key=s3_key, recipients=recipients,
                           detail=None)
            item.save(condition=Message.message_id.does_not_exist())
        actions = [Message.attempts.add(1)]
        if verdicts:
            actions.append(Message.verdicts.set(verdicts))
        item.update(actions=actions)
        return item

    def get(self, message_id: str) -> InboundMessageBase | None:
        return get_or_none(self.models.InboundMessage, message_id)

    def finish(self, item: InboundMessageBase, status: str, detail: str, **fields) -> None:
        Message = self.models.InboundMessage
        actions = [Message.status.set(status), Message.detail.set(detail[:MAX_DETAIL_CHARS])]
        actions += [getattr(Message, name).set(value) for name, value in fields.items() if value is not None]
        item.update(actions=actions)

    def add_forwarded_part(self, item: InboundMessageBase, part: str) -> None:
        Message = self.models.InboundMessage
        item.update(actions=[Message.forwarded_parts.add({part})])

    def with_status(self, status: str) -> Iterator[InboundMessageBase]:
        return self.models.InboundMessage.by_status.query(status)

