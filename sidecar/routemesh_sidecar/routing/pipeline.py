"""The routing pipeline: route match, candidates, filters, scorers, picker.

The listener calls `Router.decide` once per request with the route table the request started
with. The runner, not the plugins, records what each filter removed, how long each stage took and
the health transitions that reading the state caused, for the route span, and which categories
the route match found. A table naming a strategy this sidecar cannot run is refused when it is
loaded (see `unsupported_strategies`), so a table never routes by a strategy the sidecar cannot
honour; this version runs them all.

Cascade orders its targets as the route declares them (the compiler holds them to cheapest
first); judging answers and escalating is the attempt loop's part (`upstream.executor`).

Scoring reads every candidate's live health once per decision into a snapshot that all the
scorers share, and computes the scores that depend on the route table alone (cost, quality) once
per route and table; a scorer without that fast path is called as it is (see `SnapshotScorer`).

Graceful degradation: when the health filters (breaker, saturation) remove every target of the
route, the request goes to any other healthy backend in the table whose model can serve it, the
nearest in quality first, and the decision says so; only when nothing is left does routing fail,
with `NoHealthyUpstream`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from routemesh_sidecar.routetable import QualityTier, Route, RouteTable, StrategyType, Target
from routemesh_sidecar.routing.categories import CategoryIndex, CategoryMatch
from routemesh_sidecar.routing.contracts import (
    Candidate,
    Candidates,
    Filter,
    HealthSnapshot,
    Picker,
    RequestRefused,
    RoutingRequest,
    Scorer,
    SnapshotScorer,
    labels,
    read_health,
)
from routemesh_sidecar.routing.match import first_matching_route
from routemesh_sidecar.routing.plugins import (
    BestScorePicker,
    CapabilityFilter,
    CircuitBreakerFilter,
    ConnectErrorScorer,
    ContextWindowFilter,
    CostScorer,
    LatencyScorer,
    LoadScorer,
    LocalityScorer,
    OperationFilter,
    OrderedPicker,
    PowerOfTwoPicker,
    QualityScorer,
    RetentionFilter,
    SaturationFilter,
    WeightedPicker,
)
from routemesh_sidecar.routing.semantic import SemanticMatcher, uses_model
from routemesh_sidecar.upstream.breaker import Transition
from routemesh_sidecar.upstream.registry import HealthRegistry
from routemesh_sidecar.upstream.retry import SystemClock


@dataclass(frozen=True)
class WeightedScorer:
    """A scorer and how much it counts for a route (ScoreBased reads the route's weights)."""

    scorer: Scorer
    weight: Callable[[Route], float]


@dataclass(frozen=True)
class Factor:
    """A scorer whose score scales the total: `strength` 1 can take it to 0, 0.1 only nudges."""

    scorer: Scorer
    strength: float


def _weight(name: str) -> Callable[[Route], float]:
    def weight(route: Route) -> float:
        weights = route.score_weights
        return float(getattr(weights, name)) if weights is not None else 0.0

    return weight


def _fixed(value: float) -> Callable[[Route], float]:
    return lambda route: value


@dataclass(frozen=True)
class Share:
    """One scorer's part in a route's scores, worked out once per route and table."""

    scorer: Scorer
    share: float  # its share of the weighted mean, or for a factor its strength
    stage: str  # its name in `Decision.stage_seconds`
    fast: SnapshotScorer | None  # the same scorer, when the runner uses its fast path
    table_only: bool  # a fast scorer whose scores the route table alone decides


@dataclass(frozen=True)
class Scoring:
    """How a route is scored: the weighted scorers, the factors, and whether health is read."""

    shares: tuple[Share, ...]
    factors: tuple[Share, ...]
    reads_snapshot: bool  # some fast scorer reads live health: take one snapshot per decision
    table_only: bool  # some fast scorer depends on the route table alone: cache its scores


@dataclass(frozen=True)
class StrategyPlugins:
    """The scorers, factors and picker a strategy runs after the common filters."""

    scorers: tuple[WeightedScorer, ...]
    picker: Picker
    factors: tuple[Factor, ...] = ()


# Connect errors can sink a backend's score; locality only breaks near ties.
HEALTH_FACTORS = (Factor(ConnectErrorScorer(), 1.0), Factor(LocalityScorer(), 0.1))
STRATEGIES: dict[StrategyType, StrategyPlugins] = {
    "Fallback": StrategyPlugins((), OrderedPicker()),
    # The declared order, cheapest first; the attempt loop judges each answer and escalates.
    "Cascade": StrategyPlugins((), OrderedPicker()),
    "Weighted": StrategyPlugins((), WeightedPicker()),
    "CheapestCapable": StrategyPlugins(
        (WeightedScorer(CostScorer(), _fixed(1)),), BestScorePicker()
    ),
    "Fastest": StrategyPlugins(
        (WeightedScorer(LatencyScorer(), _fixed(1)),), PowerOfTwoPicker(), HEALTH_FACTORS
    ),
    "ScoreBased": StrategyPlugins(
        (
            WeightedScorer(CostScorer(), _weight("cost")),
            WeightedScorer(LatencyScorer(), _weight("latency")),
            WeightedScorer(LoadScorer(), _weight("load")),
            WeightedScorer(QualityScorer(), _weight("quality")),
        ),
        BestScorePicker(),
        HEALTH_FACTORS,
    ),
}
FILTERS: tuple[Filter, ...] = (
    RetentionFilter(),
    OperationFilter(),
    CapabilityFilter(),
    ContextWindowFilter(),
    CircuitBreakerFilter(),
    SaturationFilter(),
)
HEALTH_FILTERS = frozenset({"circuit-breaker", "saturated"})
# Sets of candidates whose table-only scores are kept per table, before starting afresh.
TABLE_SCORE_SETS = 256
_TIERS: dict[QualityTier, int] = {"Economy": 0, "Standard": 1, "Premium": 2, "Frontier": 3}


def _weighted_sum(columns: list[tuple[float, list[float]]], size: int) -> list[float]:
    """Each candidate's sum of share times score, added in the scorers' order.

    Two scorers per pass over the candidates, and the lengths checked once rather than by every
    zip: the passes, not the arithmetic, are what cost in CPython. The sums are the same floats
    as adding one scorer at a time to zeros.
    """
    if any(len(values) != size for _, values in columns):
        raise ValueError(f"a scorer did not give one score for each of {size} candidates")
    if not columns:
        return [0.0] * size
    (share, values), rest = columns[0], columns[1:]
    if rest:
        (other, more), rest = rest[0], rest[1:]
        totals = [share * v + other * m for v, m in zip(values, more, strict=False)]
    else:
        totals = [share * v for v in values]
    while len(rest) >= 2:
        (share, values), (other, more), rest = rest[0], rest[1], rest[2:]
        columns_left = zip(totals, values, more, strict=False)
        totals = [t + share * v + other * m for t, v, m in columns_left]
    for share, values in rest:
        totals = [t + share * v for t, v in zip(totals, values, strict=False)]
    return totals


@functools.cache
def _stage(kind: str, name: str) -> str:
    """A stage's name in `Decision.stage_seconds`, built once per plugin."""
    return f"{kind}.{name}"


# Each filter with its stage name, so the runner does not look the name up per request.
_FILTER_STAGES = tuple((plugin, _stage("filter", plugin.name)) for plugin in FILTERS)


def unsupported_strategies(table: RouteTable) -> list[str]:
    """Routes whose strategy this sidecar cannot run, as messages (none in this version)."""
    return [
        f"route {route.name!r}: strategy {route.strategy} is not supported by this sidecar"
        for route in table.routes
        if route.strategy not in STRATEGIES
    ]


@dataclass
class Decision:
    """What routing decided, and why, for the attempt loop and the route span."""

    route: Route
    plan: list[Candidate]
    candidates: list[Candidate]
    removed: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    degraded: str | None = None  # why the plan left the route's own targets, when it did
    categories: list[CategoryMatch] = field(default_factory=list)  # closest, per route checked
    strong_need: float | None = None  # the learned router's score, when a route read it

    @property
    def category(self) -> CategoryMatch | None:
        """The category the route was taken for, when its match has categories."""
        if not self.route.match.signals.categories or not self.categories:
            return None
        found = self.categories[-1]  # categories are checked last: the route's own
        return found if found.matched else None


@dataclass(frozen=True)
class ShadowDecision:
    """What the policy's shadow routes would have done with a request (never done)."""

    route: str | None  # the shadow route that matched; None when none did
    choice: Candidate | None  # its first choice; None when its filters left nothing

    @property
    def label(self) -> str:
        """The choice as traces name it (backend/model), or what kept it from one."""
        if self.choice is not None:
            return self.choice.label
        return "no-route" if self.route is None else "no-candidate"


class NoRoute(Exception):
    """No route takes the request (the model is unknown to this sidecar's table)."""


class NoCandidate(Exception):
    """A route matched, but every target was filtered out; the message says by what."""


class NoHealthyUpstream(Exception):
    """Every capable backend is open or saturated: fail fast, and say when to come back."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Router:
    """Runs the pipeline.

    Its state is the clock that times stages, the health registry candidates read, and the
    candidates of the last table it saw: a table is immutable, so each route's candidates (with
    their health state), its scorers' shares and the scores that depend on the table alone are
    worked out once per table, not per request.
    """

    health: HealthRegistry = field(default_factory=lambda: HealthRegistry(SystemClock()))
    timer: Callable[[], float] = time.perf_counter
    # False runs every scorer's own `score`: the reference the fast path is tested against.
    snapshot_scoring: bool = True
    # The embedding tiers' prepared tables; None: every table must match categories lexically.
    semantic: SemanticMatcher | None = None
    _table: RouteTable | None = field(default=None, repr=False)
    _candidates: dict[int, Candidates] = field(default_factory=dict, repr=False)
    _content_policy: dict[int, Candidates] = field(default_factory=dict, repr=False)
    _everything: Candidates | None = field(default=None, repr=False)
    _scoring: dict[int, Scoring] = field(default_factory=dict, repr=False)
    _table_scores: dict[tuple[int, ...], dict[str, list[float]]] = field(
        default_factory=dict, repr=False
    )
    _categories: CategoryIndex = field(default_factory=CategoryIndex, repr=False)

    def candidates(self, table: RouteTable, route: Route) -> list[Candidate]:
        """The route's targets as candidates, in declared order (shared: never mutate)."""
        self._follow(table)
        # Keyed by identity: the table (held by `_follow`) keeps its routes alive.
        candidates = self._candidates.get(id(route))
        if candidates is None:
            candidates = Candidates(
                self._candidate(table, route, i, target) for i, target in enumerate(route.targets)
            )
            self._candidates[id(route)] = candidates
        return candidates

    def _follow(self, table: RouteTable) -> None:
        if table is not self._table:
            self._table, self._candidates, self._everything = table, {}, None
            self._content_policy = {}
            self._scoring, self._table_scores = {}, {}
            prepared = self.semantic.prepared(table) if self.semantic is not None else None
            self._categories = CategoryIndex(prepared, lexical=not uses_model(table))

    def _candidate(self, table: RouteTable, route: Route, index: int, target: Target) -> Candidate:
        backend = table.backends[target.backend]
        health = self.health.backend(target.backend, backend, route)
        return Candidate(index, target, backend, backend.models[target.model], health)

    def content_policy_plan(
        self, table: RouteTable, route: Route, request: RoutingRequest
    ) -> list[Candidate]:
        """Where a request refused for its content policy may go, in the route's order.

        The route's content-policy fallbacks that every filter keeps: retention, capabilities
        and context window hold for them as for the route's own targets, and an open breaker
        leaves one out. Empty when the route names none (the default: never).
        """
        if not route.content_policy_fallbacks:
            return []
        self._follow(table)
        candidates = self._content_policy.get(id(route))
        if candidates is None:
            candidates = self._content_policy[id(route)] = Candidates(
                self._candidate(table, route, i, target)
                for i, target in enumerate(route.content_policy_fallbacks)
            )
        try:
            return list(self._filter(request, route, candidates, Decision(route, [], candidates)))
        except (NoCandidate, RequestRefused):
            return []

    def shadow(self, table: RouteTable, request: RoutingRequest) -> ShadowDecision | None:
        """The shadow routes' decision for the request; None when the table has none.

        The same pipeline as a live decision (match, filters, scorers, picker), minus graceful
        degradation, and nothing it finds changes the live decision's record.
        """
        shadow = table.shadow
        if shadow is None:
            return None
        self._follow(table)
        found = request.__dict__.get("classified")
        before = len(found) if found is not None else 0
        try:
            return self._shadow(table, request, shadow.routes)
        finally:
            found = request.__dict__.get("classified")
            if found is not None:
                del found[before:]  # the shadow's category matches are not the live route's

    def _shadow(
        self, table: RouteTable, request: RoutingRequest, routes: tuple[Route, ...]
    ) -> ShadowDecision:
        route = first_matching_route(routes, request, self._categories)
        if route is None:
            return ShadowDecision(None, None)
        candidates = self.candidates(table, route)
        scratch = Decision(route, [], candidates)
        try:
            survivors = self._filter(request, route, candidates, scratch)
        except (NoCandidate, RequestRefused):
            survivors = []
        if not survivors:
            return ShadowDecision(route.name, None)
        plugins = STRATEGIES[route.strategy]
        scores = self._score(request, route, survivors, plugins, scratch)
        plan = plugins.picker.pick(request, survivors, scores)
        return ShadowDecision(route.name, plan[0] if plan else None)

    def everything(self, table: RouteTable) -> list[Candidate]:
        """Every (backend, model) any route targets, once each, for graceful degradation."""
        self._follow(table)
        if self._everything is None:
            seen: dict[tuple[str, str], Candidate] = {}
            for route in table.routes:
                for candidate in self.candidates(table, route):
                    seen.setdefault((candidate.target.backend, candidate.target.model), candidate)
            self._everything = Candidates(seen.values())
        return self._everything

    def decide(self, table: RouteTable, request: RoutingRequest) -> Decision:
        """Match a route and order its targets into a plan."""
        with self.health.capture() as transitions:
            try:
                decision = self._decide(table, request)
            except RequestRefused as refused:
                raise NoCandidate(str(refused)) from refused
        decision.transitions = transitions
        return decision

    def _decide(self, table: RouteTable, request: RoutingRequest) -> Decision:
        started = self.timer()
        self._follow(table)
        route = first_matching_route(table.routes, request, self._categories)
        if route is None:
            raise NoRoute(f"no route for model {request.model!r}")
        candidates = self.candidates(table, route)
        decision = Decision(route, [], candidates)
        # Read without the property, which would make a list for every request.
        classified = request.__dict__.get("classified")
        if classified:
            decision.categories = classified
        decision.strong_need = request.__dict__.get("strong_need")
        decision.stage_seconds["match"] = self.timer() - started
        survivors = self._filter(request, route, candidates, decision)
        if not survivors:
            return self._degrade(table, request, decision)
        plugins = STRATEGIES[route.strategy]
        scores = self._score(request, route, survivors, plugins, decision)
        started = self.timer()
        decision.plan = plugins.picker.pick(request, survivors, scores)
        decision.stage_seconds["pick"] = self.timer() - started
        return decision

    def _filter(
        self,
        request: RoutingRequest,
        route: Route,
        candidates: list[Candidate],
        decision: Decision,
    ) -> list[Candidate]:
        """The candidates every filter keeps; empty only when the health filters removed all."""
        survivors = candidates
        timer, stages = self.timer, decision.stage_seconds
        for plugin, stage in _FILTER_STAGES:
            started = timer()
            kept = plugin.filter(request, route, survivors)
            stages[stage] = timer() - started
            if kept is survivors:
                continue
            kept_ids = set(map(id, kept))
            removed = [c.label for c in survivors if id(c) not in kept_ids]
            decision.removed[plugin.name] = removed
            if not kept and plugin.name not in HEALTH_FILTERS:
                raise NoCandidate(
                    f"route {route.name!r}: no target left after the {plugin.name} filter "
                    f"(removed {', '.join(removed)})"
                )
            survivors = kept
            if not survivors:
                break
        return survivors

    def _degrade(self, table: RouteTable, request: RoutingRequest, decision: Decision) -> Decision:
        """Every target is open or saturated: use any other healthy backend that can serve."""
        route = decision.route
        own = {id(c) for c in decision.candidates}
        others = [c for c in self.everything(table) if id(c) not in own]
        scratch = Decision(route, [], others)
        try:
            healthy = self._filter(request, route, others, scratch) if others else []
        except NoCandidate:
            healthy = []
        if not healthy:
            removed = "; ".join(f"{k}: {', '.join(v)}" for k, v in decision.removed.items())
            private = (
                " (or may see its data)"
                if "retention" in decision.removed or ("retention" in scratch.removed)
                else ""
            )
            raise NoHealthyUpstream(
                f"route {route.name!r}: no healthy upstream: every target is open or saturated "
                f"({removed}) and no other backend in the route table can serve the request"
                f"{private}",
                self._earliest_reopening(decision.candidates, request.now),
            )
        tier = _TIERS[decision.candidates[0].model_info.quality_tier]
        decision.plan = sorted(
            healthy,
            key=lambda c: (
                abs(_TIERS[c.model_info.quality_tier] - tier),
                c.model_info.pricing.input_per_million + c.model_info.pricing.output_per_million,
            ),
        )
        decision.degraded = (
            "every target of the route is open or saturated; using other healthy backends"
        )
        return decision

    @staticmethod
    def _earliest_reopening(candidates: list[Candidate], now: float) -> float | None:
        """Seconds until the first open breaker, or used-up rate limit, lets a request through."""
        times = [
            c.health.breaker.open_until - now
            for c in candidates
            if c.health.breaker.open_until is not None
        ]
        times += [
            seconds
            for c in candidates
            if (seconds := c.health.seconds_until_room(now)) is not None and seconds > 0
        ]
        return max(0.0, min(times)) if times else None

    def _scoring_of(self, route: Route, plugins: StrategyPlugins) -> Scoring:
        """Each weighted scorer's share of the total, and the factors, once per route and table."""
        scoring = self._scoring.get(id(route))
        if scoring is None:
            weights = [(w.scorer, w.weight(route)) for w in plugins.scorers]
            total = sum(weight for _, weight in weights if weight > 0)
            shares = tuple(
                self._share(scorer, weight / total) for scorer, weight in weights if weight > 0
            )
            factors = tuple(self._share(f.scorer, f.strength) for f in plugins.factors)
            parts = shares + factors
            live = any(p.fast is not None and not p.table_only for p in parts)
            table_only = any(p.table_only for p in parts)
            scoring = self._scoring[id(route)] = Scoring(shares, factors, live, table_only)
        return scoring

    def _share(self, scorer: Scorer, share: float) -> Share:
        fast = scorer if self.snapshot_scoring and isinstance(scorer, SnapshotScorer) else None
        table_only = fast is not None and fast.table_only
        return Share(scorer, share, _stage("score", scorer.name), fast, table_only)

    def _score(
        self,
        request: RoutingRequest,
        route: Route,
        candidates: Sequence[Candidate],
        plugins: StrategyPlugins,
        decision: Decision,
    ) -> list[float]:
        """The weighted mean of the scorers, scaled by the health factors."""
        if not plugins.scorers:
            return []
        scoring = self._scoring_of(route, plugins)
        timer, stages = self.timer, decision.stage_seconds
        snapshot = None
        if scoring.reads_snapshot:
            started = timer()
            snapshot = read_health(candidates, request.now)
            stages["snapshot"] = timer() - started
        cached = self._table_cache(route, candidates, decision) if scoring.table_only else {}
        columns = []
        for part in scoring.shares:
            started = timer()
            columns.append((part.share, self._values(part, request, candidates, snapshot, cached)))
            stages[part.stage] = timer() - started
        totals = _weighted_sum(columns, len(candidates))
        for part in scoring.factors:
            started = timer()
            values = self._values(part, request, candidates, snapshot, cached)
            if min(values, default=1.0) < 1.0:  # all 1: nothing to scale
                strength = part.share
                totals = [
                    t * (1.0 - strength * (1.0 - v)) for t, v in zip(totals, values, strict=True)
                ]
            stages[part.stage] = timer() - started
        decision.scores = dict(zip(labels(candidates), totals, strict=True))
        return totals

    def _table_cache(
        self, route: Route, candidates: Sequence[Candidate], decision: Decision
    ) -> dict[str, list[float]]:
        """The table-only scores worked out so far for this route and set of candidates.

        The set is the route's own list, or what the filters left of it: a set changes only when
        a breaker or a model server's load does, so the few sets a route sees are kept.
        """
        if candidates is decision.candidates:
            key: tuple[int, ...] = (id(route),)
        else:
            key = (id(route), *[c.index for c in candidates])
        cached = self._table_scores.get(key)
        if cached is None:
            if len(self._table_scores) >= TABLE_SCORE_SETS:  # bounded, however health churns
                self._table_scores.clear()
            cached = self._table_scores[key] = {}
        return cached

    @staticmethod
    def _values(
        part: Share,
        request: RoutingRequest,
        candidates: Sequence[Candidate],
        snapshot: HealthSnapshot | None,
        cached: dict[str, list[float]],
    ) -> list[float]:
        """One scorer's scores: from the table-only cache, the snapshot, or the scorer itself."""
        if part.table_only:
            values = cached.get(part.stage)
            if values is None:  # kept for later decisions, which never mutate it
                values = cached[part.stage] = part.scorer.score(request, candidates)
            return values
        if part.fast is not None and snapshot is not None:
            return part.fast.score_snapshot(request, snapshot)
        return part.scorer.score(request, candidates)
