"""Some of the template's functions, run in this process with their triggers, as the local runner
runs them all: the bench times and measures them without the other functions' work."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from dbmail.cli.files import read_env_file
from dbmail_local import DEFAULT_PARAMETERS, DEFAULT_TEMPLATE
from dbmail_local.cfn import LocalTarget, Template
from dbmail_local.function_urls import urls_from_env
from dbmail_local.lambda_runtime import Invocation, LocalFunction
from dbmail_local.runner import Runner, set_process_environment
from dbmail_local.stack import StatePaths, client_factory
from dbmail_local.triggers import RunnerSettings, Runtime


def stack_template(state: StatePaths) -> tuple[Template, dict[str, str]]:
    """The template resolved against the running stack, and stack.env."""
    env = read_env_file(state.env_file)
    client = client_factory(env)

    def stream_arn(table: str) -> str:
        return client("dynamodb").describe_table(TableName=table)["Table"]["LatestStreamArn"]

    target = LocalTarget(sqs_url=env["AWS_ENDPOINT_URL_SQS"], stream_arn=stream_arn)
    urls = urls_from_env(Template.load(DEFAULT_TEMPLATE, DEFAULT_PARAMETERS, target), env)
    return Template.load(DEFAULT_TEMPLATE, DEFAULT_PARAMETERS, replace(target, function_urls=urls)), env


def stack_runtime(state: StatePaths) -> Runtime:
    """The runner's view of the running stack, with the process environment set as the runner sets it."""
    template, env = stack_template(state)
    set_process_environment(template, env)
    return Runtime(template, client_factory(env), RunnerSettings.from_environ(), state, threading.Event())


def load_function(runtime: Runtime, logical_id: str, durations: dict[str, list[float]]) -> LocalFunction:
    """The function, imported, its invocations timed into ``durations[logical_id]`` (Lambda bills them)."""
    function = LocalFunction(runtime.template, logical_id, runtime.stopping)
    function.load()
    invoke, spent = function.invoke, durations.setdefault(logical_id, [])

    def timed_invoke(event: Any, request_id: str | None = None) -> Invocation:
        started = time.perf_counter()
        try:
            return invoke(event, request_id)
        finally:
            spent.append(time.perf_counter() - started)

    function.invoke = timed_invoke  # type: ignore[method-assign]
    return function


@contextmanager
def triggers_running(
    runtime: Runtime, logical_ids: list[str], durations: dict[str, list[float]]
) -> Iterator[list[str]]:
    """The triggers of those of ``logical_ids`` the template has, polling until the block ends
    (yields the functions run). The runner must not run them meanwhile: both would poll."""
    present = [name for name in logical_ids if name in runtime.template.resources("AWS::Serverless::Function")]
    functions = [load_function(runtime, name, durations) for name in present]
    triggers = Runner(runtime, "bench", ("127.0.0.1", 0)).triggers(functions)
    threads = [
        threading.Thread(target=trigger.run, daemon=True) for trigger in triggers for _ in range(trigger.concurrency)
    ]
    for thread in threads:
        thread.start()
    try:
        yield present
    finally:
        runtime.stopping.set()
        for thread in threads:
            thread.join()
