"""Endpoint choice and its signals on a virtual clock, with seeded randomness for P2C."""

import itertools
import math
import random

import pytest

from routemesh_sidecar.routetable import (
    Backend,
    Endpoint,
    HealthCheck,
    Locality,
    MetricsScrape,
    OutlierDetection,
)
from routemesh_sidecar.upstream.balancer import (
    BackendBalancer,
    DecayingRate,
    EndpointState,
    PeakEwma,
    RateLimitHeadroom,
    endpoint_zone,
    headroom_from_headers,
)
from routemesh_sidecar.upstream.breaker import Transition
from routemesh_sidecar.upstream.health import ActiveHealth, ModelServerLoad
from routemesh_sidecar.upstream.outlier import OutlierDetector
from routemesh_testing.tables import backend

pytestmark = pytest.mark.timeout(10)

T0 = 100.0
DECAY = 10.0
METRICS = HealthCheck(interval=10, metrics=MetricsScrape(max_waiting=10, max_kv_cache_usage=0.8))


def state(
    url: str,
    latency: float = 0.1,
    zone: str | None = None,
    region: str | None = None,
    check: HealthCheck | None = None,
) -> EndpointState:
    return EndpointState(
        url,
        Endpoint(url=url),
        PeakEwma(DECAY, latency, T0),
        DecayingRate(30.0),
        ActiveHealth(f"b {url}", check),
        zone=zone,
        region=region,
    )


def balancer(
    endpoints: list[EndpointState],
    locality: Locality | None = None,
    check: HealthCheck | None = None,
    **outlier: object,
) -> BackendBalancer:
    urls = [e.url for e in endpoints]
    settings = OutlierDetection.model_validate(
        {"consecutive_failures": 1, "max_ejected_percent": 100, **outlier}
    )
    b = backend(urls)
    if check is not None:
        b = Backend.model_validate({**b.model_dump(), "health_check": check.model_dump()})
    return BackendBalancer(
        "b", b, endpoints, OutlierDetector("b", urls, settings), locality or Locality()
    )


def eject(bal: BackendBalancer, url: str, now: float = T0) -> None:
    assert bal.outlier.record(url, "server_error", now) is not None


def load(waiting: float = 0, kv: float = 0.0, at: float = T0) -> ModelServerLoad:
    return ModelServerLoad(waiting=waiting, running=1, kv_cache_usage=kv, scraped_at=at)


# ---------------------------------------------------------------- PeakEwma


def test_peak_ewma_jumps_to_a_higher_sample_at_once():
    ewma = PeakEwma(DECAY, 0.1, T0)
    ewma.observe(2.0, T0 + 0.001)
    assert ewma.estimate == 2.0
    assert ewma.stamp == T0 + 0.001
    assert ewma.value(T0 + 0.001) == 2.0


def test_peak_ewma_settles_on_a_repeated_lower_sample():
    ewma = PeakEwma(DECAY, 2.0, T0)
    estimates = []
    for i in range(1, 101):
        ewma.observe(0.5, T0 + i)
        estimates.append(ewma.estimate)
    assert all(x >= y for x, y in itertools.pairwise(estimates))
    assert estimates[0] < 2.0
    assert estimates[-1] == 0.5, "once the decayed reading is below the sample, it is the sample"
    assert ewma.stamp == T0 + 100


def test_peak_ewma_blends_a_lower_sample_from_the_decayed_reading():
    # Long idle: the reading has decayed to ~0.09; a 0.05 sample must land between the two,
    # not above the reading (which would push a recovered endpoint away again).
    ewma = PeakEwma(10.0, 5.0, 100.0)
    reading = ewma.value(140.0)
    ewma.observe(0.05, 140.0)
    assert 0.05 < ewma.estimate < reading
    weight = math.exp(-4.0)
    assert ewma.estimate == pytest.approx(reading * weight + 0.05 * (1 - weight))


def test_peak_ewma_jumps_to_a_sample_above_the_decayed_reading():
    ewma = PeakEwma(10.0, 1.0, 0.0)
    ewma.observe(0.8, 5.0)  # the reading has decayed to ~0.61, so 0.8 is a new peak
    assert ewma.estimate == 0.8


