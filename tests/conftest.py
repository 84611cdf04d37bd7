"""Shared fixtures: an in-process moto account whose tables and queues are built from template.yaml."""

from __future__ import annotations

import copy
import json
import os
import threading
import uuid
from email import policy
from email.message import EmailMessage
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import boto3
import botocore.loaders
import botocore.session
import pytest
from hypothesis import settings as hypothesis_settings
from moto import mock_aws
from moto.core.base_backend import BackendDict
from moto.sqs.models import sqs_backends

from dbmail import wiring
from dbmail.core import models, secrets, settings
from dbmail.outgoing.store import Store

# Property tests draw the same examples on every run, so a red CI is reproducible; set
# HYPOTHESIS_RANDOM=1 to explore new ones.
hypothesis_settings.register_profile("deterministic", derandomize=True)
hypothesis_settings.register_profile("random", derandomize=False)
hypothesis_settings.load_profile("random" if os.environ.get("HYPOTHESIS_RANDOM") else "deterministic")


class _SearchPaths(list):
    """boto3 adds its data directory to each new session's loader: a shared loader needs it once."""

    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


@cache
def _shared_loader(search_path_string: str | None = None) -> botocore.loaders.Loader:
    """One botocore loader for every session in the process. The code under test makes a session
    per client, and each new session would read and parse the same service models again (most of
    a client's creation time); the files do not change, and a loader only caches what it read."""
    loader = botocore.loaders.create_loader(search_path_string)
    loader._search_paths = _SearchPaths(loader.search_paths)
    return loader


botocore.session.create_loader = _shared_loader


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


# What moto holds, service by service: the live BackendDict with its backends by account and region.
BackendState = list[tuple[BackendDict, dict[str, dict[str, object]]]]


def _copied(state: BackendState) -> BackendState:
    """A deep copy of the backends, taken in one go so that what refers to another resource (a
    queue's dead-letter queue) refers to its copy. An SQS queue's Condition (for long polls)
    cannot be copied: each copy gets a new one."""
    memo = {
        id(queue._messages_lock): threading.Condition()
        for backends, accounts in state
        if backends is sqs_backends
        for regions in accounts.values()
        for backend in regions.values()
        for queue in backend.queues.values()
    }
    accounts = copy.deepcopy([accounts for _, accounts in state], memo)
    return [(backends, copied) for (backends, _), copied in zip(state, accounts, strict=True)]


def _template():
    """template.yaml with moto's queue URLs."""
    from dbmail_local.cfn import LocalTarget, Template

    return Template.load(target=LocalTarget(sqs_url="https://sqs.us-east-1.amazonaws.com"))


@cache
def _created_stack() -> BackendState:
    """The backends of a freshly created stack, built once per process (creating it costs most of
    a second; copying it, milliseconds). Called with the stack's environment set."""
    from dbmail_local.resources import create_resources

    with mock_aws():
        create_resources(_template())
        live = [
            (backends, {account: dict(regions) for account, regions in backends.items()})
            for backends in BackendDict._instances
        ]
        return _copied(live)


def _restore(state: BackendState) -> None:
    """Puts a copy of ``state`` into moto (just reset by mock_aws): each test gets its own."""
    for backends, accounts in _copied(state):
        for account, regions in accounts.items():
            backends[account].update(regions)


@pytest.fixture
def moto_stack(monkeypatch):
    """The template's tables, queues and SES identities in moto, with the stack's environment set
    (every function's variables, as in stack.env); ``settings`` are the website's. Each test starts
    from its own copy of a freshly created stack."""
    from dbmail_local.ses_quota import report_quota

    report_quota(None)  # SES's GetAccount, which moto lacks, as the stack's moto answers it: no limit
    # moto's PartiQL parser takes neither OR nor several SET clauses: here a batch's claims and
    # records of sends are left to their one-by-one path, as a statement DynamoDB did not run
    # is (the statements themselves run on DynamoDB Local: tests/integration/test_outgoing.py)
    monkeypatch.setattr(
        Store, "_run_statements", lambda self, statement, entries: dict.fromkeys(entries, {"Error": {"Code": "moto"}})
    )
    for name in list(os.environ):
        if name.startswith(("AWS_ENDPOINT_URL", "DBMAIL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "dbmail")
    created = _created_stack()
    with mock_aws():
        _restore(created)
        template = _template()
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
