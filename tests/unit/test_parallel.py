"""each_at_once: an expansion batch's independent calls overlap, a few at a time, and an error
is raised only once none of the batch is still in flight. pooled: the threads are kept for the
next caller, lent to one caller at a time, and hold each caller's own bound. one_behind: an
expansion queues a batch while it renders and writes the next, one batch's sends at a time."""

import threading
import time
from concurrent.futures import wait

import pytest

from dbmail.core.parallel import each_at_once, one_behind, pooled


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


def _in_flight_recorder(together: int):
    """A task that records how many run at once, and waits (up to 5 s) until ``together`` tasks
    are running: it fails (BrokenBarrierError) unless that many ever run at once."""
    lock, running, most, threads = threading.Lock(), [0], [0], set()
    barrier = threading.Barrier(together, timeout=5)

    def call() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            threads.add(threading.get_ident())
        barrier.wait()
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    return call, most, threads


def _run(workers: int, name: str, call, tasks: int) -> None:
    with pooled(workers, name) as submit:
        futures = [submit(call) for _ in range(tasks)]
        wait(futures)
    for future in futures:
        future.result()  # a barrier broken: not that many ran at once


def test_a_pool_is_kept_for_the_next_caller_and_its_threads_reused():
    # given a caller that ran eight tasks at once on a pool of its own name
    call, most, first_threads = _in_flight_recorder(8)
    _run(8, "test-reuse", call, 8)
    assert most[0] == 8
    # when the next caller asks for as many
    call, most, next_threads = _in_flight_recorder(8)
    _run(8, "test-reuse", call, 8)
    # then its tasks ran at once on the same threads: none was started for it
    assert most[0] == 8
    assert next_threads == first_threads


def test_a_pool_lent_again_with_more_threads_holds_the_new_callers_bound():
    # given a pool of ten threads, kept
    call, _, _ = _in_flight_recorder(10)
    _run(10, "test-bound", call, 10)
    # when a caller asks for three at a time and submits nine
    call, most, _ = _in_flight_recorder(3)
    _run(3, "test-bound", call, 9)
    # then three ran at once, never more
    assert most[0] == 3


def test_callers_at_once_each_get_a_pool_of_their_own():
    # given two callers inside pooled at the same time, each with tasks that wait for all of its own
    barrier_a, barrier_b = threading.Barrier(5), threading.Barrier(5)
    results = []

    def caller(barrier: threading.Barrier) -> None:
        with pooled(5, "test-apart") as submit:
            futures = [submit(barrier.wait, 2) for _ in range(5)]
            wait(futures)
        results.append([f.exception() for f in futures])

    # when both run, then each caller's five tasks ran at once (no barrier timed out)
    threads = [threading.Thread(target=caller, args=(b,)) for b in (barrier_a, barrier_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[None] * 5, [None] * 5]


def test_one_behind_runs_each_call_while_the_caller_goes_on_one_at_a_time_in_order():
    # given calls that each wait until the test lets them finish
    gates = [threading.Event() for _ in range(3)]
    started, done = [], []

    def call(n: int) -> None:
        started.append(n)
        gates[n].wait(5)
        done.append(n)

    with one_behind(call, "test-one-behind") as start:
        # when the first is started, then the caller goes on while it runs
        start(0)
        assert done == [] and gates[0].wait(0) is False
        # when the next is started, then it waits for the one before, and only then runs
        gates[0].set()
        start(1)
        assert done == [0]
        gates[1].set()
        start(2)
        assert done == [0, 1]
        gates[2].set()
    # and leaving waited for the last: each ran alone, in order
    assert started == done == [0, 1, 2]


def test_one_behind_raises_a_calls_error_at_the_next_start_or_on_leaving():
    def call(n: int) -> None:
        if n == 1:
            raise ConnectionError("SQS refused the batch")

    # given a call that fails: the next start raises its error
    with pytest.raises(ConnectionError), one_behind(call, "test-one-behind") as start:
        start(0)
        start(1)
        start(2)
    # and a last call that fails: leaving raises it
    with pytest.raises(ConnectionError), one_behind(call, "test-one-behind") as start:
        start(0)
        start(1)


def test_one_behind_leaves_nothing_running_when_the_block_fails_and_raises_the_blocks_error():
    finished = threading.Event()

    def call(n: int) -> None:
        time.sleep(0.1)
        finished.set()
        raise ConnectionError("a later error, not the one raised")

    # when the block fails while a call is in flight
    with pytest.raises(ValueError, match="render limit") as caught, one_behind(call, "test-one-behind") as start:
        start(0)
        raise ValueError("render limit")
    # then the call had finished before the block's own error was raised, and its error goes with it
    assert finished.is_set()
    assert caught.value.__notes__ == [
        "and the call in flight failed: ConnectionError('a later error, not the one raised')"
    ]
