"""Settings.for_function: each reader of settings gets only the variables it declares, each checked
at its cold start, and an error names the variable and what is wrong with it. Secrets are read from
Secrets Manager (moto in-process, with the template's secrets) by the ARN their variable holds."""

from __future__ import annotations

from datetime import timedelta
from functools import cache

import boto3
import pytest
from moto import mock_aws

from dbmail.core import secrets
from dbmail.core.errors import ConfigurationError
from dbmail.core.settings import ENVIRONMENT, WEBSITE, Settings


@pytest.fixture(autouse=True)
def secrets_manager(monkeypatch):
    """The template's secrets in moto (the unsubscribe secret generated, the SendGrid ones "none")."""
    from dbmail_local.cfn import LocalTarget, Template
    from dbmail_local.resources import create_resources

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETSMANAGER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        secrets.clear()
        create_resources(Template.load(target=LocalTarget(sqs_url="https://sqs.us-east-1.amazonaws.com")))
        yield boto3.client("secretsmanager", region_name="us-east-1")
    secrets.clear()


def set_secret(client, variable: str, value: str) -> None:
    """Give the secret ``variable`` names a new value (as an operator's put-secret-value does)."""
    client.put_secret_value(SecretId=stack_env()[variable], SecretString=value)
    secrets.clear()


@cache
def _stack_env() -> tuple[tuple[str, str], ...]:
    """stack.env's DBMAIL_* variables (every function's), as the local stack writes them."""
    from dbmail_local.cfn import LocalTarget, Template

    env = Template.load(target=LocalTarget(sqs_url="https://sqs.us-east-1.amazonaws.com")).environment()
    return tuple((name, value) for name, value in env.items() if name.startswith("DBMAIL_"))


def stack_env(**changes: str | None) -> dict[str, str]:
    """The stack's variables with ``changes`` (None removes one)."""
    env = dict(_stack_env())
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def test_each_function_reads_its_variables_from_the_stack_env():
    # given the stack's variables, when every reader's settings are read, then each is built
    for function in ENVIRONMENT:
        settings = Settings.for_function(function, stack_env())
        assert settings.function == function
    send = Settings.for_function("send", stack_env())
    assert send.email_table == "dbmail-TextOfEmailTable"
    # and its secrets are the values of the secrets its variables name, never the variables' text
    env = stack_env()
    assert env["DBMAIL_UNSUBSCRIBE_SECRET_ARN"].startswith("arn:aws:secretsmanager:us-east-1:")
    generated = secrets_manager_value(env["DBMAIL_UNSUBSCRIBE_SECRET_ARN"])
    assert send.unsubscribe_secret == generated and len(generated) == 64
    assert send.sendgrid_api_key == ""  # the secret holds "none": not set
    # and a variable the function does not declare is not read (send has no inbound tables)
    assert send.inbound_table == ""


def secrets_manager_value(arn: str) -> str:
    return boto3.client("secretsmanager", region_name="us-east-1").get_secret_value(SecretId=arn)["SecretString"]


def test_an_unknown_function_is_a_configuration_error_naming_the_known_ones():
    with pytest.raises(ConfigurationError, match=r"no settings are declared for 'sned'; one of \['archive', 'expand'"):
        Settings.for_function("sned", stack_env())


def test_a_missing_variable_fails_the_functions_cold_start_naming_it():
    # given the send function's environment without its queue, and with an empty required value
    env = stack_env(DBMAIL_SEND_QUEUE_URL=None, DBMAIL_EMAIL_TABLE="  ")
    # when its settings are read, then both are named, with where they come from
    with pytest.raises(ConfigurationError) as failed:
        Settings.for_function("send", env)
    assert str(failed.value) == (
        "missing settings: DBMAIL_EMAIL_TABLE, DBMAIL_SEND_QUEUE_URL (the send function's environment; "
        "deployed: set by template.yaml; local: source .local/stack.env)"
    )


