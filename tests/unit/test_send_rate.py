"""The fleet's send rate: a token bucket in DynamoDB (moto) shared by every container, its burst,
the priority reserve, the bounded wait; the SES quota it reads and the local SES that enforces it."""

import threading
import time
from bisect import bisect_right

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.ses.models import SESBackend
from moto.ses.responses import EmailResponse
from moto.sesv2.responses import SESV2Response

from dbmail import wiring
from dbmail.core.errors import ConfigurationError, DeliveryError, FailureKind
from dbmail.core.settings import VARIABLES
from dbmail.core.transports import SesTransport, ses_failure_kind
from dbmail.outgoing.send_rate import (
    TOKEN_TTL,
    FleetBudget,
    MeteredTransport,
    Unlimited,
    draw,
    metered,
    send_rate,
)
from dbmail.outgoing.send_rate_store import DynamoBucket, ses_quota
from dbmail_local.ses_quota import SesRateLimit, limit_send_rate, rate_from_env, read_counts, report_quota
from tests.conftest import function_settings

TABLE = "dbmail-send-rate"


class SerializedDynamo:
    """DynamoDB applies the writes to one item one at a time, conditions included; moto takes no
    lock, so threads would race between its check and its write. This client does, and counts."""

    def __init__(self, client):
        self._client = client
        self._lock = threading.Lock()
        self.calls = 0

    def update_item(self, **kwargs):
        with self._lock:
            self.calls += 1
            return self._client.update_item(**kwargs)


