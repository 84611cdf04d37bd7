"""`make demo`: the whole outgoing path on the local stack, with a summary a newcomer can read.

Submits requests covering 1,000 generated recipients (every kind of send-to function, HTML
and plain bodies, users without a guardian, non-ASCII names) and a few SES mailbox simulator
addresses, waits until every email is sent, checks the outbox, then closes the feedback loop:
the local SES publishes each send's events (see dbmail_local/ses_events.py), the feedback
function records them (delivered, bounced, complained) and suppresses the bounced and
complaining addresses, and a second request to those is recorded `suppressed` and sends
nothing. A DSN sent over SMTP to the bounces address is recorded, never forwarded. It prints
what happened, and exits non-zero when any of it did not hold.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

RECIPIENTS = 1000
FIRST = ["Zoë", "José", "Łukasz", "Aïsha", "Søren", "Nguyễn", "Chloé", "Mateo", "Priya", "Олег", "美咲", "Sam"]
LAST = ["Ng", "García", "Müller", "O'Brien", "Šimić", "Tanaka", "Okafor", "Dubois", "Kowalski", "Lee"]

# (send-to function, HTML body?) per cohort of recipients.
COHORTS = [
    ("send_to_self_and_guardian", True),
    ("", False),
    ("send_to_guardian_and_emergency", False),
    ("send_to_self_and_guardian_and_emergency", True),
]

HTML_BODY = """<html lang="en"><body>
<p>Dear {{ user.first_name }},</p>
<p>Welcome to <b>{{ program.name }}</b>! Your classes start on {{ program.startdate }}.</p>
<p>Please confirm your spot: <a href="{{ user.get_confirmation_link }}">{{ user.get_confirmation_link }}</a></p>
<p>Questions? Write to {{ EMAIL_HOST_SENDER }}.</p>
</body></html>"""
TEXT_BODY = """Dear {{ user.first_name }} {{ user.last_name }},

{{ program.name }} starts on {{ program.startdate }}. Confirm your spot at
{{ user.get_confirmation_link }}

This message is also online: {{ request.public_url }}
"""


def generate_recipients(count: int, seed: int = 2026) -> list[dict]:
    """Deterministic users: every 3rd has no guardian, every 5th no emergency contact."""
    rng = random.Random(seed)
    users = []
    for i in range(1, count + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        user = {
            "user_id": i,
            "username": f"student{i}",
            "email": f"student{i}@students.example.net",
            "first_name": first,
            "last_name": last,
            "vars": {"get_confirmation_link": f"https://esp.example.org/confirm/{i:06d}"},
        }
        if i % 3:
            user.update(guardian_name=f"{rng.choice(FIRST)} {last}", guardian_email=f"guardian{i}@family.example.net")
        if i % 5:
            user.update(
                emergency_name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                emergency_email=f"emergency{i}@family.example.net",
            )
        users.append(user)
    return users


SIMULATOR = "simulator.amazonses.com"
# Each run's own label (the simulator takes kind+label@): a run on a stack that is already up
# does not meet the suppressions of the run before.
RUN = uuid.uuid4().hex[:8]
# The SES mailbox simulator's addresses and the status each email must end in.
SIMULATED = {
    f"success+{RUN}@{SIMULATOR}": "delivered",
    f"bounce+{RUN}@{SIMULATOR}": "bounced",
    f"complaint+{RUN}@{SIMULATOR}": "complained",
    f"suppressionlist+{RUN}@{SIMULATOR}": "bounced",
    f"ooto+{RUN}@{SIMULATOR}": "delivered",
}
SUPPRESSED = tuple(a for a in SIMULATED if a.startswith(("bounce+", "complaint+", "suppressionlist+")))
DSN_ADDRESS = f"moved-away+{RUN}@students.example.net"  # delivered, then a DSN over SMTP says it is unknown
SENT_STATUSES = ("sent", "delivered", "bounced", "complained")  # what SES accepted (feedback moves sent on)
FINAL_STATUSES = (*SENT_STATUSES, "suppressed", "failed", "expired")


def simulator_users(addresses: tuple[str, ...] | list[str], first_id: int) -> list[dict]:
    return [
        {"user_id": first_id + n, "username": address.partition("@")[0], "email": address, "first_name": "Sim"}
        for n, address in enumerate(addresses)
    ]


def submit(recipients: list[dict], sendto: str = "", html: bool = False, subject: str | None = None) -> str:
    from dbmail.client import submit_request

    return submit_request(
        subject=subject or "[Splash 2026] Wëlcome, {{ user.first_name }} ✨",
        msgtext=HTML_BODY if html else TEXT_BODY,
        recipients=recipients,
        sendto_fn_name=sendto,
        sender="Splash Directors <splash@example.org>",
        creator={"user_id": 1, "username": "admin", "email": "admin@example.org", "first_name": "Ada"},
        var_dict={"program": {"name": "Splash 2026", "startdate": "November 28"}},
        special_headers={"Reply-To": "splash@example.org", "X-ESP-Program": "splash-2026"},
    )


def submit_demo_requests(recipients: list[dict]) -> list[str]:

    size = -(-len(recipients) // len(COHORTS))
    ids = [submit(recipients[n * size : (n + 1) * size], sendto, html) for n, (sendto, html) in enumerate(COHORTS)]
    ids.append(submit(simulator_users([*SIMULATED, DSN_ADDRESS], len(recipients) + 1)))  # the mailbox simulator
    return ids


def emails_of(request_ids: list[str]) -> list:
    """Every email of the requests: address, status, message_ref and the feedback recorded."""
    from dbmail.core.settings import website_settings
    from dbmail.outgoing.store import Store

    store = Store(website_settings())
    fields = ["email_key", "send_to", "status", "message_ref", "bounce_type", "feedback", "error"]
    return [email for rid in request_ids for email in store.iter_emails(rid, fields)]


def address_of(email) -> str:
    from email.utils import parseaddr

    return parseaddr(email.send_to)[1].lower()


def wait_for_feedback(request_ids: list[str], timeout: float) -> list:
    """Wait until SES's events for every sent email are recorded (none left merely `sent`)."""
    deadline = time.monotonic() + timeout
    while True:
        emails = emails_of(request_ids)
        if not any(email.status == "sent" for email in emails) or time.monotonic() > deadline:
            return emails
        time.sleep(1.0)


