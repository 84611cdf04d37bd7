"""Asynchronous invocation (InvocationType Event): Lambda's event queue for one function.

An event source that invokes asynchronously (here: SES receipt rules) hands the event over and
is done; Lambda queues it, invokes the function, retries a failed invocation up to the
function's EventInvokeConfig.MaximumRetryAttempts (default 2) times with the same request id,
and then sends a record to the DestinationConfig.OnFailure queue (OnSuccess likewise).

Lambda's queue is durable, so this one is too: each event is a JSON file under
``<state>/async/<function>/`` from the moment it is accepted until it is done with, and a
runner that stops (or is killed) invokes what is left when it starts again. A retry comes after
DBMAIL_LOCAL_RETRY_DELAY seconds instead of Lambda's minutes, and one worker per function
invokes the events in order (a retry holds back the events behind it). Not emulated:
MaximumEventAgeInSeconds, destinations other than SQS.
"""

import json
import logging
import queue
import time
import uuid
from pathlib import Path
from typing import Any

from .lambda_runtime import Invocation, LocalFunction
from .stack import write_atomically
from .triggers import Runtime, queue_url, utc_timestamp

log = logging.getLogger(__name__)

DEFAULT_MAXIMUM_RETRY_ATTEMPTS = 2
IDLE_WAIT = 0.5  # seconds a worker waits for an event before it checks whether to stop


class AsyncInvoker:
    """The asynchronous event queue of one function; a trigger whose ``run()`` works it off."""

    concurrency = 1

    def __init__(self, function: LocalFunction, runtime: Runtime) -> None:
        self.name = f"{function.logical_id}.async"
        self.function = function
        self.runtime = runtime
        template = runtime.template
        config = template.resolve(template.properties(function.logical_id).get("EventInvokeConfig", {}))
        self.max_retries = int(config.get("MaximumRetryAttempts", DEFAULT_MAXIMUM_RETRY_ATTEMPTS))
        destinations = config.get("DestinationConfig", {})
        self.destination_urls = {
            outcome: queue_url(runtime, destinations[outcome]["Destination"])
            for outcome in ("OnSuccess", "OnFailure")
            if destinations.get(outcome, {}).get("Destination")
        }
        self.spool = runtime.state.async_events / function.logical_id
        self.spool.mkdir(parents=True, exist_ok=True)
        self._pending: queue.Queue[Path] = queue.Queue()
        left_over = sorted(self.spool.glob("*.json"))
        for path in left_over:
            self._pending.put(path)
        if left_over:
            log.info("resuming queued asynchronous events", extra={"trigger": self.name, "events": len(left_over)})

    def submit(self, event: dict[str, Any]) -> None:
        """Queues an event; it is on disk when this returns, so a stopped runner does not lose it."""
        request_id = str(uuid.uuid4())  # kept by every retry, as Lambda does
        path = self.spool / f"{time.time_ns():020d}-{request_id}.json"
        write_atomically(path, json.dumps({"requestId": request_id, "attempts": 0, "event": event}))
        self._pending.put(path)

    def run(self) -> None:
        stopping = self.runtime.stopping
        while not stopping.is_set():
            try:
                path = self._pending.get(timeout=IDLE_WAIT)
            except queue.Empty:
                continue
            self._deliver(path)

    def _deliver(self, path: Path) -> None:
        """Invokes until success or retries run out; on stopping, the event stays queued on disk."""
        stopping = self.runtime.stopping
        if stopping.is_set():
            return
        entry = json.loads(path.read_text())
        fields = {"trigger": self.name, "request_id": entry["requestId"]}
        while True:
            invocation = self.function.invoke(entry["event"], request_id=entry["requestId"])
            entry["attempts"] += 1
            if invocation.error is None:
                self._send("OnSuccess", "Success", entry, invocation)
                break
            if entry["attempts"] > self.max_retries:
                sent = self._send("OnFailure", "RetriesExhausted", entry, invocation)
                outcome = "sent to the OnFailure queue" if sent else "dropped (no OnFailure destination)"
                log.error(f"retries exhausted; event {outcome}", extra={**fields, "invocations": entry["attempts"]})
                break
            write_atomically(path, json.dumps(entry))
            if stopping.is_set():
                log.warning("invocation failed while stopping; the event stays queued for the next start", extra=fields)
                return
            log.warning("invocation failed; retrying it", extra={**fields, "attempt": entry["attempts"] + 1})
            if stopping.wait(self.runtime.settings.retry_delay):
                return
        path.unlink()

    def _send(self, outcome: str, condition: str, entry: dict[str, Any], invocation: Invocation) -> bool:
        """Sends Lambda's destination record if the function has a destination for ``outcome``."""
        url = self.destination_urls.get(outcome)
        if url is None:
            return False
        record = {
            "version": "1.0",
            "timestamp": utc_timestamp(),
            "requestContext": {
                "requestId": entry["requestId"],
                "functionArn": f"{self.function.arn}:$LATEST",
                "condition": condition,
                "approximateInvokeCount": entry["attempts"],
            },
            "requestPayload": entry["event"],
            "responseContext": invocation.response_context(),
            "responsePayload": invocation.response_payload(),
        }
        self.runtime.client("sqs").send_message(QueueUrl=url, MessageBody=json.dumps(record))
        return True
