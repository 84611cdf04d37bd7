"""DynamoDB access for inbound mail: EmailList rules, PlainRedirects, the directory the
website publishes, and the record of every received message."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from aws_lambda_powertools import Logger
from pynamodb.pagination import ResultIterator

from dbmail.core.models import (
    BoundModels,
    DirectoryPerson,
    DirectorySection,
    InboundMessageBase,
    bind_models,
    get_or_none,
)
from dbmail.core.settings import Settings
from dbmail.inbound.routing import (
    SUBADDRESS_SEPARATOR,
    ClassInfo,
    EmailListRule,
    Person,
    Section,
    User,
    check_class,
    check_redirect,
    check_rule,
    check_user,
)

logger = Logger(child=True)

MAX_DETAIL_CHARS = 1000
RULE_FIELDS = (
    "list_id",
    "regex",
    "seq",
    "handler",
    "subject_prefix",
    "admin_hold",
    "cc_all",
    "from_email",
    "description",
    "accept_automatic",
)
RULE_FLAGS = ("admin_hold", "cc_all", "accept_automatic")


def _person(p: DirectoryPerson) -> Person:
    return Person(p.name, p.email)


class InboundStore:
    def __init__(self, settings: Settings, models: BoundModels | None = None):
        self.models = models or bind_models(settings.require_inbound())

    # ---- EmailList ----------------------------------------------------------------------
    def rules(self) -> list[EmailListRule]:
        """Every rule the router can run, in (seq, list_id) order (a handful of items: a scan is the
        right tool). An item that does not read as a rule, or fails ``check_rule`` (someone wrote it
        raw), is left out with a warning naming it; ``invalid_rules`` lists those."""
        rules = []
        for list_id, rule, error in self._scan_rules():
            if rule is None:
                logger.warning("EmailList rule skipped: it cannot be run", extra={"list_id": list_id, "error": error})
            else:
                rules.append(rule)
        return sorted(rules, key=lambda r: (r.seq, r.list_id))

    def invalid_rules(self) -> list[tuple[str, str]]:
        """(list_id, what is wrong) for every stored item the router skips."""
        return [(list_id, error) for list_id, rule, error in self._scan_rules() if rule is None]

    def _scan_rules(self) -> Iterator[tuple[str, EmailListRule | None, str | None]]:
        """(list_id, checked rule or None, error or None) per item. Items are read raw and
        deserialised one by one, so that one malformed item (a seq written as a string, say)
        cannot stop the scan."""
        Model = self.models.EmailList
        raw_items = ResultIterator(Model._get_connection().scan, (), {})
        for raw in raw_items:
            list_id = str(next(iter(raw.get("list_id", {}).values()), "?"))
            try:
                item = Model.from_raw_data(raw)
                fields = {f: getattr(item, f, None) for f in RULE_FIELDS}
                for flag in RULE_FLAGS:
                    if fields[flag] is None:
                        fields[flag] = False
                yield list_id, check_rule(EmailListRule(**fields)), None
            except Exception as exc:
                yield list_id, None, f"{type(exc).__name__}: {exc}"

    def put_rule(self, rule: EmailListRule) -> EmailListRule:
        """Checked first: a rule the router cannot run is refused with RuleInvalid naming it."""
        rule = check_rule(rule)
        self.models.EmailList(**{f: getattr(rule, f) for f in RULE_FIELDS}).save()
        return rule

    def next_seq(self) -> int:
        """A missing seq becomes the last seq + 5, as in the original."""
        rules = self.rules()
        return rules[-1].seq + 5 if rules else 10

    def delete_rule(self, list_id: str) -> None:
        self.models.EmailList(list_id).delete()

    # ---- PlainRedirect -----------------------------------------------------------------
    def put_redirect(
        self, original: str, destination: str, *, subaddress_separator: str | None = SUBADDRESS_SEPARATOR
    ) -> None:
        """Checked first (``check_redirect``): a valid local part, 1 to 50 valid addresses."""
        original, destination = check_redirect(original, destination, subaddress_separator=subaddress_separator)
        self.models.PlainRedirect(original=original, destination=destination).save()

    def redirects(self) -> Iterator:
        return self.models.PlainRedirect.scan()

    def delete_redirect(self, original: str) -> None:
        self.models.PlainRedirect(original.strip().lower()).delete()

    # ---- directory ---------------------------------------------------------------------
    def put_users(self, users: Iterable[User]) -> int:
        """A user is written twice: by username (UserEmail) and by address (is the sender known?)."""
        Entry = self.models.DirectoryEntry

        def entries(user: User):
            fields = {
                "username": user.username,
                "email": user.email,
                "first_name": user.first_name,
                "last_name": user.last_name,
                "is_teacher": user.is_teacher,
            }
            yield Entry(entry_key=f"user#{user.username.lower()}", **fields)
            yield Entry(entry_key=f"email#{user.email.strip().lower()}", **fields)

        return self._put_directory(users, check_user, "users", entries)

    def put_classes(self, classes: Iterable[ClassInfo]) -> int:
        Entry = self.models.DirectoryEntry

        def entries(cls: ClassInfo):
            yield Entry(
                entry_key=f"class#{int(cls.class_id)}",
                class_id=cls.class_id,
                emailcode=cls.emailcode,
                program_name=cls.program_name,
                directors_email=cls.directors_email,
                teachers=[DirectoryPerson(name=p.name, email=p.email) for p in cls.teachers],
                sections=[
                    DirectorySection(
                        index=s.index,
                        emailcode=s.emailcode,
                        students=[DirectoryPerson(name=p.name, email=p.email) for p in s.students],
                    )
                    for s in cls.sections
                ],
            )

        return self._put_directory(classes, check_class, "classes", entries)

    def _put_directory(self, items: Iterable, check, label: str, entries) -> int:
        """Every item is checked before any is written (one bad item writes nothing), then each
        item's entries go in batches; returns how many items were written."""
        checked = [check(item, f"{label}[{i}]") for i, item in enumerate(items)]
        with self.models.DirectoryEntry.batch_write() as batch:
            for item in checked:
                for entry in entries(item):
                    batch.save(entry)
        return len(checked)

    def _user(self, key: str) -> User | None:
        entry = get_or_none(self.models.DirectoryEntry, key)
        if entry is None:
            return None
        return User(
            username=entry.username,
            email=entry.email,
            first_name=entry.first_name,
            last_name=entry.last_name,
            is_teacher=bool(entry.is_teacher),
        )

    def user_by_username(self, username: str) -> User | None:
        return self._user(f"user#{username.lower()}")

    def user_by_email(self, email: str) -> User | None:
        return self._user(f"email#{email.strip().lower()}")

    def class_by_id(self, class_id: int) -> ClassInfo | None:
        entry = get_or_none(self.models.DirectoryEntry, f"class#{int(class_id)}")
        if entry is None:
            return None
        return ClassInfo(
            class_id=int(entry.class_id),
            emailcode=entry.emailcode,
            program_name=entry.program_name,
            directors_email=entry.directors_email,
            teachers=tuple(_person(p) for p in entry.teachers or ()),
            sections=tuple(
                Section(int(s.index), s.emailcode, tuple(_person(p) for p in s.students or ()))
                for s in entry.sections or ()
            ),
        )

    def redirect(self, original: str) -> str | None:
        redirect = get_or_none(self.models.PlainRedirect, original.lower())
        return redirect.destination if redirect else None

    # ---- received messages -------------------------------------------------------------
    def begin(
        self, message_id: str, s3_key: str, recipients: list[str], now: datetime, verdicts: dict[str, str]
    ) -> InboundMessageBase:
        """The message's record, created on first sight; every attempt is counted."""
        Message = self.models.InboundMessage
        item = get_or_none(Message, message_id)
        if item is None:
            item = Message(message_id=message_id, received_at=now, s3_key=s3_key, recipients=recipients, detail=None)
            item.save(condition=Message.message_id.does_not_exist())
        actions = [Message.attempts.add(1), Message.attempted_at.set(now)]
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
