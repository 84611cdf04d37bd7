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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dbmail.cli.files import read_env_file
from dbmail_local import stack
from dbmail_local.lambda_runtime import temporary_environment

T = TypeVar("T")


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
