"""Integration fixtures: one fresh local stack per test session.

``local_stack`` starts DynamoDB Local, moto and the runner in a temporary state directory on
free ports, so it never meets a developer's ``make up``; it puts the stack's environment
(stack.env) into os.environ for the session and stops every process at the end, whatever
happened. The state directory (logs included) stays under pytest's temporary directory.

    def test_something(local_stack):
        sqs = local_stack.client("sqs")            # or plain boto3: os.environ points at the stack
        local_stack.env["DBMAIL_SEND_QUEUE_URL"]    # everything stack.env holds
        local_stack.outbox                          # .eml files of every email SES accepted
        local_stack.stop_runner(); local_stack.start_runner()
        local_stack.wait_for(lambda: list(local_stack.outbox.glob("*.eml")))
"""

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dbmail.cli.files import read_env_file
from dbmail.client import request_status
from dbmail.core.statuses import EmailStatus, RequestStatus
from dbmail_local import stack
from dbmail_local.lambda_runtime import temporary_environment

T = TypeVar("T")

# An email that got the mail: sent, and then, a few seconds later, delivered, once the stack's SES
# emulation has published its Delivery event and the feedback function has recorded it. Which of
# the two a test meets is a race; any other status after sent (bounced, complained) is not what
# an ordinary recipient gets, so a test that counts with got_mail still sees it.
GOT_MAIL = frozenset({EmailStatus.SENT, EmailStatus.DELIVERED})
GOT_MAIL_KEY = "sent|delivered"


@dataclass
class LocalStack:
    """The session's running stack."""

    state: stack.StatePaths
    env: dict[str, str]
    _client: Callable[[str], Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._client = stack.client_factory(self.env)

    @property
    def state_dir(self) -> Path:
        return self.state.root

    @property
    def outbox(self) -> Path:
        return self.state.outbox

    @property
    def runner_log(self) -> Path:
        return self.state.log_file(stack.RUNNER)

    def client(self, service: str) -> Any:
        """A boto3 client for the stack (cached; safe to share between threads)."""
        return self._client(service)

    def stop_runner(self, name: str = stack.RUNNER) -> str:
        """Stops a runner (SIGTERM, so in-flight invocations finish); "stopped" unless it had to be killed."""
        return stack.stop_runner(self.state, name=name)

    def start_runner(self, name: str = stack.RUNNER, **options: Any) -> int:
        """Starts a runner and waits until its triggers run; options as for stack.start_runner."""
        return stack.start_runner(self.state, name=name, **options)

    @staticmethod
    def wait_for(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.1) -> T:
        """Polls ``condition`` until it returns something truthy (returned); fails the test on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"condition not met within {timeout} s: {getattr(condition, '__name__', condition)}")
            time.sleep(interval)


def got_mail(emails_by_status: Mapping[str, int]) -> dict[str, int]:
    """``emails_by_status`` (request_status's) with the sent and the delivered emails counted as
    one, under GOT_MAIL_KEY ("sent|delivered"), absent when there are none; every other status
    keeps its own count. The total is unchanged, so counts still reconcile exactly."""
    counts = Counter({status: count for status, count in emails_by_status.items() if status not in GOT_MAIL})
    got = sum(count for status, count in emails_by_status.items() if status in GOT_MAIL)
    if got:
        counts[GOT_MAIL_KEY] = got
    return dict(counts)


def wait_delivered(local_stack: LocalStack, request_id: str, timeout: float = 120) -> dict:
    """request_status once the request is final (failed, expired) or processed with every email
    final (sent, delivered, bounced, ..., failed, expired); fails the test on timeout."""

    def settled():
        status = request_status(request_id)
        if status["status"] in (RequestStatus.FAILED, RequestStatus.EXPIRED):
            return status
        done = status["status"] == RequestStatus.PROCESSED and set(status["emails_by_status"]) <= EmailStatus.FINAL
        return status if done else None

    return local_stack.wait_for(settled, timeout=timeout, interval=0.5)


@pytest.fixture(scope="module")
def store(local_stack):
    """dbmail's Store on the stack (settings read once per process, so the caches are reset)."""
    from dbmail.core import models, settings
    from dbmail.outgoing.store import Store

    settings.website_settings.cache_clear()
    models.bind_models.cache_clear()
    yield Store(settings.website_settings())
    settings.website_settings.cache_clear()
    models.bind_models.cache_clear()


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = stack.StatePaths(tmp_path_factory.mktemp("dbmail-local"))
    try:
        stack.up(state, dynamodb_port=0, moto_port=0, smtp_port=0)
        env = read_env_file(state.env_file)
        with temporary_environment(env):
            yield LocalStack(state, env)
    finally:
        stack.down(state)
