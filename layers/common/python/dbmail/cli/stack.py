"""`dbmail --stack-name NAME ...`: the settings of a deployed stack, read from CloudFormation.

The tables, queues and the configuration set come from the stack's Outputs (template.yaml names
each one the CLI reads); the configuration the website's settings also read (sender domains,
default sender, site URL, chapter domains, ...) comes from the stack's Parameters, as deployed.
Both become the DBMAIL_* variables of the website's settings (dbmail.core.settings), set in this
process before any command reads them, so every command works against the deployed stack.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dbmail.cli.errors import BadInput
from dbmail.core.errors import ConfigurationError

# Output key -> the variable it sets. Every one is required: a stack without one was deployed
# from an older template.yaml.
OUTPUT_VARIABLES: Mapping[str, str] = {
    "MessageRequestTableName": "DBMAIL_REQUEST_TABLE",
    "EmailRequestTableName": "DBMAIL_RECIPIENT_TABLE",
    "TextOfEmailTableName": "DBMAIL_EMAIL_TABLE",
    "SendQueueUrl": "DBMAIL_SEND_QUEUE_URL",
    "PrioritySendQueueUrl": "DBMAIL_PRIORITY_SEND_QUEUE_URL",
    "SuppressionTableName": "DBMAIL_SUPPRESSION_TABLE",
    "ConfigurationSetName": "DBMAIL_CONFIGURATION_SET",
    "InboundMailBucketName": "DBMAIL_INBOUND_BUCKET",
    "InboundMessageTableName": "DBMAIL_INBOUND_TABLE",
    "EmailListTableName": "DBMAIL_EMAILLIST_TABLE",
    "PlainRedirectTableName": "DBMAIL_REDIRECT_TABLE",
    "DirectoryTableName": "DBMAIL_DIRECTORY_TABLE",
}
# Outputs commands read directly (not settings): `dbmail redrive`'s dead-letter queue.
SEND_DEAD_LETTER_QUEUE_OUTPUT = "SendDeadLetterQueueUrl"
# Parameter -> the variable it sets. A parameter the stack does not list keeps the setting's
# default (the website may leave those unset).
PARAMETER_VARIABLES: Mapping[str, str] = {
    "AllowedSenderDomains": "DBMAIL_ALLOWED_SENDER_DOMAINS",
    "DefaultSender": "DBMAIL_DEFAULT_SENDER",
    "EmailHostSender": "DBMAIL_EMAIL_HOST_SENDER",
    "SiteUrl": "DBMAIL_SITE_URL",
    "BouncesAddress": "DBMAIL_BOUNCES_ADDRESS",
    "ChapterDomains": "DBMAIL_CHAPTER_DOMAINS",
    "SupportAddress": "DBMAIL_SUPPORT_ADDRESS",
    "ModeratorAddress": "DBMAIL_MODERATOR_ADDRESS",
    "SpamAction": "DBMAIL_SPAM_ACTION",
    "SubaddressSeparator": "DBMAIL_SUBADDRESS_SEPARATOR",
    "StrandedAfterSeconds": "DBMAIL_STRANDED_AFTER_SECONDS",
}


@dataclass(frozen=True)
class DeployedStack:
    name: str
    outputs: Mapping[str, str]
    variables: Mapping[str, str]  # the DBMAIL_* variables the website's settings read

    @property
    def send_dead_letter_queue_url(self) -> str:
        return self.outputs[SEND_DEAD_LETTER_QUEUE_OUTPUT]


def describe(stack_name: str, cloudformation) -> DeployedStack:
    """The stack's settings, from describe_stacks. Raises BadInput for a stack that does not
    exist and ConfigurationError for one that lacks an output this CLI reads."""
    from botocore.exceptions import ClientError

    try:
        (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", ""):
            region = cloudformation.meta.region_name
            raise BadInput(f"no stack {stack_name!r} in {region} (check --stack-name and AWS_REGION)") from None
        raise
    outputs = {o["OutputKey"]: o.get("OutputValue") or "" for o in stack.get("Outputs", [])}
    missing = sorted(set(OUTPUT_VARIABLES) - set(outputs)) + (
        [] if SEND_DEAD_LETTER_QUEUE_OUTPUT in outputs else [SEND_DEAD_LETTER_QUEUE_OUTPUT]
    )
    if missing:
        raise ConfigurationError(
            f"stack {stack_name!r} has no output {', '.join(missing)}: it was deployed from an older "
            "template.yaml (sam deploy this one)"
        )
    variables = {variable: outputs[output] for output, variable in OUTPUT_VARIABLES.items()}
    parameters = {p["ParameterKey"]: p.get("ParameterValue") or "" for p in stack.get("Parameters", [])}
    variables.update({v: parameters[p] for p, v in PARAMETER_VARIABLES.items() if p in parameters})
    return DeployedStack(name=stack_name, outputs=outputs, variables=variables)


def use_stack(stack_name: str) -> DeployedStack:
    """Read the stack and make its settings this process's: every DBMAIL_* variable set before
    (a sourced stack.env, say) is replaced, so nothing of another stack is mixed in."""
    import boto3

    from dbmail.core.settings import website_settings

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    deployed = describe(stack_name, boto3.session.Session().client("cloudformation", region_name=region))
    for name in [name for name in os.environ if name.startswith("DBMAIL_")]:
        del os.environ[name]
    os.environ.update(deployed.variables)
    website_settings.cache_clear()
    return deployed
