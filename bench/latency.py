"""First delivery on the running local stack: a 1-recipient request written by the website
client until its email is in the outbox (SES accepted it). Its floor, the bare stream, is in
bench/floors.py."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from dbmail.client import submit_request

POLL_SECONDS = 0.005
TIMEOUT_SECONDS = 30.0


def _new_outbox_file_with(outbox: Path, seen: set[str], marker: bytes, deadline: float) -> bool:
    while time.perf_counter() < deadline:
        with os.scandir(outbox) as entries:
            fresh = [entry.path for entry in entries if entry.name.endswith(".eml") and entry.name not in seen]
        for path in fresh:
            seen.add(os.path.basename(path))
            if marker in Path(path).read_bytes():
                return True
        time.sleep(POLL_SECONDS)
    return False


def first_delivery(outbox: Path, writes: int, body: str) -> list[float]:
    """Seconds from each request write to its .eml, one request at a time (None-free: a request
    not delivered within TIMEOUT_SECONDS raises)."""
    seen = {entry.name for entry in os.scandir(outbox)}
    seconds = []
    for n in range(writes):
        marker = uuid.uuid4().hex
        started = time.perf_counter()
        submit_request(
            subject=f"bench first delivery {marker}",
            msgtext=body,
            recipients=[{"user_id": n + 1, "username": f"latency{n}", "email": f"latency{n}@students.example.net"}],
            sender="Splash <splash@example.org>",
        )
        if not _new_outbox_file_with(outbox, seen, marker.encode(), started + TIMEOUT_SECONDS):
            raise TimeoutError(f"a 1-recipient request was not delivered within {TIMEOUT_SECONDS} s")
        seconds.append(time.perf_counter() - started)
    return seconds
