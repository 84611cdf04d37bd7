"""`make bench`: dbmail against the floor, measured in one run on one local stack (DynamoDB
Local + moto), each figure repeated; prints the ratios against issue 11's targets and writes
docs/performance.md with its plot.

    make bench                                   # sizes 1000, 10000, 100000
    BENCH_SIZES=1000,10000 BENCH_REPEATS=3 make bench
    BENCH_STRICT=1 make bench                    # exit status 1 if a target fails
    BENCH_DOCS=0 make bench                      # leave docs/performance.md alone

Sizes of 100,000 recipients and more run BENCH_LARGE_REPEATS times (default 1: ~5 min each).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as ClientConfig

from bench import coldstart, content, floors, latency, render, report, runs
from bench.costs import FunctionUse, PerEmail, cost_lines, project
from bench.cpu import CpuSpan, describe
from bench.docs import write_docs
from bench.host import stack_template
from bench.instrument import captured_calls, statement_units
from bench.report import Check, Figure
from bench.worker import RECEIVE_MAX
from dbmail.cli.files import read_env_file
from dbmail.core import models, settings
from dbmail.outgoing.send import CONCURRENT_SENDS
from dbmail_local import REPO_ROOT, stack
from dbmail_local.demo import HTML_BODY, generate_recipients
from dbmail_local.rate_check import run as rate_run
from dbmail_local.rate_check import throttled_stack

SES_CONCURRENCY = CONCURRENT_SENDS  # the send function's emails in flight per invocation (and the floor's)
LATENCY_WRITES = 20
COLD_PROCESSES = 5
RENDER_RECIPIENTS = 2000
RENDER_REPEATS = 7
QUEUE_TARGET_SECONDS = 552 / 3  # issue 11: 100,000 recipients queued 3x faster than 552 s
EXPAND_SENDTO = "send_to_self_and_guardian"  # as issue 11's figures were measured


@dataclass
class Config:
    sizes: list[int]
    repeats: int
    large_repeats: int
    send_emails: int
    ses_rate: float
    rate_emails: int
    strict: bool
    docs: bool

    @classmethod
    def from_environ(cls) -> Config:
        env = os.environ
        return cls(
            sizes=[int(s) for s in env.get("BENCH_SIZES", "1000,10000,100000").split(",")],
            repeats=max(3, int(env.get("BENCH_REPEATS", "3"))),
            large_repeats=max(1, int(env.get("BENCH_LARGE_REPEATS", "1"))),
            send_emails=int(env.get("BENCH_SEND_EMAILS", "1000")),
            # an SES quota the local pipeline can reach: on 2 cores the runner, moto and DynamoDB
            # Local together top out near 30 emails/s, and above that the run measures the machine
            ses_rate=float(env.get("BENCH_SES_RATE", "20")),
            rate_emails=int(env.get("BENCH_RATE_EMAILS", "5000")),
            strict=env.get("BENCH_STRICT") == "1",
            docs=env.get("BENCH_DOCS", "1") != "0",
        )

    def repeats_for(self, size: int) -> int:
        return self.large_repeats if size >= 100_000 else self.repeats

    @property
    def floor_size(self) -> int:
        """The expansion compared with the write floor: 10,000 recipients, or the nearest size."""
        return min(self.sizes, key=lambda size: abs(size - 10_000))


@dataclass
class Results:
    loads: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    cold: dict[str, Figure] = field(default_factory=dict)
    sizes: dict[int, dict[str, Any]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def load(self, phase: str) -> None:
        self.loads.append((phase, os.getloadavg()))


def say(text: str) -> None:
    print(text, flush=True)


@contextmanager
def bench_stack() -> Iterator[stack.StatePaths]:
    """A local stack of the bench's own, on free ports, torn down at the end."""
    os.environ.pop("DBMAIL_LOCAL_SES_MAX_RATE", None)  # SES unthrottled: the floors are too
    state = stack.StatePaths.resolve(Path(tempfile.mkdtemp(prefix="dbmail-bench-")))
    stack.up(state, dynamodb_port=0, moto_port=0, smtp_port=0)
    try:
        os.environ.update(read_env_file(state.env_file))
        settings.website_settings.cache_clear()
        models.bind_models.cache_clear()
        yield state
    finally:
        stack.down(state)
        shutil.rmtree(state.root, ignore_errors=True)


