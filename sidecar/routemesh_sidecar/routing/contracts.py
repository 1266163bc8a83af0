"""The plugin contracts of routing: Filter, Scorer and Picker, and what they see.

The pipeline runner calls plugins in order: filters remove candidates, scorers give each a score
in [0, 1], and the picker orders the survivors into the plan of attempts. A plugin has a type and
a name and is configured by its own pydantic model; it never records timings or span events (the
runner does that for all of them) and never does I/O. Health-aware plugins read the live state a
candidate carries (`Candidate.health`) as of the request's `now`; they never change it, apart from
the lazy expiry of timed states (an open time that is over) that reading implies.

A scorer may also be a `SnapshotScorer`: besides `score`, it scores from a `HealthSnapshot`, the
live state of every candidate read once per decision (`read_health`) and shared by all the
scorers, and it says whether its scores depend on the route table alone. That is the runner's fast
path; `score` stays the reference the fast path is tested against. The runner also hands the
filters a route's shared `Candidates`, a list that answers what they ask of all the candidates
(the smallest context window, whether any is scraped) once per table.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

from routemesh_sidecar.routetable import Api, Backend, ModelInfo, Route, Target
from routemesh_sidecar.routing.categories import CategoryMatch
from routemesh_sidecar.routing.learned import LearnedRouter
from routemesh_sidecar.routing.signals import (
    RequestSignals,
    detect_language,
    last_user_text,
    read_signals,
    reads_like_reasoning,
)
from routemesh_sidecar.routing.tokens import Tokenizers, chat_tokens
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


class Candidates(list[Candidate]):
    """A route's candidates under one table, with what every request asks of all of them.

    The runner builds one per route and table and shares it between requests, which never mutate
    it, so the answers below are worked out once; the helpers that follow compute them on demand
    for plain lists.
    """

    # None until asked. Defaults on the class, not set by an `__init__`, so that building one
    # (a filter's subset, per decision) costs what a list costs; and not `cached_property`, whose
    # first read takes a lock in Python 3.11.
    _smallest_context_window: int | None = None
    _any_can_fill: bool | None = None
    _labels: list[str] | None = None

    @property
    def smallest_context_window(self) -> int:
        """The smallest context window among the candidates (0 for none)."""
        if self._smallest_context_window is None:
            self._smallest_context_window = _smallest_context_window(self)
        return self._smallest_context_window

    @property
    def any_can_fill(self) -> bool:
        """Whether some candidate can be full: scraped load, a concurrency cap or a rate limit."""
        if self._any_can_fill is None:
            self._any_can_fill = _any_can_fill(self)
        return self._any_can_fill

    @property
    def labels(self) -> list[str]:
        """The candidates' labels, in order."""
        if self._labels is None:
            self._labels = [c.label for c in self]
        return self._labels

    def subset(self, kept: list[Candidate]) -> Candidates:
        """The candidates a filter kept: none is scraped if none here is, known without a pass."""
        subset = Candidates(kept)
        if not self.any_can_fill:
            subset._any_can_fill = False
        return subset


def smallest_context_window(candidates: Sequence[Candidate]) -> int:
    """The smallest context window among `candidates` (0 for none)."""
    if isinstance(candidates, Candidates):
        return candidates.smallest_context_window
    return _smallest_context_window(candidates)


def any_can_fill(candidates: Sequence[Candidate]) -> bool:
    """Whether some candidate can be full: scraped load, a concurrency cap or a rate limit."""
    if isinstance(candidates, Candidates):
        return candidates.any_can_fill
    return _any_can_fill(candidates)


def labels(candidates: Sequence[Candidate]) -> list[str]:
    """The candidates' labels, in order."""
    if isinstance(candidates, Candidates):
        return candidates.labels
    return [c.label for c in candidates]


def _smallest_context_window(candidates: Sequence[Candidate]) -> int:
    return min((c.model_info.context_window for c in candidates), default=0)


