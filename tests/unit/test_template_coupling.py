"""template.yaml and the code check each other: the timeouts, leases and tries that only work
together, each function's environment against what its settings read, and the alarms against
the metrics the handlers emit, read from the template the deployment uses."""

import ast
from datetime import timedelta
from pathlib import Path

import pytest

from dbmail.core import observability
from dbmail.core.settings import ENVIRONMENT, VARIABLES, WEBSITE, Settings
from dbmail.outgoing import expand, send
from dbmail_local.cfn import LocalTarget, Template
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def template():
    return Template.load(target=LocalTarget(sqs_url="https://sqs.us-east-1.amazonaws.com"))


def function_property(template, logical_id: str, name: str):
    return template.resolve(template.properties(logical_id)[name])


def functions(template) -> dict[str, str]:
    """{function name (its functions/<name>/ directory): logical id} of the template's functions."""
    return {
        Path(template.resolve(template.properties(logical_id)["CodeUri"])).name: logical_id
        for logical_id in template.resources("AWS::Serverless::Function")
    }


SEND_LANES = ("SendQueue", "PrioritySendQueue")


@pytest.mark.parametrize("lane", SEND_LANES)
def test_the_send_queue_outlasts_the_claim_which_outlasts_a_send(template, lane):
    send_timeout = int(function_property(template, "SendFunction", "Timeout"))
    visibility = int(template.resolve(template.properties(lane)["VisibilityTimeout"]))
    lease = send.CLAIM_LEASE.total_seconds()
    # VisibilityTimeout >= 6 x the send timeout > the claim lease > the send timeout:
    # - 6 x: AWS's rule for a queue that triggers Lambda (room for retries of a throttled batch);
    # - visibility > lease: a message redelivered after a crash finds the dead send's claim lapsed
    #   (Store.claim_email takes a `processing` email only once claimed_until has passed), so the
    #   email is sent, not dropped as a duplicate (that is the relation the code needs; the 6 x
    #   bound implies it);
    # - lease > timeout: a live send's claim never lapses while it runs, so a second delivery of
    #   the same message (or the sweep's requeue) cannot send it twice.
    assert visibility >= 6 * send_timeout > lease > send_timeout
    assert visibility > lease
    # and a send needs its reserve of the invocation (SEND_TIME_RESERVE_SECONDS) to be possible at all
    assert send_timeout > send.SEND_TIME_RESERVE_SECONDS


