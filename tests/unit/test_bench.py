"""The bench's pure parts: the cost calculator, the projection, the ratio and target table, and
the parsers of what it measures (importtime output, DynamoDB's ConsumedCapacity), and the CPU
seconds by process."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.coldstart import parse_importtime
from bench.costs import (
    DYNAMODB_READ_UNIT,
    DYNAMODB_WRITE_UNIT,
    LAMBDA_GB_SECOND,
    LAMBDA_REQUEST,
    SQS_REQUEST,
    FunctionUse,
    PerEmail,
    cost_lines,
    project,
    sqs_billed_requests,
)
from bench.cpu import THIS_PROCESS, CpuSpan, busy_seconds, describe
from bench.instrument import consumed_units
from bench.report import Check, Figure, markdown_table, percentile, text_table, throughput_ratio
from dbmail_local.stack import StatePaths, running_pid


def test_costs_scale_the_measured_use_to_the_emails_asked_for():
    # given 1,000 emails measured: a 512 MB function busy 10 s over 100 invocations, 0.3 SQS
    # requests, 4 write units and 1.5 read units per email
    measured = PerEmail((FunctionUse("SendFunction", 512, 100, 10.0),), 1000, 0.3, 4.0, 1.5)
    # when costed for 100,000 emails
    lines = {item: (quantity, dollars) for item, quantity, dollars in cost_lines(measured, 100_000)}
    # then each item is the measured use times 100, at the list price
    quantity, dollars = lines["Lambda SendFunction (512 MB)"]
    assert quantity == "500.0 GB-s, 10,000 invocations"
    assert dollars == pytest.approx(500 * LAMBDA_GB_SECOND + 10_000 * LAMBDA_REQUEST)
    assert lines["SQS"] == ("30,000 requests", pytest.approx(30_000 * SQS_REQUEST))
    assert lines["DynamoDB writes"] == ("400,000 write units", pytest.approx(400_000 * DYNAMODB_WRITE_UNIT))
    assert lines["DynamoDB reads"] == ("150,000 read units", pytest.approx(150_000 * DYNAMODB_READ_UNIT))
    assert lines["SES"] == ("100,000 emails", pytest.approx(10.0))


def test_sqs_bills_each_64_kib_of_a_call_as_a_request():
    assert sqs_billed_requests(0) == 1
    assert sqs_billed_requests(64 * 1024) == 1
    assert sqs_billed_requests(64 * 1024 + 1) == 2
    assert sqs_billed_requests(250_000) == 4


def test_the_projection_queues_at_the_measured_rate_and_sends_at_each_quota():
    # given 1.5 emails per recipient queued at 500 emails/s, with a flat 120 MiB peak
    projection = project(1_000_000, 1.5, 500.0, [14, 100], 120.0)
    # then a million recipients are 1.5 M emails, queued in 3,000 s and sent at each quota
    assert projection.emails == 1_500_000
    assert projection.queue_seconds == pytest.approx(3000)
    assert projection.send_seconds == {14: pytest.approx(1_500_000 / 14), 100: pytest.approx(15_000)}
    assert projection.peak_rss_mib == 120.0


def test_a_ratio_is_dbmails_throughput_as_a_fraction_of_the_floors():
    # dbmail takes 10 s where the floor takes 8 s: 0.8x the floor
    assert throughput_ratio(dbmail_seconds=10.0, floor_seconds=8.0) == pytest.approx(0.8)


def test_figures_give_min_and_median_and_the_nearest_rank_percentile():
    figure = Figure((0.3, 0.1, 0.2, 0.9))
    assert (figure.min, figure.median, figure.max) == (0.1, pytest.approx(0.25), 0.9)
    assert percentile([0.4, 0.1, 0.3, 0.2, 0.5], 0.5) == 0.3
    assert percentile([0.1, 0.2], 0.5) == 0.2
    assert percentile([0.1, 0.2, 0.3], 1.0) == 0.3


def test_a_check_passes_on_its_side_of_the_target():
    # given targets with a lower bound (a ratio) and an upper bound (seconds)
    ratio = Check("send vs bare SES", 0.69, 0.7, True, "x")
    latency = Check("first delivery p50", 0.5, 0.5, False, "s")
    # then each is judged on its side, the bound itself passing
    assert (ratio.verdict, latency.verdict) == ("FAIL", "PASS")
    assert Check("send vs bare SES", 0.7, 0.7, True, "x").passed
    assert (ratio.shown(ratio.value), ratio.target_text) == ("0.69x", ">= 0.70x")
    assert latency.target_text == "<= 0.5 s"


def test_tables_have_a_header_and_a_row_per_entry():
    rows = [["send", "0.80x"], ["render", "12.00x"]]
    assert markdown_table(["target", "measured"], rows) == (
        "| target | measured |\n|---|---|\n| send | 0.80x |\n| render | 12.00x |"
    )
    assert text_table(["target", "measured"], rows).splitlines() == [
        "target  measured",
        "send    0.80x",
        "render  12.00x",
    ]


IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       120 |        120 | _io
import time:       500 |        900 |   encodings.aliases
import time:      1000 |       1900 | encodings
import time:      2000 |       2000 |     botocore.compat
import time:      3000 |       5000 |   boto3
import time:      4000 |       4000 |   dbmail.wiring
import time:       100 |     100000 |   aws_lambda_powertools
import time:      8000 |     117000 | app
"""


