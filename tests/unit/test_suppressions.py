"""The suppression list (SuppressionTable, moto in-process): one item per bare lower-cased
address, the first entry kept, and a stream of old and new images for the website."""

from datetime import UTC, datetime

import boto3
import pytest

from dbmail import wiring
from dbmail.core.errors import AddressInvalid, ConfigurationError
from dbmail.core.settings import Settings
from dbmail.feedback.store import SuppressionStore, suppression_key
from tests.conftest import function_settings


@pytest.fixture
def store(moto_stack):
    return wiring.suppression_store(function_settings("feedback"))


def test_an_address_is_added_once_under_its_bare_lower_cased_form(store):
    when = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    # when an address is added, in whatever spelling
    assert store.add(
        '"Ada L." <Ada@Example.ORG>', "complaint", "ses", detail="abuse", user_id=7, request_id="r1", now=when
    )
    # then it is found under every spelling, with what was recorded
    entry = store.get("  ada@example.org ")
    assert (entry.address, entry.reason, entry.source, entry.detail, entry.user_id, entry.request_id) == (
        "ada@example.org",
        "complaint",
        "ses",
        "abuse",
        7,
        "r1",
    )
    assert entry.created_at == when and store.is_suppressed("ADA@example.org")
    # and adding it again keeps the first entry
    assert not store.add("ada@example.org", "unsubscribe", "unsubscribe")
    assert store.get("ada@example.org").reason == "complaint"
    # and other addresses are not suppressed
    assert not store.is_suppressed("ada+trip@example.org") and store.get("bob@example.org") is None


def test_remove_and_list(store):
    store.add("a@example.org", "operator", "cli", detail="asked by phone")
    store.add("b@example.org", "bounce", "dsn")
    assert sorted((e.address, e.reason) for e in store.iter_all()) == [
        ("a@example.org", "operator"),
        ("b@example.org", "bounce"),
    ]
    assert store.remove("A@example.org") is True
    assert store.remove("a@example.org") is False
    assert [e.address for e in store.iter_all()] == ["b@example.org"]


@pytest.mark.parametrize("address", ["", "nobody", None, 42, "a@b", "x" * 400 + "@example.org", "a@b.c\r\nBcc: d@e.f"])
def test_what_is_not_an_address_is_refused(store, address):
    with pytest.raises(AddressInvalid):
        store.add(address, "operator", "cli")
    with pytest.raises(AddressInvalid):
        suppression_key(address)


@pytest.mark.parametrize(("reason", "source"), [("spam", "ses"), ("bounce", "website"), ("", "")])
def test_reasons_and_sources_are_the_documented_ones(store, reason, source):
    with pytest.raises(ValueError, match="unknown suppression"):
        store.add("a@example.org", reason, source)
    assert not store.is_suppressed("a@example.org")


def test_the_table_streams_old_and_new_images_for_the_website(store, moto_stack):
    table = boto3.client("dynamodb", region_name="us-east-1").describe_table(
        TableName=moto_stack.template.physical_name("SuppressionTable")
    )["Table"]
    assert table["KeySchema"] == [{"AttributeName": "address", "KeyType": "HASH"}]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    # and a removal is on the stream with the item it removed
    store.add("gone@example.org", "unsubscribe", "unsubscribe", user_id=3)
    store.remove("gone@example.org")
    streams = boto3.client("dynamodbstreams", region_name="us-east-1")
    shard = streams.describe_stream(StreamArn=table["LatestStreamArn"])["StreamDescription"]["Shards"][0]
    iterator = streams.get_shard_iterator(
        StreamArn=table["LatestStreamArn"], ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator)["Records"]
    assert [r["eventName"] for r in records] == ["INSERT", "REMOVE"]
    assert records[1]["dynamodb"]["OldImage"]["reason"] == {"S": "unsubscribe"}


def test_settings_without_the_table_say_so():
    with pytest.raises(ConfigurationError, match="DBMAIL_SUPPRESSION_TABLE"):
        SuppressionStore(Settings(request_table="r", recipient_table="e", email_table="t"))
