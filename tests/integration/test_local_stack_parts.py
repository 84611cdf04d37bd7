"""The local stack's parts on their own: template reading, event filters, resource creation
(with moto in-process), batch-failure rules, schedules and stack.env. No processes start here."""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.sqs.models import Message, SQSBackend, sqs_backends

from dbmail_local import DEFAULT_TEMPLATE
from dbmail_local.cfn import LocalTarget, Template, TemplateError, load_yaml
from dbmail_local.event_filter import EventFilter, FilterPatternError
from dbmail_local.lambda_runtime import Invocation, LambdaContext, LocalFunction
from dbmail_local.moto_server import serialize_sqs_receives
from dbmail_local.resources import create_resources, resource_variables
from dbmail_local.schedule import describe_schedule
from dbmail_local.stack import read_env_file, write_env_file

pytestmark = pytest.mark.integration

SELFTEST = Path(__file__).parent / "selftest"


@pytest.fixture
def in_process_aws(monkeypatch):
    """moto in this process; the session's stack.env endpoints would send boto3 past it."""
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name)
    with mock_aws():
        yield


def _template(tmp_path: Path, text: str, **parameters: str) -> Template:
    path = tmp_path / "template.yaml"
    path.write_text(text)
    return Template(load_yaml(path), path=path, parameters=parameters)


def test_short_tags_read_as_long_form(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "A: !Ref X\nB: !GetAtt Q.Arn\nC: !Sub 'x-${Y}'\nD: !Join [',', [a, !Ref Z]]\n"
        "E: !If [Cond, 1, 2]\nF: !Select [0, !Split [',', 'a,b']]\nG: !Equals [a, b]\n"
    )
    assert load_yaml(path) == {
        "A": {"Ref": "X"},
        "B": {"Fn::GetAtt": ["Q", "Arn"]},
        "C": {"Fn::Sub": "x-${Y}"},
        "D": {"Fn::Join": [",", ["a", {"Ref": "Z"}]]},
        "E": {"Fn::If": ["Cond", 1, 2]},
        "F": {"Fn::Select": [0, {"Fn::Split": [",", "a,b"]}]},
        "G": {"Fn::Equals": ["a", "b"]},
    }