@pytest.fixture
def dynamodb(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "bucket", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "bucket", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield SerializedDynamo(client)


class GrantLog:
    """A bucket that notes what it granted, when: (time, tokens)."""

    def __init__(self, bucket, clock=time.time):
        self._bucket, self._clock = bucket, clock
        self.grants: list[tuple[float, int]] = []
        self._lock = threading.Lock()

    def take(self, cost, now, ceiling, full):
        granted, full_at = self._bucket.take(cost, now, ceiling, full)
        if granted:
            with self._lock:
                self.grants.append((now, round(cost * RATE)))
        return granted, full_at


RATE = 100.0


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(bisect_right(times, t + window) - i for i, t in enumerate(times))


def test_two_containers_of_many_threads_never_pass_the_rate_beyond_the_burst(dynamodb):
    # given two containers (each its own budget) on one bucket, ten sending threads each, all bulk
    bucket = GrantLog(DynamoBucket(dynamodb, TABLE, "ses"))
    containers = [FleetBudget(bucket, RATE), FleetBudget(bucket, RATE)]
    sent: list[float] = []
    lock = threading.Lock()
    start = time.time()
    stop = start + 2.0

    def send(budget):
        while time.time() < stop:
            if budget.take(False, lambda: stop - time.time()):
                with lock:
                    sent.append(time.time())

    # when they send as fast as the budget lets them for two seconds
    threads = [threading.Thread(target=send, args=(budget,)) for budget in containers for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    burst = containers[0].burst
    # then the bucket granted no more than the burst plus the rate over any stretch of time
    granted = [t for t, tokens in bucket.grants for _ in range(tokens)]
    for window in (0.1, 0.5, 1.0):
        assert most_in_any_window(granted, window) <= burst + RATE * window + 1, window
    # and the sends (a token is used within TOKEN_TTL of its grant) stay within that plus the TTL
    assert most_in_any_window(sent, 1.0) <= burst + RATE * (1.0 + TOKEN_TTL) + 1
    # and the bucket refilled: past the burst, well into the two seconds' tokens (how close to
    # the rate a loaded machine gets is the bench's to say: its rate run at MaxSendRate)
    assert len(sent) > burst + RATE * 0.5, len(sent)
    # and the calls were amortised over blocks of tokens, conditional failures included (how
    # few depends on the machine's timing: the bench measures it; one a token would be 1.0)
    assert dynamodb.calls / len(sent) < 1.0, (dynamodb.calls, len(sent))


def frozen(at: float = 1_000_000.0):
    return lambda: at


def test_the_priority_lane_has_a_reserve_that_bulk_cannot_take(dynamodb):
    # given a rate of 20/s: a burst of 10 tokens, 5 of them the priority lane's reserve
    budget = FleetBudget(DynamoBucket(dynamodb, TABLE, "ses"), 20.0, clock=frozen())
    assert (budget.burst, budget.reserve) == (10, 5)
    # when bulk takes all it can at one instant
    bulk = 0
    while budget.take(False, lambda: 0.0):
        bulk += 1
    # then it got the burst less the reserve, and the priority lane still gets the reserve at once
    assert bulk == 5
    priority = 0
    while budget.take(True, lambda: 0.0):
        priority += 1
    assert priority == 5


def test_a_second_container_sees_what_the_first_took(dynamodb):
    # given one container took the whole burst at an instant
    bucket = DynamoBucket(dynamodb, TABLE, "ses")
    first, second = FleetBudget(bucket, 20.0, clock=frozen()), FleetBudget(bucket, 20.0, clock=frozen())
    while first.take(True, lambda: 0.0):
        pass
    # when another container asks at that instant, then it gets nothing: the bucket is shared
    assert not second.take(True, lambda: 0.0)
    assert not second.take(False, lambda: 0.0)


def test_a_wait_that_would_pass_the_reserve_gives_up_at_once_and_a_shorter_one_waits(dynamodb):
    # given a rate of 0.5/s whose single token was just taken (the next one comes in 2 s); the
    # times are wide, so a loaded machine's slow calls cannot pass for a wait or its absence
    budget = FleetBudget(DynamoBucket(dynamodb, TABLE, "ses"), 0.5)
    assert budget.take(True, lambda: 0.0)
    # when a send has less time left than the next token needs, then it is refused at once
    # (waiting out its 1 s first would take that second)
    began = time.monotonic()
    assert not budget.take(True, lambda: 1.0)
    assert time.monotonic() - began < 0.75
    # and a send with time enough waits for the token
    began = time.monotonic()
    assert budget.take(True, lambda: 8.0)
    assert 0.8 < time.monotonic() - began < 6.0


def test_the_send_rate_is_max_send_rate_else_the_ses_quota_else_none():
    def quota():
        raise AssertionError("the quota is read only when MaxSendRate is 0 and the provider is SES")

    assert send_rate(25.0, "ses", quota) == 25.0
    assert send_rate(25.0, "sendgrid", quota) == 25.0
    assert send_rate(0.0, "sendgrid", quota) is None
    assert send_rate(0.0, "ses", lambda: 14.0) == 14.0
    assert send_rate(0.0, "ses", lambda: -1.0) is None  # SES's "no limit"


def test_max_send_rate_is_checked_at_cold_start():
    parse = VARIABLES["DBMAIL_MAX_SEND_RATE"].parse
    assert parse("DBMAIL_MAX_SEND_RATE", " 12.5 ") == 12.5
    assert parse("DBMAIL_MAX_SEND_RATE", "0") == 0.0
    for bad in ("-1", "fast", "nan", "inf", ""):
        with pytest.raises(ConfigurationError, match="DBMAIL_MAX_SEND_RATE"):
            parse("DBMAIL_MAX_SEND_RATE", bad)


@pytest.fixture
def ses_patches(monkeypatch):
    """The local SES's quota and throttle patches, undone after the test."""
    monkeypatch.setattr(SESBackend, "get_send_quota", SESBackend.get_send_quota)
    monkeypatch.setattr(SESV2Response, "get_account", getattr(SESV2Response, "get_account", None), raising=False)
    for cls, name in ((SESV2Response, "send_email"), (EmailResponse, "send_email"), (EmailResponse, "send_raw_email")):
        monkeypatch.setattr(cls, name, getattr(cls, name))


def test_wiring_reads_the_ses_quota_and_takes_tokens_from_the_send_rate_table(moto_stack, ses_patches):
    # given the local SES reports a quota of 40 emails/s (MaxSendRate is 0)
    report_quota(40.0)
    settings = function_settings("send")
    assert settings.max_send_rate == 0
    assert ses_quota(boto3.client("sesv2", region_name="us-east-1")) == 40.0
    # when the send function's budget is built and takes a token
    budget = wiring.send_budget(settings)
    assert isinstance(budget, FleetBudget) and budget.rate == 40.0
    before = time.time()
    assert budget.take(False, lambda: 1.0)
    # then the bucket's item in the stack's SendRateTable moved
    table = moto_stack.template.physical_name("SendRateTable")
    assert settings.send_rate_table == table
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(TableName=table, Key={"bucket": {"S": "ses"}})
    assert float(item["Item"]["full_at"]["N"]) > before
    # and so do the inbound and expire functions' (the failure reports go through a metered transport)
    assert isinstance(wiring.inbound_router(function_settings("inbound")).budget, FleetBudget)
    assert isinstance(wiring.expirer(function_settings("expire")).transport, MeteredTransport)


def test_without_a_quota_nothing_is_metered(moto_stack):
    # given the local SES without a limit (GetAccount says -1), when wiring builds the services
    budget = wiring.send_budget(function_settings("send"))
    # then no rate applies and transports are not wrapped
    assert isinstance(budget, Unlimited)
    assert isinstance(wiring.expirer(function_settings("expire")).transport, SesTransport)


class Refusing:
    def __init__(self):
        self.asked = 0

    def take(self, priority, time_left):
        self.asked += 1
        return priority and self.asked == 1


def test_a_message_draws_a_token_per_recipient_and_fails_for_now_without():
    # given a budget with one token, then none, when a message to three recipients draws
    budget = Refusing()
    with pytest.raises(DeliveryError) as raised:
        draw(budget, 3, within=0.1)
    # then it asked for the priority lane, per recipient, and failed as throttled (tried again later)
    assert budget.asked == 2 and raised.value.kind is FailureKind.THROTTLED
    transport = object()
    assert metered(transport, Unlimited()) is transport


# ---- the local SES's quota and throttle ------------------------------------------------------


def test_the_local_ses_admits_a_burst_of_its_rate_then_its_rate(tmp_path):
    now = [0.0]
    limit = SesRateLimit(5.0, tmp_path / "ses_rate.json", clock=lambda: now[0])
    # a burst of R
    assert [limit.admit() for _ in range(6)] == [True] * 5 + [False]
    # then R per second
    now[0] = 0.2
    assert [limit.admit(), limit.admit()] == [True, False]
    now[0] = 10.0
    assert limit.admit(3) and limit.admit(2) and not limit.admit(1)
    assert read_counts(tmp_path) == {"max_send_rate": 5.0, "accepted": 8, "throttled": 3}
    assert read_counts(tmp_path / "none")["throttled"] == 0


def test_the_rate_comes_from_the_environment():
    assert rate_from_env({}) is None and rate_from_env({"DBMAIL_LOCAL_SES_MAX_RATE": " "}) is None
    assert rate_from_env({"DBMAIL_LOCAL_SES_MAX_RATE": "50"}) == 50.0
    with pytest.raises(ValueError, match="DBMAIL_LOCAL_SES_MAX_RATE"):
        rate_from_env({"DBMAIL_LOCAL_SES_MAX_RATE": "0"})


def test_sends_above_the_local_ses_rate_get_ses_throttling_error(moto_stack, ses_patches, tmp_path):
    # given the local SES at 2 emails/s, and a client that does not retry
    report_quota(2.0)
    limit_send_rate(SesRateLimit(2.0, tmp_path / "ses_rate.json"))
    once = botocore.config.Config(retries={"total_max_attempts": 1})
    v2 = boto3.client("sesv2", region_name="us-east-1", config=once)
    v1 = boto3.client("ses", region_name="us-east-1", config=once)
    assert v1.get_send_quota()["MaxSendRate"] == 2.0
    sender = moto_stack.settings.default_sender.rpartition("<")[2].rstrip(">")
    message = {"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}}}

    def send_v2():
        v2.send_email(FromEmailAddress=sender, Destination={"ToAddresses": ["a@example.net"]}, Content=message)

    # when three are sent at once, then the third is refused as SES refuses it, and counted
    send_v2()
    send_v2()
    with pytest.raises(ClientError) as v2_refused:
        send_v2()
    assert v2_refused.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert ses_failure_kind(v2_refused.value) is FailureKind.THROTTLED
    with pytest.raises(ClientError) as v1_refused:
        v1.send_email(
            Source=sender,
            Destination={"ToAddresses": ["a@example.net"]},
            Message={"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}},
        )
    assert v1_refused.value.response["Error"] == {
        "Type": "Sender",
        "Code": "Throttling",
        "Message": "Maximum sending rate exceeded.",
    }
    assert ses_failure_kind(v1_refused.value) is FailureKind.THROTTLED
    assert read_counts(tmp_path) == {"max_send_rate": 2.0, "accepted": 2, "throttled": 2}
