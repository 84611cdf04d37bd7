"""Creates the template's tables, queues, buckets, SNS topics and subscriptions and SES
configuration sets (with their event destinations) in the emulators, and verifies SES identities.

Everything is read from the template (see cfn.py). Creation is idempotent: what exists is kept.
``create_resources`` works against any boto3 client factory, so a unit test can build the same
tables and queues with moto in-process (``mock_aws``).
"""

import json
import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any

import boto3
from botocore.exceptions import ClientError

from .cfn import Template, TemplateError, as_bool

log = logging.getLogger(__name__)

ClientFactory = Callable[[str], Any]

# Parameters whose addresses or domains the deployed stack sends from; SES must know them.
SES_IDENTITY_PARAMETERS = ("AllowedSenderDomains", "BouncesAddress")

# Standard queues only: template.yaml has no FIFO queue.
_QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
)


@dataclass
class CreatedResources:
    """Local names of what the template declares (whether created now or already there)."""

    tables: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    configuration_sets: list[str] = field(default_factory=list)
    ses_identities: list[str] = field(default_factory=list)


def create_resources(template: Template, client: ClientFactory | None = None) -> CreatedResources:
    """Creates every table, queue, bucket, topic (with its subscriptions) and configuration set
    (with its event destinations) of the template, and verifies its sender domains."""
    if client is None:
        region = template.target.region

        def client(service: str) -> Any:
            return boto3.client(service, region_name=region)

    created = CreatedResources()
    dynamodb, sqs, s3 = client("dynamodb"), client("sqs"), client("s3")
    for logical_id in template.resources("AWS::DynamoDB::Table"):
        created.tables.append(_create_table(dynamodb, template, logical_id))
    queues = template.resources("AWS::SQS::Queue")
    # Every queue first, then redrive policies: a policy must name a queue that exists.
    for logical_id in queues:
        created.queues.append(_create_queue(sqs, template, logical_id))
    for logical_id in queues:
        _set_redrive_policies(sqs, template, logical_id)
    for logical_id in template.resources("AWS::S3::Bucket"):
        created.buckets.append(_create_bucket(s3, template, logical_id))
    secretsmanager = client("secretsmanager")
    for logical_id in template.resources("AWS::SecretsManager::Secret"):
        created.secrets.append(_create_secret(secretsmanager, template, logical_id))
    sns = client("sns")
    for logical_id in template.resources("AWS::SNS::Topic"):
        created.topics.append(_create_topic(sns, template, logical_id))
    for logical_id in template.resources("AWS::SNS::Subscription"):
        _subscribe(sns, template, logical_id)
    ses = client("ses")
    for logical_id in template.resources("AWS::SES::ConfigurationSet"):
        created.configuration_sets.append(_create_configuration_set(ses, template, logical_id))
    for logical_id in template.resources("AWS::SES::ConfigurationSetEventDestination"):
        _create_event_destination(ses, template, logical_id)
    created.ses_identities = ses_identities(template)
    for domain in created.ses_identities:
        ses.verify_domain_identity(Domain=domain)
    return created


def table_request(template: Template, logical_id: str) -> dict[str, Any]:
    """The CreateTable request for a table resource (TableName is the local name).

    On-demand tables with global secondary indexes and streams: what template.yaml declares.
    """
    properties = template.resolve(template.properties(logical_id))
    if properties.get("BillingMode") != "PAY_PER_REQUEST":
        raise TemplateError(f"{logical_id}: only BillingMode PAY_PER_REQUEST tables are created locally")
    request: dict[str, Any] = {
        "TableName": template.physical_name(logical_id),
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "KeySchema": properties["KeySchema"],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if properties.get("GlobalSecondaryIndexes"):
        request["GlobalSecondaryIndexes"] = [
            {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
            for index in properties["GlobalSecondaryIndexes"]
        ]
    stream = properties.get("StreamSpecification")
    if stream:
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    return request


def _create_table(dynamodb: Any, template: Template, logical_id: str) -> str:
    request = table_request(template, logical_id)
    name = request["TableName"]
    try:
        dynamodb.create_table(**request)
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUseException":
            raise
        return name
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100})
    log.info("created table", extra={"table": name})
    return name


