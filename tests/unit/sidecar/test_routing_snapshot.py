"""The runner's fast scoring path gives exactly what the scorers' own `score` methods give.

The fast path reads every candidate's health once per decision into a snapshot the scorers share,
and keeps the scores that depend on the route table alone. Random route tables and random health
histories (seeded, so a failure can be replayed) are routed both ways, with one health registry,
and must agree to the last bit: scores, plans and what each filter removed.
"""

import random
from typing import Any

import pytest

from routemesh_sidecar.routetable import Backend, ErrorClass, Locality, RouteTable
from routemesh_sidecar.routing.contracts import (
    Candidate,
    RoutingRequest,
    SnapshotScorer,
    read_health,
)
from routemesh_sidecar.routing.pipeline import STRATEGIES, Decision, Router
from routemesh_sidecar.routing.plugins import (
    ConnectErrorScorer,
    CostScorer,
    LatencyScorer,
    LoadScorer,
    LocalityScorer,
    QualityScorer,
)
from routemesh_sidecar.upstream.health import ModelServerLoad
from routemesh_sidecar.upstream.registry import BalancerSettings, HealthRegistry
from routemesh_testing.tables import backend, model_info, route, table

pytestmark = pytest.mark.timeout(30)

NOW = 1000.0
SEEDS = range(40)
TIERS = ("Economy", "Standard", "Premium", "Frontier")
ERRORS: tuple[ErrorClass | None, ...] = (
    None,
    None,
    None,
    "connect_error",
    "server_error",
    "timeout",
)
PLACES = (("eu", "eu-1a"), ("eu", "eu-1b"), ("us", "us-1a"))
SCORERS = (
    CostScorer(),
    QualityScorer(),
    LatencyScorer(),
    LoadScorer(),
    ConnectErrorScorer(),
    LocalityScorer(),
)


class Clock:
    def monotonic(self) -> float:
        return NOW

    def wall(self) -> float:
        return 1_800_000_000.0 + NOW


def random_backend(rng: random.Random, index: int) -> Backend:
    """One or three endpoints, a price (often shared, for ties), a tier, maybe vLLM metrics."""
    urls = [f"http://b{index}-{e}:8000/v1" for e in range(rng.choice((1, 1, 3)))]
    region, zone = rng.choice(PLACES)
    price = rng.choice((0.5, 1.0, 2.0, rng.uniform(0.1, 10.0)))
    fields: dict[str, Any] = {"locality": {"region": region, "zone": zone}}
    if rng.random() < 0.3:
        fields["health_check"] = {"interval": 10, "metrics": {"max_waiting": 8}}
    models = {"m": model_info(input_price=price, output_price=4 * price, tier=rng.choice(TIERS))}
    return backend(urls if len(urls) > 1 else urls[0], models=models, **fields)


def random_table(rng: random.Random) -> RouteTable:
    """One route over 1-30 random backends, by a score strategy with random weights."""
    backends = {f"b{i}": random_backend(rng, i) for i in range(rng.randint(1, 30))}
    strategy = rng.choice(("ScoreBased", "ScoreBased", "Fastest", "CheapestCapable"))
    fields: dict[str, Any] = {"circuit_breaker": {"consecutive_failures": 3}}
    if strategy == "ScoreBased":
        weights = {k: rng.choice((0, 0, 1, 5, 40)) for k in ("cost", "latency", "load", "quality")}
        weights[rng.choice(list(weights))] += 1  # at least one scorer counts
        fields["score_weights"] = weights
    targets = [(name, "m") for name in backends]
    return table(backends, route("r", *targets, strategy=strategy, **fields))