def test_peak_ewma_ignores_a_lower_sample_at_the_same_instant():
    ewma = PeakEwma(DECAY, 2.0, T0)
    ewma.observe(0.5, T0)
    assert ewma.estimate == 2.0


def test_peak_ewma_value_decays_towards_zero_without_samples():
    ewma = PeakEwma(DECAY, 2.0, T0)
    assert ewma.value(T0) == 2.0
    assert ewma.value(T0 + DECAY) == pytest.approx(2.0 / math.e)
    assert ewma.value(T0 + 50 * DECAY) == pytest.approx(0.0, abs=1e-20)
    assert ewma.value(T0 - 5) == 2.0  # a clock read before the stamp does not grow it
    assert ewma.estimate == 2.0  # reading changes nothing


# ---------------------------------------------------------------- DecayingRate


def test_decaying_rate_weights_the_newest_event_and_fades():
    rate = DecayingRate(decay=30.0)
    assert rate.value(T0) == 0.0
    rate.observe(True, T0)
    assert rate.value(T0) == pytest.approx(0.2)
    rate.observe(True, T0)
    assert rate.value(T0) == pytest.approx(0.36)
    rate.observe(False, T0)
    assert rate.value(T0) == pytest.approx(0.288)
    assert rate.value(T0 + 30) == pytest.approx(0.288 / math.e)
    rate.observe(True, T0 + 30)
    assert rate.value(T0 + 30) == pytest.approx(0.288 / math.e * 0.8 + 0.2)


# ---------------------------------------------------------------- rate-limit headroom


def test_headroom_from_openai_headers_is_the_smallest_share():
    headers = {
        "x-ratelimit-remaining-requests": "90",
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-tokens": "2500",
        "x-ratelimit-limit-tokens": "10000",
    }
    assert headroom_from_headers(headers) == 0.25


def test_headroom_from_anthropic_headers():
    headers = {
        "anthropic-ratelimit-requests-remaining": "40",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-input-tokens-remaining": "300",
        "anthropic-ratelimit-input-tokens-limit": "1000",
        "anthropic-ratelimit-output-tokens-remaining": "500",
        "anthropic-ratelimit-output-tokens-limit": "1000",
    }
    assert headroom_from_headers(headers) == 0.3


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"x-ratelimit-remaining-requests": "5"}, None),  # no limit to divide by
        ({"x-ratelimit-remaining-requests": "x", "x-ratelimit-limit-requests": "10"}, None),
        ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-limit-requests": "0"}, None),
        ({"x-ratelimit-remaining-requests": "50", "x-ratelimit-limit-requests": "10"}, 1.0),
        ({"x-ratelimit-remaining-requests": "-5", "x-ratelimit-limit-requests": "10"}, 0.0),
        (
            {
                "x-ratelimit-remaining-requests": "bad",
                "x-ratelimit-limit-requests": "10",
                "x-ratelimit-remaining-tokens": "7",
                "x-ratelimit-limit-tokens": "10",
            },
            0.7,
        ),
    ],
)
def test_headroom_from_headers_edge_cases(headers: dict[str, str], expected: float | None):
    assert headroom_from_headers(headers) == expected


def test_rate_limit_headroom_expires_after_fresh_for():
    headroom = RateLimitHeadroom(fresh_for=60)
    assert headroom.value(T0) == 1.0
    headroom.update({"x-ratelimit-remaining-requests": "1", "x-ratelimit-limit-requests": "4"}, T0)
    assert headroom.value(T0) == 0.25
    assert headroom.value(T0 + 60) == 0.25
    assert headroom.value(T0 + 60.001) == 1.0


def test_rate_limit_headroom_keeps_its_share_when_a_response_has_no_headers():
    headroom = RateLimitHeadroom()
    headroom.update({"x-ratelimit-remaining-requests": "1", "x-ratelimit-limit-requests": "2"}, T0)
    headroom.update({"content-type": "application/json"}, T0 + 30)
    assert (headroom.share, headroom.stamp) == (0.5, T0)
    assert headroom.value(T0 + 61) == 1.0


# ---------------------------------------------------------------- usable and panic