def client(service: str) -> Any:
    return boto3.session.Session().client(service, config=ClientConfig(max_pool_connections=SES_CONCURRENCY * 2))


def measure_latency(results: Results) -> None:
    results.load("first delivery")
    delivered = latency.first_delivery(Path(os.environ["DBMAIL_LOCAL_OUTBOX"]), LATENCY_WRITES, HTML_BODY)
    bare = floors.bare_stream(client("dynamodb"), client("dynamodbstreams"), LATENCY_WRITES)
    results.figures["first delivery"], results.figures["bare stream"] = Figure(tuple(delivered)), Figure(tuple(bare))
    p50, bare_p50 = report.percentile(delivered, 0.5), report.percentile(bare, 0.5)
    results.notes["first delivery p50"] = p50
    say(
        f"first delivery  p50 {p50:.3f} s (min {min(delivered):.3f}, max {max(delivered):.3f}) of {LATENCY_WRITES} "
        f"1-recipient requests, write -> .eml in the outbox; bare stream p50 {bare_p50:.3f} s (PutItem -> GetRecords)"
    )


def measure_cold_import(results: Results, state: stack.StatePaths, work: Path) -> None:
    results.load("cold import")
    template, env = stack_template(state)
    layer = coldstart.build_layer(work / "layer")
    bare_layer = coldstart.without_bytecode(layer, work / "layer-without-pyc")
    runtime = coldstart.runtime_dir(work / "runtime")
    slowest: tuple[str, coldstart.ImportTime] | None = None
    say(f"cold import     python -S -X importtime -c 'import app', {COLD_PROCESSES} fresh processes each, built layer")
    for function in coldstart.handlers(template):
        times = [coldstart.import_time(function, layer, runtime, env) for _ in range(COLD_PROCESSES)]
        figure = Figure(tuple(t.seconds for t in times))
        results.cold[function.logical_id] = figure
        say(f"                {function.logical_id:<24} min {figure.min:.3f} s  median {figure.median:.3f} s")
        if slowest is None or figure.median > results.cold[slowest[0]].median:
            slowest = (function.logical_id, min(times, key=lambda t: t.seconds))
        if function.logical_id == "SendFunction":
            without = [coldstart.import_time(function, bare_layer, runtime, env).seconds for _ in range(3)]
            results.figures["send import without pyc"] = Figure(tuple(without))
    if slowest is not None:
        heaviest = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in slowest[1].heaviest)
        results.notes["heaviest imports"] = f"{slowest[0]}: {heaviest}"
        say(f"                slowest's heaviest direct imports: {heaviest}")
    if "send import without pyc" in results.figures:
        without = results.figures["send import without pyc"].median
        say(f"                SendFunction without the layer's .pyc: median {without:.3f} s")


def measure_send(results: Results, state: stack.StatePaths, config: Config, work: Path) -> None:
    """The send path and the SES floor, alternated; the emails are queued by an expansion first."""
    results.load("send")
    capture = work / "send-calls.pickle"
    sesv2 = client("sesv2")
    dbmail, floor, runs_seen = [], [], []
    for repeat in range(config.repeats):
        request_id = runs.submit(config.send_emails, content.SUBJECT, content.BODY, "")
        expanded = runs.run_worker(state, "expand", request_id)
        sent = runs.run_worker(state, "send", str(expanded["emails"]), capture=capture if repeat == 0 else None)
        if sent["failed"]:
            raise RuntimeError(f"the send path failed {sent['failed']} of {sent['emails']} emails")
        durations = sent["durations"]["SendFunction"]
        dbmail.append(sum(durations[1:]) / (sent["emails"] - sent["batches"][0]))  # the first batch warms up
        calls = captured_calls(capture)
        floors.ses_floor(sesv2, calls[:SES_CONCURRENCY], SES_CONCURRENCY)  # the floor's warm-up
        floor.append(floors.ses_floor(sesv2, calls, SES_CONCURRENCY) / len(calls))
        runs_seen.append((expanded, sent))
    results.figures["send"], results.figures["ses floor"] = Figure(tuple(dbmail)), Figure(tuple(floor))
    results.notes["send runs"] = runs_seen
    # what a PartiQL update of a sent email costs (DynamoDB Local does not say): its item's size
    table = read_env_file(state.env_file)["DBMAIL_EMAIL_TABLE"]
    items = client("dynamodb").scan(TableName=table, Limit=1000)["Items"]
    results.notes["units per statement"] = statement_units(items)
    say(
        f"send            {config.send_emails} emails of a 3 KB HTML body a run, "
        f"batches of {max(runs_seen[0][1]['batches'])} (the lane's BatchSize), "
        f"{SES_CONCURRENCY} in flight: "
        f"dbmail {results.figures['send'].median * 1000:.2f} ms/email (min {results.figures['send'].min * 1000:.2f}); "
        f"bare SES v2 SendEmail of the same calls, {SES_CONCURRENCY} in flight: "
        f"{results.figures['ses floor'].median * 1000:.2f} ms/email (min {results.figures['ses floor'].min * 1000:.2f})"
    )


