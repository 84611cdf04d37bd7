"""docs/performance.md, written by `make bench` from what it measured (and its plot)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bench.costs import PerEmail, Projection
from bench.cpu import THIS_PROCESS, busy_seconds
from bench.plot import plot_sizes
from bench.report import check_rows, markdown_table

if TYPE_CHECKING:
    from bench.__main__ import Config, Results

PLOT = "performance.png"
SIZE_HEADER = ("recipients", "emails", "runs", "min s", "median s", "emails/s", "peak RSS MiB", "plateau MiB")

HOW = """## How each figure is measured

Everything runs on one local stack of the bench's own (DynamoDB Local and a moto server) in one
run; each dbmail figure and its floor are measured alternately, on the same emulators, and each
is repeated (min and median; the ratios use the medians). The functions run in a worker process
of their own per run (`bench/worker.py`), so the AWS calls and the peak RSS
(the process's own high-water RSS, `VmHWM`; the real RSS, not tracemalloc) are theirs alone.

- **send vs bare SES.** dbmail: the send handler invoked with the queued messages of a
  1,000-recipient request (3 KB HTML body), in batches of its lane's BatchSize as its SQS
  events give them (50 on the bulk lane), one invocation at a time (the handler has up to 10
  emails with the provider at once); the time is the invocations' (claim, compose, send,
  record), per email, the first batch left out as warm-up. Floor: the
  SES v2 `SendEmail` calls that run made, captured through botocore's events (the same raw
  bytes, sender, destination, configuration set and tags), replayed with 10 in flight and
  nothing else. Ratio: floor seconds per email / dbmail seconds per email.
- **expand vs bare writes.** dbmail: the expand functions (the stream's and the chunk queue's)
  with their triggers, from the request's stream record until the request is processed. Nothing
  consumes the send queues meanwhile: moto's SQS delete scans the whole queue under the queue's
  lock, so a consumer slows the producer as real SQS does not (adds stay cheap at any depth).
  Floor: the `BatchWriteItem` and
  `SendMessageBatch` calls that expansion made (the same items, the same message bodies, in
  order), replayed into a fresh copy of the email table (same keys, index and stream: every
  write a new item) and fresh queues (a plan or chunk task replayed into the stack's own queue
  would be the next expansion's work), with as many calls in flight as the expansion had at
  its peak. Ratio: floor seconds / dbmail seconds.
- **render vs the original.** dbmail: the request prepared once (`outgoing/expand.prepare`)
  and each recipient rendered, as the expansion does. The original's path: Django's
  `Template(subject)` and `Template(body)` compiled and rendered with a `Context` for each
  recipient (`parseSmartText` twice), same template, same recipients, run in a throwaway
  virtualenv so that Django never enters dbmail's runtime.
- **first delivery vs the bare stream.** A 1-recipient request written by the website client,
  until its .eml is in the stack's outbox (SES accepted it), one request at a time, with the
  local runner playing Lambda. Floor: a `PutItem` until its record is read from the table's
  stream, `GetRecords` polled every 5 ms.
- **cold import.** `python -S -X importtime -c "import app"` in a fresh process per sample,
  with the function's code, the layer built by `layers/common/Makefile` (as `sam build` builds
  it) and what Lambda's python3.12 runtime provides (boto3, botocore) on `sys.path`; the
  function's own environment and Lambda's variables; no .pyc written. The figure is
  importtime's cumulative time of `app`, settings (and their secret reads) included.
- **DynamoDB units.** `ReturnConsumedCapacity=TOTAL` is injected into every DynamoDB call
  through botocore's events and the `ConsumedCapacity` of the answers summed by table
  (DynamoDB Local reports it as DynamoDB does: an index write is counted; a 3 KB item is 3
  units). DynamoDB Local reports nothing for PartiQL (`BatchExecuteStatement`: a send batch's
  claims and records), so each update it made is priced as DynamoDB prices it, at its item's
  size (1 unit per started KB, from the sent items read back). Per email: the send runs'
  expansion and send, all tables.
