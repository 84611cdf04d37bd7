"""The runner: Lambda's part of the local stack. It runs each AWS::Serverless::Function of the
template with the triggers its Events give it (DynamoDB streams, SQS queues, schedules).

Trigger kinds are looked up by event Type in TRIGGER_KINDS, and each runs in its own threads
(see triggers.py for what a trigger is). SES's part comes from the template's
AWS::SES::ReceiptRule resources: if there are any, the runner listens for SMTP on loopback
(ses_receiving.py) before it reports ready, and each function a rule's LambdaAction names gets
an asynchronous event queue (async_invoke.py), worked off like a trigger. Each function with a
FunctionUrlConfig is served over HTTP on loopback at stack.env's URL for it (function_urls.py).

A function whose handler does not import is logged and left out; the others run. On SIGTERM
or SIGINT the runner stops listening for SMTP, tells in-flight invocations that no time is left
(``get_remaining_time_in_millis() == 0``), lets them finish, and exits with its stream
checkpoints and queued asynchronous events saved.
"""

import logging
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from dbmail.cli.files import read_env_file

from . import logs
from .async_invoke import AsyncInvoker
from .cfn import LocalTarget, Template, TemplateError, as_bool
from .function_urls import url_servers, urls_from_env
from .lambda_runtime import HandlerLoadError, LocalFunction, function_variables, is_setting, shared_environment
from .schedule import ScheduleTrigger
from .ses_receiving import LambdaAction, SmtpFront, receipt_rules
from .sqs import SqsTrigger
from .stack import DEFAULT_SMTP_PORT, HOST, StatePaths, client_factory, running_pid
from .streams import StreamTrigger
from .triggers import RunnerSettings, Runtime, Trigger, TriggerKind

log = logging.getLogger(__name__)

TRIGGER_KINDS: dict[str, TriggerKind] = {
    "DynamoDB": StreamTrigger,
    "SQS": SqsTrigger,
    "Schedule": ScheduleTrigger,
    "ScheduleV2": ScheduleTrigger,
}
RESTART_DELAY = 1.0  # seconds before a crashed poller starts again


class Runner:
    def __init__(self, runtime: Runtime, name: str, smtp_address: tuple[str, int]) -> None:
        self.runtime = runtime
        self.name = name
        self.smtp_address = smtp_address

    def functions(self) -> list[LocalFunction]:
        """Every function whose handler loads; the others are logged and left out."""
        template = self.runtime.template
        functions = []
        for logical_id in template.resources("AWS::Serverless::Function"):
            try:
                function = LocalFunction(template, logical_id, self.runtime.stopping)
                function.load()
            except (HandlerLoadError, TemplateError) as error:
                log.error(
                    "function left out: its handler could not be loaded",
                    extra={"function": logical_id, "error": str(error)},
                    exc_info=error.__cause__ or error,
                )
                continue
            functions.append(function)
        return functions

    def triggers(self, functions: list[LocalFunction]) -> list[Trigger]:
        """The triggers of the functions' Events; events that cannot be set up are logged."""
        triggers: list[Trigger] = []
        for function in functions:
            events = self.runtime.template.properties(function.logical_id).get("Events", {})
            for event_name, event in events.items():
                trigger = self._trigger(function, event_name, event)
                if trigger is not None:
                    triggers.append(trigger)
        return triggers

    def smtp_front(self, functions: list[LocalFunction]) -> tuple[SmtpFront | None, list[AsyncInvoker]]:
        """The SMTP front for the template's receipt rules (None without any) and its event queues."""
        try:
            rules = receipt_rules(self.runtime.template)
        except TemplateError as error:
            log.error("SES receipt rules left out: they could not be read", extra={"error": str(error)})
            return None, []
        if not rules:
            return None, []
        by_arn = {function.arn: function for function in functions}
        invokers: dict[str, AsyncInvoker] = {}
        for rule in rules:
            for action in rule.actions:
                if not isinstance(action, LambdaAction) or action.function_arn in invokers:
                    continue
                fields = {"rule": rule.name, "function_arn": action.function_arn}
                if action.function_arn not in by_arn:
                    log.error("receipt rule's Lambda action left out: the runner has no such function", extra=fields)
                    continue
                if action.invocation_type != "Event":
                    log.warning("receipt rule's RequestResponse invocation runs as Event locally", extra=fields)
                try:
                    invokers[action.function_arn] = AsyncInvoker(by_arn[action.function_arn], self.runtime)
                except (TemplateError, ClientError) as error:
                    log.error("receipt rule's Lambda action left out", extra={**fields, "error": str(error)})
        host, port = self.smtp_address
        return SmtpFront(rules, invokers, self.runtime, host, port), list(invokers.values())

    def _trigger(self, function: LocalFunction, event_name: str, event: dict[str, Any]) -> Trigger | None:
        fields = {"function": function.logical_id, "event": event_name, "type": event["Type"]}
        kind = TRIGGER_KINDS.get(event["Type"])
        if kind is None:
            log.warning("event type not run locally", extra=fields)
            return None
        try:
            properties = self.runtime.template.resolve(event.get("Properties", {}))
            if not as_bool(properties.get("Enabled", True)) or properties.get("State") == "DISABLED":
                log.info("event disabled in the template", extra=fields)
                return None
            return kind(function, event_name, properties, self.runtime)
        except (TemplateError, ValueError, ClientError) as error:
            log.error("event left out: its trigger could not be set up", extra={**fields, "error": str(error)})
            return None

    def run(self) -> int:
        stopping = self.runtime.stopping
        functions = self.functions()
        front, invokers = self.smtp_front(functions)
        http_servers = url_servers(self.runtime.template, functions)
        threads = [
            threading.Thread(target=self._keep_running, args=(trigger,), name=f"{trigger.name}#{n}", daemon=True)
            for trigger in [*self.triggers(functions), *invokers]
            for n in range(trigger.concurrency)
        ]
        if front is not None:
            try:
                front.start()
            except OSError as error:
                log.error("cannot listen for SMTP; is another runner on that port?", extra={"error": str(error)})
                return 1
        for server in http_servers:
            server.start()
        for thread in threads:
            thread.start()
        ready = self.runtime.state.ready_file(self.name)
        ready.write_text(f"{os.getpid()}\n")
        log.info("runner ready", extra={"runner": self.name, "threads": [thread.name for thread in threads]})
        try:
            while not stopping.wait(0.5):
                pass
            log.info("stopping: in-flight invocations see no time left and finish")
            if front is not None:
                front.stop()
            for server in http_servers:
                server.stop()
            for thread in threads:
                thread.join()
        finally:
            ready.unlink(missing_ok=True)
        log.info("runner stopped", extra={"runner": self.name})
        return 0

    def _keep_running(self, trigger: Trigger) -> None:
        """Runs a trigger until the runner stops; a poller that crashes is logged and restarted."""
        while not self.runtime.stopping.is_set():
            try:
                trigger.run()
            except Exception:
                log.exception("poller crashed; restarting it", extra={"trigger": trigger.name, "in_s": RESTART_DELAY})
                self.runtime.stopping.wait(RESTART_DELAY)