def measure_expand(results: Results, state: stack.StatePaths, config: Config, work: Path) -> None:
    env = read_env_file(state.env_file)
    sqs, dynamodb = client("sqs"), client("dynamodb")
    email_table = env["DBMAIL_EMAIL_TABLE"]
    say(f"expand          {EXPAND_SENDTO}, HTML body, one process per run")
    columns = ("recipients", "emails", "runs", "min s", "median s", "emails/s", "peak RSS", "plateau")
    say(" " * 16 + " ".join(f"{c:>{w}}" for c, w in zip(columns, (10, 8, 4, 8, 8, 9, 9, 10))))
    for size in config.sizes:
        results.load(f"expand {size:,}")
        seconds, rss, plateau, runs_seen, floor = [], [], [], [], []
        for repeat in range(config.repeats_for(size)):
            request_id = runs.submit(size, content.SUBJECT, HTML_BODY, EXPAND_SENDTO)
            capture = work / f"expand-{size}.pickle" if size == config.floor_size and repeat == 0 else None
            run = runs.run_worker(state, "expand", request_id, capture=capture)
            if size == config.floor_size:
                calls = captured_calls(work / f"expand-{size}.pickle")
                table, queues = floors.copy_table(dynamodb, email_table), floors.copy_queues(sqs, calls)
                concurrency = max(1, run["peak_in_flight"])
                cpu = CpuSpan(state)
                cpu.start()
                floor.append(floors.write_floor(dynamodb, sqs, calls, email_table, table, queues, concurrency))
                results.notes.setdefault("expand cpu", []).append((run["cpu_seconds"], cpu.stop()))
                dynamodb.delete_table(TableName=table)
                for url in queues.values():
                    sqs.delete_queue(QueueUrl=url)
                results.notes["write floor concurrency"] = concurrency
            if run["status"] != "processed":
                raise RuntimeError(f"an expansion of {size:,} recipients ended {run['status']!r}")
            seconds.append(run["seconds"])
            rss.append(run["max_rss_mib"])
            plateau.append(run["rss_plateau_mib"])
            runs_seen.append(run)
        figure, rss_figure = Figure(tuple(seconds)), Figure(tuple(rss))
        emails = runs_seen[0]["emails"]
        results.sizes[size] = {
            "seconds": figure,
            "rss": rss_figure,
            "plateau": Figure(tuple(plateau)),
            "emails": emails,
            "runs": runs_seen,
        }
        if floor:
            results.figures["expand"], results.figures["write floor"] = figure, Figure(tuple(floor))
        say(
            f"{'':16}{size:>10,} {emails:>8,} {len(seconds):>4} {figure.min:>8.1f} {figure.median:>8.1f} "
            f"{emails / figure.median:>9,.0f} {rss_figure.median:>6.0f} MiB {Figure(tuple(plateau)).median:>6.0f} MiB"
        )
    if "write floor" in results.figures:
        say(
            f"write floor     the {config.floor_size:,}-recipient expansion's BatchWriteItem + SendMessageBatch calls "
            f"replayed, {results.notes['write floor concurrency']} in flight (its peak): "
            f"median {results.figures['write floor'].median:.1f} s (min {results.figures['write floor'].min:.1f})"
        )
        for expansion, replay in results.notes["expand cpu"]:
            say(f"cpu seconds     expansion: {describe(expansion)}")
            say(f"                its floor: {describe(replay)}")


