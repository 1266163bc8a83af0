"""Health-aware routing on a virtual clock.

The breaker and saturation filters, the load, latency and locality scorers, the ScoreBased and
Fastest strategies, and graceful degradation.
"""

import random
from typing import Any

import pytest

from routemesh_sidecar.routetable import Locality, RouteTable
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.pipeline import NoHealthyUpstream, Router, unsupported_strategies
from routemesh_sidecar.upstream.health import ModelServerLoad
from routemesh_sidecar.upstream.registry import BalancerSettings, HealthRegistry
from routemesh_testing.tables import backend, model_info, route, table

pytestmark = pytest.mark.timeout(10)

NOW = 1000.0
BREAKER = {"consecutive_failures": 2, "base_open_time": 30}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_800_000_000.0 + self.now


def request(model: str = "m", now: float = NOW, seed: int = 0, **body: Any) -> RoutingRequest:
    payload = {"model": model, "messages": [{"role": "user", "content": "hello"}], **body}
    return RoutingRequest("openai", "chat", model, {}, payload, random.Random(seed), now)


def router(zone: str | None = None, region: str | None = None) -> Router:
    settings = BalancerSettings(locality=Locality(zone=zone, region=region))
    return Router(HealthRegistry(Clock(), settings))


def three(**route_fields: Any) -> RouteTable:
    backends = {
        "a": backend("http://a/v1", models={"m": model_info(input_price=1, output_price=4)}),
        "b": backend("http://b/v1", models={"m": model_info(input_price=2, output_price=8)}),
        "c": backend("http://c/v1", models={"m": model_info(input_price=3, output_price=12)}),
    }
    fields = {"circuit_breaker": BREAKER, **route_fields}
    return table(backends, route("r", ("a", "m"), ("b", "m"), ("c", "m"), **fields))


def open_breaker(r: Router, t: RouteTable, name: str, now: float = NOW) -> None:
    for candidate in r.candidates(t, t.routes[0]):
        if candidate.target.backend == name:
            endpoint = candidate.health.balancer.endpoints[0]
            for _ in range(candidate.health.breaker.settings.consecutive_failures):
                candidate.health.record("normal", endpoint, "server_error", now)
            assert candidate.health.breaker.state == "open"
            return
    raise AssertionError(name)


def health_of(r: Router, t: RouteTable, name: str) -> Any:
    for candidate in r.candidates(t, t.routes[0]):
        if candidate.target.backend == name:
            return candidate.health
    raise AssertionError(name)


def labels(decision: Any) -> list[str]:
    return [c.label for c in decision.plan]


def test_an_open_breaker_removes_its_backend_and_the_decision_records_it():
    r, t = router(), three()
    open_breaker(r, t, "a")
    decision = r.decide(t, request())
    assert labels(decision) == ["b/m", "c/m"]
    assert decision.removed == {"circuit-breaker": ["a/m"]}


def test_after_the_open_time_the_backend_is_routable_again_and_the_transition_is_recorded():
    r, t = router(), three()
    open_breaker(r, t, "a")
    decision = r.decide(t, request(now=NOW + 30))
    assert labels(decision)[0] == "a/m"
    assert [(x.from_state, x.to_state) for x in decision.transitions] == [("open", "half_open")]


def test_a_saturated_vllm_backend_is_filtered_and_stale_metrics_count_as_saturated():
    check = {"interval": 10, "metrics": {"max_waiting": 4}}
    backends = {
        "gpu": backend("http://gpu:8000/v1", health_check=check),
        "cloud": backend("http://cloud/v1"),
    }
    t = table(backends, route("r", ("gpu", "m"), ("cloud", "m")))
    r = router()
    endpoint = health_of(r, t, "gpu").balancer.endpoints[0]
    endpoint.health.record_probe(True, NOW, ModelServerLoad(1, 2, 0.3, NOW))
    assert labels(r.decide(t, request())) == ["gpu/m", "cloud/m"]
    endpoint.health.record_probe(True, NOW, ModelServerLoad(4, 2, 0.3, NOW))
    decision = r.decide(t, request())
    assert labels(decision) == ["cloud/m"]
    assert decision.removed == {"saturated": ["gpu/m"]}
    endpoint.health.record_probe(True, NOW, ModelServerLoad(0, 0, 0.1, NOW))
    assert labels(r.decide(t, request(now=NOW + 30))) == ["gpu/m", "cloud/m"]
    assert labels(r.decide(t, request(now=NOW + 30.5))) == ["cloud/m"], "older than 3 intervals"


