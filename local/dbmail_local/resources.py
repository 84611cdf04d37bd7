"""Creates the template's tables, queues and buckets in the emulators and verifies SES identities.

Everything is read from the template (see cfn.py). Creation is idempotent: what exists is kept.
``create_resources`` works against any boto3 client factory, so a unit test can build the same
tables and queues with moto in-process (``mock_aws``).
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any

import boto3
from botocore.exceptions import ClientError

from .cfn import Template, TemplateError

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
    ses_identities: list[str] = field(default_factory=list)


def create_resources(template: Template, client: ClientFactory | None = None) -> CreatedResources:
    """Creates every table, queue and bucket of the template and verifies its sender domains."""
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
    created.ses_identities = ses_identities(template)
    ses = client("ses")
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
    """``DBMAIL_LOCAL_<LOGICALID>_{NAME,URL,ARN}`` for every table, queue and bucket.

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
    return variables
