"""The built-in filter, scorer and picker plugins.

Filters: the data retention the route (or the request) allows, the operation the backend's API
supports, the capabilities the request needs (tools,
vision), the context window, the circuit breaker, and saturation (every usable endpoint full).
Scorers, each in [0, 1] with 1 the best: cost, quality tier, peak-EWMA latency, load (requests
in flight, model-server queue and KV cache, rate-limit headroom), connect errors and locality.
Pickers: ordered (Fallback), weighted (Weighted, canaries) and best-score-first.

Each is a small class with a type and a name; the pipeline decides which run for a route's
strategy. None of them does I/O or keeps state between requests: the health-aware ones read the
live state each candidate carries, as of the request's `now`. The filters that depend only on the
request return their input unchanged at once when the request needs nothing special, because they
run on every request. Every scorer is also a `SnapshotScorer`: `score_snapshot` gives what `score`
gives, read from the decision's shared health snapshot, and `table_only` tells the runner that
cost and quality depend on the route table alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from routemesh_sidecar.routetable import RETENTION_ORDER, QualityTier, Route
from routemesh_sidecar.routing.contracts import (
    Candidate,
    Candidates,
    HealthSnapshot,
    RequestRefused,
    RoutingRequest,
    any_can_fill,
    smallest_context_window,
)

_OPENAI_ONLY_OPERATIONS = frozenset({"completions", "embeddings"})
# How far an estimate may be from the exact count: characters / 4 undercounts Japanese prose by
# about 3.5 and rare CJK ideographs by about 7 (docs/benchmarks.md, "Token counts").
NEAR_WINDOW_FACTOR = 8
_RETENTION_RANKS: dict[str, int] = {str(k): v for k, v in RETENTION_ORDER.items()}  # by header text
_QUALITY: dict[QualityTier, float] = {
    "Economy": 0.0,
    "Standard": 1 / 3,
    "Premium": 2 / 3,
    "Frontier": 1.0,
}


@dataclass(frozen=True)
class RetentionFilter:
    """Only backends that keep no more of the request's data than its route (or it) allows.

    A hard requirement, unlike the health filters: graceful degradation runs it too, so a request
    that requires zero retention never reaches a backend that retains data, healthy or not.
    """

    type: str = "filter"
    name: str = "retention"

    def filter(
        self, request: RoutingRequest, route: Route, candidates: list[Candidate]
    ) -> list[Candidate]:
        """Keep backends at the required retention level or stricter."""
        allowed = _allowed_retention(request, route)
        if allowed is None:
            return candidates
        return _kept(candidates, [c for c in candidates if c.backend.retention_rank <= allowed])


def _allowed_retention(request: RoutingRequest, route: Route) -> int | None:
    """The loosest retention rank the request may go to: the route's, or stricter if it asks."""
    allowed = RETENTION_ORDER[route.retention] if route.retention is not None else None
    header = route.retention_header
    if header is None:
        return allowed
    asked = request.headers.get(header)
    if asked is None:
        return allowed
    rank = _RETENTION_RANKS.get(asked.strip())
    if rank is None:
        raise RequestRefused(
            f"header {header}: {asked!r} is not a retention level; use None, Limited or Standard"
        )
    return rank if allowed is None else min(rank, allowed)


@dataclass(frozen=True)
class OperationFilter:
    """Completions and embeddings exist only in the OpenAI API."""

    type: str = "filter"
    name: str = "operation"

    def filter(
        self, request: RoutingRequest, route: Route, candidates: list[Candidate]
    ) -> list[Candidate]:
        """Keep backends whose API has the operation."""
        if request.operation not in _OPENAI_ONLY_OPERATIONS:
            return candidates
        return _kept(candidates, [c for c in candidates if c.backend.api == "openai"])


