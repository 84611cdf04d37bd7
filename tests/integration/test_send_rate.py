"""The fleet's send rate on the local stack, against an SES that refuses sends above its quota:
MaxSendRate 0 reads that quota at cold start, and the token bucket keeps every send under it
while using it (the full 5,000-email run is `make bench`'s)."""

import pytest

from dbmail_local.rate_check import run, throttled_stack

RATE = 25.0  # emails/s: what this machine's local stack sends comfortably, shared with other tests
EMAILS = 500  # 20 s at the rate


@pytest.fixture(scope="module")
def throttled(tmp_path_factory):
    with throttled_stack(RATE, tmp_path_factory.mktemp("dbmail-rate")) as state:
        yield state


def test_a_bulk_request_at_the_ses_quota_is_never_throttled_and_uses_the_quota(throttled):
    # given a local SES that refuses sends above RATE emails/s (a token bucket of rate and burst RATE),
    # and send functions past their cold start (which reads that quota: MaxSendRate is 0)
    assert run(throttled, 10, timeout=30).throttles == 0
    # when a bulk request to EMAILS recipients is sent
    result = run(throttled, EMAILS, timeout=40)
    # then SES refused none of them, and they went at 90% of its rate or more
    assert result.max_send_rate == RATE
    assert result.emails == EMAILS
    assert result.throttles == 0
    assert 0.9 * RATE <= result.average <= 1.1 * RATE, result
