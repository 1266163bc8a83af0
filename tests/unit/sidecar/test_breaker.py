"""The circuit breaker on a virtual clock: every transition between closed, open and half_open.

Time is a float passed in as `now`; nothing sleeps. Open times are asserted exactly.
"""

import pytest

from routemesh_sidecar.routetable import CircuitBreaker as CircuitBreakerSettings
from routemesh_sidecar.routetable import ErrorClass, FailureRate
from routemesh_sidecar.upstream.breaker import (
    BreakerState,
    CircuitBreaker,
    FailureWindow,
    Transition,
)

pytestmark = pytest.mark.timeout(10)

T0 = 1000.0


def breaker(**fields: object) -> CircuitBreaker:
    settings = CircuitBreakerSettings.model_validate(
        {"consecutive_failures": 3, "base_open_time": 30, "max_open_time": 300, **fields}
    )
    return CircuitBreaker("b", settings)


def state(cb: CircuitBreaker) -> BreakerState:
    """The state, read through a call so that mypy does not narrow it across transitions."""
    return cb.state


def fail_until_open(cb: CircuitBreaker, now: float, error: ErrorClass = "server_error") -> None:
    transition = None
    for _ in range(cb.settings.consecutive_failures):
        transition = cb.record("normal", error, now)
    assert transition is not None
    assert state(cb) == "open"


def half_open(cb: CircuitBreaker, now: float) -> None:
    """Open the breaker at `now` and move to half_open when its open time is over."""
    fail_until_open(cb, now)
    assert cb.open_until is not None
    _, transition = cb.allows(cb.open_until)
    assert transition is not None
    assert state(cb) == "half_open"


def test_starts_closed_and_allows():
    cb = breaker()
    assert state(cb) == "closed"
    assert cb.allows(T0) == (True, None)
    assert cb.acquire(T0) == ("normal", None)


def test_consecutive_failures_open_the_breaker_for_the_base_open_time():
    cb = breaker()
    assert cb.record("normal", "server_error", T0) is None
    assert cb.record("normal", "timeout", T0 + 1) is None
    assert cb.consecutive_failures == 2
    transition = cb.record("normal", "connect_error", T0 + 2)
    assert transition == Transition(
        "circuit_breaker", "b", "closed", "open", "3 failures in a row", T0 + 2 + 30
    )
    assert state(cb) == "open"
    assert cb.open_until == T0 + 32
    assert cb.openings == 1
    assert cb.consecutive_failures == 0
    assert cb.cooling is False


def test_a_success_resets_the_count_of_failures_in_a_row():
    cb = breaker()
    cb.record("normal", "server_error", T0)
    cb.record("normal", "server_error", T0)
    assert cb.record("normal", None, T0) is None
    assert cb.consecutive_failures == 0
    assert cb.record("normal", "server_error", T0) is None
    assert cb.record("normal", "server_error", T0) is None
    assert state(cb) == "closed"


@pytest.mark.parametrize("error", ["client_error", "context_length", "content_policy"])
def test_the_requests_own_errors_count_as_successes(error: ErrorClass):
    cb = breaker()
    cb.record("normal", "server_error", T0)
    cb.record("normal", "server_error", T0)
    assert cb.record("normal", error, T0) is None
    assert cb.consecutive_failures == 0
    for _ in range(10):
        assert cb.record("normal", error, T0) is None
    assert state(cb) == "closed"


@pytest.mark.parametrize(
    "error",
    [
        "connect_error",
        "timeout",
        "rate_limited",
        "overloaded",
        "server_error",
        "bad_response",
        "stream_broken",
    ],
)
def test_upstream_errors_count_as_failures(error: ErrorClass):
    cb = breaker(consecutive_failures=1)
    transition = cb.record("normal", error, T0)
    assert transition is not None
    assert (transition.from_state, transition.to_state) == ("closed", "open")