def wait_until_final(request_ids: list[str], timeout: float) -> list:
    """Wait until the requests are processed and every email of theirs is final."""
    from dbmail.core.settings import website_settings
    from dbmail.outgoing.store import Store

    store = Store(website_settings())
    deadline = time.monotonic() + timeout
    while True:
        done = all(r.status in ("processed", "failed", "expired") for r in map(store.get_request, request_ids))
        emails = emails_of(request_ids) if done else []
        if (done and emails and all(e.status in FINAL_STATUSES for e in emails)) or time.monotonic() > deadline:
            return emails
        time.sleep(0.5)


def wait_until_settled(request_ids: list[str], outbox: Path, before: set[Path], timeout: float) -> list[dict]:
    """Wait (cheaply: request items and the outbox) until every request is final and as many new
    .eml files exist as emails were expanded, then read the full status once."""
    from dbmail.client import request_status
    from dbmail.core.settings import website_settings
    from dbmail.outgoing.store import Store

    store = Store(website_settings())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        requests = [store.get_request(rid) for rid in request_ids]
        if all(r.status in ("processed", "failed", "expired") for r in requests):
            expected = sum(int(r.email_count or 0) for r in requests)
            if len(set(outbox.glob("*.eml")) - before) >= expected:
                break
        time.sleep(0.5)
    return [request_status(rid) for rid in request_ids]


DEMO_CLASS = {
    "class_id": 1234,
    "emailcode": "E1234",
    "program_name": "Splash 2026",
    "directors_email": "directors@example.org",
    "teachers": [{"name": "Tea Cher", "email": "teacher@example.net"}],
    "sections": [
        {
            "index": 1,
            "emailcode": "E1234s1",
            "students": [
                {"name": "Zoë Ng", "email": "zoe@students.example.net"},
                {"name": "José García", "email": "jose@students.example.net"},
            ],
        },
        {
            "index": 2,
            "emailcode": "E1234s2",
            "students": [{"name": "Aïsha Okafor", "email": "aisha@students.example.net"}],
        },
    ],
}