def queue_attributes(template: Template, logical_id: str) -> dict[str, str]:
    """The queue's SQS attributes as strings, RedrivePolicy included (pointing at the DLQ ARN)."""
    properties = template.resolve(template.properties(logical_id))
    attributes = {name: str(properties[name]) for name in _QUEUE_ATTRIBUTES if name in properties}
    if "RedrivePolicy" in properties:
        attributes["RedrivePolicy"] = json.dumps(properties["RedrivePolicy"])
    return attributes


def _create_queue(sqs: Any, template: Template, logical_id: str) -> str:
    name = template.physical_name(logical_id)
    attributes = queue_attributes(template, logical_id)
    attributes.pop("RedrivePolicy", None)
    sqs.create_queue(QueueName=name, Attributes=attributes)
    log.info("queue ready", extra={"queue": name})
    return name


def _set_redrive_policies(sqs: Any, template: Template, logical_id: str) -> None:
    attributes = queue_attributes(template, logical_id)
    if "RedrivePolicy" in attributes:
        url = sqs.get_queue_url(QueueName=template.physical_name(logical_id))["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": attributes["RedrivePolicy"]})


def _create_bucket(s3: Any, template: Template, logical_id: str) -> str:
    name = template.physical_name(logical_id)
    region = template.target.region
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        s3.create_bucket(Bucket=name, **location)
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    log.info("bucket ready", extra={"bucket": name})
    return name


def secret_value(template: Template, logical_id: str) -> str:
    """The secret's SecretString, or for GenerateSecretString a new random one of its length
    (letters and digits; local secrets need no punctuation)."""
    properties = template.resolve(template.properties(logical_id))
    if "SecretString" in properties:
        return str(properties["SecretString"])
    generate = properties.get("GenerateSecretString")
    if generate is None or "SecretStringTemplate" in generate:
        raise TemplateError(f"{logical_id}: only SecretString or a plain GenerateSecretString is created locally")
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(int(generate.get("PasswordLength", 32))))


def _create_secret(secretsmanager: Any, template: Template, logical_id: str) -> str:
    name = template.physical_name(logical_id)
    try:
        secretsmanager.create_secret(Name=name, SecretString=secret_value(template, logical_id))
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceExistsException":
            raise
    log.info("secret ready", extra={"secret": name})
    return name


def _create_topic(sns: Any, template: Template, logical_id: str) -> str:
    name = template.physical_name(logical_id)
    sns.create_topic(Name=name)  # idempotent in SNS
    log.info("topic ready", extra={"topic": name})
    return name


# Subscription properties that are subscription attributes in the SNS API.
_SUBSCRIPTION_ATTRIBUTES = ("RawMessageDelivery", "FilterPolicy", "FilterPolicyScope", "RedrivePolicy")


def _attribute(value: Any) -> str:
    """An SNS attribute value: booleans lower-case, policies as JSON."""
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _subscribe(sns: Any, template: Template, logical_id: str) -> None:
    """An SNS subscription (SNS finds an existing one with the same topic, protocol and endpoint)."""
    properties = template.resolve(template.properties(logical_id))
    attributes = {name: _attribute(properties[name]) for name in _SUBSCRIPTION_ATTRIBUTES if name in properties}
    sns.subscribe(
        TopicArn=properties["TopicArn"],
        Protocol=properties["Protocol"],
        Endpoint=properties["Endpoint"],
        Attributes=attributes,
        ReturnSubscriptionArn=True,
    )
    log.info("subscription ready", extra={"subscription": logical_id, "protocol": properties["Protocol"]})


def _create_configuration_set(ses: Any, template: Template, logical_id: str) -> str:
    name = template.physical_name(logical_id)
    try:
        ses.create_configuration_set(ConfigurationSet={"Name": name})
    except ClientError as error:
        if error.response["Error"]["Code"] != "ConfigurationSetAlreadyExists":
            raise
    log.info("configuration set ready", extra={"configuration_set": name})
    return name


