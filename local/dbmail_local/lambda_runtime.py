"""Loads a template function's handler and invokes it the way the Lambda Python runtime does.

All functions share the runner's process: a function's module is imported once (its globals
live across invocations, like a warm Lambda environment), and SQS pollers may invoke the same
handler from several threads at once, so module-level state must be thread-safe (boto3
clients are).
"""

import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from .cfn import Template, TemplateError

log = logging.getLogger(__name__)

_import_lock = threading.Lock()  # os.environ and sys.path are process-wide while a module imports


class HandlerLoadError(Exception):
    """A handler module could not be imported or has no such handler function."""


class LambdaContext:
    """The context object of the Python runtime, as far as handlers and Powertools use it.

    Once the runner is asked to stop, ``get_remaining_time_in_millis`` returns 0 so a long
    handler saves its progress and returns early, as it would before a Lambda timeout.
    """

    def __init__(self, function: "LocalFunction", stopping: threading.Event, request_id: str | None = None) -> None:
        self.function_name = function.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = function.arn
        self.memory_limit_in_mb = str(function.memory_mb)  # a string, as in the real runtime
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function.name}"
        self.log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + function.timeout_s
        self._stopping = stopping

    def get_remaining_time_in_millis(self) -> int:
        if self._stopping.is_set():
            return 0
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class Invocation:
    """The outcome of one invocation: a JSON-shaped response, or the error Lambda would report."""

    request_id: str
    response: Any = None
    error: BaseException | None = None

    def failed_positions(self, identifiers: Sequence[str], partial_responses: bool) -> list[int]:
        """Positions of the batch's records that failed, by Lambda's rules.

        ``identifiers`` are the records' itemIdentifiers (SQS message ids, stream sequence
        numbers); ``partial_responses`` is whether ReportBatchItemFailures is on. An error fails
        every record. So does, with partial responses, a response that is not an object, an item
        without an identifier, or an identifier not in the batch. No response or an empty
        ``batchItemFailures`` fails none.
        """
        everything = list(range(len(identifiers)))
        if self.error is not None:
            return everything
        if not partial_responses or self.response is None:
            return []
        if not isinstance(self.response, dict):
            return everything
        reported: set[str] = set()
        for failure in self.response.get("batchItemFailures") or []:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not isinstance(identifier, str) or not identifier:
                return everything
            reported.add(identifier)
        if not reported.issubset(identifiers):
            return everything
        return [position for position, identifier in enumerate(identifiers) if identifier in reported]

    def response_context(self) -> dict[str, Any]:
        """The ``responseContext`` of Lambda's destination and on-failure records."""
        context: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if self.error is not None:
            context["functionError"] = "Unhandled"
        return context

    def response_payload(self) -> Any:
        """What Lambda reports as the response: the handler's, or the Python runtime's error object."""
        if self.error is None:
            return self.response
        frames = [frame for frame in traceback.extract_tb(self.error.__traceback__) if frame.filename != __file__]
        return {
            "errorMessage": str(self.error),
            "errorType": type(self.error).__name__,
            "requestId": self.request_id,
            "stackTrace": traceback.format_list(frames),
        }


