"""The plugin contracts of routing: Filter, Scorer and Picker, and what they see.

The pipeline runner calls plugins in order: filters remove candidates, scorers give each a score
in [0, 1], and the picker orders the survivors into the plan of attempts. A plugin has a type and
a name and is configured by its own pydantic model; it never records timings or span events (the
runner does that for all of them) and never does I/O. Health-aware plugins read the live state a
candidate carries (`Candidate.health`) as of the request's `now`; they never change it, apart from
the lazy expiry of timed states (an open time that is over) that reading implies.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from routemesh_sidecar.routetable import Api, Backend, ModelInfo, Route, Target
from routemesh_sidecar.routing.signals import RequestSignals, read_signals
from routemesh_sidecar.upstream.registry import BackendHealth


@dataclass(frozen=True)
class Candidate:
    """One target of a route, with what the route table knows about it."""

    index: int
    target: Target
    backend: Backend
    model_info: ModelInfo
    health: BackendHealth  # live breaker, endpoint and load state of the backend

    @cached_property
    def label(self) -> str:
        """How traces and headers name it: backend/model."""
        return f"{self.target.backend}/{self.target.model}"

    @cached_property
    def unit_cost(self) -> float:
        """Dollars per million prompt tokens of a typical request, output at a 1:4 ratio.

        Costs of every candidate scale alike with the prompt, so cheapness compares on this.
        """
        pricing = self.model_info.pricing
        return pricing.input_per_million + pricing.output_per_million / 4


@dataclass
class RoutingRequest:
    """A downstream request as routing sees it. Signals are computed only if a route needs them."""

    api: Api
    operation: str
    model: str
    headers: Mapping[str, str]
    body: dict[str, Any]
    rng: random.Random = field(default_factory=random.Random)
    now: float = 0.0  # monotonic seconds on the sidecar's clock: health is read as of then
    size_bytes: int | None = None  # the body's size as received, when known

    @cached_property
    def plain_text(self) -> bool:
        """No tools and only string contents: no capability to check, without reading signals."""
        body = self.body
        if body.get("tools") or not isinstance(body.get("system", ""), str):
            return False
        messages = body.get("messages")
        return isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        )

    def fits_without_counting(self, context_window: int) -> bool:
        """Whether the request surely fits `context_window` tokens, judged by its size alone.

        The token estimate is at most a quarter of the characters plus four per message, and
        the body holds at least as many bytes as both: a body no larger than the window, plus
        the output asked for, fits without reading signals.
        """
        if self.size_bytes is None:
            return False
        body = self.body
        output = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        return isinstance(output, int) and self.size_bytes + output <= context_window

    @cached_property
    def signals(self) -> RequestSignals:
        """Token estimate, code, keywords text, modalities and tools of the request."""
        return read_signals(self.api, self.body)


class Filter(Protocol):
    """Removes candidates that cannot or should not serve the request."""

    @property
    def type(self) -> str:
        """The plugin kind: filter, scorer or picker."""

    @property
    def name(self) -> str:
        """The plugin's name, shown in traces."""

    def filter(
        self, request: RoutingRequest, route: Route, candidates: list[Candidate]
    ) -> list[Candidate]:
        """The candidates that stay; the same list object when none is removed.

        Whole lists rather than one candidate per call, so that a filter with nothing to check
        for this request (no tools, a prompt every model can hold) returns at once.
        """


class Scorer(Protocol):
    """Scores candidates in [0, 1]; higher is better."""

    @property
    def type(self) -> str:
        """The plugin kind: filter, scorer or picker."""

    @property
    def name(self) -> str:
        """The plugin's name, shown in traces."""

    def score(self, request: RoutingRequest, candidates: Sequence[Candidate]) -> list[float]:
        """One score per candidate, in order."""


class Picker(Protocol):
    """Orders candidates into the plan: the first is tried first, the rest are fallbacks."""

    @property
    def type(self) -> str:
        """The plugin kind: filter, scorer or picker."""

    @property
    def name(self) -> str:
        """The plugin's name, shown in traces."""

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], scores: Sequence[float]
    ) -> list[Candidate]:
        """The plan."""
