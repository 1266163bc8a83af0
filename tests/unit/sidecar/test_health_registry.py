"""The health registry on a virtual clock: shared state, transitions, retention and snapshots."""

import math
import random

import pytest

from routemesh_sidecar.routetable import Backend, Route
from routemesh_sidecar.upstream.breaker import Transition
from routemesh_sidecar.upstream.registry import BackendHealth, BalancerSettings, HealthRegistry
from routemesh_testing.tables import backend, route, table

pytestmark = pytest.mark.timeout(10)

A1, A2, A3 = "http://a1/v1", "http://a2/v1", "http://a3/v1"
B1 = "http://b1/v1"


class VirtualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_800_000_000.0 + self.now


def a_route(name: str = "r", **fields: object) -> Route:
    return route(name, ("a", "m"), **fields)


def registry() -> tuple[HealthRegistry, VirtualClock]:
    clock = VirtualClock()
    return HealthRegistry(clock), clock


def with_health_check(b: Backend, **check: object) -> Backend:
    return Backend.model_validate({**b.model_dump(), "health_check": check})


def open_breaker(health: BackendHealth, now: float) -> None:
    endpoint = health.pick_endpoint(now, random.Random(0))
    for _ in range(health.breaker.settings.consecutive_failures):
        health.record("normal", endpoint, "server_error", now)
    assert health.breaker.state == "open"


# ---------------------------------------------------------------- sharing


def test_routes_with_the_same_settings_share_one_breaker_across_table_versions():
    reg, clock = registry()
    b = backend([A1, A2])
    first = reg.backend("a", b, a_route("r1"))
    second = reg.backend("a", b, a_route("r2"))
    assert first.breaker is second.breaker
    assert first.balancer.outlier is second.balancer.outlier
    assert first.headroom is second.headroom
    assert first.balancer.endpoints == second.balancer.endpoints
    assert first.balancer.endpoints[0] is second.balancer.endpoints[0]
    open_breaker(first, clock.now)
    # a new table version with an equal route: the open breaker stays open
    again = reg.backend("a", backend([A1, A2]), a_route("r1"))
    assert again.breaker is first.breaker
    assert again.allows(clock.now) is False


def test_different_breaker_settings_get_their_own_breaker():
    reg, clock = registry()
    b = backend(A1)
    strict = reg.backend("a", b, a_route("r1", circuit_breaker={"consecutive_failures": 1}))
    lenient = reg.backend("a", b, a_route("r2", circuit_breaker={"consecutive_failures": 9}))
    assert strict.breaker is not lenient.breaker
    open_breaker(strict, clock.now)
    assert lenient.breaker.state == "closed"
    assert lenient.allows(clock.now) is True
    # the endpoint state itself is shared: one endpoint, one latency estimate
    assert strict.balancer.endpoints[0] is lenient.balancer.endpoints[0]


def test_the_same_name_on_another_backend_name_is_not_shared():
    reg, _ = registry()
    r = route("r", ("a", "m"), ("b", "m"))
    assert reg.backend("a", backend(A1), r).breaker is not reg.backend("b", backend(B1), r).breaker


def test_different_outlier_settings_get_their_own_detector():
    reg, _ = registry()
    b = backend(A1)
    one = reg.backend("a", b, a_route("r1", outlier_detection={"consecutive_failures": 1}))
    two = reg.backend("a", b, a_route("r2", outlier_detection={"consecutive_failures": 2}))
    assert one.balancer.outlier is not two.balancer.outlier
    assert one.breaker is two.breaker


def test_a_changed_endpoint_list_keeps_the_state_of_known_endpoints():
    reg, clock = registry()
    r = a_route(outlier_detection={"consecutive_failures": 1, "max_ejected_percent": 100})
    first = reg.backend("a", backend([A1, A2]), r)
    a1 = first.balancer.endpoints[0]
    first.record("normal", a1, "connect_error", clock.now)
    assert first.balancer.outlier.records[A1].ejected_until == clock.now + 30
    second = reg.backend("a", backend([A1, A3]), r)
    assert second.balancer.outlier is first.balancer.outlier
    assert list(second.balancer.outlier.records) == [A1, A3]
    assert second.balancer.outlier.records[A1].ejected_until == clock.now + 30
    assert second.balancer.endpoints[0] is a1
    assert [e.url for e in second.balancer.usable(clock.now).endpoints] == [A3]