def test_score_based_with_only_cost_orders_cheapest_first():
    t = three(strategy="ScoreBased", score_weights={"cost": 1})
    decision = router().decide(t, request())
    assert labels(decision) == ["a/m", "b/m", "c/m"]
    assert decision.scores == pytest.approx({"a/m": 1.0, "b/m": 0.5, "c/m": 0.0})


def test_score_based_latency_moves_traffic_to_the_fastest_backend():
    t = three(strategy="ScoreBased", score_weights={"cost": 1, "latency": 3})
    r = router()
    for name, seconds in (("a", 0.8), ("b", 0.1), ("c", 0.2)):
        health = health_of(r, t, name)
        health.observe_latency(health.balancer.endpoints[0], seconds, NOW)
    decision = r.decide(t, request())
    assert labels(decision) == ["b/m", "c/m", "a/m"]
    # b: cost 0.5, latency 1 -> (1*0.5 + 3*1) / 4
    assert decision.scores["b/m"] == pytest.approx((0.5 + 3 * 1.0) / 4)


def test_score_based_load_prefers_fewer_in_flight_and_more_rate_limit_headroom():
    t = three(strategy="ScoreBased", score_weights={"load": 1})
    r = router()
    health_of(r, t, "a").balancer.endpoints[0].in_flight = 3
    health_of(r, t, "b").headroom.update(
        {"x-ratelimit-remaining-requests": "10", "x-ratelimit-limit-requests": "100"}, NOW
    )
    decision = r.decide(t, request())
    # a: in flight (0 + 1) / (3 + 1); b: headroom 0.1; c: idle with no limit reported.
    assert decision.scores["c/m"] == pytest.approx(1.0)
    assert decision.scores["a/m"] == pytest.approx((0.25 + 1 + 1) / 3)
    assert decision.scores["b/m"] == pytest.approx((1 + 1 + 0.1) / 3)
    assert labels(decision) == ["c/m", "a/m", "b/m"]


def test_score_based_quality_prefers_the_higher_tier():
    backends = {
        "a": backend("http://a/v1", models={"m": model_info(tier="Economy")}),
        "b": backend("http://b/v1", models={"m": model_info(tier="Frontier")}),
    }
    t = table(
        backends,
        route("r", ("a", "m"), ("b", "m"), strategy="ScoreBased", score_weights={"quality": 1}),
    )
    assert labels(router().decide(t, request())) == ["b/m", "a/m"]


def test_connect_errors_sink_a_backends_score():
    t = three(
        strategy="ScoreBased",
        score_weights={"cost": 1},
        circuit_breaker={"consecutive_failures": 100},
    )
    r = router()
    health = health_of(r, t, "a")
    endpoint = health.balancer.endpoints[0]
    for _ in range(10):
        health.record("normal", endpoint, "connect_error", NOW)
    assert endpoint.connect_errors.value(NOW) == pytest.approx(1 - 0.8**10)
    decision = r.decide(t, request())
    assert decision.scores["a/m"] == pytest.approx(0.8**10)
    assert decision.scores["a/m"] < decision.scores["b/m"]
    assert labels(decision)[0] == "b/m"


def test_locality_breaks_a_tie_in_favour_of_the_sidecars_zone():
    backends = {
        "far": backend("http://far/v1", locality={"region": "eu", "zone": "eu-1a"}),
        "near": backend("http://near/v1", locality={"region": "us", "zone": "us-1b"}),
    }
    t = table(
        backends,
        route("r", ("far", "m"), ("near", "m"), strategy="ScoreBased", score_weights={"cost": 1}),
    )
    assert labels(router(zone="us-1b", region="us").decide(t, request())) == ["near/m", "far/m"]
    assert labels(router().decide(t, request())) == ["far/m", "near/m"], "unknown: route order"


def test_fastest_spreads_a_burst_with_two_random_choices_but_favours_the_faster():
    t = three(strategy="Fastest")
    r = router()
    for name, seconds in (("a", 0.3), ("b", 0.1), ("c", 0.2)):
        health = health_of(r, t, name)
        health.observe_latency(health.balancer.endpoints[0], seconds, NOW)
    firsts = [labels(r.decide(t, request(seed=s)))[0] for s in range(300)]
    assert firsts.count("b/m") > firsts.count("c/m") > firsts.count("a/m") == 0
    assert unsupported_strategies(t) == []


