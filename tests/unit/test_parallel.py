"""each_at_once: an expansion batch's independent calls overlap, a few at a time, and an error
is raised only once none of the batch is still in flight."""

import threading
import time

import pytest

from dbmail.core.parallel import each_at_once


def test_the_calls_overlap_up_to_the_limit_and_the_results_keep_their_order():
    # given calls that record how many run at once
    lock, running, most = threading.Lock(), [0], [0]

    def call(n: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return n * n

    # when twelve run with four in flight
    results = each_at_once(call, list(range(12)), in_flight=4)
    # then four ran at once, never more, and each result is in its item's place
    assert most[0] == 4
    assert results == [n * n for n in range(12)]


def test_an_error_is_raised_after_every_call_of_the_batch_has_finished():
    # given one call that fails at once while the others are slow
    finished = []

    def call(n: int) -> int:
        if n == 0:
            raise TimeoutError("the first write timed out")
        time.sleep(0.05)
        finished.append(n)
        return n

    # when the batch runs, then the error is raised, and no call is left running
    with pytest.raises(TimeoutError, match="first write"):
        each_at_once(call, list(range(8)), in_flight=4)
    assert sorted(finished) == list(range(1, 8))


def test_one_item_or_one_in_flight_runs_in_the_callers_thread():
    caller = threading.get_ident()
    assert each_at_once(lambda _: threading.get_ident(), [1]) == [caller]
    assert each_at_once(lambda _: threading.get_ident(), [1, 2, 3], in_flight=1) == [caller] * 3