class LocalFunction:
    """One AWS::Serverless::Function of the template, runnable in this process."""

    def __init__(self, template: Template, logical_id: str, stopping: threading.Event) -> None:
        properties = template.properties(logical_id)
        self.logical_id = logical_id
        self.name = template.physical_name(logical_id)
        self.arn = template.get_att(logical_id, "Arn")
        self.timeout_s = float(template.resolve(properties.get("Timeout", 3)))
        self.memory_mb = int(template.resolve(properties.get("MemorySize", 128)))
        self.environment = template.function_environment(logical_id)
        self._template_variables = function_variables(template)
        code_uri = template.resolve(properties.get("CodeUri"))
        handler = template.resolve(properties.get("Handler", ""))
        if not isinstance(code_uri, str) or "." not in handler:
            raise TemplateError(f"{logical_id}: the runner needs a local CodeUri and a module.function Handler")
        module, _, self.handler_name = handler.rpartition(".")
        self.code_dir = (template.base_dir / code_uri).resolve()
        self.module_path = self.code_dir / (module.replace(".", "/") + ".py")
        self.layer_dirs = _layer_python_dirs(template, properties.get("Layers", []))
        self._stopping = stopping
        self._handler: Callable[[Any, LambdaContext], Any] | None = None

    def load(self) -> None:
        """Imports the handler module under a unique name, with this function's environment.

        The import is the function's cold start: its own variables (template.yaml's, Globals
        included) are set and every other function's are hidden, so settings read at import see
        what Lambda would give it, and a variable its template lacks fails here. Like Lambda, the
        code directory and the layers' ``python`` directories come first on sys.path. Raises
        HandlerLoadError with the cause attached.
        """
        module_name = "dbmail_local_function_" + re.sub(r"\W", "_", self.logical_id)
        spec = importlib.util.spec_from_file_location(module_name, self.module_path)
        if spec is None or spec.loader is None or not self.module_path.is_file():
            raise HandlerLoadError(f"{self.logical_id}: no handler module at {self.module_path}")
        module = importlib.util.module_from_spec(spec)
        with _import_lock, temporary_environment(self.environment, hidden=self.hidden_variables()):
            for directory in reversed([self.code_dir, *self.layer_dirs]):
                if str(directory) not in sys.path:
                    sys.path.insert(0, str(directory))
            sys.modules[module_name] = module  # as an import would (dataclasses look it up)
            try:
                spec.loader.exec_module(module)
            except Exception as error:
                del sys.modules[module_name]
                raise HandlerLoadError(f"{self.logical_id}: importing {self.module_path} failed: {error!r}") from error
        self._handler = _handler_function(module, self.handler_name, self.logical_id)
        log.info("handler loaded", extra={"function": self.logical_id, "path": str(self.module_path)})

    def hidden_variables(self) -> set[str]:
        """What this function's import must not see: the other functions' variables, and any
        dbmail setting (DBMAIL_*, but not the runner's DBMAIL_LOCAL_*) the process inherited."""
        inherited = {name for name in os.environ if is_setting(name)}
        return (self._template_variables | inherited) - set(self.environment)

    def invoke(self, event: Any, request_id: str | None = None) -> Invocation:
        """Calls the handler; errors are logged with their traceback and returned, never raised.

        ``request_id`` is given by asynchronous invocations, whose retries keep their request id.
        """
        if self._handler is None:
            raise RuntimeError(f"{self.logical_id} is not loaded")
        context = LambdaContext(self, self._stopping, request_id)
        fields = {"function": self.logical_id, "request_id": context.aws_request_id}
        started = time.monotonic()
        try:
            response = json.loads(json.dumps(self._handler(event, context)))  # Lambda returns JSON
        except Exception as error:
            log.exception("handler failed", extra=fields)
            return Invocation(context.aws_request_id, error=error)
        elapsed = time.monotonic() - started
        if elapsed > self.timeout_s:
            log.error(
                "invocation ran past the function's Timeout; Lambda would have stopped it",
                extra={**fields, "seconds": round(elapsed, 3), "timeout": self.timeout_s},
            )
            return Invocation(
                context.aws_request_id, error=TimeoutError(f"Task timed out after {self.timeout_s} seconds")
            )
        log.info("invoked", extra={**fields, "ms": round(elapsed * 1000, 1)})
        return Invocation(context.aws_request_id, response=response)


def _layer_python_dirs(template: Template, layers: list[Any]) -> list[Path]:
    """The ``python`` directories of the template's own layers (Lambda's /opt/python).

    Only ``!Ref SomeLayer`` to an AWS::Serverless::LayerVersion with a local ContentUri has
    one; layers given by ARN are not available locally and are skipped.
    """
    directories = []
    own_layers = template.resources("AWS::Serverless::LayerVersion")
    for layer in layers:
        logical_id = layer.get("Ref") if isinstance(layer, dict) else None
        if logical_id not in own_layers:
            continue
        content = template.resolve(own_layers[logical_id].get("Properties", {}).get("ContentUri"))
        if isinstance(content, str):
            directories.append((template.base_dir / content / "python").resolve())
    return directories


def _handler_function(module: ModuleType, name: str, logical_id: str) -> Callable[[Any, LambdaContext], Any]:
    handler = getattr(module, name, None)
    if not callable(handler):
        raise HandlerLoadError(f"{logical_id}: {module.__file__} has no function {name}")
    return handler


def is_setting(name: str) -> bool:
    """A variable dbmail's settings read (DBMAIL_*), not one of the local stack's own (DBMAIL_LOCAL_*)."""
    return name.startswith("DBMAIL_") and not name.startswith("DBMAIL_LOCAL_")


def function_variables(template: Template) -> set[str]:
    """The names of every variable any of the template's functions is given."""
    return {
        name
        for logical_id in template.resources("AWS::Serverless::Function")
        for name in template.function_environment(logical_id)
    }


def shared_environment(template: Template) -> dict[str, str]:
    """The variables every function of the template is given, with the same value (Globals):
    the process that runs them all may have these, since no function lacks one."""
    environments = [
        template.function_environment(logical_id) for logical_id in template.resources("AWS::Serverless::Function")
    ]
    if not environments:
        return {}
    first, *others = environments
    return {name: value for name, value in first.items() if all(other.get(name) == value for other in others)}


@contextmanager
def temporary_environment(variables: Mapping[str, str], hidden: Iterable[str] = ()) -> Iterator[None]:
    """Temporarily sets ``variables`` in os.environ and removes ``hidden`` (a function's own
    values, and none of the other functions', while it imports)."""
    hidden = [name for name in hidden if name not in variables]
    saved = {name: os.environ.get(name) for name in [*variables, *hidden]}
    for name in hidden:
        os.environ.pop(name, None)
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