@dataclass(frozen=True)
class CapabilityFilter:
    """A request with tools needs a model with Tools; one with images needs Vision."""

    type: str = "filter"
    name: str = "capability"

    def filter(
        self, request: RoutingRequest, route: Route, candidates: list[Candidate]
    ) -> list[Candidate]:
        """Keep models that declare what the request uses."""
        if request.operation != "chat" or request.plain_text:
            return candidates
        signals = request.signals
        needed = set()
        if signals.tools_present:
            needed.add("Tools")
        if "Image" in signals.modalities:
            needed.add("Vision")
        if not needed:
            return candidates
        return _kept(candidates, [c for c in candidates if needed <= c.model_info.capabilities])


@dataclass(frozen=True)
class ContextWindowFilter:
    """Drop models whose context window cannot hold the prompt plus the requested output."""

    type: str = "filter"
    name: str = "context-window"

    def filter(
        self, request: RoutingRequest, route: Route, candidates: list[Candidate]
    ) -> list[Candidate]:
        """Keep models with room for the prompt and the requested completion.

        The estimate decides, unless it is within reach of a candidate's window (the estimate
        can be off by a factor of seven for some scripts): then the tokens are counted exactly.
        """
        if request.operation != "chat":
            return candidates
        if request.fits_without_counting(smallest_context_window(candidates)):
            return candidates
        signals = request.signals
        output = signals.max_output_tokens or 0
        needed = signals.prompt_tokens + output
        if any(_near(needed, c.model_info.context_window) for c in candidates):
            needed = request.prompt_tokens(exact=True) + output
        return _kept(candidates, [c for c in candidates if needed <= c.model_info.context_window])


def _near(estimate: int, window: int) -> bool:
    """Whether an estimate could be on either side of a window once counted exactly."""
    return window <= NEAR_WINDOW_FACTOR * estimate and estimate <= NEAR_WINDOW_FACTOR * window


@dataclass(frozen=True)
class CircuitBreakerFilter:
    """Drop backends whose breaker is open (or half open with every probe slot taken)."""

    type: str = "filter"
    name: str = "circuit-breaker"

    def filter(
        self, request: RoutingRequest, route: Route, candidates: list[Candidate]
    ) -> list[Candidate]:
        """Keep backends the breaker lets a request through to (closed ones without a call)."""
        now = request.now
        return _kept(
            candidates,
            [c for c in candidates if c.health.breaker.state == "closed" or c.health.allows(now)],
        )


@dataclass(frozen=True)
class SaturationFilter:
    """Drop backends that are full.

    Full means: every usable endpoint's scraped load says so (or is too old to trust), or this
    sidecar has `maxConcurrency` requests in flight to it, or its share of the account's
    requests or tokens per minute is used up.
    """

    type: str = "filter"
    name: str = "saturated"

    def filter(
        self, request: RoutingRequest, route: Route, candidates: list[Candidate]
    ) -> list[Candidate]:
        """Keep backends with room; only scraped, capped or rate-limited ones can be full."""
        now = request.now
        if not any_can_fill(candidates):
            return candidates
        return _kept(
            candidates,
            [c for c in candidates if not c.health.can_fill or c.health.has_room(now)],
        )


def _kept(candidates: list[Candidate], kept: list[Candidate]) -> list[Candidate]:
    """The input list itself when nothing was removed, so the runner can tell cheaply."""
    if len(kept) == len(candidates):
        return candidates
    return candidates.subset(kept) if isinstance(candidates, Candidates) else kept


def _relative_to_best(values: list[float]) -> list[float]:
    """Lower is better: 1 for the lowest value, best/value for the others."""
    best = min(values)
    if best <= 0:
        return [1.0 if v <= 0 else 0.0 for v in values]
    return [best / v for v in values]


@dataclass(frozen=True)
class CostScorer:
    """Cheaper is better: 1 for the cheapest candidate, 0 for the dearest."""

    type: str = "scorer"
    name: str = "cost"

    def score(self, request: RoutingRequest, candidates: Sequence[Candidate]) -> list[float]:
        """Score by the price of a typical request (output at a 1:4 ratio to the prompt).

        Every candidate's price scales alike with the prompt's size, so the scores do not
        depend on it and are computed from each candidate's unit cost.
        """
        costs = [c.unit_cost for c in candidates]
        low, high = min(costs), max(costs)
        if high == low:
            return [1.0] * len(costs)
        return [1.0 - (cost - low) / (high - low) for cost in costs]

    @property
    def table_only(self) -> bool:
        """Prices come from the route table."""
        return True

    def score_snapshot(self, request: RoutingRequest, snapshot: HealthSnapshot) -> list[float]:
        """As `score`: no live state is read."""
        return self.score(request, snapshot.candidates)


