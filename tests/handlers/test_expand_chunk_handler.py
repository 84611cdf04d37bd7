"""The expand_chunk handler fed the sample SQS event (a plan) and the chunk messages it queues."""

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from dbmail.outgoing import expand
from dbmail.outgoing.store import Store
from tests.conftest import drain, load_event
from tests.handlers.conftest import EXAMPLE_REQUEST, LambdaContext, load_handler, seed_example_request
from tests.handlers.test_handlers import outcome_counts


@pytest.fixture
def bulk_example(moto_stack, monkeypatch):
    """The example request (3 recipients) as a bulk one: threshold 2, chunks of 2, handed over by the stream."""
    monkeypatch.setattr(expand, "BULK_THRESHOLD", 2)
    monkeypatch.setattr(expand, "CHUNK_SIZE", 2)
    seed_example_request(Store(moto_stack.settings))
    assert load_handler("expand")(load_event("expand_insert.json"), LambdaContext()) == {"batchItemFailures": []}
    # the plan message it queued is the sample event's
    (plan,) = drain(moto_stack.sqs, moto_stack.settings.expand_chunk_queue_url)
    assert plan["Body"] == load_event("expand_chunk_sqs.json")["Records"][0]["body"]
    return moto_stack


def chunk_event(stack) -> dict:
    """The expand-chunk queue's messages as the SQS event Lambda gives the function."""
    sample = load_event("expand_chunk_sqs.json")["Records"][0]
    messages = drain(stack.sqs, stack.settings.expand_chunk_queue_url)
    return {
        "Records": [
            {**sample, "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"]}
            for m in messages
        ]
    }


def test_the_plan_queues_the_chunks_and_the_chunks_expand_the_request(bulk_example, context, capsys):
    handler = load_handler("expand_chunk")
    # when the sample event (the example request's plan) arrives
    assert handler(load_event("expand_chunk_sqs.json"), context) == {"batchItemFailures": []}
    assert outcome_counts(capsys, "RequestsExpanded", trigger="chunk") == {"planned": 1}
    # and then its two chunk messages
    assert handler(chunk_event(bulk_example), context) == {"batchItemFailures": []}
    # then the request is processed, each email queued once in the bulk lane
    assert outcome_counts(capsys, "RequestsExpanded", trigger="chunk") == {"chunk_done": 1, "processed": 1}
    assert Store(bulk_example.settings).get_request(EXAMPLE_REQUEST).status == "processed"
    assert len(drain(bulk_example.sqs, bulk_example.settings.send_queue_url)) == 3


def test_chunks_out_of_time_fail_the_invocation_and_their_retry_does_them(bulk_example, context, capsys):
    handler = load_handler("expand_chunk")
    handler(load_event("expand_chunk_sqs.json"), context)
    chunks = chunk_event(bulk_example)
    capsys.readouterr()  # the plan's metrics
    # when the chunks arrive with no time left, then the invocation fails (every record did: the
    # batch is retried), each counted incomplete
    context.remaining_ms = 0
    with pytest.raises(BatchProcessingError):
        handler(chunks, context)
    assert outcome_counts(capsys, "RequestsExpanded", trigger="chunk") == {"incomplete": 2}
    # and their retries, with time, take the chunks at once and finish the request
    context.remaining_ms = 300_000
    assert handler(chunks, context) == {"batchItemFailures": []}
    assert Store(bulk_example.settings).get_request(EXAMPLE_REQUEST).status == "processed"
