"""The local stack's parts on their own: template reading, the stream filter and Lambda's
batch-failure rules. No processes start here."""

import json
from pathlib import Path

import pytest

from dbmail_local import DEFAULT_PARAMETERS, DEFAULT_TEMPLATE
from dbmail_local.cfn import LocalTarget, Template, TemplateError, load_yaml
from dbmail_local.event_filter import EventFilter, FilterPatternError
from dbmail_local.lambda_runtime import Invocation
from dbmail_local.resources import resource_variables
from dbmail_local.schedule import describe_schedule

pytestmark = pytest.mark.integration


def _template(tmp_path: Path, text: str, **parameters: str) -> Template:
    path = tmp_path / "template.yaml"
    path.write_text(text)
    return Template(load_yaml(path), path=path, parameters=parameters)


def test_dbmail_template_resolves_to_local_names_and_parameter_file_values():
    template = Template.load(
        target=LocalTarget(sqs_url="http://127.0.0.1:4999", stream_arn=lambda table: f"arn:stream:{table}")
    )
    assert template.parameters["AllowedSenderDomains"] == ["example.org", "learningu.org"]
    assert template.function_environment("SendFunction")["DBMAIL_PROVIDER"] == "ses"
    environment = template.environment()
    assert environment["DBMAIL_SEND_QUEUE_URL"] == "http://127.0.0.1:4999/123456789012/dbmail-SendQueue"
    assert environment["DBMAIL_REQUEST_TABLE"] == "dbmail-MessageRequestTable"
    assert environment["DBMAIL_ALLOWED_SENDER_DOMAINS"] == "example.org,learningu.org"
    # a secret's variable holds the secret's ARN (the value is in the local Secrets Manager)
    assert environment["DBMAIL_UNSUBSCRIBE_SECRET_ARN"] == (
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:dbmail-UnsubscribeSecret"
    )
    assert template.resolve(template.properties("SendQueue"))["RedrivePolicy"]["deadLetterTargetArn"] == (
        "arn:aws:sqs:us-east-1:123456789012:dbmail-SendDeadLetterQueue"
    )
    assert (
        template.resolve(template.properties("ExpandLogGroup"))["LogGroupName"] == "/aws/lambda/dbmail-ExpandFunction"
    )
    assert template.properties("ExpandFunction")["Timeout"] == 900  # its own value beats Globals
    assert template.properties("SendFunction")["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "dbmail"
    assert resource_variables(template)["DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL"].endswith("/dbmail-SendDeadLetterQueue")
    assert template.get_att("MessageRequestTable", "StreamArn") == "arn:stream:dbmail-MessageRequestTable"
    with pytest.raises(TemplateError, match="needs a running DynamoDB Local"):
        Template.load().get_att("MessageRequestTable", "StreamArn")
    # the expire schedule the template and local/parameters.json give is one the runner runs
    assert json.loads(DEFAULT_PARAMETERS.read_text())["ExpireSchedule"] == template.parameters["ExpireSchedule"]
    assert describe_schedule(template.parameters["ExpireSchedule"]) == "every 5 minutes"


def test_what_the_template_does_not_use_is_refused_not_guessed(tmp_path):
    assert "Conditions:" not in DEFAULT_TEMPLATE.read_text()
    with pytest.raises(TemplateError, match="Conditions are not supported"):
        _template(tmp_path, "Conditions:\n  IsProd: !Equals [a, b]\n")
    with pytest.raises(TemplateError, match="Fn::If is not supported"):
        _template(tmp_path, "Resources: {}\n").resolve({"Fn::If": ["IsProd", "a", "b"]})
    with pytest.raises(ValueError, match="not a rate"):
        describe_schedule("cron(0/15 * * * ? *)")


def test_parameters_are_checked(tmp_path):
    text = "Parameters:\n  Mode: {Type: String, AllowedValues: [a, b]}\n  List: {Type: CommaDelimitedList, Default: 'x, y'}\n"
    assert _template(tmp_path, text, Mode="a").parameters == {"Mode": "a", "List": ["x", "y"]}
    with pytest.raises(TemplateError, match="no default"):
        _template(tmp_path, text)
    with pytest.raises(TemplateError, match="not one of"):
        _template(tmp_path, text, Mode="c")
    with pytest.raises(TemplateError, match="not declared"):
        _template(tmp_path, text, Mode="a", Typo="1")


def test_the_templates_stream_filter_keeps_inserts_only_and_other_syntax_is_refused():
    template = Template.load(target=LocalTarget(stream_arn=lambda table: table))
    criteria = template.resolve(template.properties("ExpandFunction"))["Events"]["NewRequest"]["Properties"]
    inserts = EventFilter(criteria["FilterCriteria"])
    assert inserts.matches({"eventName": "INSERT", "dynamodb": {}})
    assert not inserts.matches({"eventName": "MODIFY"}) and not inserts.matches({"dynamodb": {}})
    assert EventFilter({"Filters": [{"Pattern": '{"a": {"b": [1, true]}}'}]}).matches({"a": {"b": 1.0}})
    assert not EventFilter({"Filters": [{"Pattern": '{"a": [1]}'}]}).matches({"a": True})
    assert EventFilter(None).matches({"anything": 1})
    for pattern in ('{"a": [{"exists": false}]}', '{"a": [{"prefix": "x"}]}', '{"a": "x"}', '{"a": []}', "[1]", "{no"):
        with pytest.raises(FilterPatternError):
            EventFilter({"Filters": [{"Pattern": pattern}]})


@pytest.mark.parametrize(
    ("invocation", "partial", "failed"),
    [
        (Invocation("r", response=None), True, []),
        (Invocation("r", response={"batchItemFailures": []}), True, []),
        (Invocation("r", response={"batchItemFailures": [{"itemIdentifier": "b"}]}), True, [1]),
        (Invocation("r", response={"batchItemFailures": [{"itemIdentifier": "b"}]}), False, []),
        (Invocation("r", response={"batchItemFailures": [{"itemIdentifier": ""}]}), True, [0, 1, 2]),
        (Invocation("r", response={"batchItemFailures": [{"itemIdentifier": "zz"}]}), True, [0, 1, 2]),
        (Invocation("r", response="done"), True, [0, 1, 2]),
        (Invocation("r", error=RuntimeError("x")), False, [0, 1, 2]),
    ],
)
def test_batch_failure_rules(invocation, partial, failed):
    assert invocation.failed_positions(["a", "b", "c"], partial) == failed
