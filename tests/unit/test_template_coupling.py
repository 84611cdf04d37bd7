"""template.yaml and the code check each other: the timeouts, leases and tries that only work
together, read from the template the deployment uses."""

from datetime import timedelta

import pytest

from dbmail.core.settings import Settings
from dbmail.outgoing import expand, send
from dbmail_local.cfn import LocalTarget, Template


@pytest.fixture(scope="module")
def template():
    return Template.load(target=LocalTarget(sqs_url="https://sqs.us-east-1.amazonaws.com"))


def function_property(template, logical_id: str, name: str):
    return template.resolve(template.properties(logical_id)[name])


def test_the_send_queue_outlasts_the_claim_which_outlasts_a_send(template):
    send_timeout = int(function_property(template, "SendFunction", "Timeout"))
    visibility = int(template.resolve(template.properties("SendQueue")["VisibilityTimeout"]))
    lease = send.CLAIM_LEASE.total_seconds()
    # SQS's own rule for Lambda sources, then: a redelivery after a crash finds the claim lapsed,
    # and a live send's claim is never taken from it
    assert visibility >= 6 * send_timeout
    assert visibility > lease > send_timeout
    assert send_timeout > send.SEND_TIME_RESERVE_SECONDS


def test_the_queue_gives_each_email_as_many_receives_as_it_has_tries(template):
    redrive = template.resolve(template.properties("SendQueue")["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == Settings.max_tries


def test_the_expansion_lease_outlasts_an_expand_invocation(template):
    for function in ("ExpandFunction", "ExpireFunction"):
        timeout = timedelta(seconds=int(function_property(template, function, "Timeout")))
        assert timeout < expand.LEASE, function


def test_an_inbound_message_is_not_swept_while_its_invocation_may_still_run(template):
    from dbmail.inbound import router as inbound

    timeout = timedelta(seconds=int(function_property(template, "InboundFunction", "Timeout")))
    assert timeout < inbound.SWEEP_NOT_BEFORE and timeout < inbound.STUCK_AFTER
