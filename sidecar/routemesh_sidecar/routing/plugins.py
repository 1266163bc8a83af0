"""The built-in filter, scorer and picker plugins.

Filters: the operation the backend's API supports, the capabilities the request needs (tools,
vision) and the context window. Scorers: cost. Pickers: ordered (Fallback), weighted (Weighted,
canaries) and best-score-first (CheapestCapable). Each is a small class with a type and a name;
the pipeline decides which run for a route's strategy. None of them does I/O or keeps state
between requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from routemesh_sidecar.routetable import Route
from routemesh_sidecar.routing.contracts import Candidate, RoutingRequest

_OPENAI_ONLY_OPERATIONS = frozenset({"completions", "embeddings"})


@dataclass(frozen=True)
class OperationFilter:
    """Completions and embeddings exist only in the OpenAI API."""

    type: str = "filter"
    name: str = "operation"

    def keep(self, request: RoutingRequest, route: Route, candidate: Candidate) -> bool:
        """Keep backends whose API has the operation."""
        return request.operation not in _OPENAI_ONLY_OPERATIONS or candidate.backend.api == "openai"


@dataclass(frozen=True)
class CapabilityFilter:
    """A request with tools needs a model with Tools; one with images needs Vision."""

    type: str = "filter"
    name: str = "capability"

    def keep(self, request: RoutingRequest, route: Route, candidate: Candidate) -> bool:
        """Keep models that declare what the request uses."""
        if request.operation != "chat":
            return True
        capabilities = candidate.model_info.capabilities
        signals = request.signals
        if signals.tools_present and "Tools" not in capabilities:
            return False
        return "Image" not in signals.modalities or "Vision" in capabilities


@dataclass(frozen=True)
class ContextWindowFilter:
    """Drop models whose context window cannot hold the prompt plus the requested output."""

    type: str = "filter"
    name: str = "context-window"

    def keep(self, request: RoutingRequest, route: Route, candidate: Candidate) -> bool:
        """Keep models with room for the estimated prompt and the requested completion."""
        if request.operation != "chat":
            return True
        signals = request.signals
        needed = signals.prompt_tokens + (signals.max_output_tokens or 0)
        return needed <= candidate.model_info.context_window


@dataclass(frozen=True)
class CostScorer:
    """Cheaper is better: 1 for the cheapest candidate, 0 for the dearest."""

    type: str = "scorer"
    name: str = "cost"

    def score(self, request: RoutingRequest, candidates: Sequence[Candidate]) -> list[float]:
        """Score by the price of a typical request (prompt estimate, output at a 1:4 ratio)."""
        prompt = request.signals.prompt_tokens if request.operation == "chat" else 1000
        output = max(1, prompt // 4)
        costs = [
            c.model_info.pricing.input_per_million * prompt
            + c.model_info.pricing.output_per_million * output
            for c in candidates
        ]
        low, high = min(costs), max(costs)
        if high == low:
            return [1.0] * len(costs)
        return [1.0 - (cost - low) / (high - low) for cost in costs]


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
        """Candidates by descending score."""
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
        return [candidates[i] for i in order]
