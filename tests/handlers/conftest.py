"""Handlers are imported from functions/<name>/app.py exactly as Lambda would, and fed events/*.json."""

from __future__ import annotations

import importlib.util
import uuid
from dataclasses import dataclass, field

import pytest

from dbmail.core.clock import utcnow
from dbmail.core.statuses import RequestStatus
from dbmail.outgoing.store import Store
from tests.conftest import ROOT, recipient

EXAMPLE_REQUEST = "example-request"


def load_handler(function: str):
    path = ROOT / "functions" / function / "app.py"
    spec = importlib.util.spec_from_file_location(f"handler_{function}_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


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