def test_usable_leaves_out_ejected_and_unhealthy_endpoints():
    a, b, c, d = (state(f"http://e{i}/v1") for i in range(4))
    bal = balancer([a, b, c, d], panic_threshold_percent=50)
    eject(bal, a.url)
    b.health.status = "unhealthy"
    c.health.status = "healthy"  # d stays "unknown", which counts as usable
    usable = bal.usable(T0)
    assert usable.panic is False
    assert [e.url for e in usable.endpoints] == [c.url, d.url]


def test_below_the_panic_threshold_every_endpoint_is_used():
    a, b, c, d = (state(f"http://e{i}/v1") for i in range(4))
    bal = balancer([a, b, c, d], panic_threshold_percent=50)
    eject(bal, a.url)
    eject(bal, b.url)
    c.health.status = "unhealthy"
    usable = bal.usable(T0)
    assert usable.panic is True
    assert usable.endpoints == [a, b, c, d]


def test_with_a_zero_threshold_panic_only_when_nothing_is_usable():
    a, b = state("http://a/v1"), state("http://b/v1")
    bal = balancer([a, b], panic_threshold_percent=0)
    eject(bal, a.url)
    usable = bal.usable(T0)
    assert (usable.endpoints, usable.panic) == ([b], False)
    eject(bal, b.url)
    usable = bal.usable(T0)
    assert (usable.endpoints, usable.panic) == ([a, b], True)


def test_usable_ends_an_ejection_whose_time_is_over_and_queues_its_transition():
    a, b = state("http://a/v1"), state("http://b/v1")
    bal = balancer([a, b], panic_threshold_percent=0)
    eject(bal, a.url)
    assert bal.usable(T0 + 29).endpoints == [b]
    assert bal.emit == []
    assert bal.usable(T0 + 30).endpoints == [a, b]
    assert bal.emit == [
        Transition(
            "outlier_detection", "b http://a/v1", "ejected", "healthy", "ejection time is over"
        )
    ]


def test_an_endpoint_back_from_ejection_gets_the_next_request_whatever_it_measured_before():
    slow, fast = state("http://slow/v1", latency=2.0), state("http://fast/v1", latency=0.001)
    bal = balancer([slow, fast], panic_threshold_percent=0)
    eject(bal, slow.url)
    back = T0 + 30
    fast.latency.observe(0.001, back)  # its sibling kept serving, fast
    assert slow.latency.value(back) > fast.latency.value(back)  # the stale estimate would lose
    assert bal.pick(back, random.Random(0)) is slow
    slow.latency.observe(0.5, back)  # then its own new sample decides, as for any endpoint
    assert bal.pick(back, random.Random(0)) is fast


# ---------------------------------------------------------------- locality


def test_local_first_prefers_the_zone_then_the_region_then_all():
    z1 = state("http://z1/v1", zone="z1", region="r1")
    z2 = state("http://z2/v1", zone="z2", region="r1")
    far = state("http://far/v1", zone="z9", region="r9")
    bal = balancer([z1, z2, far], locality=Locality(region="r1", zone="z1"))
    assert bal.local_first([z1, z2, far]) == [z1]
    assert bal.local_first([z2, far]) == [z2]
    assert bal.local_first([far]) == [far]
    no_locality = balancer([z1, z2, far])
    assert no_locality.local_first([z1, z2, far]) == [z1, z2, far]
    assert bal.locality_rank() == 0
    assert balancer([z2, far], locality=Locality(region="r1", zone="z1")).locality_rank() == 1
    assert balancer([far], locality=Locality(region="r1", zone="z1")).locality_rank() == 2
    assert no_locality.locality_rank() == 2


def test_endpoint_zone_falls_back_to_the_backends_locality():
    b = Backend.model_validate(
        {**backend("http://a/v1").model_dump(), "locality": {"region": "r1", "zone": "z1"}}
    )
    assert endpoint_zone(b, Endpoint(url="http://a/v1")) == ("z1", "r1")
    assert endpoint_zone(b, Endpoint(url="http://a/v1", zone="z2")) == ("z2", "r1")


# ---------------------------------------------------------------- pick (P2C)