# SES v1's spelling of each event type (CloudFormation's), by its normalised name (see ses_events.event_type_key).
_V1_EVENT_TYPES = {
    "send": "send",
    "reject": "reject",
    "bounce": "bounce",
    "complaint": "complaint",
    "delivery": "delivery",
    "open": "open",
    "click": "click",
    "renderingfailure": "renderingFailure",
    "deliverydelay": "deliveryDelay",
    "subscription": "subscription",
}


def event_destination_request(template: Template, logical_id: str) -> dict[str, Any]:
    """The SES v1 CreateConfigurationSetEventDestination request for the resource (SNS destinations only)."""
    properties = template.resolve(template.properties(logical_id))
    destination = properties["EventDestination"]
    topic = (destination.get("SnsDestination") or {}).get("TopicARN")
    if not topic:
        raise TemplateError(f"{logical_id}: only SNS event destinations (SnsDestination.TopicARN) are emulated locally")
    types = []
    for event_type in destination.get("MatchingEventTypes", []):
        key = event_type.replace("_", "").lower()
        if key not in _V1_EVENT_TYPES:
            raise TemplateError(f"{logical_id}: unknown event type {event_type!r}")
        types.append(_V1_EVENT_TYPES[key])
    return {
        "ConfigurationSetName": properties["ConfigurationSetName"],
        "EventDestination": {
            "Name": destination.get("Name") or logical_id,
            "Enabled": as_bool(destination.get("Enabled", True)),
            "MatchingEventTypes": types,
            "SNSDestination": {"TopicARN": topic},
        },
    }


def _create_event_destination(ses: Any, template: Template, logical_id: str) -> None:
    request = event_destination_request(template, logical_id)
    try:
        ses.create_configuration_set_event_destination(**request)
    except ClientError as error:
        if error.response["Error"]["Code"] != "EventDestinationAlreadyExists":
            raise
    log.info(
        "event destination ready",
        extra={
            "configuration_set": request["ConfigurationSetName"],
            "events": request["EventDestination"]["MatchingEventTypes"],
        },
    )


def ses_identities(template: Template) -> list[str]:
    """Domains to verify in SES: the allowed sender domains and the bounces address's domain."""
    domains: list[str] = []
    for parameter in SES_IDENTITY_PARAMETERS:
        value = template.parameters.get(parameter, [])
        for item in value if isinstance(value, list) else [value]:
            domain = parseaddr(item)[1].rpartition("@")[2].lower()
            if domain and domain not in domains:
                domains.append(domain)
    return domains


def resource_variables(template: Template) -> dict[str, str]:
    """``DBMAIL_LOCAL_<LOGICALID>_{NAME,URL,ARN}`` for every table, queue, bucket and topic.

    The template's own environment names only what the functions need; tests and tools also
    need the dead-letter and failure queues.
    """
    variables: dict[str, str] = {}
    for logical_id in template.resources("AWS::DynamoDB::Table", "AWS::S3::Bucket"):
        variables[f"DBMAIL_LOCAL_{logical_id.upper()}_NAME"] = template.physical_name(logical_id)
    for logical_id in template.resources("AWS::SQS::Queue"):
        prefix = f"DBMAIL_LOCAL_{logical_id.upper()}"
        variables[f"{prefix}_NAME"] = template.physical_name(logical_id)
        variables[f"{prefix}_URL"] = template.ref(logical_id)
        variables[f"{prefix}_ARN"] = template.get_att(logical_id, "Arn")
    for logical_id in template.resources("AWS::SNS::Topic"):
        variables[f"DBMAIL_LOCAL_{logical_id.upper()}_NAME"] = template.physical_name(logical_id)
        variables[f"DBMAIL_LOCAL_{logical_id.upper()}_ARN"] = template.ref(logical_id)
    for logical_id in template.resources("AWS::SES::ConfigurationSet"):
        variables[f"DBMAIL_LOCAL_{logical_id.upper()}_NAME"] = template.physical_name(logical_id)
    for logical_id in template.resources("AWS::SecretsManager::Secret"):
        variables[f"DBMAIL_LOCAL_{logical_id.upper()}_ARN"] = template.ref(logical_id)
    return variables