@pytest.mark.parametrize("lane", SEND_LANES)
def test_the_queue_gives_each_email_as_many_receives_as_it_has_tries(template, lane):
    redrive = template.resolve(template.properties(lane)["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == Settings.max_tries


def test_the_send_function_delivers_a_whole_batch_at_once_from_both_lanes(template):
    from dbmail.core import aws
    from dbmail_local.sqs import MAX_LOCAL_POLLERS

    events = template.properties("SendFunction")["Events"]  # unresolved: the queues by logical id
    queues = {event["Properties"]["Queue"]["Fn::GetAtt"][0]: event["Properties"] for event in events.values()}
    # both lanes trigger the send function, reporting partial batch failures
    assert set(queues) == set(SEND_LANES)
    for properties in queues.values():
        assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        # a batch is at most as many records as are delivered at once, and a client's connection
        # pool has one connection for each of a batch's sends in flight, also when the local
        # runner's invocations share it
        assert int(properties["BatchSize"]) <= send.MAX_BATCH
        assert send.CONCURRENT_SENDS * MAX_LOCAL_POLLERS <= aws.POOL_CONNECTIONS
    # a batch of more than 10 needs a batching window (Lambda refuses the mapping without one)
    for properties in queues.values():
        assert int(properties["BatchSize"]) <= 10 or int(properties["MaximumBatchingWindowInSeconds"]) >= 1
    # the priority lane waits for no batch to fill
    assert "MaximumBatchingWindowInSeconds" not in queues["PrioritySendQueue"]


def test_the_expansion_lease_outlasts_an_expand_invocation(template):
    for function in ("ExpandFunction", "ExpireFunction"):
        timeout = timedelta(seconds=int(function_property(template, function, "Timeout")))
        assert timeout < expand.LEASE, function


def test_a_chunk_lease_outlasts_a_chunk_invocation_and_the_queue_outlasts_both(template):
    timeout = int(function_property(template, "ExpandChunkFunction", "Timeout"))
    visibility = int(template.resolve(template.properties("ExpandChunkQueue")["VisibilityTimeout"]))
    # a live chunk's lease never lapses while it runs (no second invocation takes it), and a
    # message redelivered after a crash finds the dead invocation's lease lapsed (6 x: AWS's rule)
    assert visibility >= 6 * timeout and visibility > expand.CHUNK_LEASE.total_seconds() > timeout
    # and a chunk's invocation has the time it needs beyond its safety margin
    assert timeout > expand.SAFETY_MARGIN_SECONDS


def test_an_inbound_message_is_not_swept_while_its_invocation_may_still_run(template):
    from dbmail.inbound import router as inbound

    timeout = timedelta(seconds=int(function_property(template, "InboundFunction", "Timeout")))
    assert timeout < inbound.SWEEP_NOT_BEFORE and timeout < inbound.STUCK_AFTER


def env_of(template, logical_id: str) -> dict[str, str]:
    """What Lambda gives the function: Globals' variables and its own."""
    return template.function_environment(logical_id)


def test_every_function_of_the_template_has_declared_settings_and_builds_them(template):
    # given the template's functions and the handler of each
    found = functions(template)
    assert sorted(found) == sorted(name for name in ENVIRONMENT if name != WEBSITE)
    for name in found:
        handler = (ROOT / "functions" / name / "app.py").read_text()
        # then its handler builds that function's settings at import (its cold start)
        built = [
            node.args[0].value
            for node in ast.walk(ast.parse(handler))
            if isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "for_function"
            and isinstance(node.args[0], ast.Constant)
        ]
        assert built == [name], name


@pytest.mark.parametrize("function", [name for name in ENVIRONMENT if name != WEBSITE])
def test_a_function_is_given_every_variable_its_settings_read_and_no_other(template, function):
    logical_id = functions(template)[function]
    given = set(env_of(template, logical_id))
    declared = set(ENVIRONMENT[function])
    assert declared <= set(VARIABLES)
    # every variable its settings read is set for it (Globals or its own Environment); only the
    # overrides for tests and the local stack (DBMAIL_SENDGRID_URL) are not the template's
    needed = {name for name in declared if VARIABLES[name].in_template}
    assert needed - given == set(), f"{logical_id} lacks variables its settings read"
    # and no DBMAIL_* variable it does not read
    extra = {name for name in given if name.startswith("DBMAIL_")} - declared
    assert extra == set(), f"{logical_id} is given variables it never reads"
    # and its environment makes valid settings (every value parses; a secret's variable holds the
    # secret's ARN, and the secret's value stands in for what Secrets Manager returns)
    assert Settings.for_function(function, env_of(template, logical_id), read_secret=secret_value).function == function


def secret_value(variable: str, arn: str) -> str:
    assert arn.startswith("arn:aws:secretsmanager:us-east-1:123456789012:secret:"), (variable, arn)
    return "a-secret-value-of-forty-two-characters-xyz"


def test_stack_env_gives_the_website_and_the_cli_what_they_read(template):
    # stack.env's DBMAIL_* are the union of the functions' (Template.environment)
    union = template.environment()
    assert {name for name in ENVIRONMENT[WEBSITE] if VARIABLES[name].in_template} <= set(union)
    settings = Settings.for_function(WEBSITE, union)
    assert settings.require_inbound() is settings


def test_no_globals_variable_is_a_dbmail_setting_some_function_does_not_read(template):
    shared = template.resolve(template.body["Globals"]["Function"].get("Environment", {}).get("Variables", {}))
    for function in functions(template):
        assert {name for name in shared if name.startswith("DBMAIL_")} <= set(ENVIRONMENT[function])


def test_alarms_on_dbmail_metrics_name_metrics_and_dimensions_the_handlers_emit(template):
    namespace = template.resolve(template.body["Globals"]["Function"]["Environment"]["Variables"])[
        "POWERTOOLS_METRICS_NAMESPACE"
    ]
    assert namespace == observability.NAMESPACE
    for logical_id in template.resources("AWS::CloudWatch::Alarm"):
        alarm = template.resolve(template.properties(logical_id))
        if alarm.get("Namespace") != namespace:
            continue
        assert alarm["MetricName"] in observability.METRIC_NAMES, logical_id
        names = {dimension["Name"] for dimension in alarm.get("Dimensions", [])}
        allowed = {"service", observability.OUTCOME, observability.TRIGGER}
        assert "service" in names and names <= allowed, logical_id
