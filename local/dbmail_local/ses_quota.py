"""SES's sending quota for the local moto (the stack's server, and moto in a test's process).

SES v2 GetAccount and v1 GetSendQuota report the account's MaxSendRate, as SES does: the rate
given in DBMAIL_LOCAL_SES_MAX_RATE (emails per second), or -1 without one (SES's "unlimited";
moto itself would say 1). With a rate, sends above it are refused as SES refuses them: v2
SendEmail with HTTP 429 TooManyRequestsException, v1 SendEmail and SendRawEmail with 400
Throttling, "Maximum sending rate exceeded.", nothing sent. SES allows short bursts over its
rate; here that is a token bucket of rate R and burst R. Every recipient named counts (at least
one per send). The server writes what it admitted and refused to ``ses_rate.json`` in the
stack's state directory (``read_counts``), so a test can tell that no send was throttled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from moto.core.exceptions import ServiceException
from moto.ses.models import SESBackend, SESQuota
from moto.ses.responses import EmailResponse
from moto.sesv2 import urls as sesv2_urls
from moto.sesv2.responses import SESV2Response

from .stack import write_atomically

log = logging.getLogger("dbmail_local.ses_quota")

Handler = Callable[[Any], Any]  # a moto response method: the response object in, the answer out
RATE_VARIABLE = "DBMAIL_LOCAL_SES_MAX_RATE"
COUNTS_FILE = "ses_rate.json"
UNLIMITED = -1.0  # what SES reports for a quota without a limit
THROTTLED_MESSAGE = "Maximum sending rate exceeded."


def rate_from_env(env: Mapping[str, str] = os.environ) -> float | None:
    """DBMAIL_LOCAL_SES_MAX_RATE as emails per second; None when unset or empty (no limit)."""
    raw = env.get(RATE_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        rate = float(raw)
    except ValueError:
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{RATE_VARIABLE} must be a number of emails per second above 0, not {raw!r}")
    return rate


class SesRateLimit:
    """SES's quota as a token bucket of ``rate`` per second and burst ``rate``; thread-safe.
    With ``counts``, each decision is written there (admitted and refused so far)."""

    def __init__(self, rate: float, counts: Path | None = None, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.accepted = 0
        self.throttled = 0
        self._counts = counts
        self._clock = clock
        self._tokens = rate
        self._at = clock()
        self._lock = threading.Lock()
        self._write()

    def admit(self, recipients: int = 1) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
            self._at = now
            admitted = self._tokens >= recipients
            if admitted:
                self._tokens -= recipients
                self.accepted += 1
            else:
                self.throttled += 1
            self._write()
        if not admitted:
            log.warning("SES send throttled", extra={"max_send_rate": self.rate, "throttled": self.throttled})
        return admitted

    def _write(self) -> None:
        if self._counts is not None:
            counts = {"max_send_rate": self.rate, "accepted": self.accepted, "throttled": self.throttled}
            write_atomically(self._counts, json.dumps(counts) + "\n")


def read_counts(state_root: Path) -> dict[str, Any]:
    """What the stack's SES admitted and refused (``max_send_rate``, ``accepted``, ``throttled``);
    all zero, rate None, when it runs without a rate."""
    path = state_root / COUNTS_FILE
    if not path.is_file():
        return {"max_send_rate": None, "accepted": 0, "throttled": 0}
    return json.loads(path.read_text(encoding="utf-8"))


class Throttling(ServiceException):
    """SES v1's answer to a send above the account's rate (HTTP 400, a sender fault)."""

    code = "Throttling"
    message = THROTTLED_MESSAGE


def report_quota(rate: float | None) -> None:
    """GetAccount (v2, which moto lacks) and GetSendQuota (v1) report ``rate`` (None: -1).
    Idempotent: each call replaces the last one's answer."""
    reported = UNLIMITED if rate is None else rate
    daily = UNLIMITED if rate is None else rate * 86_400

    def get_send_quota(self: SESBackend) -> SESQuota:
        quota = SESQuota(self.sent_message_count)
        quota.max_send_rate, quota.max24_hour_send = reported, daily
        return quota

    def get_account(self: SESV2Response) -> str:
        sent = self.sesv2_backend.core_backend.sent_message_count
        quota = {"Max24HourSend": daily, "MaxSendRate": reported, "SentLast24Hours": float(sent)}
        return json.dumps(
            {
                "SendQuota": quota,
                "SendingEnabled": True,
                "ProductionAccessEnabled": True,
                "DedicatedIpAutoWarmupEnabled": False,
                "EnforcementStatus": "HEALTHY",
            }
        )

    SESBackend.get_send_quota = get_send_quota  # type: ignore[method-assign]
    SESV2Response.get_account = get_account  # type: ignore[attr-defined]
    # moto's server routes each url path literally, and has none for GET /v2/email/account
    sesv2_urls.url_paths.setdefault("{0}/v2/email/account$", SESV2Response.dispatch)


def _v2_recipients(response: SESV2Response) -> int:
    destination = json.loads(response.body or "{}").get("Destination") or {}
    return max(1, sum(len(destination.get(key) or []) for key in ("ToAddresses", "CcAddresses", "BccAddresses")))


def _v1_recipients(response: EmailResponse) -> int:
    explicit = response._get_param("Destinations", []) or []
    destination = response._get_param("Destination", {}) or {}
    listed = sum(len(destination.get(key) or []) for key in ("ToAddresses", "CcAddresses", "BccAddresses"))
    return max(1, len(explicit) + listed)


def wrap_ses_sends(v2: Callable[[Handler], Handler], v1: Callable[[Handler], Handler]) -> None:
    """Replaces moto's SES v2 SendEmail response handler with ``v2(handler)``, and v1's
    SendEmail and SendRawEmail handlers with ``v1(handler)`` (under their names: moto
    dispatches by name)."""
    for cls, name, wrap in (
        (SESV2Response, "send_email", v2),
        (EmailResponse, "send_email", v1),
        (EmailResponse, "send_raw_email", v1),
    ):
        handler = getattr(cls, name)
        wrapped = wrap(handler)
        wrapped.__name__ = handler.__name__
        setattr(cls, name, wrapped)


def limit_send_rate(limit: SesRateLimit) -> None:
    """Refuses SES v2 and v1 sends above ``limit``'s rate before anything is sent."""
    # SES's model has no shape for v1's Throttling (a common AWS error); moto warns on each one
    warnings.filterwarnings("ignore", message=r"Exception\(Throttling\)", category=UserWarning)

    def v2(handler: Handler) -> Handler:
        def send(self: SESV2Response) -> Any:
            if limit.admit(_v2_recipients(self)):
                return handler(self)
            headers = {
                "status": 429,
                "Content-Type": "application/json",
                "x-amzn-ErrorType": "TooManyRequestsException",
            }
            return json.dumps({"message": THROTTLED_MESSAGE}), headers

        return send

    def v1(handler: Handler) -> Handler:
        def send(self: EmailResponse) -> Any:
            if not limit.admit(_v1_recipients(self)):
                raise Throttling()
            return handler(self)

        return send

    wrap_ses_sends(v2, v1)
