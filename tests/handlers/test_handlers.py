"""Each handler fed the sample events in events/ (the files `sam local invoke -e` takes)."""

import copy
from datetime import timedelta

import boto3

from dbmail.client import install_default_email_lists, publish_directory, submit_request
from dbmail.core.clock import utcnow
from dbmail.outgoing.expand import BATCH_RECIPIENTS
from dbmail.outgoing.store import Store
from tests.conftest import DIRECTORY, drain, inbound_message, load_event, recipient
from tests.handlers.conftest import EXAMPLE_REQUEST, emitted_metrics, load_handler, seed_example_request


def outcome_counts(capsys, name: str, **dimensions) -> dict[str, int]:
    """What the invocations so far counted for metric ``name`` (one EMF blob per outcome), by outcome."""
    counts = {}
    for metric in emitted_metrics(capsys.readouterr().out):
        if metric["name"] == name:
            assert metric["namespace"] == "dbmail"
            outcome = metric["dimensions"].pop("outcome")
            assert metric["dimensions"] == {"service": "dbmail", **dimensions}
            counts[outcome] = counts.get(outcome, 0) + metric["value"]
    return counts


def test_expand_handler_expands_the_inserted_request(moto_stack, context, capsys):
    # given the request the sample stream event names
    seed_example_request(Store(moto_stack.settings))
    # when the stream event arrives
    response = load_handler("expand")(load_event("expand_insert.json"), context)
    # then no record failed and one email per user is queued
    assert response == {"batchItemFailures": []}
    assert len(drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url)) == 3
    assert Store(moto_stack.settings).get_request(EXAMPLE_REQUEST).status == "processed"
    # and the expansion is counted by its outcome
    assert outcome_counts(capsys, "RequestsExpanded", trigger="stream") == {"processed": 1}


def test_a_bad_template_fails_its_request_without_blocking_the_batch(moto_stack, context, capsys):
    store = Store(moto_stack.settings)
    seed_example_request(store, subject="{% if %}")
    event = load_event("expand_insert.json")
    other = copy.deepcopy(event["Records"][0])
    other["dynamodb"]["Keys"] = {"request_id": {"S": "no-such-request"}}
    other["dynamodb"]["SequenceNumber"] = "111100000000000000000002"
    event["Records"].append(other)
    response = load_handler("expand")(event, context)
    assert response == {"batchItemFailures": []}
    request = store.get_request(EXAMPLE_REQUEST)
    assert request.status == "failed" and "subject template syntax error" in request.error
    assert outcome_counts(capsys, "RequestsExpanded", trigger="stream") == {"failed": 1, "missing": 1}


def test_requests_that_cannot_be_expanded_are_failed_requests_not_failed_records(moto_stack, context):
    # given a batch of a request whose item is malformed, one whose template recurses, and a good one
    table = moto_stack.settings.request_table
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    dynamodb.put_item(
        TableName=table,
        Item={
            "request_id": {"S": "bad-json"},
            "status": {"S": "queued"},
            "created_at": {"S": utcnow().isoformat()},
            "special_headers": {"S": "{oops"},
        },
    )
    recursing = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"
    dynamodb.put_item(
        TableName=table,
        Item={
            "request_id": {"S": "recursing"},
            "status": {"S": "queued"},
            "created_at": {"S": utcnow().isoformat()},
            "subject": {"S": "s"},
            "msgtext": {"S": recursing},
            "recipient_count": {"N": "1"},
        },
    )
    Store(moto_stack.settings).put_recipients(
        [
            Store(moto_stack.settings).models.EmailRequest(
                request_id="recursing", recipient_key="u0000000001", **recipient(1)
            )
        ]
    )
    good = submit_request(subject="s", msgtext="b", recipients=[recipient(2)], sender="splash@example.org")
    event = load_event("expand_insert.json")
    template = event["Records"][0]
    event["Records"] = []
    for n, request_id in enumerate(("bad-json", "recursing", good)):
        record = copy.deepcopy(template)
        record["dynamodb"]["Keys"] = {"request_id": {"S": request_id}}
        record["dynamodb"]["SequenceNumber"] = f"1111000000000000000000{n:02d}"
        event["Records"].append(record)
    # when the stream delivers them, no record fails (nothing retries, nothing reaches the alarm's queue)
    assert load_handler("expand")(event, context) == {"batchItemFailures": []}
    # and each request carries its outcome
    store = Store(moto_stack.settings)
    assert (
        "malformed request item"
        in dynamodb.get_item(TableName=table, Key={"request_id": {"S": "bad-json"}})["Item"]["error"]["S"]
    )
    assert (
        store.get_request("recursing").status == "failed" and "recursion limit" in store.get_request("recursing").error
    )
    assert store.get_request(good).status == "processed"


