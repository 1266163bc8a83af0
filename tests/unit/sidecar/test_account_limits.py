"""A provider account's limits, as saturation that routing steers around.

This sidecar's share of requests and tokens per minute, and the concurrency cap. Times are
given, never waited for.
"""

import random

import pytest
from tests.unit.sidecar.test_executor import VirtualClock

from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.pipeline import NoHealthyUpstream, Router
from routemesh_sidecar.upstream.ratelimit import AccountLimiter
from routemesh_sidecar.upstream.registry import HealthRegistry
from routemesh_testing.tables import backend, route, table


def test_requests_per_minute_are_shared_among_the_namespaces_sidecars():
    peers = [2]
    limiter = AccountLimiter(requests_per_minute=10, tokens_per_minute=None, peers=lambda: peers[0])
    for second in range(5):
        assert limiter.has_room(100.0 + second)
        limiter.record_request(100.0 + second)
    assert not limiter.has_room(105.0), "5 of 10 a minute is this sidecar's half"
    assert limiter.seconds_until_room(105.0) == pytest.approx(55.0)
    assert limiter.has_room(160.5), "the first request left the minute"
    peers[0] = 1
    assert limiter.has_room(105.0), "alone, it has the whole account"


def test_tokens_per_minute_count_what_answers_used():
    limiter = AccountLimiter(requests_per_minute=None, tokens_per_minute=1000)
    limiter.record_tokens(10.0, 600)
    assert limiter.has_room(11.0)
    limiter.record_tokens(11.0, 500)
    assert not limiter.has_room(12.0)
    assert limiter.has_room(70.5), "the first answer's tokens left the window"


def request(now: float) -> RoutingRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return RoutingRequest("openai", "chat", "m", {}, body, random.Random(0), now)


def test_a_backend_whose_share_is_used_up_is_saturated_and_routing_goes_elsewhere():
    clock = VirtualClock()
    router = Router(HealthRegistry(clock))
    t = table(
        {
            "limited": backend("http://limited/v1", requests_per_minute=1),
            "spare": backend("http://spare/v1"),
        },
        route("r", ("limited", "m"), ("spare", "m")),
    )
    first = router.decide(t, request(clock.now))
    assert [c.target.backend for c in first.plan] == ["limited", "spare"]
    limiter = first.plan[0].health.limiter
    assert limiter is not None
    limiter.record_request(clock.now)
    second = router.decide(t, request(clock.now + 1))
    assert [c.target.backend for c in second.plan] == ["spare"]
    assert second.removed["saturated"] == ["limited/m"]


def test_with_nowhere_else_to_go_the_error_says_when_the_share_frees_up():
    clock = VirtualClock()
    router = Router(HealthRegistry(clock))
    t = table(
        {"limited": backend("http://limited/v1", requests_per_minute=1)},
        route("r", ("limited", "m")),
    )
    limiter = router.decide(t, request(clock.now)).plan[0].health.limiter
    assert limiter is not None
    limiter.record_request(clock.now)
    with pytest.raises(NoHealthyUpstream) as refused:
        router.decide(t, request(clock.now + 20))
    assert refused.value.retry_after == pytest.approx(40.0)


def test_max_concurrency_caps_this_sidecars_requests_in_flight():
    clock = VirtualClock()
    router = Router(HealthRegistry(clock))
    t = table(
        {
            "capped": backend("http://capped/v1", max_concurrency=1),
            "spare": backend("http://spare/v1"),
        },
        route("r", ("capped", "m"), ("spare", "m")),
    )
    decision = router.decide(t, request(clock.now))
    decision.plan[0].health.balancer.endpoints[0].in_flight = 1
    again = router.decide(t, request(clock.now))
    assert [c.target.backend for c in again.plan] == ["spare"]