"""

AWS_LATENCY = """## Latency on real AWS

Locally a 1-recipient request is delivered in the time above because the runner polls the
request stream every 50 ms while it is active (every 250 ms, Lambda's rate, once it has been
quiet for 2 s: a first request after a quiet spell waits about 0.1 s more) and long-polls SQS
(moto answers a long poll as soon as a message arrives). On AWS expect roughly **0.5-1.5 s**
from the website's write to SES accepting the email, and a few seconds more after a deployment
or a quiet spell:

- **Stream polling.** Lambda polls each DynamoDB stream shard about 4 times a second, so a new
  request waits up to ~250 ms (about 125 ms on average) before its expand invocation; records
  reach the stream within milliseconds of the write.
- **Batching windows.** The priority lane (`Urgent`: requests of at most 100 recipients, or
  `priority_level >= 1`) has no batching window; the bulk lane waits up to
  `MaximumBatchingWindowInSeconds: 1` to fill a batch of 50. A small request's email never
  waits for that second.
- **SQS long polling.** Lambda's SQS pollers long-poll (20 s), so a message is received within
  tens of milliseconds of being sent.
- **Cold starts.** A function's first invocation after a deployment, a scale-up or ~5-15 idle
  minutes imports its handler: the cold import above plus Lambda's own init (~100-250 ms)
  and the first AWS clients' connections (TLS) add about 0.5-1 s, once per execution environment.
- **SES.** One SendEmail takes 40-60 ms from Lambda, against a few ms locally.
"""


def _loads(results: Results) -> str:
    return "; ".join(f"{phase} {one:.2f}/{five:.2f}/{fifteen:.2f}" for phase, (one, five, fifteen) in results.loads)


def _figure_rows(results: Results) -> list[list[str]]:
    rows = []
    for name, figure in results.figures.items():
        rows.append([name, f"{figure.min:.4g}", f"{figure.median:.4g}", str(len(figure.samples))])
    return rows


CPU_HEADER = ("run", "functions or client", "DynamoDB Local", "moto", "CPU s", "wall s", "cores busy")


def _cpu_rows(results: Results) -> list[list[str]]:
    """The floor-size expansions and their floors: CPU seconds by process (bench/cpu.py)."""
    rows = []
    for n, pair in enumerate(results.notes.get("expand cpu", []), 1):
        for run, spent in zip(("expansion", "its write floor"), pair):
            busy, wall = busy_seconds(spent), spent["wall"]
            processes = [f"{spent.get(name, 0):.1f}" for name in (THIS_PROCESS, "dynamodb", "moto")]
            rows.append([f"{run} {n}", *processes, f"{busy:.1f}", f"{wall:.1f}", f"{busy / wall:.2f}"])
    return rows


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h"


def write_docs(
    docs: Path,
    config: Config,
    results: Results,
    measured: PerEmail,
    lines: list[tuple[str, str, float]],
    projection: Projection,
) -> Path:
    sizes = sorted(results.sizes)
    rates = [results.sizes[s]["emails"] / results.sizes[s]["seconds"].median for s in sizes]
    rss = [results.sizes[s]["rss"].median for s in sizes]
    plot_sizes(sizes, rates, rss, docs / PLOT)
    size_rows = [
        [
            f"{s:,}",
            f"{results.sizes[s]['emails']:,}",
            str(len(results.sizes[s]["seconds"].samples)),
            f"{results.sizes[s]['seconds'].min:,.1f}",
            f"{results.sizes[s]['seconds'].median:,.1f}",
            f"{rate:,.0f}",
            f"{memory:,.0f}",
            f"{results.sizes[s]['plateau'].median:,.0f}",
        ]
        for s, rate, memory in zip(sizes, rates, rss)
    ]
    cold_rows = [[name, f"{f.min:.3f}", f"{f.median:.3f}"] for name, f in results.cold.items()]
    total = sum(dollars for _, _, dollars in lines)
    cost_rows = [[item, quantity, f"${dollars:,.2f}"] for item, quantity, dollars in lines]
    cost_rows.append(["**total**", "", f"**${total:,.2f}**"])
    send_rows = [[f"{quota:,.0f} emails/s", _duration(seconds)] for quota, seconds in projection.send_seconds.items()]
    text = f"""# Performance

