"""Handlers are imported from functions/<name>/app.py exactly as Lambda would (each with its own
environment from template.yaml), and fed events/*.json."""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

from dbmail.core.clock import utcnow
from dbmail.core.statuses import RequestStatus
from dbmail.outgoing.store import Store
from dbmail_local.cfn import LocalTarget, Template
from dbmail_local.lambda_runtime import function_variables, is_setting, temporary_environment
from tests.conftest import ROOT, recipient

EXAMPLE_REQUEST = "example-request"


@lru_cache(maxsize=1)
def template() -> Template:
    """template.yaml as moto_stack resolves it (the same table names and queue URLs)."""
    return Template.load(target=LocalTarget(sqs_url="https://sqs.us-east-1.amazonaws.com"))


def logical_id(function: str) -> str:
    """The template's function whose code is functions/<function>/."""
    (found,) = (
        name
        for name in template().resources("AWS::Serverless::Function")
        if Path(template().resolve(template().properties(name)["CodeUri"])).name == function
    )
    return found


def load_module(function: str, environment: Mapping[str, str] | None = None):
    """Imports functions/<function>/app.py afresh, as a Lambda cold start does: with the
    function's own environment from template.yaml (or ``environment``) and none of the other
    functions' variables visible, since its settings are read at import."""
    path = ROOT / "functions" / function / "app.py"
    spec = importlib.util.spec_from_file_location(f"handler_{function}_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    own = template().function_environment(logical_id(function)) if environment is None else environment
    hidden = function_variables(template()) | {name for name in os.environ if is_setting(name)}
    with temporary_environment(own, hidden=hidden):
        spec.loader.exec_module(module)
    return module


def load_handler(function: str):
    return load_module(function).lambda_handler


def emitted_metrics(output: str) -> list[dict]:
    """The metrics of the EMF blobs in captured stdout, each as {namespace, name, value, dimensions}."""
    found = []
    for line in output.splitlines():
        try:
            blob = json.loads(line)
        except ValueError:
            continue
        if not isinstance(blob, dict) or "_aws" not in blob:
            continue
        (directive,) = blob["_aws"]["CloudWatchMetrics"]
        (dimensions,) = directive["Dimensions"]
        for metric in directive["Metrics"]:
            value = blob[metric["Name"]]
            found.append(
                {
                    "namespace": directive["Namespace"],
                    "name": metric["Name"],
                    "value": sum(value) if isinstance(value, list) else value,  # EMF allows a list
                    "dimensions": {name: blob[name] for name in dimensions},
                }
            )
    return found


@dataclass
class LambdaContext:
    function_name: str = "dbmail-test"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:dbmail-test"
    aws_request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    log_group_name: str = "/aws/lambda/dbmail-test"
    log_stream_name: str = "test"
    remaining_ms: int = 900_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def context():
    return LambdaContext()


def seed_example_request(store: Store, **overrides) -> None:
    """The request the sample events name, written as docs/schema.md says: recipients first."""
    models = store.models
    store.put_recipients(
        models.EmailRequest(request_id=EXAMPLE_REQUEST, recipient_key=f"u{i:010d}", **dict(recipient(i).items()))
        for i in (1, 2, 3)
    )
    fields = {
        "request_id": EXAMPLE_REQUEST,
        "status": RequestStatus.QUEUED,
        "created_at": utcnow(),
        "subject": "Welcome to {{ program.name }}, {{ user.first_name }}!",
        "msgtext": "<html><body><p>Dear {{ user.first_name }}</p></body></html>",
        "sendto_fn_name": "send_to_self",
        "sender": "Splash <splash@example.org>",
        "message_vars": {"program": {"name": "Splash"}},
        "recipient_count": 3,
    }
    fields.update(overrides)
    models.MessageRequest(**fields).save()