def test_open_refuses_until_the_open_time_is_over_then_half_opens():
    cb = breaker()
    fail_until_open(cb, T0)
    assert cb.allows(T0) == (False, None)
    assert cb.acquire(T0 + 29.999) == (None, None)
    assert state(cb) == "open"
    allowed, transition = cb.allows(T0 + 30)
    assert allowed is True
    assert transition == Transition(
        "circuit_breaker", "b", "open", "half_open", "open time is over", None
    )
    assert state(cb) == "half_open"
    assert cb.open_until is None


def test_acquire_also_moves_an_expired_opening_to_half_open_and_takes_a_probe():
    cb = breaker()
    fail_until_open(cb, T0)
    permit, transition = cb.acquire(T0 + 45)
    assert permit == "probe"
    assert transition is not None
    assert (transition.from_state, transition.to_state) == ("open", "half_open")
    assert cb.probes_in_flight == 1


def test_half_open_lets_a_bounded_number_of_probes_through():
    cb = breaker(half_open_probes=2)
    half_open(cb, T0)
    now = T0 + 30
    assert cb.acquire(now) == ("probe", None)
    assert cb.allows(now) == (True, None)
    assert cb.acquire(now) == ("probe", None)
    assert cb.probes_in_flight == 2
    assert cb.allows(now) == (False, None)
    assert cb.acquire(now) == (None, None)
    assert cb.probes_in_flight == 2


def test_releasing_an_unsent_probe_frees_its_slot():
    cb = breaker()
    half_open(cb, T0)
    now = T0 + 30
    assert cb.acquire(now) == ("probe", None)
    assert cb.acquire(now) == (None, None)
    cb.release("probe")
    assert cb.probes_in_flight == 0
    assert state(cb) == "half_open"
    assert cb.acquire(now) == ("probe", None)


def test_releasing_a_normal_permit_changes_nothing():
    cb = breaker()
    half_open(cb, T0)
    cb.acquire(T0 + 30)
    cb.release("normal")
    assert cb.probes_in_flight == 1
    cb.release("probe")
    cb.release("probe")
    assert cb.probes_in_flight == 0


def test_all_probes_must_succeed_to_close():
    cb = breaker(half_open_probes=2)
    half_open(cb, T0)
    now = T0 + 30
    cb.acquire(now)
    cb.acquire(now)
    assert cb.record("probe", None, now + 1) is None
    assert state(cb) == "half_open"
    assert cb.probe_successes == 1
    transition = cb.record("probe", None, now + 2)
    assert transition == Transition(
        "circuit_breaker", "b", "half_open", "closed", "2 probes succeeded", None
    )
    assert state(cb) == "closed"
    assert cb.open_until is None
    assert cb.closed_since == now + 2
    assert cb.probes_in_flight == 0
    assert cb.acquire(now + 2) == ("normal", None)


def test_a_probe_answered_with_a_client_error_counts_as_a_success():
    cb = breaker()
    half_open(cb, T0)
    cb.acquire(T0 + 30)
    transition = cb.record("probe", "client_error", T0 + 31)
    assert transition is not None
    assert (transition.from_state, transition.to_state) == ("half_open", "closed")


def test_any_failed_probe_reopens_for_longer():
    cb = breaker(half_open_probes=2)
    half_open(cb, T0)
    now = T0 + 30
    cb.acquire(now)
    cb.acquire(now)
    assert cb.record("probe", None, now + 1) is None
    transition = cb.record("probe", "timeout", now + 2)
    assert transition == Transition(
        "circuit_breaker", "b", "half_open", "open", "a probe failed", now + 2 + 60
    )
    assert state(cb) == "open"
    assert cb.open_until == now + 62
    assert cb.openings == 2
    assert cb.probes_in_flight == 0
    assert cb.probe_successes == 0


def test_a_probe_result_after_the_breaker_reopened_is_ignored():
    cb = breaker(half_open_probes=2)
    half_open(cb, T0)
    now = T0 + 30
    cb.acquire(now)
    cb.acquire(now)
    cb.record("probe", "server_error", now + 1)
    until = cb.open_until
    assert cb.record("probe", None, now + 2) is None
    assert state(cb) == "open"
    assert cb.open_until == until