def test_the_website_may_leave_optional_variables_unset_but_a_function_may_not():
    # given no stranded_after and no inbound tables
    env = stack_env(DBMAIL_STRANDED_AFTER_SECONDS=None, DBMAIL_INBOUND_TABLE=None)
    # then the website's settings take the defaults
    website = Settings.for_function(WEBSITE, env)
    assert website.stranded_after == timedelta(minutes=10)
    assert website.inbound_table == ""
    # but the inbound function refuses to start without them
    with pytest.raises(
        ConfigurationError, match="missing settings: DBMAIL_INBOUND_TABLE, DBMAIL_STRANDED_AFTER_SECONDS"
    ):
        Settings.for_function("inbound", env)
    # and the website's own missing required variable is named without a function's environment
    with pytest.raises(ConfigurationError) as failed:
        Settings.for_function(WEBSITE, stack_env(DBMAIL_REQUEST_TABLE=None))
    assert str(failed.value).startswith("missing settings: DBMAIL_REQUEST_TABLE (deployed: set by template.yaml")


def test_require_inbound_names_the_inbound_settings_the_website_lacks():
    # given website settings without the inbound tables
    website = Settings.for_function(WEBSITE, stack_env(DBMAIL_INBOUND_TABLE=None, DBMAIL_DIRECTORY_TABLE=None))
    # then asking for inbound names exactly the missing ones
    with pytest.raises(ConfigurationError) as failed:
        website.require_inbound()
    assert str(failed.value) == "inbound settings missing: DBMAIL_INBOUND_TABLE, DBMAIL_DIRECTORY_TABLE"
    # and with them, require_inbound returns the settings themselves
    complete = Settings.for_function(WEBSITE, stack_env())
    assert complete.require_inbound() is complete


