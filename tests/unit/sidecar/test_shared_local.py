"""Shared health in the sidecar: others' evidence opens a breaker, unless ours is fresher."""

from __future__ import annotations

import pytest

from routemesh_sidecar.app import shared_report
from routemesh_sidecar.routetable import CircuitBreaker as BreakerSettings
from routemesh_sidecar.routetable import OutlierDetection
from routemesh_sidecar.upstream.breaker import CircuitBreaker, Transition
from routemesh_sidecar.upstream.outlier import OutlierDetector
from routemesh_sidecar.upstream.registry import HealthRegistry
from routemesh_testing.clock import JumpClock
from routemesh_testing.tables import backend, route

pytestmark = pytest.mark.timeout(10)


def test_a_closed_breaker_opens_on_shared_evidence_for_the_time_given():
    breaker = CircuitBreaker("b", BreakerSettings())
    transition = breaker.open_shared(20, 100, "2 pods: 5 failures", fresh=10)
    assert transition is not None
    assert (transition.to_state, transition.until) == ("open", 120)
    assert transition.reason == "shared: 2 pods: 5 failures"
    assert not breaker.allows(110)[0]
    allowed, _ = breaker.allows(121)  # then it probes like any other opening
    assert allowed
    assert breaker.state == "half_open"
    assert breaker.openings == 0  # shared openings do not grow the next open time


def test_fresh_local_success_wins_and_stale_does_not():
    breaker = CircuitBreaker("b", BreakerSettings())
    breaker.record("normal", None, 95)
    assert breaker.open_shared(20, 100, "x", fresh=10) is None
    assert breaker.open_shared(20, 106, "x", fresh=10) is not None


def test_an_endpoint_is_ejected_on_shared_evidence_within_the_max_percent():
    outlier = OutlierDetector("b", ["u1", "u2"], OutlierDetection(max_ejected_percent=50))
    assert outlier.eject_shared("u1", 30, 100, "x", fresh=10) is not None
    assert outlier.ejected("u1", 110)[0]
    assert outlier.eject_shared("u2", 30, 100, "x", fresh=10) is None  # 50% already ejected
    fresh = OutlierDetector("b", ["u1", "u2"], OutlierDetection(max_ejected_percent=100))
    fresh.record("u2", None, 195)
    assert fresh.eject_shared("u2", 30, 200, "x", fresh=10) is None  # our own success wins
    assert fresh.eject_shared("u1", 30, 200, "x", fresh=10) is not None


def test_a_breaker_made_after_the_news_starts_open():
    clock = JumpClock()
    registry = HealthRegistry(clock)
    chat = route("r", ("b", "m"))
    registry.apply_shared("b", None, 30, "2 pods", fresh=10)
    health = registry.backend("b", backend("http://x/v1"), chat)  # the first request's lookup
    assert health.breaker.state == "open"
    clock.advance(31)
    later = HealthRegistry(clock)
    later.apply_shared("b", None, 30, "2 pods", fresh=10)
    clock.advance(31)
    assert later.backend("b", backend("http://x/v1"), chat).breaker.state == "closed"


def test_what_is_reported_and_what_is_not():
    opened = Transition("circuit_breaker", "b", "closed", "open", "5 failures", until=130)
    report = shared_report(opened, 100)
    assert report is not None
    assert (report.backend, report.endpoint, report.bad, report.seconds) == ("b", None, True, 30)
    closed = shared_report(Transition("circuit_breaker", "b", "half_open", "closed", "ok"), 100)
    assert closed is not None
    assert not closed.bad
    ejected = shared_report(
        Transition("outlier_detection", "b http://e/v1", "healthy", "ejected", "x", until=110), 100
    )
    assert ejected is not None
    assert ejected.endpoint == "http://e/v1"
    half = Transition("circuit_breaker", "b", "open", "half_open", "time")
    assert shared_report(half, 100) is None
    assert shared_report(Transition("health_check", "b u", "healthy", "unhealthy", "x"), 1) is None