def set_process_environment(template: Template, stack_env: Mapping[str, str]) -> None:
    """os.environ of the process all functions share: stack.env's stack-wide variables (the AWS
    endpoints, credentials and region; DBMAIL_LOCAL_*) and what every function is given alike
    (Globals), but no variable that only some functions are given and no other dbmail setting,
    inherited or from stack.env (its union of them is for clients). Each function gets its own
    while it imports (LocalFunction.load), so one whose template lacks a variable fails as in
    Lambda."""
    per_function = function_variables(template)
    for name in [*per_function, *filter(is_setting, os.environ)]:
        os.environ.pop(name, None)
    os.environ.update(
        {name: value for name, value in stack_env.items() if name not in per_function and not is_setting(name)}
    )
    os.environ.update(shared_environment(template))


def main(state: StatePaths, template_path: Path, parameter_file: Path, name: str, smtp_port: int | None = None) -> int:
    """``python -m dbmail_local runner``: runs in the foreground until SIGTERM or Ctrl-C.

    The SMTP front listens on ``smtp_port``, by default stack.env's DBMAIL_LOCAL_SMTP_PORT.
    """
    logs.configure(json_lines=True)
    other = running_pid(state, name)
    if other is not None and other != os.getpid():
        log.error(
            "a runner with this name already runs; stop it first or pick another --name",
            extra={"runner": name, "pid": other},
        )
        return 1
    if not state.env_file.is_file():
        log.error("the local stack is not up (no stack.env)", extra={"env_file": str(state.env_file)})
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    settings = RunnerSettings.from_environ()
    env = read_env_file(state.env_file)
    client = client_factory(env)

    def stream_arn(table: str) -> str:
        return client("dynamodb").describe_table(TableName=table)["Table"]["LatestStreamArn"]

    target = LocalTarget(sqs_url=env["AWS_ENDPOINT_URL_SQS"], stream_arn=stream_arn)
    urls = urls_from_env(Template.load(template_path, parameter_file, target), env)  # the ports `up` chose
    template = Template.load(template_path, parameter_file, replace(target, function_urls=urls))
    set_process_environment(template, env)
    smtp_address = (
        env.get("DBMAIL_LOCAL_SMTP_HOST", HOST),
        smtp_port if smtp_port is not None else int(env.get("DBMAIL_LOCAL_SMTP_PORT", DEFAULT_SMTP_PORT)),
    )
    pid_file = state.pid_file(name)  # a runner started in a terminal is known to `down` too
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        return Runner(Runtime(template, client, settings, state, stopping), name, smtp_address).run()
    finally:
        if running_pid(state, name) == os.getpid():
            pid_file.unlink()