Written by `make bench` (`python -m bench`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, sizes
{", ".join(f"{s:,}" for s in config.sizes)}, {config.repeats} repeats ({config.large_repeats} at 100,000
recipients and more), on {os.cpu_count()} cores shared with other work. Load (1/5/15-minute
averages) at each phase's start: {_loads(results)}.

Local emulators are not AWS: the ratios (dbmail against the same work without dbmail's logic, on
the same emulators, in the same run) are the figures that carry over, not the absolute times.

## Targets (issue 11)

{markdown_table(("target", "measured", "goal", "result", "how"), check_rows(results.checks))}

## Figures

Seconds (per email for send and the SES floor; per run otherwise), min and median of the repeats.

{markdown_table(("figure", "min", "median", "samples"), _figure_rows(results))}

### Where the CPU went: the {config.floor_size:,}-recipient expansions and their floors

CPU seconds by process over each run (`/proc`): the worker's functions and triggers, or the
floor's client; DynamoDB Local; moto. The expansion spends the writes' CPU, as its floor does,
and its reads of the recipients, its rendering and its state besides, on the same
{os.cpu_count()} cores as both emulators: where the cores are busy, its ratio to the floor is
about the floor's CPU over its own.

{markdown_table(CPU_HEADER, _cpu_rows(results))}

Django for the original's path: {results.notes.get("django install", "")}. Heaviest direct imports of the slowest
handler: {results.notes.get("heaviest imports", "")}.

## Expansion by request size

`send_to_self_and_guardian` (a recipient's own address and their guardian's), the demo's
HTML body, each run in its own process.

{markdown_table(SIZE_HEADER, size_rows)}

Peak RSS is the worker's `VmHWM` (it catches a short spike). Not `ru_maxrss`: Linux carries
that over exec from the forking process, so a worker started by the bench reported the bench's
own RSS whenever it was larger (the erratic 225-351 MiB of earlier runs). The plateau is the
median RSS over the run's second half, sampled every 10 ms.

![emails queued per second and peak RSS against recipients]({PLOT})

## Cold import per handler (seconds)

{markdown_table(("function", "min", "median"), cold_rows)}

## Cost per 100,000 emails on AWS

From the send runs ({measured.emails:,} emails of a 3 KB HTML body): Lambda GB-s from the measured
invocation durations and each function's MemorySize in template.yaml, invocations, SQS requests
(the expansion's sends and Lambda's poller: a receive and a delete per 10 messages; each call
under 64 KiB), DynamoDB write and read units per email as measured ({measured.write_units:.2f}
and {measured.read_units:.2f}), and SES at $0.10 per 1,000. us-east-1 list prices; free tiers,
CloudWatch logs and metrics, and data transfer left out. Lambda durations are the local ones:
on AWS an SES call takes 40-60 ms, so the send function's duration per email grows (10 in
flight: about 5 ms more per email, under $0.01 per 100,000 at 512 MB).

{markdown_table(("item", "quantity", "cost"), cost_rows)}

## 1,000,000 recipients, projected

- **Emails:** {projection.emails:,} (the largest run's emails per recipient).
- **Time to queue:** {_duration(projection.queue_seconds)} at the largest run's measured rate
  (local emulators; on AWS the chunk function's concurrency sets it).
- **Memory:** {projection.peak_rss_mib:,.0f} MiB peak RSS per expansion process, flat in the
  number of recipients (the expansion holds one chunk at a time).
- **Time to send**, at the account's SES quota (MaxSendRate):

{markdown_table(("send quota", "time to send"), send_rows)}

{AWS_LATENCY}
{HOW}"""
    path = docs / "performance.md"
    path.write_text(text)
    return path