@dataclass(frozen=True)
class QualityScorer:
    """A higher quality tier is better: Economy 0, Standard 1/3, Premium 2/3, Frontier 1."""

    type: str = "scorer"
    name: str = "quality"

    def score(self, request: RoutingRequest, candidates: Sequence[Candidate]) -> list[float]:
        """The tier's place on the scale."""
        return [_QUALITY[c.model_info.quality_tier] for c in candidates]

    @property
    def table_only(self) -> bool:
        """Tiers come from the route table."""
        return True

    def score_snapshot(self, request: RoutingRequest, snapshot: HealthSnapshot) -> list[float]:
        """As `score`: no live state is read."""
        return self.score(request, snapshot.candidates)


@dataclass(frozen=True)
class LatencyScorer:
    """Faster is better: the peak-EWMA time to first byte of the backend's best endpoint."""

    type: str = "scorer"
    name: str = "latency"

    def score(self, request: RoutingRequest, candidates: Sequence[Candidate]) -> list[float]:
        """1 for the fastest, fastest/latency for the others."""
        now = request.now
        latencies = []
        for c in candidates:
            single = c.health.single  # one endpoint: read it directly (this runs per request)
            latencies.append(
                single.latency.value(now) if single is not None else c.health.balancer.latency(now)
            )
        return _relative_to_best(latencies)

    @property
    def table_only(self) -> bool:
        """Latency is live."""
        return False

    def score_snapshot(self, request: RoutingRequest, snapshot: HealthSnapshot) -> list[float]:
        """As `score`, from the snapshot's latencies."""
        return _relative_to_best(snapshot.latency)


@dataclass(frozen=True)
class LoadScorer:
    """More spare capacity is better: less in flight, a shorter queue, more rate limit left.

    One pass computes three parts from the same live state and averages them: requests in flight
    as least-request, (least + 1) / (in flight + 1); the model-server queue and KV cache as 1 minus
    the pressure of the least loaded endpoint (vLLM metrics; 1 without them); the rate-limit
    headroom as the smallest remaining share of any limit in the provider's
    `x-ratelimit-remaining-*` headers (1 when the provider said nothing).
    """

    type: str = "scorer"
    name: str = "load"

    def score(self, request: RoutingRequest, candidates: Sequence[Candidate]) -> list[float]:
        """The mean of the in-flight, queue and headroom scores."""
        now = request.now
        in_flight = [
            (h.single.in_flight if h.single is not None else h.balancer.in_flight()) + 1.0
            for h in (c.health for c in candidates)
        ]
        least = min(in_flight)
        return [
            (
                least / flight
                + (1.0 - h.balancer.queue_pressure(now) if h.scraped else 1.0)
                + h.headroom.value(now)
            )
            / 3
            for h, flight in zip((c.health for c in candidates), in_flight, strict=True)
        ]

    @property
    def table_only(self) -> bool:
        """Load is live."""
        return False

    def score_snapshot(self, request: RoutingRequest, snapshot: HealthSnapshot) -> list[float]:
        """As `score`, from the snapshot (the same operations in the same order)."""
        least = min(snapshot.in_flight) + 1.0
        # One loop filled the snapshot's lists, so their lengths agree without checking.
        columns = zip(snapshot.in_flight, snapshot.queue_free, snapshot.headroom, strict=False)
        return [
            (least / (flight + 1.0) + queue_free + headroom) / 3
            for flight, queue_free, headroom in columns
        ]


