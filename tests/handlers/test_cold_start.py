"""A function's settings are read at its cold start from its own environment, as template.yaml
gives it: a variable it needs and lacks stops the cold start, named, in Lambda as in the local
runner (which runs every function in one process, but never with another function's variables)."""

import copy
import json
import os
import threading
from types import SimpleNamespace
from unittest import mock

import pytest

from dbmail.core.errors import ConfigurationError
from dbmail.core.settings import ENVIRONMENT
from dbmail_local.cfn import DEFAULT_PARAMETERS, LocalTarget, Template
from dbmail_local.lambda_runtime import HandlerLoadError, LocalFunction
from dbmail_local.runner import Runner, set_process_environment
from tests.handlers.conftest import load_module, logical_id, template

FUNCTIONS = (
    "expand",
    "expand_chunk",
    "send",
    "expire",
    "inbound",
    "feedback",
    "unsubscribe",
    "sendgrid_events",
    "archive",
)


def without(function: str, variable: str) -> Template:
    """template.yaml, with ``variable`` taken out of one function's Environment."""
    body = copy.deepcopy(template().body)
    del body["Resources"][logical_id(function)]["Properties"]["Environment"]["Variables"][variable]
    return Template(
        body,
        path=template().path,
        parameters=json.loads(DEFAULT_PARAMETERS.read_text()),
        target=LocalTarget(sqs_url="https://sqs.us-east-1.amazonaws.com"),
    )


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_starts_with_its_own_template_environment_alone(function, moto_stack):
    # given a process that has no dbmail variable at all (and the stack's secrets in Secrets Manager)
    with mock.patch.dict(os.environ, {n: v for n, v in os.environ.items() if not n.startswith("DBMAIL_")}, clear=True):
        # when the handler is imported with the environment template.yaml gives its function
        module = load_module(function)
    # then its settings are that function's, read from it
    own = template().function_environment(logical_id(function))
    assert module.settings.function == function
    assert {name for name in own if name.startswith("DBMAIL_")} <= set(ENVIRONMENT[function])


@pytest.mark.parametrize(
    ("function", "variable"),
    [
        ("send", "DBMAIL_EMAIL_TABLE"),
        ("send", "DBMAIL_UNSUBSCRIBE_SECRET_ARN"),
        ("expand", "DBMAIL_RECIPIENT_TABLE"),
        ("expire", "DBMAIL_STRANDED_AFTER_SECONDS"),
        ("inbound", "DBMAIL_DIRECTORY_TABLE"),
    ],
)
def test_the_runner_fails_a_cold_start_that_lacks_a_variable_and_names_it(function, variable):
    # given a template whose function lacks a variable its settings read, which other functions
    # of the same process may well have (and the runner's own environment too)
    broken = without(function, variable)
    # when the runner loads it
    with mock.patch.dict(os.environ, {variable: "inherited-by-the-runner"}), pytest.raises(HandlerLoadError) as raised:
        LocalFunction(broken, logical_id(function), threading.Event()).load()
    # then its cold start failed with a ConfigurationError naming the variable
    cause = raised.value.__cause__
    assert isinstance(cause, ConfigurationError)
    assert variable in str(cause) and f"the {function} function's environment" in str(cause)


def test_the_runner_leaves_out_the_function_that_cannot_start_and_runs_the_others(caplog, moto_stack):
    # given the send function without its email table
    broken = without("send", "DBMAIL_EMAIL_TABLE")
    runner = Runner(SimpleNamespace(template=broken, stopping=threading.Event()), "test", ("127.0.0.1", 0))
    # when the runner loads its functions
    functions = runner.functions()
    # then all the others run, and the log says why send does not
    others = set(broken.resources("AWS::Serverless::Function")) - {"SendFunction"}
    assert sorted(f.logical_id for f in functions) == sorted(others)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("function left out")]
    assert record.function == "SendFunction" and "DBMAIL_EMAIL_TABLE" in record.error


def test_the_runner_process_has_no_variable_only_some_functions_are_given():
    # given stack.env (the union of every function's variables, for the clients) in the
    # runner's inherited environment and its stack.env
    stack_env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000", **template().environment()}
    with mock.patch.dict(os.environ, template().environment()):
        # when the runner sets up its process
        set_process_environment(template(), stack_env)
        environment = dict(os.environ)
    # then only the stack-wide variables and what every function is given alike remain
    assert environment["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5000"
    assert environment["POWERTOOLS_SERVICE_NAME"] == "dbmail"
    assert [name for name in environment if name.startswith("DBMAIL_")] == []