def run_inbound_demo(outbox: Path, timeout: float = 60) -> bool:
    """One message over SMTP to a class list, forwarded to directors, teacher and students."""
    import os
    import smtplib
    from email.message import EmailMessage
    from email.parser import BytesHeaderParser

    from dbmail.client import install_default_email_lists, publish_directory

    install_default_email_lists()
    publish_directory(
        users=[{"username": "parent", "email": "parent@example.net", "first_name": "Pa", "last_name": "Rent"}],
        classes=[DEMO_CLASS],
    )
    before = set(outbox.glob("*.eml"))
    message = EmailMessage()
    message["From"] = '"Pa Rent" <parent@example.net>'
    message["To"] = "E1234-class@example.org"
    message["Subject"] = "Field trip on Saturday"
    message.set_content("Hello class, the field trip leaves at 9.\n")
    with smtplib.SMTP(os.environ["DBMAIL_LOCAL_SMTP_HOST"], int(os.environ["DBMAIL_LOCAL_SMTP_PORT"])) as smtp:
        smtp.send_message(message)
    expected = 1 + len(DEMO_CLASS["teachers"]) + sum(len(s["students"]) for s in DEMO_CLASS["sections"])
    deadline = time.monotonic() + timeout
    while len(new := sorted(set(outbox.glob("*.eml")) - before)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    subjects = set()
    for path in new:
        with path.open("rb") as handle:
            subjects.add(BytesHeaderParser().parse(handle)["Subject"])
    print(
        f"inbound     1 message to E1234-class@example.org over SMTP -> {len(new)} forwards "
        f"(expected {expected}), subject {sorted(subjects)}"
    )
    return len(new) == expected


def _smtp_send(raw: bytes, sender: str, recipients: list[str]) -> None:
    import os
    import smtplib

    with smtplib.SMTP(os.environ["DBMAIL_LOCAL_SMTP_HOST"], int(os.environ["DBMAIL_LOCAL_SMTP_PORT"])) as smtp:
        smtp.sendmail(sender, recipients, raw)


def dsn_for(email, bounces_address: str) -> tuple[str, bytes]:
    """A Postfix-style DSN (RFC 3464) saying the email's recipient is unknown, to its VERP address."""
    from email.utils import format_datetime, parseaddr

    local, _, domain = parseaddr(bounces_address)[1].partition("@")
    to = f"{local}+{email.message_ref}@{domain}"
    address = address_of(email)
    now = format_datetime(datetime.now(UTC))
    text = f"""From: MAILER-DAEMON@mx.students.example.net (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: {now}
Message-ID: <dsn.{email.message_ref}@mx.students.example.net>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="DSN-BOUNDARY"

--DSN-BOUNDARY
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.students.example.net.
I'm sorry to have to inform you that your message could not be delivered.

<{address}>: host mx.students.example.net said: 550 5.1.1 User unknown

--DSN-BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.students.example.net
Arrival-Date: {now}

Final-Recipient: rfc822; {address}
Original-Recipient: rfc822;{address}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{address}>: Recipient address rejected: User unknown

--DSN-BOUNDARY
Content-Type: text/rfc822-headers

From: Splash Directors <splash@example.org>
To: {address}
Subject: [Splash 2026] Welcome
Message-ID: <dbmail.{email.message_ref}@example.org>

--DSN-BOUNDARY--
"""
    return to, text.replace("\n", "\r\n").encode()


def run_dsn_demo(request_ids: list[str], outbox: Path, timeout: float = 60) -> bool:
    """A DSN over SMTP to the bounces address: recorded on its email (bounced), never forwarded."""
    import os

    wanted = DSN_ADDRESS
    email = next(e for e in emails_of(request_ids) if address_of(e) == wanted and e.message_ref)
    to, raw = dsn_for(email, os.environ["DBMAIL_BOUNCES_ADDRESS"])
    before = set(outbox.glob("*.eml"))
    _smtp_send(raw, "", [to])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        email = next(e for e in emails_of(request_ids) if address_of(e) == wanted and e.message_ref)
        if email.status == "bounced":
            break
        time.sleep(0.5)
    time.sleep(1.0)  # a forward or a notice would have been sent by now
    forwarded = len(set(outbox.glob("*.eml")) - before)
    ok = email.status == "bounced" and forwarded == 0 and _is_suppressed(wanted)
    print(
        f"dsn         1 DSN over SMTP to {to.partition('+')[0]}+<ref>@ for {wanted}: its email is {email.status}, "
        f"{forwarded} messages sent in answer (expected bounced, 0) -> {'OK' if ok else 'NOT OK'}"
    )
    return ok


def _is_suppressed(address: str) -> bool:
    from dbmail import wiring
    from dbmail.core.settings import website_settings

    return wiring.suppression_store(website_settings()).is_suppressed(address)


def run_demo(outbox: Path, timeout: float = 300) -> int:
    """Submit, wait, summarise; 0 only when every expected email was sent and none lost, the
    feedback loop closed (see the module's docstring), and the DSN was recorded, not forwarded."""
    before = set(outbox.glob("*.eml")) if outbox.is_dir() else set()
    started, started_wall = time.monotonic(), time.time()
    request_ids = submit_demo_requests(generate_recipients(RECIPIENTS))
    statuses = wait_until_settled(request_ids, outbox, before, timeout)
    wall = time.monotonic() - started
    new_files = sorted(set(outbox.glob("*.eml")) - before)
    emails = wait_for_feedback(request_ids, timeout=max(30.0, timeout - wall))
    feedback_wall = time.monotonic() - started

    recipients = sum(s["recipients"] for s in statuses)
    expanded = sum(s["emails"] for s in statuses)
    by_status: dict[str, int] = {}
    for email in emails:
        by_status[email.status] = by_status.get(email.status, 0) + 1
    sent = sum(by_status.get(status, 0) for status in SENT_STATUSES)
    failed = by_status.get("failed", 0)
    expired = by_status.get("expired", 0)
    lost = expanded - sent - failed - expired - by_status.get("suppressed", 0)
    ok = all(s["status"] == "processed" for s in statuses) and sent == expanded and len(new_files) == sent

    simulated = {address_of(e): e for e in emails if address_of(e).endswith("@" + SIMULATOR)}
    wanted = {**SIMULATED, DSN_ADDRESS: "delivered"}
    found = {address_of(e): e for e in emails if address_of(e) in wanted}
    loop_ok = all(found.get(a) is not None and found[a].status == want for a, want in wanted.items())
    loop_ok = loop_ok and all(_is_suppressed(address) for address in SUPPRESSED)
    loop_ok = loop_ok and by_status.get("sent", 0) == 0  # every other email's Delivery recorded

    # a second request to the suppressed addresses: recorded `suppressed`, nothing sent
    second_before = set(outbox.glob("*.eml"))
    second_id = submit(simulator_users(SUPPRESSED, RECIPIENTS + 100), subject="[Splash 2026] Reminder")
    second = wait_until_final([second_id], timeout=60)
    time.sleep(1.0)  # anything sent would be in the outbox by now
    second_sent = len(set(outbox.glob("*.eml")) - second_before)
    second_ok = len(second) == len(SUPPRESSED) and all(e.status == "suppressed" for e in second) and second_sent == 0
    suppressed = by_status.get("suppressed", 0) + sum(e.status == "suppressed" for e in second)

    print()
    print("dbmail demo summary")
    print("-------------------")
    print(
        f"requested   {len(request_ids)} requests, {recipients} recipients "
        f"({len(SIMULATED)} of them SES mailbox simulator addresses)"
    )
    skipped = sum(s["skipped_no_address"] for s in statuses)
    print(f"expanded    {expanded} emails ({skipped} users had no address for their send-to function)")
    print(f"sent        {sent}")
    print(f"delivered   {by_status.get('delivered', 0)}  (SES Delivery events, recorded by the feedback function)")
    print(f"bounced     {by_status.get('bounced', 0)}  (bounce@ and suppressionlist@: their addresses are suppressed)")
    print(f"complained  {by_status.get('complained', 0)}  (complaint@: suppressed)")
    print(
        f"suppressed  {suppressed}  (a second request to the {len(SUPPRESSED)} suppressed addresses: "
        f"{second_sent} sent)"
    )
    print(f"failed      {failed}")
    print(f"expired     {expired}")
    print(f"lost        {lost}")
    print(f"outbox      {len(new_files)} new .eml files")
    if new_files:
        first = min(path.stat().st_mtime for path in new_files) - started_wall
        print(f"latency     first email delivered {first:.1f} s after the first submit (the original: up to 15 min)")
    print(f"wall time   {wall:.1f} s (submit to last send), {feedback_wall:.1f} s to the last event recorded")
    print(f"throughput  {sent / wall:.0f} emails/s")
    print(f"read mail   {outbox}/  e.g. {new_files[0].name if new_files else '-'}")
    for address, want in SIMULATED.items():
        email = simulated.get(address)
        got = email.status if email is not None else "missing"
        extra = f", suppressed: {_is_suppressed(address)}" if address in SUPPRESSED else ""
        print(f"simulator   {address:<50} {got:<10} (expected {want}{extra})")
    print(f"result      {'OK: every email sent, none lost' if ok else 'NOT OK'}")
    print(f"feedback    {'OK: the loop closed' if loop_ok and second_ok else 'NOT OK'}")
    print()
    dsn_ok = run_dsn_demo(request_ids, outbox)
    inbound_ok = run_inbound_demo(outbox)
    return 0 if ok and loop_ok and second_ok and dsn_ok and inbound_ok else 1