def random_history(rng: random.Random, router: Router, t: RouteTable) -> None:
    """Latency, errors, load, headroom and open breakers, all in the minute before NOW."""
    events = sorted(rng.uniform(NOW - 60, NOW) for _ in range(rng.randint(0, 200)))
    candidates = router.candidates(t, t.routes[0])
    for at in events:
        health = rng.choice(candidates).health
        endpoint = rng.choice(health.balancer.endpoints)
        health.observe_latency(endpoint, rng.uniform(0.02, 2.0), at)
        error = rng.choice(ERRORS)
        health.record("normal", endpoint, error, at)
    for candidate in candidates:
        health = candidate.health
        if rng.random() < 0.3:
            limits = {"x-ratelimit-remaining-requests": str(rng.randint(0, 100))}
            health.observe_headers({**limits, "x-ratelimit-limit-requests": "100"}, NOW - 5)
        for endpoint in health.balancer.endpoints:
            endpoint.in_flight = rng.randrange(0, 6)
            if health.scraped:
                load = ModelServerLoad(rng.randrange(0, 10), 2, rng.uniform(0, 1), NOW - 1)
                endpoint.health.record_probe(True, NOW - 1, load)


def request(seed: int) -> RoutingRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    return RoutingRequest("openai", "chat", "m", {}, body, random.Random(seed), NOW, 100)


def routers(rng: random.Random) -> tuple[Router, Router]:
    """A fast and a reference router over one health registry, in a random place (or none)."""
    region, zone = rng.choice(((None, None), *PLACES))
    settings = BalancerSettings(locality=Locality(region=region, zone=zone))
    registry = HealthRegistry(Clock(), settings)
    return Router(registry), Router(registry, snapshot_scoring=False)


def summary(decision: Decision) -> tuple[Any, ...]:
    return decision.scores, [c.label for c in decision.plan], decision.removed


@pytest.mark.parametrize("seed", SEEDS)
def test_the_fast_path_decides_exactly_as_the_scorers_own_methods(seed: int):
    rng = random.Random(seed)
    t = random_table(rng)
    fast, reference = routers(rng)
    random_history(rng, reference, t)
    reference.decide(t, request(seed))  # timed states that are over (open breakers) expire first
    expected = summary(reference.decide(t, request(seed)))
    assert summary(fast.decide(t, request(seed))) == expected
    assert summary(fast.decide(t, request(seed))) == expected, "again, from the table cache"


@pytest.mark.parametrize("seed", SEEDS)
def test_each_scorer_scores_a_snapshot_as_it_scores_the_candidates(seed: int):
    rng = random.Random(seed)
    t = random_table(rng)
    r, _ = routers(rng)
    random_history(rng, r, t)
    everyone = r.candidates(t, t.routes[0])
    some: list[Candidate] = [c for c in everyone if rng.random() < 0.7] or list(everyone)
    for candidates in (everyone, some):
        snapshot = read_health(candidates, NOW)
        for scorer in SCORERS:
            expected = scorer.score(request(seed), candidates)
            assert scorer.score_snapshot(request(seed), snapshot) == expected, scorer.name


def cost_scores(candidates: list[Candidate]) -> dict[str, float]:
    scores = CostScorer().score(request(0), candidates)
    return {c.label: score for c, score in zip(candidates, scores, strict=True)}


def test_kept_table_scores_follow_the_set_of_candidates_the_filters_leave():
    rng = random.Random(1)
    t = random_table(rng)
    while t.routes[0].strategy != "CheapestCapable" or len(t.routes[0].targets) < 3:
        t = random_table(rng)
    r = Router(HealthRegistry(Clock()))
    candidates = r.candidates(t, t.routes[0])
    everyone = cost_scores(candidates)
    assert r.decide(t, request(0)).scores == everyone
    assert r.decide(t, request(0)).scores == everyone
    for opened in (1, 2):  # open a breaker at a time: the cost scale spans the others only
        health = candidates[opened - 1].health
        for _ in range(3):
            health.record("normal", health.balancer.endpoints[0], "server_error", NOW)
        removed = [c.label for c in candidates[:opened]]
        for _ in range(2):
            decision = r.decide(t, request(0))
            assert decision.removed == {"circuit-breaker": removed}
            assert decision.scores == cost_scores(candidates[opened:])


def test_every_built_in_scorer_has_the_fast_path():
    for name, plugins in STRATEGIES.items():
        parts = [w.scorer for w in plugins.scorers] + [f.scorer for f in plugins.factors]
        assert all(isinstance(scorer, SnapshotScorer) for scorer in parts), name
