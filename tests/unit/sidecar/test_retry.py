"""Backoff and the retry budget, on a virtual clock with seeded randomness."""

import random

from routemesh_sidecar.routetable import Backoff
from routemesh_sidecar.routetable import RetryBudget as RetryBudgetSettings
from routemesh_sidecar.upstream.retry import RetryBudget, backoff_delay


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now


def test_backoff_doubles_up_to_the_cap_without_jitter():
    settings = Backoff(base=0.1, max=0.5, jitter="None")
    rng = random.Random(0)
    assert [backoff_delay(settings, i, rng) for i in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_full_jitter_draws_below_the_exponential_cap_and_spreads():
    settings = Backoff(base=0.1, max=10.0, jitter="Full")
    rng = random.Random(42)
    draws = [backoff_delay(settings, 3, rng) for _ in range(200)]
    assert all(0.0 <= d <= 0.8 for d in draws)
    assert max(draws) - min(draws) > 0.5, "full jitter spreads retries over the whole range"


def test_budget_allows_a_share_of_recent_requests_plus_the_floor():
    clock = VirtualClock()
    budget = RetryBudget(
        RetryBudgetSettings(percent=20, min_retries_per_second=0, window=10), clock
    )
    for _ in range(50):
        budget.record_request()
    allowed = sum(budget.allow_retry() for _ in range(100))
    assert allowed == 10, "20 percent of 50 requests"


def test_budget_floor_lets_low_traffic_retry():
    clock = VirtualClock()
    budget = RetryBudget(
        RetryBudgetSettings(percent=20, min_retries_per_second=1, window=10), clock
    )
    budget.record_request()
    assert sum(budget.allow_retry() for _ in range(20)) == 10, "1 per second over 10 seconds"


def test_budget_recovers_as_the_window_slides():
    clock = VirtualClock()
    budget = RetryBudget(
        RetryBudgetSettings(percent=50, min_retries_per_second=0, window=10), clock
    )
    for _ in range(4):
        budget.record_request()
    assert [budget.allow_retry() for _ in range(3)] == [True, True, False]
    clock.now += 10.5  # everything expires
    assert not budget.allow_retry(), "no recent requests, no floor: no retries"
    for _ in range(2):
        budget.record_request()
    assert budget.allow_retry()