def test_when_every_target_is_open_other_capable_backends_serve_nearest_tier_first():
    backends = {
        "main": backend("http://main/v1", models={"m": model_info(tier="Premium")}),
        "economy": backend("http://e/v1", models={"e": model_info(tier="Economy")}),
        "premium": backend("http://p/v1", models={"p": model_info(tier="Premium")}),
        "tiny": backend("http://t/v1", models={"t": model_info(1000, tier="Premium")}),
    }
    t = table(
        backends,
        route("r", ("main", "m"), match={"models": ["m"]}, circuit_breaker=BREAKER),
        route("others", ("economy", "e"), ("premium", "p"), ("tiny", "t")),
    )
    r = router()
    open_breaker(r, t, "main")
    decision = r.decide(t, request(max_tokens=2000))
    assert decision.degraded
    assert labels(decision) == ["premium/p", "economy/e"], "tiny cannot hold the request"


def test_when_nothing_healthy_is_left_routing_fails_fast_with_when_to_retry():
    t = three()
    r = router()
    for name in ("a", "b", "c"):
        open_breaker(r, t, name, now=NOW - 10)
    with pytest.raises(NoHealthyUpstream, match="no healthy upstream") as failed:
        r.decide(t, request())
    assert failed.value.retry_after == pytest.approx(20)


def test_breakers_survive_a_new_table_version_with_the_same_settings():
    r, t = router(), three()
    open_breaker(r, t, "a")
    newer = table(dict(t.backends), *t.routes, version=2)
    assert labels(r.decide(newer, request())) == ["b/m", "c/m"]


def test_size_alone_settles_the_context_window_only_when_it_surely_fits():
    backends = {
        "small": backend("http://s/v1", models={"m": model_info(100)}),
        "large": backend("http://l/v1", models={"m": model_info(100_000)}),
    }
    t = table(backends, route("r", ("small", "m"), ("large", "m")))
    text = "word " * 200  # ~250 tokens: too many for the small model
    payload = {"model": "m", "messages": [{"role": "user", "content": text}]}
    for size in (None, len(text) + 40):
        req = RoutingRequest("openai", "chat", "m", {}, payload, random.Random(0), NOW, size)
        decision = router().decide(t, req)
        assert labels(decision) == ["large/m"], f"size {size}: counted, and too big"
    tiny = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    req = RoutingRequest("openai", "chat", "m", {}, tiny, random.Random(0), NOW, 45)
    assert req.fits_without_counting(100)
    assert not req.fits_without_counting(90), "45 bytes plus 50 output tokens"
    assert labels(router().decide(t, req)) == ["small/m", "large/m"]


def test_plain_text_requests_skip_the_capability_check_and_others_do_not():
    text = request()
    assert text.plain_text
    assert not request(tools=[{"type": "function", "function": {"name": "f"}}]).plain_text
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    with_image = RoutingRequest(
        "openai",
        "chat",
        "m",
        {},
        {"model": "m", "messages": [{"role": "user", "content": [image]}]},
        random.Random(0),
        NOW,
    )
    assert not with_image.plain_text
    backends = {
        "text": backend("http://t/v1", models={"m": model_info(capabilities=())}),
        "vision": backend("http://v/v1", models={"m": model_info(capabilities=("Vision",))}),
    }
    t = table(backends, route("r", ("text", "m"), ("vision", "m")))
    assert labels(router().decide(t, with_image)) == ["vision/m"]
    assert labels(router().decide(t, text)) == ["text/m", "vision/m"]


def test_the_saturation_filter_sees_what_the_breaker_filter_left_and_records_both():
    check = {"interval": 10, "metrics": {"max_waiting": 4}}
    backends = {
        "a": backend("http://a/v1"),
        "gpu": backend("http://gpu:8000/v1", health_check=check),
        "b": backend("http://b/v1"),
    }
    t = table(backends, route("r", ("a", "m"), ("gpu", "m"), ("b", "m"), circuit_breaker=BREAKER))
    r = router()
    gpu = health_of(r, t, "gpu").balancer.endpoints[0]
    gpu.health.record_probe(True, NOW, ModelServerLoad(4, 2, 0.3, NOW))
    open_breaker(r, t, "a")
    decision = r.decide(t, request())
    assert decision.removed == {"circuit-breaker": ["a/m"], "saturated": ["gpu/m"]}
    assert labels(decision) == ["b/m"]
    gpu.health.record_probe(True, NOW, ModelServerLoad(0, 0, 0.1, NOW))
    assert labels(r.decide(t, request())) == ["gpu/m", "b/m"]