def measure_render(results: Results, config: Config, work: Path) -> None:
    results.load("render")
    users = generate_recipients(RENDER_RECIPIENTS)
    repeats = max(RENDER_REPEATS, config.repeats)  # a second or so each side: more repeats, a steadier median
    dbmail = render.dbmail_seconds(content.SUBJECT, content.BODY, users, runs.VARS, repeats)
    python, how = render.django_python(work / "django-venv")
    django = render.django_seconds(python, content.SUBJECT, content.BODY, users, runs.VARS, repeats, work / "r.json")
    results.figures["render"], results.figures["django render"] = Figure(tuple(dbmail)), Figure(tuple(django))
    results.notes["django install"] = how
    rate = RENDER_RECIPIENTS / results.figures["render"].median
    django_rate = RENDER_RECIPIENTS / results.figures["django render"].median
    say(
        f"render          {RENDER_RECIPIENTS} recipients, 3 KB Django-syntax HTML: "
        f"dbmail (prepared once) {rate:,.0f}/s; "
        f"Django Template() per recipient, subject and body ({how}): {django_rate:,.0f}/s"
    )


def measure_send_rate(results: Results, config: Config, work: Path) -> None:
    """A bulk request on a stack of its own whose SES refuses sends above the rate (MaxSendRate 0:
    the send functions read that quota), after a warm-up request (their cold starts)."""
    results.load("send rate")
    with throttled_stack(config.ses_rate, work / "rate-stack") as state:
        rate_run(state, 20, timeout=120)
        run = rate_run(state, config.rate_emails, timeout=config.rate_emails / config.ses_rate * 3 + 60)
    results.notes["send rate run"] = run
    say(
        f"send rate       {run.emails:,} emails against an SES of {run.max_send_rate:g} emails/s (MaxSendRate 0): "
        f"{run.average:.1f} emails/s on average, {run.throttles} throttled"
    )


def write_units_per_email(
    send_runs: list[tuple[dict, dict]], units_per_statement: int = 1
) -> tuple[float, float, dict[str, float]]:
    """Write and read units per email over the send runs (expansion and send), and writes by
    table; a PartiQL update costs ``units_per_statement`` (its items' size, measured)."""
    writes: dict[str, float] = {}
    reads = emails = 0.0
    for expanded, sent in send_runs:
        for run in (expanded, sent):
            for table, units in run["write_units"].items():
                writes[table] = writes.get(table, 0.0) + units
            for table, statements in run.get("statement_writes", {}).items():
                writes[table] = writes.get(table, 0.0) + statements * units_per_statement
            reads += sum(run["read_units"].values())
        emails += sent["emails"]
    return sum(writes.values()) / emails, reads / emails, {t: u / emails for t, u in writes.items()}


