"""Shared fixtures: an in-process moto account whose tables and queues are built from template.yaml."""

from __future__ import annotations

import json
import os
import uuid
from email import policy
from email.message import EmailMessage
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from hypothesis import settings as hypothesis_settings
from moto import mock_aws

from dbmail import wiring
from dbmail.core import models, secrets, settings
from dbmail.outgoing.store import Store

# Property tests draw the same examples on every run, so a red CI is reproducible; set
# HYPOTHESIS_RANDOM=1 to explore new ones.
hypothesis_settings.register_profile("deterministic", derandomize=True)
hypothesis_settings.register_profile("random", derandomize=False)
hypothesis_settings.load_profile("random" if os.environ.get("HYPOTHESIS_RANDOM") else "deterministic")

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"


def load_event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def clear_caches() -> None:
    """Settings and services are built once per process; each test gets fresh ones."""
    settings.website_settings.cache_clear()
    function_settings.cache_clear()
    models.bind_models.cache_clear()
    wiring.clear()
    secrets.clear()


@cache
def function_settings(function: str) -> settings.Settings:
    """A function's settings, read once from the environment as its cold start reads them (the
    services wiring builds from them are the function's)."""
    return settings.Settings.for_function(function)


@pytest.fixture
def moto_stack(monkeypatch):
    """The template's tables, queues and SES identities in moto, with the stack's environment set
    (every function's variables, as in stack.env); ``settings`` are the website's."""
    from dbmail_local.cfn import LocalTarget, Template
    from dbmail_local.resources import create_resources
    from dbmail_local.ses_quota import report_quota

    report_quota(None)  # SES's GetAccount, which moto lacks, as the stack's moto answers it: no limit
    # moto's PartiQL parser takes neither OR nor several SET clauses: here a batch's claims and
    # records of sends are left to their one-by-one path, as a statement DynamoDB did not run
    # is (the statements themselves run on DynamoDB Local: tests/integration/test_outgoing.py)
    monkeypatch.setattr(Store, "_run_statements", lambda self, statement, entries: dict.fromkeys(entries, "moto"))
    for name in list(os.environ):
        if name.startswith(("AWS_ENDPOINT_URL", "DBMAIL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "dbmail")
    with mock_aws():
        template = Template.load(target=LocalTarget(sqs_url="https://sqs.us-east-1.amazonaws.com"))
        create_resources(template)
        for name, value in template.environment().items():
            monkeypatch.setenv(name, value)
        clear_caches()
        stack = SimpleNamespace(
            template=template,
            settings=settings.website_settings(),
            sqs=boto3.client("sqs", region_name="us-east-1"),
            dlq_url=template.queue_url(template.physical_name("SendDeadLetterQueue")),
        )
        yield stack
        clear_caches()


def recipient(i: int, **overrides) -> dict:
    """A small factory of website users."""
    user = {
        "user_id": i,
        "username": f"user{i}",
        "email": f"user{i}@example.net",
        "first_name": "Zoë",
        "last_name": f"Ng{i}",
        "guardian_name": f"Mai Ng{i}",
        "guardian_email": f"guardian{i}@example.net",
    }
    user.update(overrides)
    return user


def drain(sqs, queue_url: str) -> list[dict]:
    """Every message currently on a queue (received, not deleted)."""
    messages = []
    while True:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]).get(
            "Messages", []
        )
        if not batch:
            return messages
        messages.extend(batch)


DIRECTORY = {
    "users": [
        {
            "username": "tcher",
            "email": "teacher@example.net",
            "first_name": "Tea",
            "last_name": "Cher",
            "is_teacher": True,
        },
        {"username": "kid", "email": "kid@example.net", "first_name": "Ki", "last_name": "D"},
        {"username": "parent", "email": "parent@example.net", "first_name": "Pa", "last_name": "Rent"},
    ],
    "classes": [
        {
            "class_id": 1234,
            "emailcode": "E1234",
            "program_name": "Splash 2026",
            "directors_email": "directors@example.org",
            "teachers": [{"name": "Tea Cher", "email": "teacher@example.net"}],
            "sections": [
                {"index": 1, "emailcode": "E1234s1", "students": [{"name": "Stu One", "email": "s1@example.net"}]},
                {"index": 2, "emailcode": "E1234s2", "students": [{"name": "Stu Two", "email": "s2@example.net"}]},
            ],
        }
    ],
}


def inbound_message(
    sender='"Pa Rent" <parent@example.net>',
    to="E1234-class@example.org",
    subject="Field trip",
    body="Hello all",
    **headers,
) -> bytes:
    msg = EmailMessage()
    if sender:
        msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@mail.example.net>"
    msg["DKIM-Signature"] = "v=1; a=rsa-sha256; d=example.net; b=abc"
    msg["Return-Path"] = "<parent@example.net>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes(policy=policy.SMTP)


# ---- the Django conformance count (tests/unit/test_django_conformance.py) ----------------------
# Counted from the reports, so it is right under pytest-xdist too (the controller sees every report).
_CONFORMANCE_TEST = "test_django_conformance.py::test_the_template_renders_as_django_renders_it["
_conformance: dict[str, bool] = {}


def pytest_runtest_logreport(report):
    if _CONFORMANCE_TEST in report.nodeid and (report.when == "call" or report.failed):
        _conformance[report.nodeid] = _conformance.get(report.nodeid, True) and report.passed


def pytest_terminal_summary(terminalreporter):
    if _conformance:
        matched = sum(_conformance.values())
        terminalreporter.write_line(f"{matched}/{len(_conformance)} templates match Django")