def test_an_expansion_out_of_time_is_reported_for_retry_and_the_rest_of_the_batch_proceeds(moto_stack, context, capsys):
    # given a request larger than one chunk, and a small one after it in the same batch
    store = Store(moto_stack.settings)
    seed_example_request(store, recipient_count=None)
    store.put_recipients(
        store.models.EmailRequest(request_id=EXAMPLE_REQUEST, recipient_key=f"u{i:010d}", **recipient(i))
        for i in range(4, BATCH_RECIPIENTS + 10)
    )
    small = submit_request(subject="s", msgtext="b", recipients=[recipient(1)], sender="splash@example.org")
    event = load_event("expand_insert.json")
    second = copy.deepcopy(event["Records"][0])
    second["dynamodb"]["Keys"] = {"request_id": {"S": small}}
    second["dynamodb"]["SequenceNumber"] = "111100000000000000000002"
    event["Records"].append(second)
    # when the function is nearly out of time
    context.remaining_ms = 0
    response = load_handler("expand")(event, context)
    # then the big request is reported for retry (it resumes from its cursor) and the small one is done
    assert response == {"batchItemFailures": [{"itemIdentifier": "111100000000000000000001"}]}
    assert store.get_request(EXAMPLE_REQUEST).status == "processing"
    assert store.get_request(small).status == "processed"
    assert outcome_counts(capsys, "RequestsExpanded", trigger="stream") == {"incomplete": 1, "processed": 1}


def test_send_handler_delivers_each_queued_email(moto_stack, context, capsys):
    # given the example request expanded
    seed_example_request(Store(moto_stack.settings))
    load_handler("expand")(load_event("expand_insert.json"), context)
    # when the sample SQS event (two of its emails) arrives
    response = load_handler("send")(load_event("send_sqs.json"), context)
    # then both were sent through SES (moto) and the third is still queued
    assert response == {"batchItemFailures": []}
    counts = Store(moto_stack.settings).email_status_counts(EXAMPLE_REQUEST)
    assert counts == {"sent": 2, "queued": 1}
    # and one EMF blob counts both
    capsys.readouterr()  # the expansion's
    load_handler("send")(load_event("send_sqs.json"), context)  # the same messages again: duplicates
    assert outcome_counts(capsys, "EmailsProcessed") == {"duplicate": 2}


def test_a_poison_message_fails_alone(moto_stack, context, capsys):
    seed_example_request(Store(moto_stack.settings))
    load_handler("expand")(load_event("expand_insert.json"), context)
    event = load_event("send_sqs.json")
    event["Records"][0]["body"] = "not json"
    response = load_handler("send")(event, context)
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert Store(moto_stack.settings).email_status_counts(EXAMPLE_REQUEST)["sent"] == 1
    assert outcome_counts(capsys, "EmailsProcessed") == {"error": 1, "sent": 1}


def test_expire_handler_expands_a_scheduled_request_whose_time_has_come(moto_stack, context, capsys):
    # given the example request, scheduled for a moment ago and still waiting
    seed_example_request(Store(moto_stack.settings), processed_by=utcnow() - timedelta(seconds=1))
    # when the schedule fires
    summary = load_handler("expire")(load_event("expire_schedule.json"), context)
    # then it was expanded and its emails queued
    assert summary == {"expand_processed": 1}
    assert outcome_counts(capsys, "RequestsExpanded", trigger="schedule") == {"processed": 1}
    assert len(drain(moto_stack.sqs, moto_stack.settings.priority_send_queue_url)) == 3