def per_email(results: Results, memory: dict[str, int]) -> PerEmail:
    send_runs = results.notes["send runs"]
    writes, reads, _ = write_units_per_email(send_runs, results.notes["units per statement"])
    durations: dict[str, list[float]] = {}
    sqs_calls = polls = 0
    for expanded, sent in send_runs:
        for run in (expanded, sent):
            for name, spent in run["durations"].items():
                durations.setdefault(name, []).extend(spent)
            sqs_calls += sum(count for call, count in run["calls"].items() if call.startswith("sqs.Send"))
        polls += sum(-(-size // RECEIVE_MAX) for size in sent["batches"])
    emails = sum(sent["emails"] for _, sent in send_runs)
    functions = tuple(
        FunctionUse(name, memory[name], len(spent), sum(spent)) for name, spent in sorted(durations.items())
    )
    # Lambda's SQS poller: a ReceiveMessage and a DeleteMessageBatch per 10 messages (their limit)
    return PerEmail(functions, emails, (sqs_calls + 2 * polls) / emails, writes, reads)


def checks(results: Results, config: Config) -> list[Check]:
    out = [
        Check(
            "send vs bare SES",
            report.throughput_ratio(results.figures["send"].median, results.figures["ses floor"].median),
            0.7,
            True,
            "x",
            "median s/email: floor / dbmail",
        ),
        Check(
            "render vs Django per recipient",
            report.throughput_ratio(results.figures["render"].median, results.figures["django render"].median),
            10,
            True,
            "x",
            "median: Django s / dbmail s",
        ),
        Check("first delivery p50", results.notes["first delivery p50"], 0.5, False, "s", "write -> outbox"),
        Check(
            "cold import, slowest handler",
            max(figure.median for figure in results.cold.values()),
            0.5,
            False,
            "s",
            "median of 5 processes",
        ),
    ]
    if "write floor" in results.figures:
        out.insert(
            1,
            Check(
                f"expand vs bare writes ({config.floor_size:,})",
                report.throughput_ratio(results.figures["expand"].median, results.figures["write floor"].median),
                0.95,
                True,
                "x",
                "median s: floor / dbmail",
            ),
        )
    writes, _, _ = write_units_per_email(results.notes["send runs"], results.notes["units per statement"])
    out.append(Check("DynamoDB write units per email", writes, 5, False, "WCU", "3 KB body, all tables"))
    if 10_000 in results.sizes and 100_000 in results.sizes:
        small, large = results.sizes[10_000]["rss"].median, results.sizes[100_000]["rss"].median
        out.append(Check("peak RSS 100k / 10k", large / small, 1.10, False, "x", "within +-10%"))
    rate = results.notes["send rate run"]
    out.append(Check("sends SES throttled at its rate", rate.throttles, 0, False, "emails", f"of {rate.emails:,}"))
    out.append(Check("send rate / SES rate", rate.average / config.ses_rate, 0.9, True, "x", "average, first to last"))
    if 100_000 in results.sizes:
        queued = results.sizes[100_000]["seconds"].median
        out.append(Check("100,000 recipients queued", queued, QUEUE_TARGET_SECONDS, False, "s", "3x faster than 552 s"))
    return out


def main() -> int:
    config = Config.from_environ()
    results = Results()
    started = time.monotonic()
    say(f"bench: sizes {config.sizes}, {config.repeats} repeats ({config.large_repeats} at 100,000+)")
    with tempfile.TemporaryDirectory(prefix="dbmail-bench-work-") as work_dir:
        work = Path(work_dir)
        measure_render(results, config, work)  # first: CPU alone, before any emulator runs
        with bench_stack() as state:
            phases: list[Callable[[], None]] = [
                lambda: measure_latency(results),
                lambda: stack.stop_runner(state),  # the rest runs its functions in worker processes
                lambda: measure_cold_import(results, state, work),
                lambda: measure_send(results, state, config, work),
                lambda: measure_expand(results, state, config, work),
            ]
            for phase in phases:
                phase()
            template, _ = stack_template(state)
            memory = {f.logical_id: f.memory_mb for f in coldstart.handlers(template)}
        measure_send_rate(results, config, work)  # on a stack of its own, once the bench's is down
    results.load("end")
    results.checks = checks(results, config)
    measured = per_email(results, memory)
    say("")
    say(report.text_table(report.CHECK_HEADER, report.check_rows(results.checks)))
    say("")
    say("cost per 100,000 emails on AWS (us-east-1 list prices, from the send runs' measured counts):")
    lines = cost_lines(measured, 100_000)
    for item, quantity, dollars in lines:
        say(f"  {item:<38} {quantity:<38} ${dollars:,.2f}")
    say(f"  {'total':<38} {'':<38} ${sum(d for _, _, d in lines):,.2f}")
    loads = "; ".join(f"{phase} {one:.2f}/{five:.2f}/{fifteen:.2f}" for phase, (one, five, fifteen) in results.loads)
    say(f"machine load (1/5/15 min averages) at each phase's start: {loads}; nproc {os.cpu_count()}")
    say(f"bench took {time.monotonic() - started:.0f} s")
    if config.docs:
        largest = max(results.sizes)
        largest_run = results.sizes[largest]
        projection = project(
            1_000_000,
            largest_run["emails"] / largest,
            largest_run["emails"] / largest_run["seconds"].median,
            [14, 100, 500],
            max(entry["rss"].median for entry in results.sizes.values()),
        )
        path = write_docs(REPO_ROOT / "docs", config, results, measured, lines, projection)
        say(f"wrote {path}")
    failed = [check.name for check in results.checks if not check.passed]
    if failed:
        say(f"FAILED targets: {', '.join(failed)}" + ("" if config.strict else " (BENCH_STRICT=1 makes this exit 1)"))
    return 1 if failed and config.strict else 0


if __name__ == "__main__":
    sys.exit(main())