def test_endpoints_start_at_the_default_latency_and_follow_the_backends_locality():
    clock = VirtualClock()
    reg = HealthRegistry(
        clock, BalancerSettings(latency_decay_seconds=5, default_latency_seconds=2)
    )
    b = Backend.model_validate(
        {
            **backend(A1).model_dump(),
            "endpoints": [{"url": A1}, {"url": A2, "zone": "z2"}],
            "locality": {"region": "r1", "zone": "z1"},
        }
    )
    health = reg.backend("a", b, a_route())
    e1, e2 = health.balancer.endpoints
    assert (e1.zone, e1.region, e2.zone, e2.region) == ("z1", "r1", "z2", "r1")
    assert e1.latency.value(clock.now) == 2
    assert e1.latency.value(clock.now + 5) == pytest.approx(2 / math.e)
    assert e1.health.subject == f"a {A1}"


# ---------------------------------------------------------------- transitions


def test_record_emits_breaker_and_outlier_transitions_to_listeners_captures_and_recent():
    reg, clock = registry()
    heard: list[Transition] = []
    reg.on_transition(heard.append)
    r = a_route(
        circuit_breaker={"consecutive_failures": 2},
        outlier_detection={"consecutive_failures": 2, "max_ejected_percent": 100},
    )
    health = reg.backend("a", backend(A1), r)
    endpoint = health.balancer.endpoints[0]
    with reg.capture() as captured:
        health.record("normal", endpoint, "server_error", clock.now)
        health.record("normal", endpoint, "server_error", clock.now)
    expected = [
        Transition("circuit_breaker", "a", "closed", "open", "2 failures in a row", clock.now + 30),
        Transition(
            "outlier_detection",
            f"a {A1}",
            "healthy",
            "ejected",
            "2 failures in a row",
            clock.now + 30,
        ),
    ]
    assert captured == expected
    assert heard == expected
    assert list(reg.recent) == [
        {
            "mechanism": "circuit_breaker",
            "subject": "a",
            "from": "closed",
            "to": "open",
            "reason": "2 failures in a row",
            "at": 100.0,
        },
        {
            "mechanism": "outlier_detection",
            "subject": f"a {A1}",
            "from": "healthy",
            "to": "ejected",
            "reason": "2 failures in a row",
            "at": 100.0,
        },
    ]


def test_capture_collects_only_inside_its_block_and_nests():
    reg, _ = registry()
    t1 = Transition("health_check", "a x", "unknown", "healthy", "1 probes passed")
    t2 = Transition("health_check", "a y", "unknown", "healthy", "1 probes passed")
    t3 = Transition("health_check", "a z", "unknown", "healthy", "1 probes passed")
    with reg.capture() as outer:
        reg.emit(t1)
        with reg.capture() as inner:
            reg.emit(t2)
        reg.emit(t3)
    reg.emit(t1)
    assert outer == [t1, t2, t3]
    assert inner == [t2]
    assert len(reg.recent) == 4


def test_recent_keeps_the_last_fifty():
    reg, clock = registry()
    for i in range(60):
        clock.now = float(i)
        reg.emit(Transition("health_check", f"a {i}", "unknown", "healthy", "ok"))
    assert len(reg.recent) == 50
    assert reg.recent[0]["subject"] == "a 10"
    assert reg.recent[-1]["at"] == 59.0


def test_allows_and_acquire_emit_the_breaker_moving_on():
    reg, clock = registry()
    heard: list[Transition] = []
    reg.on_transition(heard.append)
    health = reg.backend("a", backend(A1), a_route(circuit_breaker={"consecutive_failures": 1}))
    open_breaker(health, clock.now)
    assert health.acquire(clock.now + 29) is None
    assert health.allows(clock.now + 30) is True
    assert heard[-1] == Transition(
        "circuit_breaker", "a", "open", "half_open", "open time is over", None
    )
    permit = health.acquire(clock.now + 30)
    assert permit == "probe"
    assert health.acquire(clock.now + 30) is None
    health.release(permit)
    assert health.acquire(clock.now + 30) == "probe"
    health.record("probe", health.balancer.endpoints[0], None, clock.now + 31)
    assert heard[-1] == Transition(
        "circuit_breaker", "a", "half_open", "closed", "1 probes succeeded", None
    )
    assert len(heard) == 3