def test_inbound_handler_routes_the_received_message(moto_stack, context, capsys):
    # given the raw message SES stored for the sample receipt event, and the default rules
    install_default_email_lists()
    publish_directory(**DIRECTORY)
    event = load_event("inbound_ses.json")
    mail = event["Records"][0]["ses"]["mail"]
    boto3.client("s3", region_name="us-east-1").put_object(
        Bucket=moto_stack.settings.inbound_bucket,
        Key=f"{moto_stack.settings.inbound_prefix}{mail['messageId']}",
        Body=inbound_message(),
    )
    # when SES invokes the function
    response = load_handler("inbound")(event, context)
    # then the class list got it
    assert response == {"disposition": "CONTINUE", "outcome": "forwarded"}
    assert outcome_counts(capsys, "InboundMessages", trigger="receipt") == {"forwarded": 1}


def sent_example_request(moto_stack, context) -> Store:
    """The example request expanded and its first two emails sent (the ones events/feedback_sqs.json names)."""
    store = Store(moto_stack.settings)
    seed_example_request(store)
    load_handler("expand")(load_event("expand_insert.json"), context)
    load_handler("send")(load_event("send_sqs.json"), context)
    return store


def test_feedback_handler_records_the_sample_bounce_and_delivery(moto_stack, context, capsys):
    from dbmail import wiring
    from tests.conftest import function_settings

    # given the example request's first two emails sent
    store = sent_example_request(moto_stack, context)
    capsys.readouterr()
    # when the sample SQS event (an SES Bounce for the first, a Delivery for the second) arrives
    response = load_handler("feedback")(load_event("feedback_sqs.json"), context)
    # then both are recorded on their emails
    assert response == {"batchItemFailures": []}
    bounced = store.get_email(EXAMPLE_REQUEST, "u0000000001#0")
    assert (bounced.status, bounced.bounce_type) == ("bounced", "permanent")
    assert "550 5.1.1" in bounced.feedback and "@" not in bounced.feedback
    assert store.get_email(EXAMPLE_REQUEST, "u0000000002#0").status == "delivered"
    # and the bounced address is suppressed, the delivered one is not
    suppressions = wiring.suppression_store(function_settings("send"))
    assert suppressions.get("user1@example.net").reason == "bounce"
    assert not suppressions.is_suppressed("user2@example.net")
    assert outcome_counts(capsys, "FeedbackEvents") == {"recorded": 2}
    # and the same event delivered again changes nothing
    load_handler("feedback")(load_event("feedback_sqs.json"), context)
    assert outcome_counts(capsys, "FeedbackEvents") == {"duplicate": 2}


def test_a_malformed_feedback_record_is_acknowledged_and_does_not_block_the_batch(moto_stack, context, capsys):
    store = sent_example_request(moto_stack, context)
    capsys.readouterr()
    # given a batch whose first record is not an SES event at all
    event = load_event("feedback_sqs.json")
    event["Records"][0]["body"] = '{"eventType": "Bounce", "mail": [1, 2' + "9" * 5000
    # when it arrives, the malformed one is logged as invalid and acknowledged (retrying cannot fix it)
    response = load_handler("feedback")(event, context)
    assert response == {"batchItemFailures": []}
    assert outcome_counts(capsys, "FeedbackEvents") == {"invalid": 1, "recorded": 1}
    # and the rest of the batch is recorded
    assert store.get_email(EXAMPLE_REQUEST, "u0000000001#0").status == "sent"
    assert store.get_email(EXAMPLE_REQUEST, "u0000000002#0").status == "delivered"


def test_a_young_feedback_event_for_an_email_not_found_yet_is_retried(moto_stack, context, capsys):
    import json

    sent_example_request(moto_stack, context)
    capsys.readouterr()
    # given a just-published bounce whose email the index does not show yet
    event = load_event("feedback_sqs.json")
    body = json.loads(event["Records"][0]["body"])
    body["mail"]["tags"]["message_ref"] = ["f" * 32]
    body["mail"]["headers"] = []
    body["bounce"]["timestamp"] = utcnow().isoformat()
    event["Records"][0]["body"] = json.dumps(body)
    # when it arrives, it alone is reported for retry
    response = load_handler("feedback")(event, context)
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert outcome_counts(capsys, "FeedbackEvents") == {"recorded": 1, "retry": 1}
