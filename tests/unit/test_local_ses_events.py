"""The local SES's event publishing (dbmail_local/ses_events.py): the mailbox simulator's events,
in SES's shape, read by the feedback function's parser; and the configuration set's event
destination as the local stack creates it from template.yaml."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email import message_from_bytes

import boto3
import pytest

from dbmail.feedback.events import BounceType, FeedbackKind, from_ses_event
from dbmail_local.cfn import Template
from dbmail_local.resources import create_resources, event_destination_request
from dbmail_local.ses_events import EventPublisher, SentMail, auto_reply, events_for, simulator_kind

REF = "0123456789abcdef0123456789abcdef"
RAW = (
    "From: Splash <splash@example.org>\r\nTo: {to}\r\nSubject: Welcome\r\n"
    f"Message-ID: <dbmail.{REF}@example.org>\r\nReturn-Path: <bounces+{REF}@example.org>\r\n\r\nHello\r\n"
)


def sent_to(*recipients: str, tags=None) -> SentMail:
    return SentMail(
        message_id="0100019abcdef-11111111-2222-3333-4444-555555555555-000000",
        source="splash@example.org",
        recipients=recipients,
        raw=RAW.format(to=", ".join(recipients)).encode(),
        configuration_set="dbmail-SendingConfigurationSet",
        account_id="123456789012",
        region="us-east-1",
        tags=tags or {},
        sent_at=datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("bounce@simulator.amazonses.com", "bounce"),
        ("Bounce+label@Simulator.AmazonSES.com", "bounce"),
        ("complaint@simulator.amazonses.com", "complaint"),
        ("suppressionlist@simulator.amazonses.com", "suppressionlist"),
        ("ooto@simulator.amazonses.com", "ooto"),
        ("success@simulator.amazonses.com", "success"),
        ("bounce@example.org", "success"),
        ("Someone <someone@example.net>", "success"),
    ],
)
def test_the_simulator_addresses(address, kind):
    assert simulator_kind(address) == kind


def test_each_simulator_address_gets_its_events_and_the_feedback_parser_reads_them():
    # given one send to every simulator address
    addresses = [f"{k}@simulator.amazonses.com" for k in ("success", "bounce", "complaint", "suppressionlist", "ooto")]
    events = events_for(sent_to(*addresses))
    # then Send comes first, then each recipient's, as the feedback function reads them
    parsed = [from_ses_event(json.loads(json.dumps(event))) for event in events]
    assert [(e.kind, e.recipients, e.bounce_type) for e in parsed] == [
        (FeedbackKind.SENT, tuple(addresses), None),
        (FeedbackKind.DELIVERED, (addresses[0],), None),
        (FeedbackKind.BOUNCED, (addresses[1],), BounceType.PERMANENT),
        (FeedbackKind.DELIVERED, (addresses[2],), None),
        (FeedbackKind.COMPLAINED, (addresses[2],), None),
        (FeedbackKind.BOUNCED, (addresses[3],), BounceType.PERMANENT),
        (FeedbackKind.DELIVERED, (addresses[4],), None),
    ]
    assert {e.message_ref for e in parsed} == {REF}  # from our Message-ID, as SES gives the headers back
    assert {e.provider_message_id for e in parsed} == {"0100019abcdef-11111111-2222-3333-4444-555555555555-000000"}
    assert "550 5.1.1" in parsed[2].diagnostic and "Suppressed" in parsed[5].diagnostic
    # and SES's documented fields are there
    bounce = events[2]
    assert bounce["bounce"]["bouncedRecipients"][0] == {
        "emailAddress": addresses[1],
        "action": "failed",
        "status": "5.1.1",
        "diagnosticCode": "smtp; 550 5.1.1 user unknown",
    }
    assert bounce["mail"]["commonHeaders"]["messageId"] == f"<dbmail.{REF}@example.org>"
    assert bounce["mail"]["tags"]["ses:configuration-set"] == ["dbmail-SendingConfigurationSet"]
    assert events[4]["complaint"]["complaintFeedbackType"] == "abuse"


def test_the_same_send_gives_the_same_event_ids_and_the_sends_tags_are_kept():
    sent = sent_to("bounce@simulator.amazonses.com", "complaint@simulator.amazonses.com", tags={"message_ref": REF})
    first = [from_ses_event(e).event_id for e in events_for(sent) if e["eventType"] in ("Bounce", "Complaint")]
    again = [from_ses_event(e).event_id for e in events_for(sent) if e["eventType"] in ("Bounce", "Complaint")]
    assert first == again and len(set(first)) == 2
    assert events_for(sent)[0]["mail"]["tags"]["message_ref"] == [REF]


def test_the_ooto_auto_reply_goes_to_the_return_path_and_says_it_is_automatic():
    sent = sent_to("ooto@simulator.amazonses.com")
    assert sent.return_path == f"bounces+{REF}@example.org"
    reply = message_from_bytes(auto_reply(sent, "ooto@simulator.amazonses.com"))
    assert reply["To"] == f"bounces+{REF}@example.org"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == f"<dbmail.{REF}@example.org>"


def test_the_publisher_sends_only_the_event_types_the_destination_matches_and_the_auto_reply():
    published, replies = [], []
    destination = {
        "Name": "d",
        "Enabled": True,
        "MatchingEventTypes": ["bounce", "deliveryDelay"],
        "SNSDestination": {"TopicARN": "arn:aws:sns:us-east-1:123456789012:t"},
    }
    publisher = EventPublisher(
        lambda account, region, name: [destination],
        lambda account, region, topic, message: published.append((topic, json.loads(message)["eventType"])),
        lambda sender, recipients, raw: replies.append((sender, recipients)),
    )
    sent = sent_to("bounce@simulator.amazonses.com", "ooto@simulator.amazonses.com")
    assert publisher.publish_all(sent) == 1
    assert published == [("arn:aws:sns:us-east-1:123456789012:t", "Bounce")]
    assert replies == [("", [f"bounces+{REF}@example.org"])]


def test_the_templates_event_destination_is_created_as_ses_takes_it():
    template = Template.load()
    (logical_id,) = template.resources("AWS::SES::ConfigurationSetEventDestination")
    request = event_destination_request(template, logical_id)
    assert request["ConfigurationSetName"] == template.physical_name("SendingConfigurationSet")
    destination = request["EventDestination"]
    assert destination["SNSDestination"]["TopicARN"] == template.ref("FeedbackTopic")
    assert destination["Enabled"] is True
    assert {"send", "delivery", "bounce", "complaint", "reject", "deliveryDelay"} <= set(
        destination["MatchingEventTypes"]
    )


def test_the_topic_subscription_configuration_set_and_destination_are_created_once(moto_stack):
    # given the moto stack, created from template.yaml (tests/conftest.py), created again
    created = create_resources(moto_stack.template)
    # then the topic, its raw SQS subscription to the feedback queue and the configuration set are there, once
    template = moto_stack.template
    assert template.physical_name("FeedbackTopic") in created.topics
    assert created.configuration_sets == [template.physical_name("SendingConfigurationSet")]
    sns = boto3.client("sns", region_name="us-east-1")
    (subscription,) = sns.list_subscriptions_by_topic(TopicArn=template.ref("FeedbackTopic"))["Subscriptions"]
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("sqs", template.get_att("FeedbackQueue", "Arn"))
    attributes = sns.get_subscription_attributes(SubscriptionArn=subscription["SubscriptionArn"])["Attributes"]
    assert attributes["RawMessageDelivery"] == "true"
    ses = boto3.client("ses", region_name="us-east-1")
    described = ses.describe_configuration_set(
        ConfigurationSetName=template.physical_name("SendingConfigurationSet"),
        ConfigurationSetAttributeNames=["eventDestinations"],
    )
    (destination,) = described["EventDestinations"]
    assert destination["SNSDestination"]["TopicARN"] == template.ref("FeedbackTopic")