def test_pick_endpoint_and_available_emit_the_end_of_an_ejection():
    reg, clock = registry()
    heard: list[Transition] = []
    reg.on_transition(heard.append)
    r = a_route(outlier_detection={"consecutive_failures": 1, "max_ejected_percent": 100})
    health = reg.backend("a", backend([A1, A2]), r)
    a1 = health.balancer.endpoints[0]
    health.record("normal", a1, "timeout", clock.now)
    assert len(heard) == 1
    assert health.available(clock.now + 30) is True
    assert heard[-1] == Transition(
        "outlier_detection", f"a {A1}", "ejected", "healthy", "ejection time is over"
    )
    assert health.balancer.emit == []
    health.record("normal", a1, "timeout", clock.now + 31)
    with reg.capture() as captured:
        health.pick_endpoint(clock.now + 31 + 60, random.Random(0))
    assert [(t.subject, t.to_state) for t in captured] == [(f"a {A1}", "healthy")]


def test_a_429_with_retry_after_cools_the_breaker_down():
    reg, clock = registry()
    health = reg.backend("a", backend(A1), a_route())
    endpoint = health.balancer.endpoints[0]
    with reg.capture() as captured:
        health.record("normal", endpoint, "rate_limited", clock.now, retry_after=12)
    assert captured == [
        Transition("circuit_breaker", "a", "closed", "open", "rate limited: Retry-After 12s", 112.0)
    ]
    assert health.balancer.outlier.records[A1].consecutive_failures == 0
    assert health.allows(111.9) is False
    assert health.acquire(112.0) == "normal"
    assert health.breaker.state == "closed"


def test_a_429_without_retry_after_only_counts_as_a_failure():
    reg, clock = registry()
    health = reg.backend("a", backend(A1), a_route())
    endpoint = health.balancer.endpoints[0]
    with reg.capture() as captured:
        health.record("normal", endpoint, "rate_limited", clock.now)
    assert captured == []
    assert (health.breaker.state, health.breaker.consecutive_failures) == ("closed", 1)


def test_a_retry_after_shorter_than_the_opening_it_caused_changes_nothing():
    reg, clock = registry()
    health = reg.backend("a", backend(A1), a_route(circuit_breaker={"consecutive_failures": 1}))
    endpoint = health.balancer.endpoints[0]
    with reg.capture() as captured:
        health.record("normal", endpoint, "rate_limited", clock.now, retry_after=5)
    assert [(t.to_state, t.reason, t.until) for t in captured] == [
        ("open", "1 failures in a row", 130.0)
    ]
    assert (health.breaker.open_until, health.breaker.cooling) == (130.0, False)


def test_record_feeds_the_connect_error_rate_and_latency():
    reg, clock = registry()
    health = reg.backend("a", backend(A1), a_route())
    endpoint = health.balancer.endpoints[0]
    health.record("normal", endpoint, "connect_error", clock.now)
    health.record("normal", endpoint, None, clock.now)
    assert endpoint.connect_errors.value(clock.now) == pytest.approx(0.16)
    health.observe_latency(endpoint, 3.0, clock.now)
    assert endpoint.latency.value(clock.now) == 3.0


def test_headroom_is_shared_by_every_route_of_a_backend():
    reg, clock = registry()
    one = reg.backend("a", backend(A1), a_route("r1"))
    two = reg.backend("a", backend(A1), a_route("r2", circuit_breaker={"half_open_probes": 2}))
    one.observe_headers(
        {"x-ratelimit-remaining-requests": "3", "x-ratelimit-limit-requests": "10"}, clock.now
    )
    assert two.headroom.value(clock.now) == 0.3


# ---------------------------------------------------------------- tables


