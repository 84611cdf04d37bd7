"""Operations, read from template.yaml: every alarm tells a person (the alarm topic), every function,
stream, queue and failure destination has its alarm, no function environment holds a secret, and
the functions' IAM policies name actions (never a wildcard), with no DeleteItem or Scan they do not use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dbmail_local.cfn import load_yaml
from tests.conftest import ROOT

ALARM = "AWS::CloudWatch::Alarm"
FUNCTION = "AWS::Serverless::Function"
TOPIC = {"Ref": "AlarmTopic"}
# What SAM's policy templates grant that a function may not need (the rest of each is reads or writes it uses).
POLICY_TEMPLATE_GRANTS = {
    "DynamoDBCrudPolicy": {"dynamodb:DeleteItem", "dynamodb:Scan"},
    "DynamoDBReadPolicy": {"dynamodb:Scan"},
    "DynamoDBWritePolicy": {"dynamodb:DeleteItem"},
}
# The one Scan a function makes: the inbound router reads its handful of EmailList rules whole.
USED = {("InboundFunction", "dynamodb:Scan")}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_yaml(ROOT / "template.yaml")


def resources(template, kind: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def alarms(template) -> dict[str, dict]:
    return {name: r["Properties"] for name, r in resources(template, ALARM).items()}


def dimension(alarm: dict, name: str) -> Any:
    return next((d["Value"] for d in alarm.get("Dimensions", []) if d["Name"] == name), None)


def queue_alarms(template, metric: str) -> dict[str, dict]:
    """{queue logical id: alarm} of the AWS/SQS alarms on ``metric``."""
    found = {}
    for alarm in alarms(template).values():
        if alarm["Namespace"] == "AWS/SQS" and alarm["MetricName"] == metric:
            queue = dimension(alarm, "QueueName")
            assert queue and queue["Fn::GetAtt"][1] == "QueueName", alarm
            found[queue["Fn::GetAtt"][0]] = alarm
    return found


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def refs(value: Any) -> set[str]:
    """Every name a fragment refers to: Ref, and ${Name} inside Fn::Sub."""
    import re

    names = set()
    for node in walk(value):
        if isinstance(node, dict) and "Ref" in node:
            names.add(node["Ref"])
        if isinstance(node, dict) and "Fn::Sub" in node:
            text = node["Fn::Sub"] if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"][0]
            names |= {name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text)}
    return names


def test_every_alarm_tells_the_alarm_topic_when_it_fires_and_when_it_clears(template):
    # given the alarm topic, encrypted with a key CloudWatch may use, with an email subscription
    topic = template["Resources"]["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    assert topic["Subscription"] == [{"Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}}]
    key_policy = template["Resources"]["AlarmTopicKey"]["Properties"]["KeyPolicy"]
    assert any(s["Principal"] == {"Service": "cloudwatch.amazonaws.com"} for s in key_policy["Statement"])
    # then every alarm has it as its alarm and its OK action
    found = alarms(template)
    assert len(found) >= 20
    for name, alarm in found.items():
        assert alarm["AlarmActions"] == [TOPIC], name
        assert alarm["OKActions"] == [TOPIC], name
        assert "docs/operations.md#" in alarm["AlarmDescription"], name


def test_every_function_has_an_errors_and_a_throttles_alarm(template):
    functions = set(resources(template, FUNCTION))
    assert {"ExpandFunction", "SendFunction", "ExpireFunction", "InboundFunction"} <= functions
    for metric in ("Errors", "Throttles"):
        covered = {
            dimension(alarm, "FunctionName")["Ref"]
            for alarm in alarms(template).values()
            if alarm["Namespace"] == "AWS/Lambda" and alarm["MetricName"] == metric
        }
        assert covered == functions, metric
        for alarm in alarms(template).values():
            if alarm["Namespace"] == "AWS/Lambda" and alarm["MetricName"] == metric:
                assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
                    "Sum",
                    0,
                    "GreaterThanThreshold",
                )


def failure_destinations(template) -> dict[str, str]:
    """{queue logical id: what sends to it}: dead-letter queues of redrive policies, and the
    on-failure destinations of event source mappings and of asynchronous invocations."""
    found = {}
    for name, queue in resources(template, "AWS::SQS::Queue").items():
        redrive = queue.get("Properties", {}).get("RedrivePolicy")
        if redrive:
            found[redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]] = f"{name}'s redrive policy"
    for name, function in resources(template, FUNCTION).items():
        properties = function["Properties"]
        configs = [event["Properties"].get("DestinationConfig") for event in properties.get("Events", {}).values()]
        configs.append(properties.get("EventInvokeConfig", {}).get("DestinationConfig"))
        for config in filter(None, configs):
            destination = config["OnFailure"]
            assert destination["Type"] == "SQS", name
            found[destination["Destination"]["Fn::GetAtt"][0]] = f"{name}'s on-failure destination"
    return found


def test_every_queue_that_holds_failures_has_a_depth_alarm(template):
    destinations = failure_destinations(template)
    assert {
        "SendDeadLetterQueue",
        "ExpandFailureQueue",
        "InboundFailureQueue",
        "ExpireFailureQueue",
        "FeedbackDeadLetterQueue",
    } <= set(destinations)
    depth = queue_alarms(template, "ApproximateNumberOfMessagesVisible")
    for queue, source in destinations.items():
        assert queue in depth, f"{queue} ({source}) has no depth alarm"
        assert (depth[queue]["Threshold"], depth[queue]["ComparisonOperator"]) == (0, "GreaterThanThreshold")


def test_expire_runs_one_at_a_time_and_its_failures_reach_a_queue(template):
    expire = template["Resources"]["ExpireFunction"]["Properties"]
    assert expire["ReservedConcurrentExecutions"] == 1
    assert expire["EventInvokeConfig"]["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["ExpireFailureQueue", "Arn"]},
    }


def test_the_stream_the_send_queue_and_the_ses_reputation_have_alarms(template):
    by_metric = {(a["Namespace"], a["MetricName"]): a for a in alarms(template).values()}
    iterator = by_metric[("AWS/Lambda", "IteratorAge")]
    assert dimension(iterator, "FunctionName") == {"Ref": "ExpandFunction"}
    # the oldest new request waits longer than an expand invocation can last (its timeout)
    assert iterator["Threshold"] > template["Resources"]["ExpandFunction"]["Properties"]["Timeout"] * 1000
    assert "SendQueue" in queue_alarms(template, "ApproximateAgeOfOldestMessage")
    assert by_metric[("AWS/SES", "Reputation.BounceRate")]["Threshold"] == 0.02
    assert by_metric[("AWS/SES", "Reputation.ComplaintRate")]["Threshold"] == 0.0005


def test_no_function_environment_holds_a_secret(template):
    no_echo = {name for name, p in template["Parameters"].items() if p.get("NoEcho")}
    assert {"SendGridApiKey", "SendGridWebhookPublicKey"} <= no_echo
    secrets = set(resources(template, "AWS::SecretsManager::Secret"))
    globals_env = template["Globals"]["Function"].get("Environment", {})
    assert refs(globals_env) & (no_echo | secrets) == set()
    for name, function in resources(template, FUNCTION).items():
        variables = function["Properties"].get("Environment", {}).get("Variables", {})
        # no secret parameter reaches an environment, and a secret resource only as its ARN
        assert refs(variables) & no_echo == set(), name
        for variable, value in variables.items():
            # a variable named for a secret holds a secret's ARN
            if any(word in variable for word in ("SECRET", "API_KEY", "PUBLIC_KEY", "PASSWORD")):
                assert variable.endswith("_SECRET_ARN") and refs(value) <= secrets, (name, variable)
            if refs(value) & secrets:
                assert variable.endswith("_SECRET_ARN") and set(value) == {"Ref"}, (name, variable)
                # and the function may read that one secret
                policy = {"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": value}}
                assert policy in function["Properties"]["Policies"], (name, variable)
    # a NoEcho parameter goes into its secret, nowhere else
    for parameter in no_echo:
        users = [r for r, resource in template["Resources"].items() if parameter in refs(resource)]
        assert users and all(template["Resources"][r]["Type"] == "AWS::SecretsManager::Secret" for r in users)


def policy_statements(template) -> Iterator[tuple[str, dict]]:
    """(owner, statement) of every identity policy: the functions' inline statements and the
    managed policies (a KMS key policy is a resource policy, and stays the account's default)."""
    for name, function in resources(template, FUNCTION).items():
        for policy in function["Properties"].get("Policies", []):
            if isinstance(policy, dict) and "Statement" in policy:
                for statement in policy["Statement"]:
                    yield name, statement
    for name, policy in resources(template, "AWS::IAM::ManagedPolicy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            yield name, statement


def actions(statement: dict) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else action


def test_no_identity_policy_action_is_a_wildcard(template):
    for owner, statement in policy_statements(template):
        for action in actions(statement):
            assert "*" not in action, (owner, action)


def test_no_function_may_delete_items_or_scan_unless_it_does(template):
    for name, function in resources(template, FUNCTION).items():
        granted = set()
        for policy in function["Properties"].get("Policies", []):
            if isinstance(policy, dict):
                for policy_template in set(policy) & set(POLICY_TEMPLATE_GRANTS):
                    granted |= POLICY_TEMPLATE_GRANTS[policy_template]
                for statement in policy.get("Statement", []):
                    granted |= set(actions(statement))
        for action in ("dynamodb:DeleteItem", "dynamodb:Scan"):
            assert action not in granted or (name, action) in USED, (name, action)


def test_ses_sends_only_from_our_domains_through_our_configuration_set(template):
    (statement,) = template["Resources"]["SendMailPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert sorted(actions(statement)) == ["ses:SendEmail", "ses:SendRawEmail"]
    # only this account's identities and the sending configuration set (not configuration-set/*)
    resources_ = [r["Fn::Sub"] for r in statement["Resource"]]
    assert resources_ == [
        "arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:identity/*",
        "arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:configuration-set/${SendingConfigurationSet}",
    ]
    # and From an address of the allowed sender domains or the chapter domains
    condition = statement["Condition"]["StringLike"]["ses:FromAddress"]
    assert refs(condition) == {"AllowedSenderDomains", "ChapterDomains"}


def test_the_from_address_condition_resolves_to_each_domain():
    # given the local stack's parameters, when the condition's intrinsics are resolved
    from dbmail_local.cfn import LocalTarget, Template

    local = Template.load(target=LocalTarget())
    statement = local.body["Resources"]["SendMailPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    (split,) = statement["Condition"]["StringLike"]["ses:FromAddress"].values()
    delimiter, joined = split
    # then it is one "*@domain" pattern for each allowed sender domain and chapter domain, and
    # one "*@domain>" for a From with a display name ("Splash <splash@example.org>")
    patterns = local.resolve(joined).split(delimiter)
    assert patterns == [
        "*@example.org",
        "*@learningu.org",
        "*@example.org",
        "*@example.org>",
        "*@learningu.org>",
        "*@example.org>",
    ]


def test_every_alarm_names_its_section_of_the_operations_guide(template):
    import re

    guide = (ROOT / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", guide, re.M)
    }
    functions = tuple(name.removesuffix("Function") for name in resources(template, FUNCTION))
    for name, alarm in alarms(template).items():
        # the description's link leads to a section of docs/operations.md
        anchor = alarm["AlarmDescription"].rpartition("docs/operations.md#")[2]
        assert anchor in anchors, (name, anchor)
        # which names the alarm (the per-function ones as <Function>ErrorsAlarm, <Function>ThrottlesAlarm)
        generic = re.sub(rf"^({'|'.join(functions)})(?=(Errors|Throttles)Alarm$)", "<Function>", name)
        assert f"`{name}`" in guide or f"`{generic}`" in guide, name
