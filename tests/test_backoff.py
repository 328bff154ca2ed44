"""mlex_tomo.backoff: the retry schedule of the ingester, the Tiled client and the supervisor."""

from mlex_tomo.backoff import Backoff


def test_delays_double_up_to_the_cap_and_start_again_after_a_success():
    backoff = Backoff(first=0.5, longest=3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_the_nth_delay_for_callers_that_count_attempts():
    backoff = Backoff(first=1.0, longest=30.0)
    assert [backoff.delay(attempt) for attempt in (1, 2, 5, 6, 20)] == [1.0, 2.0, 16.0, 30.0, 30.0]
    assert backoff.attempts == 0
