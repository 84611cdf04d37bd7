"""How the command words AWS and PynamoDB errors it did not see coming: one line naming the service
(from the endpoint's host or the AWS_ENDPOINT_URL_* it matches), a hint for a local or a real
stack, and exit 3; any other error is an internal one (exit 1)."""

from __future__ import annotations

import pytest
from botocore import exceptions as boto
from pynamodb.exceptions import GetError

from dbmail.cli import main
from dbmail.cli.errors import AWS_HINT, LOCAL_STACK_HINT, reach


def failing_status(monkeypatch, error: BaseException):
    """`dbmail status` meets ``error`` where it reads the request."""

    def status(request_id):
        raise error

    monkeypatch.setattr("dbmail.client.request_status", status)


def run_status(capsys) -> tuple[int, str]:
    code = main(["status", "0123456789abcdef"])
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "Traceback" not in err
    return code, err


@pytest.mark.parametrize(
    "url, env, expected",
    [
        (
            "https://sqs.us-east-1.amazonaws.com/",
            {},
            f"cannot reach SQS at https://sqs.us-east-1.amazonaws.com ({AWS_HINT})",
        ),
        (
            "https://email.eu-west-1.amazonaws.com",
            {},
            f"cannot reach SES at https://email.eu-west-1.amazonaws.com ({AWS_HINT})",
        ),
        (
            "http://127.0.0.1:9324",
            {"AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:9324/"},
            f"cannot reach SQS at http://127.0.0.1:9324 ({LOCAL_STACK_HINT})",
        ),
        (
            "http://127.0.0.1:4566",
            {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:4566"},
            f"cannot reach S3 at http://127.0.0.1:4566 ({LOCAL_STACK_HINT})",
        ),
        ("http://10.0.0.7:5000", {}, f"cannot reach AWS at http://10.0.0.7:5000 ({LOCAL_STACK_HINT})"),
    ],
)
def test_a_connection_error_names_the_service_by_its_endpoint(url, env, expected, moto_stack, monkeypatch, capsys):
    # given a command whose AWS call cannot connect to ``url``
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    failing_status(monkeypatch, boto.EndpointConnectionError(endpoint_url=url))
    # when it runs, then the line names the service and the endpoint, with the hint, and exits 3
    assert run_status(capsys) == (3, f"dbmail: {expected}\n")


def test_a_read_timeout_says_the_service_did_not_answer(moto_stack, monkeypatch, capsys):
    failing_status(monkeypatch, boto.ReadTimeoutError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com"))
    assert run_status(capsys) == (
        3,
        f"dbmail: DynamoDB at https://dynamodb.us-east-1.amazonaws.com did not answer in time ({AWS_HINT})\n",
    )


def test_a_pynamodb_error_over_a_connection_error_is_dynamodb(moto_stack, monkeypatch, capsys):
    # given PynamoDB's GetError whose cause is a refused connection to an endpoint of no known service
    cause = boto.EndpointConnectionError(endpoint_url="http://db.internal:8000")
    failing_status(monkeypatch, GetError("Failed to get item", cause=cause))
    # then the service is DynamoDB all the same
    assert run_status(capsys) == (3, f"dbmail: cannot reach DynamoDB at http://db.internal:8000 ({LOCAL_STACK_HINT})\n")


def test_a_pynamodb_error_without_a_botocore_cause_is_shown_as_a_dynamodb_error(moto_stack, monkeypatch, capsys):
    failing_status(monkeypatch, GetError("Item too large"))
    assert run_status(capsys) == (3, "dbmail: DynamoDB error: Item too large\n")


def test_missing_credentials_say_how_to_set_them(moto_stack, monkeypatch, capsys):
    failing_status(monkeypatch, boto.NoCredentialsError())
    code, err = run_status(capsys)
    assert code == 3
    assert err.startswith("dbmail: Unable to locate credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID")
    assert LOCAL_STACK_HINT in err


def test_another_botocore_error_is_an_aws_error(moto_stack, monkeypatch, capsys):
    failing_status(monkeypatch, boto.ParamValidationError(report="Invalid type for parameter Key"))
    code, err = run_status(capsys)
    assert code == 3 and err.startswith(
        "dbmail: AWS error: Parameter validation failed: Invalid type for parameter Key"
    )


def test_an_aws_error_behind_another_exception_is_found(moto_stack, monkeypatch, capsys):
    # given a service that wraps the botocore error it met (raise ... from)
    try:
        try:
            raise boto.EndpointConnectionError(endpoint_url="https://sqs.us-east-1.amazonaws.com")
        except boto.EndpointConnectionError as exc:
            raise RuntimeError("enqueue failed") from exc
    except RuntimeError as wrapped:
        failing_status(monkeypatch, wrapped)
    # then the line is the AWS error's, not an internal error
    assert run_status(capsys) == (3, f"dbmail: cannot reach SQS at https://sqs.us-east-1.amazonaws.com ({AWS_HINT})\n")


def test_a_multi_line_error_is_shown_on_one_line(moto_stack, monkeypatch, capsys):
    failing_status(monkeypatch, ValueError("first\n   second\n"))
    assert run_status(capsys) == (
        1,
        "dbmail: internal error: ValueError: first second (run with --debug for the traceback)\n",
    )


def test_reach_leaves_a_malformed_or_aws_endpoint_to_botocore():
    # given endpoints the check cannot or need not try (a malformed URL, AWS itself, none)
    # then it returns without raising (botocore's own error will say what is wrong)
    for url in ("http://[::1", "https://dynamodb.us-east-1.amazonaws.com", None, ""):
        assert reach("DynamoDB", url) is None
