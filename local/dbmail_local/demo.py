"""`make demo`: the whole outgoing path on the local stack, with a summary a newcomer can read.

Submits requests covering 1,000 generated recipients (every kind of send-to function, HTML
and plain bodies, users without a guardian, non-ASCII names), waits until every email is
delivered, checks the outbox, and prints what happened.
"""

from __future__ import annotations

import random
import time
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


def submit_demo_requests(recipients: list[dict]) -> list[str]:
    from dbmail.client import submit_request

    size = -(-len(recipients) // len(COHORTS))
    ids = []
    for n, (sendto, html) in enumerate(COHORTS):
        ids.append(
            submit_request(
                subject="[Splash 2026] Wëlcome, {{ user.first_name }} ✨",
                msgtext=HTML_BODY if html else TEXT_BODY,
                recipients=recipients[n * size : (n + 1) * size],
                sendto_fn_name=sendto,
                sender="Splash Directors <splash@example.org>",
                creator={"user_id": 1, "username": "admin", "email": "admin@example.org", "first_name": "Ada"},
                var_dict={"program": {"name": "Splash 2026", "startdate": "November 28"}},
                special_headers={"Reply-To": "splash@example.org", "X-ESP-Program": "splash-2026"},
            )
        )
    return ids


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


def run_demo(outbox: Path, timeout: float = 300) -> int:
    """Submit, wait, summarise; 0 only when every expected email was delivered and none lost."""
    before = set(outbox.glob("*.eml")) if outbox.is_dir() else set()
    started, started_wall = time.monotonic(), time.time()
    request_ids = submit_demo_requests(generate_recipients(RECIPIENTS))
    statuses = wait_until_settled(request_ids, outbox, before, timeout)
    wall = time.monotonic() - started
    new_files = sorted(set(outbox.glob("*.eml")) - before)

    recipients = sum(s["recipients"] for s in statuses)
    expanded = sum(s["emails"] for s in statuses)
    by_status: dict[str, int] = {}
    for s in statuses:
        for status, n in s["emails_by_status"].items():
            by_status[status] = by_status.get(status, 0) + n
    delivered = by_status.get("sent", 0)
    failed = by_status.get("failed", 0)
    lost = expanded - delivered - failed - by_status.get("expired", 0)
    ok = all(s["status"] == "processed" for s in statuses) and delivered == expanded and len(new_files) == delivered

    print()
    print("dbmail demo summary")
    print("-------------------")
    print(f"requested   {len(request_ids)} requests, {recipients} recipients")
    skipped = sum(s["skipped_no_address"] for s in statuses)
    print(f"expanded    {expanded} emails ({skipped} users had no address for their send-to function)")
    print(f"delivered   {delivered}")
    print(f"failed      {failed}")
    print(f"lost        {lost}")
    print(f"outbox      {len(new_files)} new .eml files")
    if new_files:
        first = min(path.stat().st_mtime for path in new_files) - started_wall
        print(f"latency     first email delivered {first:.1f} s after the first submit (the original: up to 15 min)")
    print(f"wall time   {wall:.1f} s (submit to last delivery)")
    print(f"throughput  {delivered / wall:.0f} emails/s")
    print(f"read mail   {outbox}/  e.g. {new_files[0].name if new_files else '-'}")
    print(f"result      {'OK: every email delivered, none lost' if ok else 'NOT OK'}")
    print()
    inbound_ok = run_inbound_demo(outbox)
    return 0 if ok and inbound_ok else 1
