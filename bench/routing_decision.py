"""Time of one routing decision, with 3 and with 30 candidates, for rule and score strategies.

`Router.decide` is what every request pays before its first byte goes upstream: route match,
the filters (operation, capability, context window, circuit breaker, saturation), the scorers and
the picker. Measured in one process on a fixed clock with live health state (every endpoint has
latency samples and some load), with every breaker closed and with one in three open (so the
breaker filter removes candidates), for Fallback (rules only), Weighted, and ScoreBased with all
of cost, latency, load and quality weighted. Goal: under 50 microseconds per decision. The request
is a small chat with no tools, the common case, with its size known as the listener knows it.
Reported as the median of repeated batches, in microseconds. Also the cost of evaluating a
policy's shadow routes per request (a ScoreBased shadow beside a Fallback route), which every
request of a policy with shadow routes pays.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any

from routemesh_sidecar.routetable import RouteTable
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.pipeline import Router
from routemesh_sidecar.upstream.registry import HealthRegistry
from routemesh_testing.tables import backend, model_info, route, table

GOAL_MICROSECONDS = 50.0
BATCH = 2000
BATCHES = 15
TIERS = ("Economy", "Standard", "Premium", "Frontier")


class FixedClock:
    """Health is read as of one instant, so every batch sees the same state."""

    def monotonic(self) -> float:
        """Always the same instant."""
        return 1000.0

    def wall(self) -> float:
        """Always the same instant."""
        return 1_800_000_000.0


def build_table(candidates: int, strategy: str) -> RouteTable:
    """A table with one route over `candidates` backends, each one model and one endpoint."""
    backends = {
        f"b{i}": backend(
            f"http://10.0.{i // 250}.{i % 250}:8000/v1",
            models={
                "m": model_info(
                    128_000,
                    input_price=0.1 * (i + 1),
                    output_price=0.4 * (i + 1),
                    tier=TIERS[i % 4],
                )
            },
        )
        for i in range(candidates)
    }
    fields: dict[str, Any] = {}
    weights = [100 // candidates] * candidates
    weights[0] += 100 - sum(weights)
    targets: list[Any] = [(f"b{i}", "m") for i in range(candidates)]
    if strategy == "Weighted":
        targets = [(f"b{i}", "m", weights[i]) for i in range(candidates)]
    if strategy == "ScoreBased":
        fields["score_weights"] = {"cost": 40, "latency": 30, "load": 20, "quality": 10}
    return table(backends, route("r", *targets, strategy=strategy, **fields))


def warm_health(router: Router, routes: RouteTable, rng: random.Random, trouble: bool) -> None:
    """Give every endpoint latency samples and requests in flight (and open every third breaker)."""
    now = router.health.now()
    for candidate in router.candidates(routes, routes.routes[0]):
        health = candidate.health
        endpoint = health.balancer.endpoints[0]
        for _ in range(5):
            health.observe_latency(endpoint, rng.uniform(0.05, 0.5), now)
        endpoint.in_flight = rng.randrange(0, 4)
        if trouble and candidate.index % 3 == 2:
            for _ in range(health.breaker.settings.consecutive_failures):
                health.record("normal", endpoint, "server_error", now)


def measure(candidates: int, strategy: str, trouble: bool = True) -> float:
    """Median microseconds per decision."""
    rng = random.Random(7)
    router = Router(HealthRegistry(FixedClock()))
    routes = build_table(candidates, strategy)
    warm_health(router, routes, rng, trouble)
    body = {"model": "m", "messages": [{"role": "user", "content": "Summarise this paragraph."}]}
    now = router.health.now()
    size = len(json.dumps(body))  # the listener passes the size of the body it received
    samples = []
    for _ in range(BATCHES):
        requests = [
            RoutingRequest("openai", "chat", "m", {}, body, rng, now, size) for _ in range(BATCH)
        ]
        started = time.perf_counter()
        for request in requests:
            router.decide(routes, request)
        samples.append((time.perf_counter() - started) / BATCH * 1e6)
    return statistics.median(samples)


def measure_shadow(candidates: int) -> tuple[float, float]:
    """Median microseconds per request: the live decision alone, and with a shadow evaluation.

    The live route is Fallback; the shadow route is ScoreBased over the same candidates, so a
    shadow decision costs what a full score-based decision does.
    """
    rng = random.Random(7)
    router = Router(HealthRegistry(FixedClock()))
    live = build_table(candidates, "Fallback")
    shadow_route = (
        build_table(candidates, "ScoreBased").routes[0].model_copy(update={"name": "shadow"})
    )
    routes = RouteTable.model_validate(
        {**live.model_dump(), "shadow": {"routes": [shadow_route.model_dump()]}}
    )
    warm_health(router, routes, rng, trouble=False)
    body = {"model": "m", "messages": [{"role": "user", "content": "Summarise this paragraph."}]}
    now = router.health.now()
    size = len(json.dumps(body))
    alone: list[float] = []
    shadowed: list[float] = []
    for _ in range(BATCHES):
        for out, with_shadow in ((alone, False), (shadowed, True)):
            requests = [
                RoutingRequest("openai", "chat", "m", {}, body, rng, now, size)
                for _ in range(BATCH)
            ]
            started = time.perf_counter()
            for request in requests:
                router.decide(routes, request)
                if with_shadow:
                    router.shadow(routes, request)
            out.append((time.perf_counter() - started) / BATCH * 1e6)
    return statistics.median(alone), statistics.median(shadowed)


def run() -> list[str]:
    """Rows for docs/benchmarks.md."""
    rows = [
        "| strategy | candidates | breakers | µs per decision (median of batches) | goal < 50 µs |",
        "|---|---|---|---|---|",
    ]
    for strategy in ("Fallback", "Weighted", "ScoreBased"):
        for candidates in (3, 30):
            for trouble in (False, True):
                micros = measure(candidates, strategy, trouble)
                met = "yes" if micros < GOAL_MICROSECONDS else "**no**"
                state = "a third open" if trouble else "all closed"
                rows.append(f"| {strategy} | {candidates} | {state} | {micros:.1f} | {met} |")
    rows += [
        "",
        "| shadow evaluation | candidates | live decision µs | with shadow µs | shadow adds µs |",
        "|---|---|---|---|---|",
    ]
    for candidates in (3, 30):
        alone, shadowed = measure_shadow(candidates)
        rows.append(
            f"| ScoreBased shadow of a Fallback route | {candidates} | {alone:.1f} | "
            f"{shadowed:.1f} | {shadowed - alone:.1f} |"
        )
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