@pytest.mark.parametrize(
    "function, name, raw, message",
    [
        ("expand", "DBMAIL_ALLOWED_SENDER_DOMAINS", " , ", "DBMAIL_ALLOWED_SENDER_DOMAINS lists no domain"),
        ("send", "DBMAIL_BOUNCES_ADDRESS", "bounces.example.org", "DBMAIL_BOUNCES_ADDRESS must be an email address"),
        ("send", "DBMAIL_PROVIDER", "Mailgun", "DBMAIL_PROVIDER must be one of ('ses', 'sendgrid'), not 'mailgun'"),
        ("inbound", "DBMAIL_SPAM_ACTION", "delete", "DBMAIL_SPAM_ACTION must be one of"),
        (
            "send",
            "DBMAIL_RETRY_MAX_DELAY_SECONDS",
            "0",
            "DBMAIL_RETRY_MAX_DELAY_SECONDS must be a whole number of seconds, at least 1, not '0'",
        ),
        (
            "inbound",
            "DBMAIL_STRANDED_AFTER_SECONDS",
            "1.5",
            "DBMAIL_STRANDED_AFTER_SECONDS must be a whole number of seconds, at least 1, not '1.5'",
        ),
        (
            "send",
            "DBMAIL_PROVIDER",
            "sendgrid",
            "DBMAIL_PROVIDER is sendgrid but the SendGrid API key is not set: the secret "
            "DBMAIL_SENDGRID_API_KEY_SECRET_ARN names holds 'none'",
        ),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(function, name, raw, message):
    with pytest.raises(ConfigurationError) as failed:
        Settings.for_function(function, stack_env(**{name: raw}))
    assert str(failed.value).startswith(message)


def test_a_bad_secret_is_refused_naming_its_variable(secrets_manager):
    # given an unsubscribe secret an operator set too short
    set_secret(secrets_manager, "DBMAIL_UNSUBSCRIBE_SECRET_ARN", "short")
    # when the send function starts, then the variable naming the secret is named, not the value
    with pytest.raises(ConfigurationError) as failed:
        Settings.for_function("send", stack_env())
    assert str(failed.value) == ("DBMAIL_UNSUBSCRIBE_SECRET_ARN: the unsubscribe secret must be at least 32 characters")
    # and an unset unsubscribe secret ("none") is refused too: the function cannot sign links
    set_secret(secrets_manager, "DBMAIL_UNSUBSCRIBE_SECRET_ARN", "none")
    with pytest.raises(ConfigurationError, match="DBMAIL_UNSUBSCRIBE_SECRET_ARN: the secret it names holds no value"):
        Settings.for_function("send", stack_env())


def test_a_secret_that_cannot_be_read_fails_the_cold_start_naming_its_variable():
    # given a variable naming a secret that does not exist
    env = stack_env(DBMAIL_UNSUBSCRIBE_SECRET_ARN="arn:aws:secretsmanager:us-east-1:123456789012:secret:gone")
    # then the cold start fails with a ConfigurationError naming the variable and the secret
    with pytest.raises(ConfigurationError) as failed:
        Settings.for_function("send", env)
    assert str(failed.value).startswith(
        "DBMAIL_UNSUBSCRIBE_SECRET_ARN: cannot read the secret 'arn:aws:secretsmanager:us-east-1:123456789012:secret:gone'"
    )


def test_secrets_are_cached_between_cold_starts_in_one_process(secrets_manager):
    # given the send function's settings, read once
    first = Settings.for_function("send", stack_env())
    # when the secret changes and settings are read again within the cache's max age
    secrets_manager.put_secret_value(
        SecretId=stack_env()["DBMAIL_UNSUBSCRIBE_SECRET_ARN"], SecretString="a-new-secret-of-at-least-32-characters"
    )
    # then the cached value is used (no second call to Secrets Manager) until the cache is cleared
    assert Settings.for_function("send", stack_env()).unsubscribe_secret == first.unsubscribe_secret
    secrets.clear()
    assert Settings.for_function("send", stack_env()).unsubscribe_secret == "a-new-secret-of-at-least-32-characters"


def test_the_website_reads_no_secret():
    # given settings read with no Secrets Manager at all, then the website's need none
    def no_secrets(variable, arn):
        raise AssertionError(f"the website read {variable}")

    assert Settings.for_function(WEBSITE, stack_env(), read_secret=no_secrets).function == WEBSITE


def test_values_are_normalised():
    # given values with spaces, capitals and a trailing slash, and an empty subaddress separator
    env = stack_env(
        DBMAIL_ALLOWED_SENDER_DOMAINS=" Example.ORG, ,learningu.org ",
        DBMAIL_SITE_URL="https://esp.example.org/ ",
        DBMAIL_PROVIDER=" SES ",
        DBMAIL_STRANDED_AFTER_SECONDS="90",
        DBMAIL_SUBADDRESS_SEPARATOR="",
    )
    website = Settings.for_function(WEBSITE, env)
    assert website.allowed_sender_domains == ("example.org", "learningu.org")
    assert website.site_url == "https://esp.example.org"
    assert website.stranded_after == timedelta(seconds=90)
    assert website.subaddress_separator is None  # subaddressing off
    assert Settings.for_function("send", env).provider == "ses"


def test_region_and_endpoint_come_from_the_aws_variables():
    env = stack_env()
    assert Settings.for_function("send", env).region == "us-east-1"
    assert Settings.for_function("send", env).dynamodb_endpoint is None
    assert Settings.for_function("send", {**env, "AWS_DEFAULT_REGION": "eu-west-1"}).region == "eu-west-1"
    local = {**env, "AWS_REGION": "eu-central-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:8000"}
    assert (Settings.for_function("send", local).region, Settings.for_function("send", local).dynamodb_endpoint) == (
        "eu-central-1",
        "http://127.0.0.1:8000",
    )
    dynamodb_only = {**local, "AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:8001"}
    assert Settings.for_function("send", dynamodb_only).dynamodb_endpoint == "http://127.0.0.1:8001"


def test_sendgrid_with_its_key_is_accepted(secrets_manager):
    set_secret(secrets_manager, "DBMAIL_SENDGRID_API_KEY_SECRET_ARN", "SG.key")
    env = stack_env(DBMAIL_PROVIDER="sendgrid")
    settings = Settings.for_function("send", env)
    assert (settings.provider, settings.sendgrid_api_key) == ("sendgrid", "SG.key")
    # and a reader without the transport's variables never checks the key
    assert Settings.for_function("inbound", stack_env(DBMAIL_PROVIDER="sendgrid")).provider == "ses"
