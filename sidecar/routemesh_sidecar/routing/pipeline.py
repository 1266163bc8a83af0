"""The routing pipeline: route match, candidates, filters, scorers, picker.

The listener calls `Router.decide` once per request with the route table the request started
with. The runner, not the plugins, records what each filter removed and how long each stage took,
for the route span. Strategies not built yet are refused when a table is loaded (see
`unsupported_strategies`), so a table never routes by a strategy the sidecar cannot honour.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from routemesh_sidecar.routetable import Route, RouteTable, StrategyType
from routemesh_sidecar.routing.contracts import Candidate, Filter, Picker, RoutingRequest, Scorer
from routemesh_sidecar.routing.match import first_matching_route
from routemesh_sidecar.routing.plugins import (
    BestScorePicker,
    CapabilityFilter,
    ContextWindowFilter,
    CostScorer,
    OperationFilter,
    OrderedPicker,
    WeightedPicker,
)


@dataclass(frozen=True)
class StrategyPlugins:
    """The scorers and picker a strategy runs after the common filters."""

    scorers: tuple[Scorer, ...]
    picker: Picker


STRATEGIES: dict[StrategyType, StrategyPlugins] = {
    "Fallback": StrategyPlugins((), OrderedPicker()),
    "Weighted": StrategyPlugins((), WeightedPicker()),
    "CheapestCapable": StrategyPlugins((CostScorer(),), BestScorePicker()),
}
FILTERS: tuple[Filter, ...] = (OperationFilter(), CapabilityFilter(), ContextWindowFilter())


def unsupported_strategies(table: RouteTable) -> list[str]:
    """Routes whose strategy this sidecar cannot run yet, as messages."""
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


class NoRoute(Exception):
    """No route takes the request (the model is unknown to this sidecar's table)."""


class NoCandidate(Exception):
    """A route matched, but every target was filtered out; the message says by what."""


@dataclass
class Router:
    """Runs the pipeline.

    Its only state is the clock that times stages and the candidates of the last table it saw:
    a table is immutable, so each route's candidates are built once per table, not per request.
    """

    timer: Callable[[], float] = time.perf_counter
    _table: RouteTable | None = field(default=None, repr=False)
    _candidates: dict[int, list[Candidate]] = field(default_factory=dict, repr=False)

    def candidates(self, table: RouteTable, route: Route) -> list[Candidate]:
        """The route's targets as candidates, in declared order (shared: never mutate)."""
        if table is not self._table:
            self._table, self._candidates = table, {}
        # Keyed by identity: the table (held above) keeps its routes alive.
        candidates = self._candidates.get(id(route))
        if candidates is None:
            candidates = [
                Candidate(
                    i,
                    target,
                    table.backends[target.backend],
                    table.backends[target.backend].models[target.model],
                )
                for i, target in enumerate(route.targets)
            ]
            self._candidates[id(route)] = candidates
        return candidates

    def decide(self, table: RouteTable, request: RoutingRequest) -> Decision:
        """Match a route and order its targets into a plan."""
        started = self.timer()
        route = first_matching_route(table.routes, request)
        if route is None:
            raise NoRoute(f"no route for model {request.model!r}")
        candidates = self.candidates(table, route)
        decision = Decision(route, [], candidates)
        decision.stage_seconds["match"] = self.timer() - started
        survivors = self._filter(request, route, candidates, decision)
        plugins = STRATEGIES[route.strategy]
        scores = self._score(request, survivors, plugins.scorers, decision)
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
        survivors = candidates
        for plugin in FILTERS:
            started = self.timer()
            kept = [c for c in survivors if plugin.keep(request, route, c)]
            decision.stage_seconds[f"filter.{plugin.name}"] = self.timer() - started
            if len(kept) == len(survivors):
                continue
            kept_ids = {id(c) for c in kept}
            removed = [c.label for c in survivors if id(c) not in kept_ids]
            decision.removed[plugin.name] = removed
            if not kept:
                raise NoCandidate(
                    f"route {route.name!r}: no target left after the {plugin.name} filter "
                    f"(removed {', '.join(removed)})"
                )
            survivors = kept
        return survivors

    def _score(
        self,
        request: RoutingRequest,
        candidates: Sequence[Candidate],
        scorers: tuple[Scorer, ...],
        decision: Decision,
    ) -> list[float]:
        totals = [0.0] * len(candidates)
        for scorer in scorers:
            started = self.timer()
            for i, value in enumerate(scorer.score(request, candidates)):
                totals[i] += value
            decision.stage_seconds[f"score.{scorer.name}"] = self.timer() - started
        for candidate, total in zip(candidates, totals, strict=True):
            decision.scores[candidate.label] = total
        return totals
