"""Handling one message SES received for a chapter domain: verdicts, loop guard, routing,
moderation, forwarding and notices. The raw message stays in S3 whatever happens; the
InboundMessage record says what became of it, and a failed one can be processed again.

Mail to the bounces address (``local@`` or ``local+anything@``, our envelope sender) is never
routed, forwarded or answered: a DSN there is recorded like a provider event (``feedback``),
anything else is dropped (``not_feedback``)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from dbmail.core.addresses import mask, parse_address
from dbmail.core.clock import utcnow
from dbmail.core.compose import MAX_MESSAGE_BYTES, compose
from dbmail.core.errors import NotFound
from dbmail.core.settings import Settings
from dbmail.core.statuses import InboundStatus
from dbmail.feedback.dsn import parse_dsn
from dbmail.feedback.events import FeedbackInvalid
from dbmail.inbound.forward import (
    LOOP_HEADER,
    Forward,
    been_there,
    header_text,
    is_automatic,
    original_sender,
    parse,
    rewrite,
    split_forwards,
)
from dbmail.inbound.routing import Route, is_bounces_address, merge_routes, route
from dbmail.outgoing.send_rate import SendBudget, Unlimited, draw

if TYPE_CHECKING:  # integration types only: the domain never imports PynamoDB
    from dbmail.core.transports import SesTransport
    from dbmail.feedback.recorder import FeedbackRecorder
    from dbmail.inbound.store import InboundStore

logger = Logger(child=True)

# Mailman's loop rule: a message already forwarded by a list (or redirect) is never forwarded by
# it again (its X-BeenThere names it), and none goes through more than this many of ours.
MAX_HOPS = 5
FORWARD_CONCURRENCY = 8  # SES calls in flight for one message's fan-out
# A message still `received` this long after it arrived was cut off (timeout, crash): stuck.
STUCK_AFTER = timedelta(minutes=10)
# The sweep tries a failed or stuck message again once its last attempt is this far back (and
# never sooner than a whole invocation, 120 s, could still be running), at most this many times.
SWEEP_NOT_BEFORE = timedelta(seconds=150)
SWEEP_MAX_ATTEMPTS = 5
SWEEP_MAX_MESSAGES = 50


@dataclass
class InboundRouter:
    store: InboundStore
    s3: object
    transport: SesTransport  # forwards are raw MIME, which only SES takes
    settings: Settings
    # records the DSNs that come back to the bounces address; built for the first one (the
    # website's settings, which the CLI reprocesses with, may not name the feedback tables)
    feedback: Callable[[], FeedbackRecorder]
    clock: Callable[[], datetime] = field(default=utcnow)
    budget: SendBudget = field(default_factory=Unlimited)  # each forward's recipients draw from the send rate

    def handle(
        self,
        message_id: str,
        recipients: list[str],
        spam_verdict: str = "PASS",
        virus_verdict: str = "PASS",
        release: bool = False,
    ) -> InboundStatus:
        """Process one received message; returns the InboundStatus it ends in."""
        settings = self.settings
        key = f"{settings.inbound_prefix}{message_id}"
        item = self.store.begin(
            message_id, key, recipients, self.clock(), {"spam": spam_verdict, "virus": virus_verdict}
        )
        if item.status in InboundStatus.FINAL and not release:
            return InboundStatus(item.status)
        try:
            return self._handle(item, recipients, spam_verdict, virus_verdict, release)
        except Exception as exc:
            self.store.finish(item, InboundStatus.FAILED, f"{type(exc).__name__}: {exc}")
            logger.exception("inbound message failed; raw message kept in S3", extra={"message_id": message_id})
            raise

    def _handle(self, item, recipients: list[str], spam: str, virus: str, release: bool) -> str:
        settings = self.settings
        raw = self.s3.get_object(Bucket=settings.inbound_bucket, Key=item.s3_key)["Body"].read()
        message = parse(raw)
        name, sender = original_sender(message)
        subject = header_text(message, "Subject")[:200]
        summary = {"sender_domain": sender.rpartition("@")[2].lower() or None, "subject": subject}
        log = {"message_id": item.message_id, "sender": mask(sender), "size": len(raw)}

        if virus.upper() == "FAIL":
            return self._finish(item, InboundStatus.DROPPED, "virus verdict FAIL", log, **summary)
        to_bounces = [r for r in recipients if is_bounces_address(r, settings.bounces_address)]
        if to_bounces:
            return self._record_feedback(item, raw, to_bounces, len(recipients) - len(to_bounces), log, summary)
        visited = set(been_there(message))
        if len(visited) >= MAX_HOPS:
            return self._finish(
                item, InboundStatus.DROPPED, f"forwarding loop: through {len(visited)} lists already", log, **summary
            )
        if spam.upper() == "FAIL" and not release:
            if settings.spam_action == "drop":
                return self._finish(item, InboundStatus.DROPPED, "spam verdict FAIL", log, **summary)
            self._notify_moderator(item, subject, sender, "SES judged it spam")
            return self._finish(item, InboundStatus.HELD, "spam verdict FAIL: held for moderation", log, **summary)

        automatic = is_automatic(message)
        rules = self.store.rules()
        routes: list[Route] = []
        refused: list[str] = []
        for address in recipients:
            local, _, domain = address.rpartition("@")
            if domain.lower() not in settings.chapter_domains:
                continue
            result = route(
                local,
                rules,
                self.store,
                has_list_id=message.get("List-Id") is not None,
                domain=domain,
                subaddress_separator=settings.subaddress_separator,
            )
            decided = result.route
            if decided is None or any(r.list_address == decided.list_address for r in routes):
                continue
            if decided.list_address in visited:
                refused.append(f"{decided.list_address}: already forwarded it (loop)")
            elif automatic and decided.broadcasts and not decided.rule.accept_automatic:
                refused.append(f"{decided.list_address}: automatic mail is not broadcast")
            else:
                routes.append(decided)
        if not routes and refused:
            status = InboundStatus.DROPPED
            return self._finish(item, status, "; ".join(refused), log, **summary)
        if not routes:
            noticed = self._notice_sender(
                message,
                sender,
                recipients,
                "Undeliverable mail",
                "No list, redirect or user at the address you wrote to accepts mail:",
            )
            return self._finish(
                item,
                InboundStatus.UNDELIVERABLE,
                f"no rule sent it; notice {'sent' if noticed else 'not sent'}",
                log,
                **summary,
            )
        if len(raw) > MAX_MESSAGE_BYTES:
            noticed = self._notice_sender(
                message,
                sender,
                recipients,
                "Message too large",
                f"Your message ({len(raw) / 2**20:.1f} MB) is over the "
                f"{MAX_MESSAGE_BYTES // 2**20} MB limit and was not forwarded to:",
            )
            return self._finish(
                item,
                InboundStatus.TOO_LARGE,
                f"{len(raw)} bytes; notice {'sent' if noticed else 'not sent'}",
                log,
                **summary,
            )
        held = [r for r in routes if r.rule.admin_hold]
        if held and not release:
            self._notify_moderator(item, subject, sender, f"list rule {held[0].rule.list_id} holds mail for moderation")
            return self._finish(item, InboundStatus.HELD, f"admin_hold on {held[0].rule.list_id}", log, **summary)

        routes = merge_routes(routes)  # one copy per person, whichever of the addresses reached them
        done = set(item.forwarded_parts or ())
        pending: list[tuple[Forward, str]] = []
        sent = 0
        for decided in routes:
            domain = decided.list_address.rpartition("@")[2]
            rewritten = rewrite(
                raw,
                decided,
                site_name=self._site_name(domain),
                chapter_domain=domain,
                list_address=decided.list_address,
            )
            _, forward_from = original_sender(rewritten)  # the rule's from_email or noreply@domain
            for forward in split_forwards(rewritten, decided, key=f"{decided.rule.list_id}:{decided.list_address}"):
                if forward.part not in done:
                    pending.append((forward, forward_from))
                sent += len(forward.destinations)
        self._send_all(item, pending)
        status = InboundStatus.RELEASED if release else InboundStatus.FORWARDED
        rules_used = ", ".join(sorted({r.rule.list_id for r in routes}))
        detail = f"forwarded to {sent} recipients by {rules_used}" + "".join(f"; {note}" for note in refused)
        return self._finish(item, status, detail, log, list_id=routes[0].rule.list_id, **summary)

    def _record_feedback(
        self, item, raw: bytes, to_bounces: list[str], others: int, log: dict, summary: dict
    ) -> InboundStatus:
        """A message to the bounces address: its DSN recorded, or it is dropped; never routed
        (not even for its other recipients: a DSN has none), forwarded or answered."""
        note = f"; its {others} other recipients not routed" if others else ""
        try:
            events = parse_dsn(raw, to_bounces, self.clock())
        except FeedbackInvalid as exc:
            detail = f"to the bounces address, not recorded: {exc}{note}"
            return self._finish(item, InboundStatus.NOT_FEEDBACK, detail, log, **summary)
        recorder = self.feedback()
        outcomes = Counter(str(recorder.record(event)) for event in events)
        recorded = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        detail = f"DSN for {len(events)} recipients: {recorded}{note}"
        return self._finish(item, InboundStatus.FEEDBACK, detail, log, **summary)

    def _send_all(self, item, pending: list[tuple[Forward, str]]) -> None:
        """The fan-out, a few SES calls at a time. Each forward that went is recorded (one write at
        a time), so a retry or a reprocess after a failure or a timeout sends only the rest; the
        first failure is raised once every call has ended."""
        if not pending:
            return
        with ThreadPoolExecutor(max_workers=min(FORWARD_CONCURRENCY, len(pending))) as pool:
            futures = {pool.submit(self._send, forward, from_address): forward for forward, from_address in pending}
            failure = None
            for future in as_completed(futures):
                if future.exception() is None:
                    self.store.add_forwarded_part(item, futures[future].part)
                elif failure is None:
                    failure = future.exception()
        if failure is not None:
            raise failure

    def _site_name(self, domain: str) -> str:
        """For "Name via Site": the default sender's display name, else the chapter domain."""
        return parse_address(self.settings.default_sender).display_name or domain

    def _send(self, forward: Forward, from_address: str) -> None:
        destinations = None if forward.addressed_by_headers else list(forward.destinations)
        draw(self.budget, len(forward.destinations))
        self.transport.send_raw(forward.raw, from_address, destinations)

    def _notice_sender(self, message, sender: str, recipients: list[str], subject: str, text: str) -> bool:
        """Only to a known user, never to the support address, never in reply to automatic mail:
        no backscatter to strangers and no loops."""
        settings = self.settings
        if not sender or sender.lower() == settings.support_address.lower():
            return False
        if is_automatic(message) or message.get("List-Id"):
            return False
        if self.store.user_by_email(sender) is None:
            return False
        domain = recipients[0].rpartition("@")[2].lower() if recipients else settings.chapter_domains[0]
        body = (
            f"{text}\n\n"
            + "\n".join(f"  {r}" for r in recipients)
            + f"\n\nSubject: {header_text(message, 'Subject')}\n"
            + (f"\nQuestions? Write to {settings.support_address}.\n" if settings.support_address else "")
        )
        self._send_notice(f"Mail Delivery System <noreply@{domain}>", sender, subject, body, domain)
        return True

    def _notify_moderator(self, item, subject: str, sender: str, why: str) -> None:
        settings = self.settings
        if not settings.moderator_address:
            return
        domain = settings.chapter_domains[0]
        body = (
            f"A message was held for moderation ({why}).\n\n"
            f"  From:    {sender or 'unknown'}\n  To:      {', '.join(item.recipients)}\n"
            f"  Subject: {subject}\n  Id:      {item.message_id}\n\n"
            f"Release it:  dbmail held release {item.message_id}\n"
            f"Reject it:   dbmail held reject {item.message_id}\n"
        )
        self._send_notice(
            f"Mail Moderation <noreply@{domain}>",
            settings.moderator_address,
            f"Held for moderation: {subject}",
            body,
            domain,
        )

    def _send_notice(self, send_from: str, to: str, subject: str, body: str, domain: str) -> None:
        notice = compose(
            send_from=send_from,
            send_to=[to],
            subject=subject,
            body=body,
            message_id=f"<notice.{uuid.uuid4().hex}@{domain}>",
            date=self.clock(),
            envelope_sender=self.settings.bounces_address,
            special_headers={"Auto-Submitted": "auto-replied", LOOP_HEADER: domain},
        )
        self.transport.send(notice)

    def _finish(self, item, status: InboundStatus, detail: str, log: dict, **fields) -> InboundStatus:
        self.store.finish(item, status, detail, **fields)
        logger.info("inbound message handled", extra={**log, "status": status, "detail": detail})
        return status

    def reject(self, message_id: str) -> InboundStatus:
        item = self.store.get(message_id)
        if item is None or item.status != InboundStatus.HELD:
            raise NotFound(f"no held message {message_id!r}")
        self.store.finish(item, InboundStatus.REJECTED, "rejected by a moderator")
        return InboundStatus.REJECTED

    def release(self, message_id: str) -> InboundStatus:
        item = self.store.get(message_id)
        if item is None or item.status != InboundStatus.HELD:
            raise NotFound(f"no held message {message_id!r}")
        return self.handle(message_id, list(item.recipients), release=True)

    def unfinished(self, now: datetime) -> list:
        """What needs a person or a reprocess: failed messages, and those stuck in `received`
        (an invocation that timed out or was killed), oldest first."""
        stuck = [
            item for item in self.store.with_status(InboundStatus.RECEIVED) if item.received_at < now - STUCK_AFTER
        ]
        return sorted([*self.store.with_status(InboundStatus.FAILED), *stuck], key=lambda item: item.received_at)

    def sweep(self, now: datetime) -> dict[str, int]:
        """The schedule's pass: failed or stuck messages whose last attempt is long enough ago are
        processed again (forwards that already went are skipped), a few at a time. What still
        fails after SWEEP_MAX_ATTEMPTS stays `failed` for a person (`dbmail inbound failed`)."""
        summary: Counter = Counter()
        quiet_since = now - max(self.settings.stranded_after, SWEEP_NOT_BEFORE)
        for item in self.unfinished(now):
            if sum(summary.values()) >= SWEEP_MAX_MESSAGES:
                break
            if (item.attempted_at or item.received_at) > quiet_since or int(item.attempts or 0) >= SWEEP_MAX_ATTEMPTS:
                continue
            try:
                summary[self.reprocess(item.message_id)] += 1
            except Exception:  # recorded and logged by handle(); the sweep goes on with the next
                summary["failed_again"] += 1
        if summary:
            logger.info("inbound sweep", extra=dict(summary))
        return dict(summary)

    def reprocess(self, message_id: str) -> str:
        """Process a failed (or any unfinished) message again from its raw copy in S3."""
        item = self.store.get(message_id)
        if item is None:
            raise NotFound(f"no inbound message {message_id!r}")
        verdicts = item.verdicts.as_dict() if item.verdicts else {}
        return self.handle(
            message_id, list(item.recipients), verdicts.get("spam", "PASS"), verdicts.get("virus", "PASS")
        )
