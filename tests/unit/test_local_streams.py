"""The local runner's stream poller: fast while a stream is active, Lambda's rate once quiet."""

from dbmail_local.streams import ACTIVE_SECONDS, IDLE_POLL_INTERVAL, POLL_INTERVAL, poll_interval


def test_an_active_stream_is_polled_fast_and_a_quiet_one_at_lambdas_rate():
    # given the stream's last records just now, a second ago, and longer ago than ACTIVE_SECONDS
    # then an empty poll waits the short interval while active, Lambda's (about 4 a second) after
    assert poll_interval(0.0) == POLL_INTERVAL
    assert poll_interval(ACTIVE_SECONDS - 0.01) == POLL_INTERVAL
    assert poll_interval(ACTIVE_SECONDS) == IDLE_POLL_INTERVAL
    assert poll_interval(3600) == IDLE_POLL_INTERVAL
    # and a request written while the stream is quiet still waits under half a second to be read
    assert POLL_INTERVAL < IDLE_POLL_INTERVAL <= 0.25
