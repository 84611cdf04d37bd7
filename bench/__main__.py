"""Benchmarks: rendering (compile once vs per recipient), MIME composition, and expand against
the real local stack (DynamoDB Local + moto SQS) at growing recipient counts, with the number of
DynamoDB and SQS calls and the peak Python memory of the expansion.

    make bench                       # sizes 1000, 10000, 100000
    BENCH_SIZES=1000,5000 make bench
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import boto3

from dbmail.core.compose import compose, to_mime
from dbmail.outgoing.render import UserContext, build_context, compile_message
from dbmail_local.demo import HTML_BODY, generate_recipients

SUBJECT = "[Splash 2026] Wëlcome, {{ user.first_name }} ✨"
VARS = {"program": {"name": "Splash 2026", "startdate": "November 28"}}


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s"


def bench_render(n: int = 5000) -> None:
    users = generate_recipients(n)
    contexts = [build_context(UserContext(u, u["vars"]), {"id": "r"}, "info@example.org", VARS) for u in users]
    start = time.perf_counter()
    compiled = compile_message(SUBJECT, HTML_BODY)
    for context in contexts:
        compiled.render(context)
    once = time.perf_counter() - start
    sample = contexts[: n // 10]
    start = time.perf_counter()
    for context in sample:
        compile_message(SUBJECT, HTML_BODY).render(context)
    per_recipient = (time.perf_counter() - start) * 10
    print(
        f"render   {n} recipients: compiled once {once:.2f} s ({rate(n, once)}); "
        f"compiled per recipient ~{per_recipient:.2f} s ({per_recipient / once:.0f}x slower)"
    )


def bench_compose(n: int = 2000) -> None:
    when = datetime.now(UTC)
    start = time.perf_counter()
    for i in range(n):
        to_mime(
            compose(
                send_from="Splash <splash@example.org>",
                send_to=[f'"Zoë Ng" <u{i}@example.net>'],
                subject="Wëlcome",
                body=HTML_BODY,
                message_id=f"<m{i}@example.org>",
                date=when,
                envelope_sender="bounces@example.org",
                special_headers={"Reply-To": "splash@example.org"},
                unsubscribe_url="https://esp.example.org/unsubscribe/token",
            )
        )
    elapsed = time.perf_counter() - start
    print(f"compose  {n} HTML emails to MIME (with html2text part): {elapsed:.2f} s ({rate(n, elapsed)})")


class CallCounter:
    """Counts AWS API calls by operation, from botocore's before-call events."""

    def __init__(self):
        self.calls: Counter = Counter()

    def __call__(self, model, **_):
        self.calls[model.name] += 1

    def attach(self, client):
        client.meta.events.register("before-call.*.*", self)


class QueueDrain:
    """Consumes the send queue while expand fills it, as the send function does in production.
    (moto's SendMessageBatch slows with queue depth, which real SQS does not.)"""

    def __init__(self, sqs, queue_url: str, threads: int = 2):
        self._sqs, self._url = sqs, queue_url
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._sqs.receive_message(QueueUrl=self._url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            if messages:
                self._sqs.delete_message_batch(
                    QueueUrl=self._url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
                )

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()


def bench_expand(sizes: list[int]) -> None:
    from dbmail import wiring
    from dbmail.cli.files import read_env_file
    from dbmail.client import submit_request
    from dbmail.core import models, settings
    from dbmail_local import stack

    state = stack.StatePaths.resolve(Path(tempfile.mkdtemp(prefix="dbmail-bench-")))
    stack.up(state, dynamodb_port=0, moto_port=0, smtp_port=0)
    try:
        stack.stop_runner(state)  # expand runs here, in-process, so it can be measured
        os.environ.update(read_env_file(state.env_file))
        settings.website_settings.cache_clear()
        models.bind_models.cache_clear()
        expander = wiring.expander(settings.Settings.for_function("expand"))
        counter = CallCounter()
        counter.attach(expander.queue._sqs)
        counter.attach(expander.store.models.TextOfEmail._get_connection().connection.client)
        print("expand   against DynamoDB Local + moto SQS (send_to_self_and_guardian, HTML, 1 chunk = 200 users)")
        print(
            f"{'recipients':>11} {'emails':>8} {'submit s':>9} {'expand s':>9} {'emails/s':>9} "
            f"{'BatchWrite':>10} {'SQS batch':>9} {'peak MiB':>9}"
        )
        for size in sizes:
            users = generate_recipients(size)
            start = time.perf_counter()
            request_id = submit_request(
                subject=SUBJECT,
                msgtext=HTML_BODY,
                recipients=users,
                sendto_fn_name="send_to_self_and_guardian",
                sender="Splash <splash@example.org>",
                var_dict=VARS,
            )
            submitted = time.perf_counter() - start
            del users
            counter.calls.clear()
            drain_client = boto3.session.Session().client("sqs", region_name=expander.settings.region)
            with QueueDrain(drain_client, expander.settings.send_queue_url):
                tracemalloc.start()
                start = time.perf_counter()
                expander.expand(request_id, owner="stream:bench", takeover=True)
                expanded = time.perf_counter() - start
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            emails = expander.store.get_request(request_id).email_count
            print(
                f"{size:>11,} {emails:>8,} {submitted:>9.1f} {expanded:>9.1f} {emails / expanded:>9,.0f} "
                f"{counter.calls['BatchWriteItem']:>10,} {counter.calls['SendMessageBatch']:>9,} {peak / 2**20:>9.1f}"
            )
    finally:
        stack.down(state)


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "1000,10000,100000").split(",")]
    bench_render()
    bench_compose()
    bench_expand(sizes)


if __name__ == "__main__":
    main()
