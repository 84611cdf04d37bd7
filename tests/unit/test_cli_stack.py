"""`dbmail --stack-name NAME ...`: the settings of a deployed stack, from its CloudFormation outputs and
parameters (moto in-process: a stack with the outputs template.yaml declares), with clear errors."""

from __future__ import annotations

import json
import os
from unittest import mock

import boto3
import pytest

from dbmail.cli import main
from dbmail.cli.stack import OUTPUT_VARIABLES, PARAMETER_VARIABLES, SEND_DEAD_LETTER_QUEUE_OUTPUT
from dbmail_local.cfn import load_yaml
from tests.conftest import ROOT, clear_caches, drain
from tests.unit.test_expand import submit


def stack_template(outputs: dict[str, str], parameters: dict[str, str]) -> str:
    """A template whose outputs are the given values and whose parameters are declared (its one
    resource, a topic, only because a stack needs one)."""
    return json.dumps(
        {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Parameters": {name: {"Type": "String"} for name in parameters},
            "Resources": {"Marker": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {key: {"Value": value} for key, value in outputs.items()},
        }
    )


@pytest.fixture
def deployed(moto_stack):
    """A stack "dbmail-prod" whose outputs name the moto stack's tables and queues, and whose
    parameters are the local stack's; the process's DBMAIL_* variables are taken away, so only
    --stack-name can give the settings."""
    env = dict(os.environ)
    template = moto_stack.template
    outputs = {key: env[variable] for key, variable in OUTPUT_VARIABLES.items()}
    outputs[SEND_DEAD_LETTER_QUEUE_OUTPUT] = moto_stack.dlq_url
    parameters = {
        name: env[variable] for name, variable in PARAMETER_VARIABLES.items() if variable in env and env[variable]
    }
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    cloudformation.create_stack(
        StackName="dbmail-prod",
        TemplateBody=stack_template(outputs, parameters),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if not k.startswith("DBMAIL_")}, clear=True):
        clear_caches()
        yield cloudformation, template, env
    clear_caches()


def test_the_template_declares_every_output_the_cli_reads():
    outputs = load_yaml(ROOT / "template.yaml")["Outputs"]
    assert set(OUTPUT_VARIABLES) | {SEND_DEAD_LETTER_QUEUE_OUTPUT} <= set(outputs)
    assert set(PARAMETER_VARIABLES) <= set(load_yaml(ROOT / "template.yaml")["Parameters"])


def test_commands_read_the_deployed_stack(deployed, tmp_path, capsys):
    _, _, env = deployed
    # given a request in the stack's tables (written with the stack's settings)
    with mock.patch.dict(os.environ, env):
        clear_caches()
        rid = submit(n=2, sendto_fn_name="")
    clear_caches()
    # when its status is asked for by stack name alone (no DBMAIL_* variable, no env file)
    argv = ["--env-file", str(tmp_path / "none.env"), "--stack-name", "dbmail-prod", "status", "--json", rid]
    assert main(argv) == 0
    # then the stack's tables were read
    assert json.loads(capsys.readouterr().out)["recipients"] == 2
    # and the settings are the stack's: outputs and parameters
    assert os.environ["DBMAIL_REQUEST_TABLE"] == env["DBMAIL_REQUEST_TABLE"]
    assert os.environ["DBMAIL_ALLOWED_SENDER_DOMAINS"] == env["DBMAIL_ALLOWED_SENDER_DOMAINS"]


def test_a_stack_setting_replaces_one_from_the_environment(deployed, capsys):
    # given a DBMAIL_* variable of another stack in the environment (a sourced stack.env)
    os.environ["DBMAIL_REQUEST_TABLE"] = "another-stack-table"
    os.environ["DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL"] = "http://127.0.0.1:1/000000000000/elsewhere"
    # when redrive runs with --stack-name, then it moves the stack's DLQ (its output), not the local one
    _, _, env = deployed
    assert main(["--stack-name", "dbmail-prod", "redrive"]) == 0
    assert capsys.readouterr().out == "0 messages moved back to the send queue\n"
    assert os.environ["DBMAIL_REQUEST_TABLE"] == env["DBMAIL_REQUEST_TABLE"]
    assert "DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL" not in os.environ


def test_redrive_uses_the_stacks_dead_letter_queue(deployed, moto_stack, capsys):
    # given a message on the stack's send DLQ
    moto_stack.sqs.send_message(QueueUrl=moto_stack.dlq_url, MessageBody='{"request_id": "r", "email_key": "k"}')
    # when redriven by stack name, then it is back on the send queue
    assert main(["--stack-name", "dbmail-prod", "redrive"]) == 0
    assert capsys.readouterr().out == "1 messages moved back to the send queue\n"
    assert len(drain(moto_stack.sqs, moto_stack.settings.send_queue_url)) == 1


def test_an_unknown_stack_exits_2_naming_it(deployed, capsys):
    assert main(["--stack-name", "dbmail-nope", "status", "abc"]) == 2
    assert capsys.readouterr().err == (
        "dbmail: no stack 'dbmail-nope' in us-east-1 (check --stack-name and AWS_REGION)\n"
    )


def test_a_stack_without_an_output_exits_3_naming_it(deployed, capsys):
    # given a stack deployed from an older template (no suppression table, no configuration set)
    cloudformation, _, env = deployed
    outputs = {key: env[variable] for key, variable in OUTPUT_VARIABLES.items()}
    outputs[SEND_DEAD_LETTER_QUEUE_OUTPUT] = "url"
    for missing in ("SuppressionTableName", "ConfigurationSetName"):
        del outputs[missing]
    cloudformation.create_stack(StackName="dbmail-old", TemplateBody=stack_template(outputs, {}))
    # then every command refuses it, naming what is missing and what to do
    assert main(["--stack-name", "dbmail-old", "status", "abc"]) == 3
    assert capsys.readouterr().err == (
        "dbmail: ConfigurationError: stack 'dbmail-old' has no output ConfigurationSetName, "
        "SuppressionTableName: it was deployed from an older template.yaml (sam deploy this one)\n"
    )


def test_an_unknown_request_of_the_stack_exits_2(deployed, capsys):
    assert main(["--stack-name", "dbmail-prod", "failures", "0123456789abcdef"]) == 2
    assert capsys.readouterr().err == "dbmail: RequestInvalid: no request '0123456789abcdef'\n"