def test_the_open_time_grows_with_each_reopening_up_to_the_maximum():
    cb = breaker(base_open_time=30, max_open_time=100)
    fail_until_open(cb, T0)
    durations = []
    now = T0
    for _ in range(5):
        assert cb.open_until is not None
        durations.append(cb.open_until - now)
        now = cb.open_until
        permit, _ = cb.acquire(now)
        assert permit == "probe"
        transition = cb.record("probe", "overloaded", now)
        assert transition is not None
        assert transition.until == now + min(100, 30 * cb.openings)
    assert durations == [30, 60, 90, 100, 100]
    assert cb.openings == 6


def test_growth_continues_after_a_short_time_closed():
    cb = breaker()
    half_open(cb, T0)
    cb.acquire(T0 + 30)
    cb.record("probe", None, T0 + 30)
    assert state(cb) == "closed"
    transition = None
    for _ in range(3):
        transition = cb.record("normal", "server_error", T0 + 100)
    assert transition is not None
    assert transition.until == T0 + 100 + 60
    assert cb.openings == 2


def test_growth_starts_afresh_after_staying_closed_for_the_maximum_open_time():
    cb = breaker(base_open_time=30, max_open_time=300)
    half_open(cb, T0)
    cb.acquire(T0 + 30)
    cb.record("probe", "server_error", T0 + 30)  # reopens for 60s
    assert cb.openings == 2
    cb.acquire(T0 + 90)
    cb.record("probe", None, T0 + 90)
    assert state(cb) == "closed"
    assert cb.closed_since == T0 + 90
    closed_for = T0 + 90 + 300
    transition = None
    for _ in range(3):
        transition = cb.record("normal", "server_error", closed_for)
    assert transition is not None
    assert transition.until == closed_for + 30
    assert cb.openings == 1


def test_results_of_normal_permits_are_ignored_while_not_closed():
    cb = breaker()
    fail_until_open(cb, T0)
    until = cb.open_until
    for _ in range(5):
        assert cb.record("normal", "server_error", T0 + 1) is None
    assert cb.record("normal", None, T0 + 1) is None
    assert (state(cb), cb.open_until, cb.openings) == ("open", until, 1)
    cb.allows(T0 + 30)
    assert state(cb) == "half_open"
    assert cb.record("normal", "server_error", T0 + 31) is None
    assert cb.record("normal", None, T0 + 31) is None
    assert state(cb) == "half_open"
    assert cb.probe_successes == 0


def test_cool_down_opens_for_exactly_the_retry_after_then_closes_directly():
    cb = breaker()
    transition = cb.cool_down(7.5, T0)
    assert transition == Transition(
        "circuit_breaker", "b", "closed", "open", "rate limited: Retry-After 7.5s", T0 + 7.5
    )
    assert (state(cb), cb.open_until, cb.cooling) == ("open", T0 + 7.5, True)
    assert cb.openings == 0
    assert cb.allows(T0 + 7.4) == (False, None)
    allowed, transition = cb.acquire(T0 + 7.5)
    assert allowed == "normal"
    assert transition == Transition(
        "circuit_breaker", "b", "open", "closed", "Retry-After time is over", None
    )
    assert (state(cb), cb.open_until, cb.cooling) == ("closed", None, False)
    assert cb.closed_since == T0 + 7.5


def test_cool_down_never_shortens_a_longer_opening():
    cb = breaker()
    fail_until_open(cb, T0)
    assert cb.open_until == T0 + 30
    assert cb.cool_down(10, T0 + 1) is None
    assert cb.cool_down(29, T0 + 1) is None  # ends exactly when the opening does
    assert (state(cb), cb.open_until, cb.cooling) == ("open", T0 + 30, False)
    # and so the opening ends in half_open, as a failure opening does
    _, transition = cb.allows(T0 + 30)
    assert transition is not None
    assert transition.to_state == "half_open"


def test_a_longer_cool_down_extends_a_cooling_opening():
    cb = breaker()
    cb.cool_down(5, T0)
    assert cb.cool_down(2, T0 + 1) is None
    assert cb.open_until == T0 + 5
    transition = cb.cool_down(20, T0 + 1)
    assert transition == Transition(
        "circuit_breaker", "b", "open", "open", "rate limited: Retry-After 20s", T0 + 21
    )
    assert cb.open_until == T0 + 21
    assert cb.allows(T0 + 20) == (False, None)
    assert cb.allows(T0 + 21)[0] is True
    assert state(cb) == "closed"