def test_pick_with_one_usable_endpoint_returns_it_without_randomness():
    a, b = state("http://a/v1", latency=0.1), state("http://b/v1", latency=9.0)
    bal = balancer([a, b], panic_threshold_percent=0)
    eject(bal, a.url)
    assert bal.pick(T0, random.Random(0)) is b


def test_p2c_of_two_never_picks_the_far_slower_endpoint():
    fast, slow = state("http://fast/v1", latency=0.1), state("http://slow/v1", latency=5.0)
    bal = balancer([fast, slow])
    rng = random.Random(1234)
    assert {bal.pick(T0, rng).url for _ in range(200)} == {fast.url}
    bal = balancer([slow, fast])
    assert {bal.pick(T0, rng).url for _ in range(200)} == {fast.url}


def test_p2c_of_three_picks_the_cheaper_of_each_sampled_pair():
    a = state("http://a/v1", latency=0.1)
    b = state("http://b/v1", latency=0.5)
    c = state("http://c/v1", latency=5.0)
    bal = balancer([a, b, c])
    rng, replay = random.Random(7), random.Random(7)
    picks = [bal.pick(T0, rng).url for _ in range(300)]
    cost = {a.url: 0.1, b.url: 0.5, c.url: 5.0}
    expected = [min(replay.sample([a.url, b.url, c.url], 2), key=cost.__getitem__) for _ in picks]
    assert picks == expected
    assert c.url not in picks  # the slowest loses every pair it is in
    assert 60 < picks.count(b.url) < 140  # b wins only the pair {b, c}: about a third


def test_cost_counts_requests_in_flight_and_waiting():
    a, b = state("http://a/v1", latency=0.1), state("http://b/v1", latency=0.25)
    bal = balancer([a, b])
    assert bal.pick(T0, random.Random(0)) is a
    a.in_flight = 2  # 0.1 * 3 = 0.3 > 0.25 * 1
    assert a.cost(T0) == pytest.approx(0.3)
    assert bal.pick(T0, random.Random(0)) is b
    a.in_flight = 0
    a.health.load = load(waiting=2)  # 0.1 * (0 + 1 + 2)
    assert a.cost(T0) == pytest.approx(0.3)
    assert bal.pick(T0, random.Random(0)) is b


def test_pick_breaks_a_tie_for_the_first_of_the_pair():
    a, b = state("http://a/v1"), state("http://b/v1")
    bal = balancer([a, b])
    rng, replay = random.Random(3), random.Random(3)
    for _ in range(50):
        assert bal.pick(T0, rng) is replay.sample([a, b], 2)[0]


def test_pick_prefers_the_local_zone_over_a_cheaper_remote_endpoint():
    local = state("http://local/v1", latency=1.0, zone="z1")
    remote = state("http://remote/v1", latency=0.01, zone="z2")
    bal = balancer([local, remote], locality=Locality(zone="z1"))
    rng = random.Random(5)
    assert {bal.pick(T0, rng).url for _ in range(50)} == {local.url}
    local.health.status = "unhealthy"
    bal = balancer([local, remote], locality=Locality(zone="z1"), panic_threshold_percent=0)
    assert bal.pick(T0, rng) is remote  # fails over when the zone has nothing usable


def test_pick_skips_saturated_endpoints_while_any_is_not():
    fast = state("http://fast/v1", latency=0.01, check=METRICS)
    slow = state("http://slow/v1", latency=5.0, check=METRICS)
    bal = balancer([fast, slow], check=METRICS)
    fast.health.load = load(waiting=10)  # at max_waiting: saturated
    slow.health.load = load(waiting=0)
    rng = random.Random(9)
    assert {bal.pick(T0, rng).url for _ in range(50)} == {slow.url}
    assert bal.available(T0) is True
    slow.health.load = load(kv=0.8)  # both saturated: choose among all by cost again
    assert bal.available(T0) is False
    assert {bal.pick(T0, rng).url for _ in range(50)} == {fast.url}