def test_probe_targets_are_the_endpoints_of_checked_backends():
    reg, _ = registry()
    checked = with_health_check(backend([A1, A2]), interval=5)
    t = table({"a": checked, "b": backend(B1)}, route("r", ("a", "m"), ("b", "m")))
    targets = reg.probe_targets(t)
    assert [(p.backend_name, p.url) for p in targets] == [("a", A1), ("a", A2)]
    health = reg.backend("a", checked, a_route())
    assert targets[0].health is health.balancer.endpoints[0].health
    assert health.scraped is False
    scraped = with_health_check(backend(A1), metrics={"max_waiting": 4})
    assert reg.backend("a", scraped, a_route()).scraped is True


def test_a_probe_result_marks_the_endpoint_unusable():
    reg, clock = registry()
    checked = with_health_check(backend([A1, A2]), unhealthy_threshold=1)
    t = table({"a": checked}, a_route())
    target = reg.probe_targets(t)[0]
    transition = target.health.record_probe(False, clock.now, error="refused")
    assert transition is not None
    reg.emit(transition)
    health = reg.backend("a", checked, a_route(outlier_detection={"panic_threshold_percent": 0}))
    assert [e.url for e in health.balancer.usable(clock.now).endpoints] == [A2]
    assert reg.recent[-1]["to"] == "unhealthy"


def test_retain_forgets_backends_and_endpoints_the_table_no_longer_has():
    reg, clock = registry()
    r = route("r", ("a", "m"), ("b", "m"), circuit_breaker={"consecutive_failures": 1})
    a = reg.backend("a", backend([A1, A2]), r)
    b = reg.backend("b", backend(B1), r)
    open_breaker(a, clock.now)
    open_breaker(b, clock.now)
    reg.retain(table({"a": backend(A1)}, route("r", ("a", "m"))))
    snapshot = reg.snapshot()
    assert set(snapshot["backends"]) == {"a"}
    assert list(snapshot["backends"]["a"]["endpoints"]) == [A1]
    assert reg.backend("a", backend(A1), r).breaker is a.breaker
    fresh = reg.backend("b", backend(B1), r)
    assert fresh.breaker is not b.breaker
    assert fresh.breaker.state == "closed"


def test_snapshot_shows_breakers_endpoints_headroom_and_recent_transitions():
    reg, clock = registry()
    r = a_route(
        circuit_breaker={"consecutive_failures": 1},
        outlier_detection={"consecutive_failures": 1, "max_ejected_percent": 100},
    )
    health = reg.backend("a", backend([A1, A2]), r)
    a1 = health.balancer.endpoints[0]
    health.record("normal", a1, "connect_error", clock.now)
    clock.now += 10
    snapshot = reg.snapshot()
    assert list(snapshot) == ["backends", "shared", "recent_transitions"]
    assert snapshot["shared"] == []  # nothing reported by other pods
    entry = snapshot["backends"]["a"]
    assert entry["breakers"] == [
        {
            "state": "open",
            "open_for_seconds": 20.0,
            "cooling_down": False,
            "consecutive_failures": 0,
            "openings": 1,
            "settings": r.circuit_breaker.model_dump(mode="json"),
        }
    ]
    assert entry["rate_limit_headroom"] == 1.0
    assert entry["endpoints"][A1] == {
        "zone": None,
        "region": None,
        "latency_ewma_seconds": round(0.1 * math.exp(-1), 6),
        "in_flight": 0,
        "connect_error_rate": round(0.2 * math.exp(-10 / 30), 4),
        "health_check": {
            "status": "unknown",
            "last_error": None,
            "saturated": False,
            "load": None,
        },
        "outlier_detection": [
            {
                "ejected": True,
                "ejected_for_seconds": 20.0,
                "ejections": 1,
                "consecutive_failures": 1,
            }
        ],
    }
    assert entry["endpoints"][A2]["outlier_detection"] == [
        {"ejected": False, "ejected_for_seconds": 0, "ejections": 0, "consecutive_failures": 0}
    ]
    assert [(t["mechanism"], t["to"]) for t in snapshot["recent_transitions"]] == [
        ("circuit_breaker", "open"),
        ("outlier_detection", "ejected"),
    ]