def test_importtime_output_gives_apps_cumulative_time_and_its_heaviest_direct_imports():
    parsed = parse_importtime(IMPORTTIME)
    # app's cumulative time, and its direct imports (not encodings', not boto3's own) slowest first
    assert parsed.seconds == pytest.approx(0.117)
    assert parsed.heaviest == [("aws_lambda_powertools", 0.1), ("boto3", 0.005), ("dbmail.wiring", 0.004)]


def test_importtime_output_without_the_module_is_an_error():
    with pytest.raises(ValueError):
        parse_importtime(IMPORTTIME, module="handler")


def test_consumed_capacity_is_summed_by_table_from_one_answer_or_a_batchs_list():
    assert consumed_units(None) == {}
    assert consumed_units({"TableName": "emails", "CapacityUnits": 4.0}) == {"emails": 4.0}
    batch = [{"TableName": "emails", "CapacityUnits": 6.0}, {"TableName": "requests", "CapacityUnits": 1.0}]
    assert consumed_units(batch) == {"emails": 6.0, "requests": 1.0}


def test_a_partiql_update_is_priced_at_its_items_size():
    from bench.instrument import item_bytes, statement_units

    # given sent emails' items as a Scan returns them, one over a kilobyte
    small = {"request_id": {"S": "r" * 32}, "status": {"S": "sent"}, "tries": {"N": "0"}}
    large = {**small, "subject": {"S": "é" * 600}}  # 1,200 bytes in UTF-8
    # then an item's size is its names and values as DynamoDB counts them
    assert item_bytes(small) == (10 + 32) + (6 + 4) + (5 + 2)
    assert item_bytes({"tags": {"SS": ["ab", "c"]}, "doc": {"M": {"k": {"S": "v"}}}}) == (4 + 3) + (3 + 3 + 1 + 1 + 1)
    # and an update costs a unit per started kilobyte of its item, averaged, and at least one
    assert statement_units([small]) == 1
    assert statement_units([small, large]) == 1.5
    assert statement_units([]) == 1


def test_a_cpu_span_counts_this_process_and_each_running_emulator_apart(tmp_path: Path):
    # given a stack whose "moto" is a process busy for the span, and no DynamoDB Local
    state = StatePaths.resolve(tmp_path)
    state.pids.mkdir(parents=True, exist_ok=True)
    spin = "import time\nwhile True: time.perf_counter()"
    busy = subprocess.Popen([sys.executable, "-c", spin, "dbmail_local"])  # the stack's own, by its command line
    try:
        state.pid_file("moto").write_text(f"{busy.pid}\n")
        started = time.monotonic()  # until the stack knows it as its own (by its command line)
        while running_pid(state, "moto") is None and time.monotonic() < started + 10:
            time.sleep(0.01)
        span = CpuSpan(state)
        span.start()
        # when this process spins for 0.25 s of its own CPU (however busy the machine) and at
        # least 0.5 s of wall time, and the other spins beside it
        cpu_until, wall_until = time.process_time() + 0.25, time.perf_counter() + 0.5
        while time.process_time() < cpu_until or time.perf_counter() < wall_until:
            pass
        spent = span.stop()
    finally:
        busy.kill()
        busy.wait()
    # then each has its own CPU seconds, the absent emulator none, and the line adds them up
    assert spent[THIS_PROCESS] >= 0.25
    assert spent["moto"] > 0
    assert "dynamodb" not in spent
    assert spent["wall"] >= 0.5
    assert busy_seconds(spent) == pytest.approx(spent[THIS_PROCESS] + spent["moto"])
    assert describe(spent).startswith(f"{THIS_PROCESS} {spent[THIS_PROCESS]:.1f}, moto")
    assert f"in {spent['wall']:.1f} s" in describe(spent)