def test_a_saturated_local_endpoint_gives_way_to_a_remote_one_with_room():
    local = state("http://local/v1", zone="z1", check=METRICS)
    remote = state("http://remote/v1", zone="z2", check=METRICS)
    bal = balancer([local, remote], locality=Locality(zone="z1"), check=METRICS)
    local.health.load = load(waiting=50)
    remote.health.load = load()
    assert bal.pick(T0, random.Random(0)) is remote


def test_a_slow_endpoint_comes_back_once_its_estimate_decays():
    fast, slow = state("http://fast/v1"), state("http://slow/v1")
    bal = balancer([fast, slow])
    fast.latency.observe(0.1, T0)
    slow.latency.observe(5.0, T0)
    rng = random.Random(11)
    now = T0
    # traffic keeps going to the fast endpoint, which keeps reporting 0.1s; the slow one gets none
    while slow.latency.value(now) >= 0.1:
        assert bal.pick(now, rng) is fast
        fast.latency.observe(0.1, now)
        now += 1.0
    fast.latency.observe(0.1, now)
    # 5.0 * exp(-t / 10) < 0.1 once t > 10 * ln(50), about 39.1s
    assert now == T0 + 40
    assert slow.latency.value(now) == pytest.approx(5.0 * math.exp(-4))
    assert bal.pick(now, rng) is slow


# ---------------------------------------------------------------- backend-level signals


def test_latency_is_the_best_estimate_among_usable_endpoints():
    a, b = state("http://a/v1", latency=0.1), state("http://b/v1", latency=0.4)
    bal = balancer([a, b], panic_threshold_percent=0)
    assert bal.latency(T0) == 0.1
    assert bal.latency(T0 + DECAY) == pytest.approx(0.1 / math.e)
    eject(bal, a.url)
    assert bal.latency(T0) == 0.4


def test_in_flight_sums_every_endpoint():
    a, b = state("http://a/v1"), state("http://b/v1")
    a.in_flight, b.in_flight = 2, 3
    assert balancer([a, b]).in_flight() == 5


def test_queue_pressure_is_the_least_loaded_usable_servers_fill():
    a = state("http://a/v1", check=METRICS)
    b = state("http://b/v1", check=METRICS)
    c = state("http://c/v1", check=METRICS)
    bal = balancer([a, b, c], check=METRICS)
    assert bal.queue_pressure(T0) == 0.0  # no load read yet
    a.health.load = load(waiting=5, kv=0.2)  # queue 0.5, cache 0.25
    b.health.load = load(waiting=2, kv=0.6)  # queue 0.2, cache 0.75
    c.health.load = load(waiting=10)  # saturated
    assert bal.queue_pressure(T0) == pytest.approx(0.5)
    a.health.load = load(waiting=9, kv=0.2)
    assert bal.queue_pressure(T0) == pytest.approx(0.75)
    # metrics older than three intervals count as saturated
    assert bal.queue_pressure(T0 + 31) == 1.0


def test_queue_pressure_is_zero_without_metrics_scraping():
    a = state("http://a/v1")
    a.health.load = load(waiting=100)
    assert balancer([a]).queue_pressure(T0) == 0.0
    assert balancer([a], check=HealthCheck()).queue_pressure(T0) == 0.0


def test_connect_error_rate_is_the_mean_over_usable_endpoints():
    a, b, c = state("http://a/v1"), state("http://b/v1"), state("http://c/v1")
    bal = balancer([a, b, c], panic_threshold_percent=0)
    a.connect_errors.observe(True, T0)
    c.connect_errors.observe(True, T0)
    c.connect_errors.observe(True, T0)
    assert bal.connect_error_rate(T0) == pytest.approx((0.2 + 0 + 0.36) / 3)
    eject(bal, c.url)
    assert bal.connect_error_rate(T0) == pytest.approx(0.1)


def test_available_is_false_only_when_every_usable_endpoint_is_saturated():
    a = state("http://a/v1", check=METRICS)
    b = state("http://b/v1", check=METRICS)
    bal = balancer([a, b], check=METRICS, panic_threshold_percent=0)
    assert bal.available(T0) is True  # nothing scraped yet: not saturated
    a.health.load = load(waiting=10)
    b.health.load = load()
    assert bal.available(T0) is True
    eject(bal, b.url)
    assert bal.available(T0) is False