@dataclass(frozen=True)
class ConnectErrorScorer:
    """Fewer recent connect errors is better."""

    type: str = "scorer"
    name: str = "connect-errors"

    def score(self, request: RoutingRequest, candidates: Sequence[Candidate]) -> list[float]:
        """1 minus the recent connect-error rate."""
        now = request.now
        return [
            1.0
            - (
                h.single.connect_errors.value(now)
                if h.single is not None
                else h.balancer.connect_error_rate(now)
            )
            for h in (c.health for c in candidates)
        ]

    @property
    def table_only(self) -> bool:
        """Connect errors are live."""
        return False

    def score_snapshot(self, request: RoutingRequest, snapshot: HealthSnapshot) -> list[float]:
        """As `score`, from the snapshot's connect-error rates."""
        rates = snapshot.connect_errors
        if not any(rates):  # the usual case: 1 - 0 is 1, without a pass in Python
            return [1.0] * len(rates)
        return [1.0 - rate for rate in rates]


@dataclass(frozen=True)
class LocalityScorer:
    """Nearer is better: 1 in the sidecar's zone, 0.5 in its region, 0 elsewhere or unknown."""

    type: str = "scorer"
    name: str = "locality"

    def score(self, request: RoutingRequest, candidates: Sequence[Candidate]) -> list[float]:
        """By the nearest endpoint of each backend (all 1 when the sidecar's place is unknown)."""
        if candidates and not candidates[0].health.balancer.locality_known:
            return [1.0] * len(candidates)
        return [1.0 - c.health.balancer.locality_rank() / 2 for c in candidates]

    @property
    def table_only(self) -> bool:
        """Zones live on endpoint state that the next table updates, so they are read live."""
        return False

    def score_snapshot(self, request: RoutingRequest, snapshot: HealthSnapshot) -> list[float]:
        """As `score`: the snapshot holds nothing it needs, and it is cheap."""
        return self.score(request, snapshot.candidates)


@dataclass(frozen=True)
class OrderedPicker:
    """The route's own order: the first target first, the rest as fallbacks."""

    type: str = "picker"
    name: str = "ordered"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], scores: Sequence[float]
    ) -> list[Candidate]:
        """Candidates in declared order."""
        return list(candidates)


@dataclass(frozen=True)
class WeightedPicker:
    """Draw the first target by weight; the others follow as fallbacks, heaviest first."""

    type: str = "picker"
    name: str = "weighted"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], scores: Sequence[float]
    ) -> list[Candidate]:
        """A weighted draw for the first, then by descending weight."""
        weights = [c.target.weight or 0 for c in candidates]
        total = sum(weights)
        if total <= 0:
            return list(candidates)
        point = request.rng.uniform(0, total)
        chosen = len(candidates) - 1
        for index, weight in enumerate(weights):
            point -= weight
            if point < 0:
                chosen = index
                break
        rest = sorted(
            (c for i, c in enumerate(candidates) if i != chosen),
            key=lambda c: -(c.target.weight or 0),
        )
        return [candidates[chosen], *rest]


@dataclass(frozen=True)
class BestScorePicker:
    """Highest score first; ties keep the route's order."""

    type: str = "picker"
    name: str = "best-score"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], scores: Sequence[float]
    ) -> list[Candidate]:
        """Candidates by descending score (the sort is stable, so ties keep their order)."""
        order = sorted(range(len(candidates)), key=scores.__getitem__, reverse=True)
        return [candidates[i] for i in order]


@dataclass(frozen=True)
class PowerOfTwoPicker:
    """The better of two random candidates first, then the rest by score (Fastest).

    Best-first alone would send every request of a burst to the same backend until its latency
    sample arrives; two random choices spread a burst while still favouring the better one.
    """

    type: str = "picker"
    name: str = "power-of-two"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], scores: Sequence[float]
    ) -> list[Candidate]:
        """The better of two random ones, then by descending score."""
        ranked = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
        if len(candidates) < 2:
            return [candidates[i] for i in ranked]
        first, second = request.rng.sample(range(len(candidates)), 2)
        chosen = first if (scores[first], -first) >= (scores[second], -second) else second
        return [candidates[chosen], *(candidates[i] for i in ranked if i != chosen)]