def test_dbmail_template_resolves_to_local_names_and_parameter_file_values():
    template = Template.load(target=LocalTarget(sqs_url="http://127.0.0.1:4999"))
    assert template.parameters["AllowedSenderDomains"] == ["example.org", "learningu.org"]
    assert template.function_environment("SendFunction")["DBMAIL_PROVIDER"] == "ses"
    environment = template.environment()
    assert environment["DBMAIL_SEND_QUEUE_URL"] == "http://127.0.0.1:4999/123456789012/dbmail-SendQueue"
    assert environment["DBMAIL_REQUEST_TABLE"] == "dbmail-MessageRequestTable"
    assert environment["DBMAIL_ALLOWED_SENDER_DOMAINS"] == "example.org,learningu.org"
    assert environment["DBMAIL_UNSUBSCRIBE_SECRET"] == "local-only-unsubscribe-secret-not-for-production"
    assert template.resolve(template.properties("SendQueue"))["RedrivePolicy"]["deadLetterTargetArn"] == (
        "arn:aws:sqs:us-east-1:123456789012:dbmail-SendDeadLetterQueue"
    )
    assert (
        template.resolve(template.properties("ExpandLogGroup"))["LogGroupName"] == "/aws/lambda/dbmail-ExpandFunction"
    )
    assert template.properties("ExpandFunction")["Timeout"] == 900  # its own value beats Globals
    assert template.properties("SendFunction")["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "dbmail"
    assert resource_variables(template)["DBMAIL_LOCAL_SENDDEADLETTERQUEUE_URL"].endswith("/dbmail-SendDeadLetterQueue")


def test_stream_arn_needs_a_lookup(tmp_path):
    template = Template.load(DEFAULT_TEMPLATE, target=LocalTarget(stream_arn=lambda table: f"arn:stream:{table}"))
    assert template.get_att("MessageRequestTable", "StreamArn") == "arn:stream:dbmail-MessageRequestTable"
    with pytest.raises(TemplateError, match="needs a running DynamoDB Local"):
        Template.load().get_att("MessageRequestTable", "StreamArn")


def test_parameters_are_checked(tmp_path):
    text = "Parameters:\n  Mode: {Type: String, AllowedValues: [a, b]}\n  List: {Type: CommaDelimitedList, Default: 'x, y'}\n"
    assert _template(tmp_path, text, Mode="a").parameters == {"Mode": "a", "List": ["x", "y"]}
    with pytest.raises(TemplateError, match="no default"):
        _template(tmp_path, text)
    with pytest.raises(TemplateError, match="not one of"):
        _template(tmp_path, text, Mode="c")
    with pytest.raises(TemplateError, match="not declared"):
        _template(tmp_path, text, Mode="a", Typo="1")


def test_conditions_sub_and_no_value(tmp_path):
    text = """
Parameters:
  Stage: {Type: String, Default: dev}
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
  IsDev: !Not [!Condition IsProd]
Resources:
  Bucket: {Type: AWS::S3::Bucket}
  ProdOnly: {Type: AWS::SQS::Queue, Condition: IsProd}
"""
    template = _template(tmp_path, text)
    assert list(template.resources()) == ["Bucket"]
    assert template.resolve(
        {"A": {"Fn::If": ["IsProd", "x", {"Ref": "AWS::NoValue"}]}, "B": {"Condition": "IsDev"}}
    ) == {"B": True}
    assert (
        template.resolve({"Fn::Sub": ["${Bucket}:${v}:${!Literal}", {"v": {"Ref": "Stage"}}]})
        == "dbmail-bucket:dev:${Literal}"
    )
    assert template.resolve({"Fn::Sub": "${AWS::Region} ${Bucket.Arn}"}) == "us-east-1 arn:aws:s3:::dbmail-bucket"


@pytest.mark.parametrize(
    ("pattern", "record", "matches"),
    [
        ({"eventName": ["INSERT"]}, {"eventName": "INSERT"}, True),
        ({"eventName": ["INSERT"]}, {"eventName": "MODIFY"}, False),
        ({"eventName": ["INSERT", "REMOVE"]}, {"eventName": "REMOVE"}, True),
        ({"a": {"b": ["x"]}}, {"a": {"b": "x"}}, True),
        ({"a": {"b": ["x"]}}, {"a": {"c": "x"}}, False),
        ({"a": {"b": [{"exists": True}]}}, {"a": {"b": {"S": "1"}}}, True),
        ({"a": {"b": [{"exists": False}]}}, {"a": {}}, True),
        ({"a": {"b": [{"exists": False}]}}, {}, True),
        ({"a": {"b": [{"exists": False}]}}, {"a": {"b": 0}}, False),
        ({"k": [{"prefix": "keep-"}]}, {"k": "keep-1"}, True),
        ({"k": [{"prefix": "keep-"}]}, {"k": "skip-1"}, False),
        ({"k": [{"suffix": ".org"}]}, {"k": "a@example.org"}, True),
        ({"k": [{"anything-but": ["a", "b"]}]}, {"k": "c"}, True),
        ({"k": [{"anything-but": "a"}]}, {"k": "a"}, False),
        ({"k": [{"equals-ignore-case": "ABC"}]}, {"k": "abc"}, True),
        ({"k": [1]}, {"k": 1.0}, True),
        ({"k": [1]}, {"k": True}, False),
        ({"k": [None]}, {"k": None}, True),
        ({"k": ["a"]}, {"k": ["b", "a"]}, True),
        ({"k": ["a"], "j": ["b"]}, {"k": "a", "j": "c"}, False),
    ],
)
def test_event_filter_patterns(pattern, record, matches):
    assert EventFilter({"Filters": [{"Pattern": json.dumps(pattern)}]}).matches(record) is matches


def test_event_filters_or_together_and_unknown_syntax_is_refused():
    either = EventFilter({"Filters": [{"Pattern": '{"a": ["1"]}'}, {"Pattern": '{"b": ["2"]}'}]})
    assert either.matches({"b": "2"}) and not either.matches({"a": "2"})
    assert EventFilter(None).matches({"anything": 1})
    for pattern in ('{"a": [{"numeric": [">", 1]}]}', '{"a": "x"}', '{"a": []}', "[1]", "{not json"):
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


def test_context_reports_no_time_left_once_stopping():
    template = Template.load(SELFTEST / "template.yaml", SELFTEST / "parameters.json")
    stopping = threading.Event()
    function = LocalFunction(template, "ProbeQueueFunction", stopping)
    context = LambdaContext(function, stopping)
    assert 4000 < context.get_remaining_time_in_millis() <= 5000
    stopping.set()
    assert context.get_remaining_time_in_millis() == 0
    assert function.module_path == (SELFTEST / "functions/probe/app.py").resolve()
    assert LocalFunction(template, "BrokenFunction", stopping).code_dir == (SELFTEST / "functions/broken").resolve()


def test_schedules_are_described_and_checked():
    assert describe_schedule("rate(5 minutes)") == "every 5 minutes"
    assert describe_schedule("rate(1 day)") == "every 1 day"
    assert describe_schedule("cron(0/15 * * * ? *)") == "on cron fields '0/15 * * * ? *' (UTC)"
    for invalid in ("rate(1 minutes)", "rate(5 minute)", "cron(* * *)", "every 5 minutes"):
        with pytest.raises(ValueError):
            describe_schedule(invalid)


def test_resources_from_the_template_with_moto_in_process(in_process_aws):
    template = Template.load()
    first = create_resources(template)
    assert create_resources(template) == first  # idempotent
    dynamodb, sqs = boto3.client("dynamodb", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
    table = dynamodb.describe_table(TableName="dbmail-MessageRequestTable")["Table"]
    assert table["StreamSpecification"]["StreamViewType"] == "NEW_IMAGE"
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    url = sqs.get_queue_url(QueueName="dbmail-SendQueue")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attributes["VisibilityTimeout"], attributes["MessageRetentionPeriod"]) == ("180", "345600")
    assert json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"].endswith(":dbmail-SendDeadLetterQueue")
    assert first.ses_identities == ["example.org", "learningu.org"]
    verified = boto3.client("sesv2", region_name="us-east-1").list_email_identities()["EmailIdentities"]
    assert {identity["IdentityName"] for identity in verified} == {"example.org", "learningu.org"}


def test_moto_hands_each_message_to_one_receiver(monkeypatch, in_process_aws):
    """Widens moto's race window (receiving marks messages late) to show the lock closes it."""
    mark_received = Message.mark_received

    def slow_mark_received(self, *args, **kwargs):
        time.sleep(0.002)
        return mark_received(self, *args, **kwargs)

    monkeypatch.setattr(Message, "mark_received", slow_mark_received)
    monkeypatch.setattr(SQSBackend, "receive_message", SQSBackend.receive_message)  # restored afterwards
    serialize_sqs_receives()
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="race")["QueueUrl"]
    for start in range(0, 100, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": str(start + n)} for n in range(10)])
    backend = sqs_backends["123456789012"]["us-east-1"]
    received: list[str] = []

    def receive() -> None:
        while messages := backend.receive_message("race", 10, 0, 60):
            received.extend(message.body for message in messages)

    threads = [threading.Thread(target=receive) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(received, key=int) == [str(n) for n in range(100)]


def test_env_file_round_trips_through_bash(tmp_path):
    env = {
        "PLAIN": "x",
        "QUOTES": 'it\'s "quoted" $HOME `cmd`',
        "EMPTY": "",
        "SPACES": "ESP Website <info@example.org>",
    }
    path = tmp_path / "stack.env"
    write_env_file(path, env)
    assert read_env_file(path) == env
    for name, value in env.items():
        shown = subprocess.run(["bash", "-c", f'source {path}; printf %s "${name}"'], check=True, capture_output=True)
        assert shown.stdout.decode() == value