def test_cool_down_from_half_open_drops_the_probes():
    cb = breaker(half_open_probes=2)
    half_open(cb, T0)
    cb.acquire(T0 + 30)
    cb.record("probe", None, T0 + 30)
    cb.acquire(T0 + 30)
    transition = cb.cool_down(3, T0 + 31)
    assert transition is not None
    assert (transition.from_state, transition.to_state, transition.until) == (
        "half_open",
        "open",
        T0 + 34,
    )
    assert (cb.probes_in_flight, cb.probe_successes) == (0, 0)
    # the probe in flight answers after the cool-down began: ignored
    assert cb.record("probe", None, T0 + 32) is None
    assert state(cb) == "open"


def test_failure_rate_opens_once_enough_requests_were_seen():
    cb = breaker(
        consecutive_failures=100,
        failure_rate={"percent": 50, "window": 10, "minimum_requests": 4},
    )
    assert cb.record("normal", "server_error", T0) is None
    assert cb.record("normal", "server_error", T0 + 1) is None
    assert cb.record("normal", None, T0 + 2) is None  # 2 of 3 failed: too few requests
    assert state(cb) == "closed"
    transition = cb.record("normal", "server_error", T0 + 3)  # 3 of 4 failed
    assert transition == Transition(
        "circuit_breaker", "b", "closed", "open", "failure rate over the window", T0 + 33
    )


def test_failure_rate_below_the_threshold_stays_closed():
    cb = breaker(
        consecutive_failures=100,
        failure_rate={"percent": 50, "window": 10, "minimum_requests": 4},
    )
    for i in range(3):
        assert cb.record("normal", None, T0 + i) is None
    for i in range(2):
        assert cb.record("normal", "server_error", T0 + 3 + i) is None  # 2 of 5 failed
    assert state(cb) == "closed"
    transition = cb.record("normal", "server_error", T0 + 5)  # 3 of 6: 50%
    assert transition is not None
    assert transition.reason == "failure rate over the window"


def test_failure_rate_forgets_results_older_than_the_window():
    cb = breaker(
        consecutive_failures=100,
        failure_rate={"percent": 50, "window": 10, "minimum_requests": 4},
    )
    for _ in range(3):
        cb.record("normal", "server_error", T0)
    assert cb.record("normal", None, T0 + 10) is None  # the failures at T0 expired
    for _ in range(2):
        assert cb.record("normal", None, T0 + 11) is None
    assert cb.record("normal", "server_error", T0 + 12) is None  # 1 of 4
    assert state(cb) == "closed"


def test_the_window_is_cleared_when_probes_close_the_breaker():
    cb = breaker(
        consecutive_failures=100,
        failure_rate={"percent": 50, "window": 100, "minimum_requests": 2},
    )
    cb.record("normal", "server_error", T0)
    cb.record("normal", "server_error", T0)
    assert state(cb) == "open"
    cb.acquire(T0 + 30)
    cb.record("probe", None, T0 + 30)
    assert state(cb) == "closed"
    assert cb.window is not None
    assert cb.window.tripped(T0 + 30) is False
    assert cb.record("normal", None, T0 + 31) is None
    assert cb.record("normal", "server_error", T0 + 31) is not None  # 1 of 2 after clearing


def test_failure_window_counts_exactly_within_its_buckets():
    window = FailureWindow(FailureRate(percent=60, window=10, minimum_requests=5))
    for i in range(5):
        window.add(i < 3, T0 + i * 0.5)
    assert window.tripped(T0 + 2) is True  # 3 of 5 = 60%
    window.clear()
    assert window.tripped(T0 + 2) is False
    for i in range(5):
        window.add(i < 2, T0 + 3)
    assert window.tripped(T0 + 3) is False  # 2 of 5 = 40%
    assert window.tripped(T0 + 13) is False  # expired: nothing left
