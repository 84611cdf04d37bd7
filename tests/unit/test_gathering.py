"""Gathered calls (outgoing/gathering.py): the like calls of the deliveries in progress at once
made as one, as the send function's claims, suppression lookups and records of sends are."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dbmail.outgoing.gathering import Gathered, deliveries


def test_the_suppression_lookups_of_concurrent_deliveries_are_made_in_one_call():
    # given ten deliveries in progress at once, one of whose addresses is suppressed
    calls = []

    def get_many(addresses):
        calls.append(set(addresses))
        return {a: "complaint" for a in addresses if a == "u3@example.net"}

    lookups = Gathered(lambda asks: get_many(asks.keys()), 5)
    started = threading.Barrier(10)

    def deliver(i):
        with lookups.delivery() as lookup:
            started.wait()  # all ten are in progress before any asks
            return lookup(f"u{i}@example.net", None)

    with ThreadPoolExecutor(10) as pool:
        found = list(pool.map(deliver, range(10)))
    # then one call looked all ten up, and each delivery got its own address's entry
    assert calls == [{f"u{i}@example.net" for i in range(10)}]
    assert found == [None] * 3 + ["complaint"] + [None] * 6


def test_a_delivery_that_never_asks_does_not_hold_up_the_lookup():
    lookups = Gathered(lambda asks: {}, 30)
    ready, done = threading.Barrier(2), []

    def duplicate():  # claims nothing, so looks nothing up
        with lookups.delivery():
            ready.wait()
            threading.Event().wait(0.2)

    def sending():
        with lookups.delivery() as lookup:
            ready.wait()
            done.append(lookup("u1@example.net", None))

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.submit(duplicate), pool.submit(sending)
        second.result(timeout=10)  # well within the 30 s it would otherwise wait
        first.result()
    assert done == [None]


def test_a_failed_lookup_fails_each_delivery_that_waited_for_it():
    def unreachable(asks):
        raise RuntimeError("DynamoDB unreachable")

    lookups = Gathered(unreachable, 5)
    started = threading.Barrier(3)

    def deliver(i):
        with lookups.delivery() as lookup:
            started.wait()
            with pytest.raises(RuntimeError):
                lookup(f"u{i}@example.net", None)
            return True

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(deliver, range(3))) == [True] * 3


def test_each_delivery_gets_its_own_result_and_only_its_own_error():
    # given three deliveries at once, the call failing for one of them only
    calls = []

    def claim_many(asks):
        calls.append(dict(asks))
        return {
            key: ValueError(f"{key} throttled") if key == "r2" else f"item {argument}" for key, argument in asks.items()
        }

    claims = Gathered(claim_many, 5)
    started = threading.Barrier(3)

    def deliver(i):
        with claims.delivery() as claim:
            started.wait()
            try:
                return claim(f"r{i}", i)
            except ValueError as exc:
                return str(exc)

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(deliver, range(3)))
    # then one call was made, and the error reached its own delivery alone
    assert calls == [{"r0": 0, "r1": 1, "r2": 2}]
    assert outcomes == ["item 0", "item 1", "r2 throttled"]


def test_a_delivery_alone_asks_at_once_and_may_ask_only_once():
    calls = Gathered(lambda asks: dict.fromkeys(asks, "done"), 30)
    with calls.delivery() as ask:
        # given no other delivery in progress, when it asks, then the call is made without waiting
        assert ask("r1", None) == "done"
        # and asking again is a mistake, said so
        with pytest.raises(RuntimeError, match="once"):
            ask("r1", None)


def test_deliveries_enters_each_call_and_a_later_call_does_not_wait_for_a_finished_delivery():
    first, second = Gathered(lambda asks: dict.fromkeys(asks, 1), 30), Gathered(lambda asks: dict.fromkeys(asks, 2), 30)
    finished = threading.Event()

    def early():  # asks the first call only, then is done
        with deliveries(first, second) as (ask_first, _):
            ask_first("e", None)
        finished.set()

    def late():  # asks both; its second ask must not wait for the early one
        with deliveries(first, second) as (ask_first, ask_second):
            assert ask_first("l", None) == 1
            finished.wait(10)
            return ask_second("l", None)

    with ThreadPoolExecutor(2) as pool:
        late_result = pool.submit(late)
        pool.submit(early).result(timeout=10)
        assert late_result.result(timeout=10) == 2  # well within the 30 s gather


def test_a_batch_announced_before_its_deliveries_start_is_one_call_from_the_first_ask():
    from dbmail.outgoing.gathering import expecting

    # given a batch of five announced, whose deliveries start one after another, each asking at once
    sizes = []
    claims = Gathered(lambda asks: sizes.append(len(asks)) or dict.fromkeys(asks, "claimed"), 5)

    def deliver(i):
        with claims.delivery() as claim:
            return claim(f"r{i}", None)

    with expecting(5, claims), ThreadPoolExecutor(5) as pool:
        futures = []
        for i in range(5):
            futures.append(pool.submit(deliver, i))
            threading.Event().wait(0.01)  # the first has asked before the last starts
        outcomes = [future.result(timeout=10) for future in futures]
    # then the first ask waited for the rest of the batch: one call for all five
    assert sizes == [5] and outcomes == ["claimed"] * 5


def test_an_announced_delivery_that_never_starts_stops_counting_when_its_batch_ends():
    from dbmail.outgoing.gathering import expecting

    calls = Gathered(lambda asks: dict.fromkeys(asks, "done"), 30)
    # given a batch of two announced of which one never starts (a poison record)
    with ThreadPoolExecutor(1) as pool:
        with expecting(2, calls), calls.delivery() as ask:
            waiting = pool.submit(ask, "r1", None)
            # then its ask waits for the other while the batch lasts
            assert threading.Event().wait(0.2) is False and not waiting.done()
        # and once the batch has ended it waits no more (well within the 30 s gather)
        assert waiting.result(timeout=5) == "done"
    with calls.delivery() as ask_alone:
        assert ask_alone("r2", None) == "done"


def test_an_announced_delivery_that_is_withdrawn_is_not_waited_for():
    # given a batch of two announced deliveries, and a call that would wait 30 s for the second
    calls = []
    claims = Gathered(lambda asks: calls.append(set(asks)) or {}, 30)
    with claims.expecting(2):
        # when the second is withdrawn (its record is not a delivery) and the first asks
        claims.withdraw()
        with claims.delivery() as claim:
            claim("first", None)
    # then the call was made for the first at once
    assert calls == [{"first"}]
