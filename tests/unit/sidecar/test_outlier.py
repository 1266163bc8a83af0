"""Outlier detection on a virtual clock: ejection, its growing time, lazy return and the cap."""

import pytest

from routemesh_sidecar.routetable import ErrorClass, OutlierDetection
from routemesh_sidecar.upstream.breaker import Transition
from routemesh_sidecar.upstream.outlier import EndpointRecord, OutlierDetector

pytestmark = pytest.mark.timeout(10)

T0 = 500.0
A, B, C, D = (f"http://e{i}/v1" for i in range(4))


def detector(urls: list[str] | None = None, **fields: object) -> OutlierDetector:
    settings = OutlierDetection.model_validate(
        {
            "consecutive_failures": 3,
            "base_ejection_time": 30,
            "max_ejection_time": 100,
            "max_ejected_percent": 50,
            **fields,
        }
    )
    return OutlierDetector("b", urls if urls is not None else [A, B], settings)


def fail(od: OutlierDetector, url: str, now: float, times: int = 3) -> Transition | None:
    transition = None
    for _ in range(times):
        transition = od.record(url, "server_error", now)
    return transition


def test_consecutive_failures_eject_an_endpoint_for_the_base_time():
    od = detector()
    assert od.record(A, "connect_error", T0) is None
    assert od.record(A, "timeout", T0) is None
    transition = od.record(A, "server_error", T0 + 1)
    assert transition == Transition(
        "outlier_detection", f"b {A}", "healthy", "ejected", "3 failures in a row", T0 + 31
    )
    assert od.records[A] == EndpointRecord(
        consecutive_failures=3, ejections=1, ejected_until=T0 + 31
    )
    assert od.ejected(A, T0 + 30.999) == (True, None)
    assert od.ejected(B, T0 + 1) == (False, None)
    assert od.ejected_count(T0 + 1) == 1


def test_a_success_resets_the_failures_in_a_row():
    od = detector()
    fail(od, A, T0, times=2)
    assert od.record(A, None, T0) is None
    assert od.records[A].consecutive_failures == 0
    assert fail(od, A, T0, times=2) is None
    assert od.ejected(A, T0) == (False, None)


@pytest.mark.parametrize("error", ["client_error", "context_length", "content_policy"])
def test_the_requests_own_errors_do_not_count(error: ErrorClass):
    od = detector()
    fail(od, A, T0, times=2)
    assert od.record(A, error, T0) is None
    assert od.records[A].consecutive_failures == 0


def test_rate_limited_never_ejects_an_endpoint():
    od = detector()
    for _ in range(20):
        assert od.record(A, "rate_limited", T0) is None
    assert od.ejected(A, T0) == (False, None)
    assert od.records[A].ejections == 0


def test_the_ejection_ends_lazily_when_its_time_is_over():
    od = detector()
    fail(od, A, T0)
    ejected, transition = od.ejected(A, T0 + 30)
    assert ejected is False
    assert transition == Transition(
        "outlier_detection", f"b {A}", "ejected", "healthy", "ejection time is over", None
    )
    assert od.records[A] == EndpointRecord(consecutive_failures=0, ejections=1)
    assert od.ejected(A, T0 + 30) == (False, None)  # only one transition


def test_failures_while_ejected_do_not_eject_again():
    od = detector()
    fail(od, A, T0)
    assert fail(od, A, T0 + 1) is None
    assert od.records[A].ejected_until == T0 + 30
    assert od.records[A].ejections == 1


def test_the_ejection_time_grows_with_each_ejection_up_to_the_maximum():
    od = detector(max_ejected_percent=100)
    now = T0
    durations = []
    for _ in range(5):
        transition = fail(od, A, now)
        assert transition is not None
        assert transition.until is not None
        durations.append(transition.until - now)
        now = transition.until
        assert od.ejected(A, now)[0] is False
    assert durations == [30, 60, 90, 100, 100]
    assert od.records[A].ejections == 5


def test_no_more_than_max_ejected_percent_are_ejected_at_once():
    od = detector([A, B, C, D], max_ejected_percent=50)
    assert fail(od, A, T0) is not None
    assert fail(od, B, T0) is not None
    assert fail(od, C, T0) is None  # two of four are ejected already
    assert od.ejected(C, T0) == (False, None)
    assert od.records[C].consecutive_failures == 3
    assert od.ejected_count(T0) == 2
    # once A is back, the next failure of C ejects it
    assert od.ejected(A, T0 + 30)[0] is False
    transition = od.record(C, "server_error", T0 + 30)
    assert transition is not None
    assert transition.reason == "4 failures in a row"
    assert transition.until == T0 + 60


def test_an_ended_ejection_stops_counting_even_before_it_is_noticed():
    od = detector([A, B, C, D], max_ejected_percent=25)
    fail(od, A, T0)
    assert fail(od, B, T0 + 1) is None
    assert od.ejected_count(T0 + 30) == 0  # A's time is over, though not yet un-ejected
    assert od.record(B, "server_error", T0 + 30) is not None


def test_at_least_one_endpoint_may_be_ejected_when_the_percentage_allows_any():
    od = detector([A, B], max_ejected_percent=10)  # 2 * 10 // 100 == 0
    assert fail(od, A, T0) is not None
    assert fail(od, B, T0) is None


def test_no_endpoint_is_ejected_when_the_percentage_is_zero():
    od = detector([A], max_ejected_percent=0)
    assert fail(od, A, T0, times=10) is None
    assert od.ejected(A, T0) == (False, None)


def test_a_single_endpoint_can_be_ejected():
    od = detector([A], max_ejected_percent=50)
    assert fail(od, A, T0) is not None
    assert od.ejected(A, T0)[0] is True


def test_set_endpoints_keeps_known_state_and_forgets_the_rest():
    od = detector([A, B])
    fail(od, A, T0)
    fail(od, B, T0, times=2)
    od.set_endpoints([A, C])
    assert list(od.records) == [A, C]
    assert od.records[A].ejected_until == T0 + 30
    assert od.records[C] == EndpointRecord()
    assert od.ejected(A, T0 + 1) == (True, None)
    od.set_endpoints([A, B])
    assert od.records[B] == EndpointRecord()  # B's two failures were forgotten


def test_unknown_endpoints_are_neither_recorded_nor_ejected():
    od = detector()
    assert fail(od, C, T0) is None
    assert od.ejected(C, T0) == (False, None)
    assert C not in od.records