def _any_can_fill(candidates: Sequence[Candidate]) -> bool:
    return any(c.health.can_fill for c in candidates)


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
    tokenizers: Tokenizers | None = None  # exact counting, when the sidecar has it
    learned_router: LearnedRouter | None = None  # loaded when a table of the sidecar uses it

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

    @cached_property
    def exact_prompt_tokens(self) -> int | None:
        """The prompt's tokens counted with the model's vocabulary; None without a tokenizer."""
        if self.tokenizers is None:
            return None
        signals = self.signals
        tokenizer = self.tokenizers.for_model(self.model)
        return chat_tokens(tokenizer, [signals.text], signals.message_count)

    def prompt_tokens(self, *, exact: bool) -> int:
        """The estimate, or with `exact` the exact count when a tokenizer is installed."""
        if exact and self.exact_prompt_tokens is not None:
            return self.exact_prompt_tokens
        return self.signals.prompt_tokens

    @property
    def token_method(self) -> str | None:
        """How the prompt's tokens were counted, if they were: a vocabulary, or the estimate."""
        known = self.__dict__
        if known.get("exact_prompt_tokens") is not None and self.tokenizers is not None:
            return self.tokenizers.for_model(self.model).name
        return "estimate" if "signals" in known else None

    @cached_property
    def last_user_text(self) -> str:
        """The text of the last user message: what semantic categories classify."""
        return last_user_text(self.body)

    @cached_property
    def reasoning(self) -> bool:
        """Whether what the user last wrote reads like reasoning, math or analysis.

        What the user wrote, not the system prompt or earlier turns: an instruction to "think
        step by step" in every request's system prompt must not make every request reasoning.
        """
        return reads_like_reasoning(self.last_user_text)

    @cached_property
    def language(self) -> str | None:
        """The language (ISO 639-1) of what the user last wrote; None when not recognised."""
        return detect_language(self.last_user_text)

    @cached_property
    def strong_need(self) -> float:
        """How much what the user last wrote needs the strong model (`routing.learned`), 0-1.

        RuntimeError without a router: a table that uses it is refused until it loads, so a
        request on such a table always has one.
        """
        if self.learned_router is None:
            raise RuntimeError("the route table uses the learned router, and it was not loaded")
        return self.learned_router.score(self.last_user_text)

    def needs_strong_model(self, strong_share: float) -> bool:
        """Whether the request scores at or above the threshold of `strong_share`."""
        score = self.strong_need
        assert self.learned_router is not None  # noqa: S101 (strong_need checked it)
        return score >= self.learned_router.threshold(strong_share)

    @cached_property
    def classified(self) -> list[CategoryMatch]:
        """The closest category of each route whose categories were checked, in route order."""
        return []


class RequestRefused(Exception):
    """A filter found the request itself invalid (a routing header with a value it cannot take).

    The runner turns it into a refusal of the request (400), never into another route.
    """


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


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """The live state of each candidate as of one decision, one list per signal, in order.

    Several scorers read the same state (latency, requests in flight, connect errors). Reading it
    once per candidate per decision, rather than once per scorer through the same chain of
    objects, and giving every scorer plain lists of numbers, is what keeps a ScoreBased decision
    over dozens of candidates cheap.
    """

    candidates: Sequence[Candidate]
    latency: list[float]  # peak-EWMA seconds of the backend's best usable endpoint
    in_flight: list[int]  # requests in flight from this sidecar to the backend
    queue_free: list[float]  # 1 minus the model servers' queue pressure (1 without metrics)
    headroom: list[float]  # the rate-limit share left (1 when unknown)
    connect_errors: list[float]  # the recent connect-error rate


def read_health(candidates: Sequence[Candidate], now: float) -> HealthSnapshot:
    """Every signal of every candidate as of `now`, in one pass over the candidates."""
    latency: list[float] = []
    in_flight: list[int] = []
    queue_free: list[float] = []
    headroom: list[float] = []
    connect_errors: list[float] = []
    for candidate in candidates:
        health = candidate.health
        single = health.single
        if single is not None:  # one endpoint, as most backends have: read it directly
            latency.append(single.latency.value(now))
            in_flight.append(single.in_flight)
            connect_errors.append(single.connect_errors.value(now))
        else:
            balancer = health.balancer
            latency.append(balancer.latency(now))
            in_flight.append(balancer.in_flight())
            connect_errors.append(balancer.connect_error_rate(now))
        queue_free.append(1.0 - health.balancer.queue_pressure(now) if health.scraped else 1.0)
        headroom.append(health.headroom.value(now))
    return HealthSnapshot(candidates, latency, in_flight, queue_free, headroom, connect_errors)


@runtime_checkable
class SnapshotScorer(Scorer, Protocol):
    """A scorer that can also score from a decision's shared `HealthSnapshot` (the fast path)."""

    @property
    def table_only(self) -> bool:
        """Whether the scores depend only on the candidates' route-table data (prices, tiers).

        The runner then computes them once per route and table instead of once per decision.
        """

    def score_snapshot(self, request: RoutingRequest, snapshot: HealthSnapshot) -> list[float]:
        """Exactly what `score` gives for `snapshot.candidates`, read from the snapshot."""


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
