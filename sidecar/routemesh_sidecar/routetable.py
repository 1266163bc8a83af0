"""The route table: the wire format between the operator and the sidecar.

The sidecar owns this model and the operator imports it (never the other way). A route table is
an immutable, versioned snapshot: a counter the operator increments, plus a hash of the content,
so that a restarted operator republishes nothing that did not change. It names the resources that
produced it. Everything in it is resolved: the compiler has applied every default and merged the
policy's defaults into each route, so the sidecar never has to know what "absent" means.

`ActiveRouteTable` holds the table in use. A swap is one assignment: a request reads the table
once at its start and keeps it, so a request in flight finishes on the table it started with.

Fields added after the first release (a route's `cascade`, `budget`, `retention`,
`content_policy_fallbacks` and `hedging`, a backend's `retention` and rate limits, a match's
`categories`, the table's `shadow`) are left out of the serialized table when unused, so a table
that does not use them dumps, hashes and parses exactly as before: an older sidecar still accepts
it, and an upgraded operator republishes nothing.

Nothing here does I/O except `load_route_table_file`, which reads one file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

ErrorClass = Literal[
    "connect_error",
    "timeout",
    "rate_limited",
    "overloaded",
    "server_error",
    "client_error",
    "context_length",
    "content_policy",
    "bad_response",
    "stream_broken",
]
Api = Literal["openai", "anthropic"]
Capability = Literal["Vision", "Tools", "JSONOutput", "Reasoning"]
QualityTier = Literal["Economy", "Standard", "Premium", "Frontier"]
StrategyType = Literal[
    "Fallback", "Weighted", "CheapestCapable", "Fastest", "Cascade", "ScoreBased"
]
Seconds = Annotated[float, Field(gt=0)]
# What an upstream keeps of request data, strictest first: "None" is zero data retention.
Retention = Literal["None", "Limited", "Standard"]
RETENTION_ORDER: dict[Retention, int] = {"None": 0, "Limited": 1, "Standard": 2}


def _sorted_list(values: frozenset[Any]) -> list[Any]:
    return sorted(values)


# Sets serialize sorted, so equal tables dump (and hash, and diff) identically whatever order
# their sets were built in; the content hash depends on it.
SortedSet = PlainSerializer(_sorted_list)

DEFAULT_RETRY_ON: frozenset[ErrorClass] = frozenset(
    {"connect_error", "timeout", "rate_limited", "overloaded", "server_error", "bad_response"}
)


class WireModel(BaseModel):
    """Base of the route-table models: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceRef(WireModel):
    """A resource the table was compiled from."""

    kind: str
    namespace: str
    name: str
    generation: int


class Pricing(WireModel):
    """US dollars per million tokens."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    cached_input_per_million: float | None = Field(default=None, ge=0)


class ModelInfo(WireModel):
    """What routing and accounting know about one model of a backend."""

    context_window: int = Field(ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    capabilities: Annotated[frozenset[Capability], SortedSet] = frozenset()
    pricing: Pricing
    quality_tier: QualityTier = "Standard"


class Credentials(WireModel):
    """Where the sidecar finds a backend's API key: a file (a mounted Secret) or a variable.

    The key itself never appears in a route table.
    """

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Credentials:
        if (self.file is None) == (self.env is None):
            raise ValueError("credentials need exactly one of 'file' and 'env'")
        return self


class Endpoint(WireModel):
    """One address of a backend: its base URL, including the API's version path.

    `zone` and `region` override the backend's locality for this endpoint (a vLLM pod's node).
    """

    url: str = Field(pattern=r"^https?://")
    zone: str | None = None
    region: str | None = None


class Locality(WireModel):
    """Where a backend runs; the sidecar prefers its own zone, then its own region."""

    region: str | None = None
    zone: str | None = None


class MetricsScrape(WireModel):
    """Scrape a vLLM server's Prometheus metrics for queue depth and KV-cache use.

    `path` is relative to the endpoint's origin (vLLM serves `/metrics` beside `/v1`). Metrics
    older than `stale_after` count as saturated: a server too busy to answer its scrape is busy.
    """

    path: str = Field(default="/metrics", pattern=r"^/")
    stale_after: Seconds | None = None  # None: three health-check intervals
    max_waiting: int = Field(default=16, ge=0)  # queued requests at which an endpoint is saturated
    max_kv_cache_usage: float = Field(default=0.95, gt=0, le=1)


class HealthCheck(WireModel):
    """Active health checking of every endpoint of a backend."""

    interval: Seconds = 10.0
    timeout: Seconds = 2.0
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=1, ge=1)
    metrics: MetricsScrape | None = None

    @property
    def metrics_stale_after(self) -> float:
        """When scraped metrics stop counting (three intervals unless set)."""
        stale = self.metrics.stale_after if self.metrics else None
        return stale if stale is not None else 3 * self.interval


class Backend(WireModel):
    """A compiled ModelBackend: the API it speaks, its endpoints, credentials and models."""

    api: Api
    endpoints: list[Endpoint] = Field(min_length=1)
    credentials: Credentials | None = None
    models: dict[str, ModelInfo] = Field(min_length=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    locality: Locality = Locality()
    health_check: HealthCheck | None = None
    retention: Retention | None = None  # None: not declared, which counts as Standard
    requests_per_minute: int | None = Field(default=None, ge=1)  # the account's, all pods
    tokens_per_minute: int | None = Field(default=None, ge=1)

    @property
    def retention_rank(self) -> int:
        """How much the backend retains (0 nothing); an undeclared one counts as Standard."""
        return RETENTION_ORDER[self.retention or "Standard"]

    @model_serializer(mode="wrap")
    def _omit_unused(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(
            handler(self), "retention", "requests_per_minute", "tokens_per_minute"
        )


class HeaderMatch(WireModel):
    """A header the request must carry (names are compared case-insensitively)."""

    name: str
    value: str
    type: Literal["Exact", "RegularExpression"] = "Exact"


class Category(WireModel):
    """A category of requests, given by example utterances (a semantic match, done lexically).

    A request is in the category when its last user message is at least `threshold` similar to
    one of the examples; the sidecar's similarity is lexical (see `routing.categories`).
    """

    name: str = Field(min_length=1)
    threshold: float = Field(default=0.5, ge=0, le=1)
    examples: tuple[str, ...] = Field(min_length=1)


class LearnedRouterMatch(WireModel):
    """Take the requests the learned router scores at or above a strong share's threshold."""

    strong_share: float = Field(gt=0, le=1)


class Signals(WireModel):
    """Features of the request a route requires; None means any."""

    min_tokens: int | None = None
    max_tokens: int | None = None
    code_present: bool | None = None
    keywords: Annotated[frozenset[str], SortedSet] = frozenset()
    modalities: Annotated[frozenset[Literal["Text", "Image", "Audio"]], SortedSet] = frozenset()
    tools_present: bool | None = None
    min_turns: int | None = None  # user messages in the request
    max_turns: int | None = None
    reasoning: bool | None = None
    languages: Annotated[frozenset[str], SortedSet] = frozenset()  # ISO 639-1; any of them
    categories: tuple[Category, ...] = ()  # any of them must match; in the policy's order
    learned_router: LearnedRouterMatch | None = None

    @cached_property
    def required(self) -> bool:
        """Whether any bound is set (checked per request, so computed once)."""
        return self != Signals()

    @model_serializer(mode="wrap")
    def _omit_unused(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), "categories", "learned_router")


class RouteMatch(WireModel):
    """Which requests a route takes; an empty match takes every request."""

    models: Annotated[frozenset[str], SortedSet] = frozenset()
    headers: tuple[HeaderMatch, ...] = ()
    signals: Signals = Signals()


class Target(WireModel):
    """A model on a backend that a route may send to."""

    backend: str
    model: str
    weight: int | None = Field(default=None, ge=0, le=100)


class Backoff(WireModel):
    """Exponential backoff between retries of one target."""

    base: Seconds = 0.1
    max: Seconds = 1.0
    jitter: Literal["Full", "None"] = "Full"


class RetryBudget(WireModel):
    """Retries allowed as a share of recent requests, with a floor for low traffic."""

    percent: int = Field(default=20, ge=1, le=100)
    min_retries_per_second: int = Field(default=10, ge=0)
    window: Seconds = 10.0


class Retry(WireModel):
    """How failed attempts are retried against the same target."""

    attempts: int = Field(default=2, ge=1, le=10)
    per_try_timeout: Seconds | None = None
    backoff: Backoff = Backoff()
    honor_retry_after: bool = True
    retry_on: Annotated[frozenset[ErrorClass], SortedSet] = DEFAULT_RETRY_ON
    budget: RetryBudget = RetryBudget()


class Timeouts(WireModel):
    """Deadlines: connect per attempt, first byte per attempt, total per request."""

    connect: Seconds = 5.0
    first_token: Seconds = 30.0
    total: Seconds = 300.0


class FailureRate(WireModel):
    """Open when this share of the requests in the window failed, once enough were seen."""

    percent: int = Field(ge=1, le=100)
    window: Seconds
    minimum_requests: int = Field(ge=1)


class CircuitBreaker(WireModel):
    """Per backend: stop sending after failures, then probe (closed, open, half_open)."""

    consecutive_failures: int = Field(default=5, ge=1)
    failure_rate: FailureRate | None = None
    base_open_time: Seconds = 30.0
    max_open_time: Seconds = 300.0
    half_open_probes: int = Field(default=1, ge=1)


class OutlierDetection(WireModel):
    """Per endpoint: passive ejection by the endpoint's own recent results."""

    consecutive_failures: int = Field(default=5, ge=1)
    base_ejection_time: Seconds = 30.0
    max_ejection_time: Seconds = 300.0
    max_ejected_percent: int = Field(default=50, ge=0, le=100)
    panic_threshold_percent: int = Field(default=50, ge=0, le=100)


class ScoreWeights(WireModel):
    """Relative weights of the ScoreBased strategy's scorers; only their ratios matter."""

    cost: int = Field(default=0, ge=0)
    latency: int = Field(default=0, ge=0)
    load: int = Field(default=0, ge=0)
    quality: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> ScoreWeights:
        if self.cost + self.latency + self.load + self.quality <= 0:
            raise ValueError("at least one score weight must be above zero")
        return self


class QualityGate(WireModel):
    """When a cascade accepts an answer instead of escalating to the next target.

    An answer escalates when it has fewer than `min_output_tokens` output tokens, when it is a
    refusal (`reject_refusals`), or when it was cut off rather than finished (`require_complete`).
    """

    min_output_tokens: int = Field(default=1, ge=0)
    reject_refusals: bool = True
    require_complete: bool = True


class Cascade(WireModel):
    """Settings of the Cascade strategy."""

    quality_gate: QualityGate = QualityGate()


class TierLatency(WireModel):
    """The latency promised to callers of one tier: it bounds their whole request."""

    tier: str = Field(min_length=1)
    first_token: Seconds | None = None  # from the request's arrival to the answer's first byte
    total: Seconds | None = None  # from its arrival to its end, retries and fallbacks included


class Budget(WireModel):
    """Limits per request, across every attempt it makes (retries, fallbacks, cascades).

    Before each attempt the sidecar estimates what it would spend: the prompt's tokens plus the
    most output it may produce (the request's own maximum, else the model's `max_output_tokens`),
    priced at the target's prices. A target that would go past what is left is skipped. Failed
    attempts count what they may have cost (see `upstream.budget`).
    """

    max_cost_usd: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    latency_per_tier: tuple[TierLatency, ...] = ()

    def tier_latency(self, tier: str | None) -> TierLatency | None:
        """The latency budget of a caller's tier, if the policy gives it one."""
        if tier is None:
            return None
        return next((t for t in self.latency_per_tier if t.tier == tier), None)


class Hedging(WireModel):
    """Parallel attempts for a slow request: the next target after `delay` without a first byte.

    With `delay_percentile`, the delay is that percentile of the target's observed times to first
    byte once it has enough of them, and `delay` until then.
    """

    delay: Seconds
    delay_percentile: int | None = Field(default=None, ge=50, le=99)
    max_extra_attempts: int = Field(default=1, ge=1, le=3)


class Route(WireModel):
    """One compiled rule of a policy, with every setting resolved."""

    name: str
    policy: str = ""
    match: RouteMatch = RouteMatch()
    strategy: StrategyType = "Fallback"
    targets: tuple[Target, ...] = Field(min_length=1)
    retry: Retry = Retry()
    timeouts: Timeouts = Timeouts()
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    outlier_detection: OutlierDetection = OutlierDetection()
    score_weights: ScoreWeights | None = None  # required by ScoreBased, ignored by the others
    cascade: Cascade | None = None  # Cascade's quality gate (the default gate when absent)
    budget: Budget | None = None  # None: no cost, token or latency limit per request
    retention: Retention | None = None  # the loosest retention its backends may have
    retention_header: str | None = None  # a header through which a request may require stricter
    # Where a request refused for its content policy may go instead (empty: nowhere).
    content_policy_fallbacks: tuple[Target, ...] = ()
    hedging: Hedging | None = None  # None: one attempt in flight at a time

    @model_validator(mode="after")
    def _score_weights_for_score_based(self) -> Route:
        if self.strategy == "ScoreBased" and self.score_weights is None:
            raise ValueError(f"route {self.name!r}: strategy ScoreBased needs score_weights")
        return self

    @cached_property
    def quality_gate(self) -> QualityGate | None:
        """The gate a Cascade route judges answers by; None for the other strategies."""
        if self.strategy != "Cascade":
            return None
        return self.cascade.quality_gate if self.cascade is not None else QualityGate()

    @model_serializer(mode="wrap")
    def _omit_unused(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(
            handler(self),
            "cascade",
            "budget",
            "retention",
            "retention_header",
            "content_policy_fallbacks",
            "hedging",
        )


def _without_empty(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The serialized model without those `keys` that hold nothing (None or empty).

    Keeps fields added after the first release out of tables that do not use them.
    """
    for key in keys:
        if not data.get(key):
            data.pop(key, None)
    return data


class Telemetry(WireModel):
    """What the sidecar records about the requests it routes."""

    capture_content: bool = False
    sampling_ratio: float = Field(default=1.0, ge=0, le=1)


class CategoryMatching(WireModel):
    """The model and method semantic categories are matched with (see routing.categories).

    `lexical_weight` blends the Lexical tier's similarity into a model tier's: a category's
    similarity is the model's times (1 - weight) plus the lexical one's times weight.
    """

    tier: Literal["Lexical", "Static", "Transformer"] = "Lexical"
    method: Literal["BestExample", "Centroid", "NearestExamples"] = "BestExample"
    k: int = Field(default=3, ge=1, le=32)
    lexical_weight: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _blends_a_model(self) -> CategoryMatching:
        if self.lexical_weight and self.tier == "Lexical":
            raise ValueError("lexical_weight blends into a model tier (Static or Transformer)")
        return self

    @model_serializer(mode="wrap")
    def _omit_unused(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), "lexical_weight")


class Shadow(WireModel):
    """Routes evaluated for every request and never executed, and the share of requests mirrored.

    A mirrored request is also sent to the shadow's choice, off the request path, and its
    answer discarded.
    """

    routes: tuple[Route, ...] = Field(min_length=1)
    mirror_percent: float = Field(default=0.0, ge=0, le=100)


class RouteTable(WireModel):
    """An immutable, versioned snapshot of everything the sidecar routes with."""

    version: int = Field(ge=0)
    sources: tuple[SourceRef, ...] = ()
    tier_header: str = "x-routemesh-tier"
    backends: dict[str, Backend]
    routes: tuple[Route, ...] = Field(min_length=1)
    telemetry: Telemetry = Telemetry()
    shadow: Shadow | None = None  # None: nothing is evaluated beside the live routes
    category_matching: CategoryMatching | None = None  # None: Lexical, best example

    @model_serializer(mode="wrap")
    def _omit_unused(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), "shadow", "category_matching")

    @model_validator(mode="after")
    def _references_resolve(self) -> RouteTable:
        names = [route.name for route in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"route names must be unique: {names}")
        for route in self.routes + (self.shadow.routes if self.shadow else ()):
            for target in (*route.targets, *route.content_policy_fallbacks):
                backend = self.backends.get(target.backend)
                if backend is None:
                    raise ValueError(f"route {route.name!r}: unknown backend {target.backend!r}")
                if target.model not in backend.models:
                    raise ValueError(
                        f"route {route.name!r}: backend {target.backend!r} does not serve "
                        f"model {target.model!r}"
                    )
        return self

    @cached_property
    def content_hash(self) -> str:
        """A hash of everything but the version: equal content, equal hash.

        Computed once per table, since every request names its table's version. A table is
        immutable, so build a changed one with `model_validate`: `model_copy(update=...)` would
        carry the cached hash along.
        """
        content = self.model_dump(mode="json", exclude={"version"})
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        return digest[:16]

    @cached_property
    def known_tiers(self) -> frozenset[str]:
        """The caller tiers the policy names: in latency budgets, and in matches on its header."""
        tiers: set[str] = set()
        for route in self.routes:
            if route.budget is not None:
                tiers.update(t.tier for t in route.budget.latency_per_tier)
            tiers.update(
                h.value
                for h in route.match.headers
                if h.name == self.tier_header and h.type == "Exact"
            )
        return frozenset(tiers)

    @property
    def version_label(self) -> str:
        """The version as shown to people: the counter and the content hash."""
        return f"{self.version}-{self.content_hash}"

    def model_names(self) -> list[str]:
        """The names a downstream may ask for: every route's match models and target models."""
        names: set[str] = set()
        for route in self.routes:
            names.update(route.match.models)
            names.update(target.model for target in route.targets)
        return sorted(names)


class RouteTableError(ValueError):
    """A route table that cannot be used, with a message that says why."""


def _load(text: str) -> object:
    # JSON (what the operator writes) parses far faster as JSON than through YAML; a YAML flow
    # mapping that is not JSON still gets the YAML parser.
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_route_table(text: str) -> RouteTable:
    """Parse a route table from YAML or JSON text; raise RouteTableError if it is invalid."""
    try:
        data = _load(text)
    except yaml.YAMLError as exc:
        raise RouteTableError(f"not YAML or JSON: {exc}") from exc
    try:
        return RouteTable.model_validate(data)
    except ValidationError as exc:
        raise RouteTableError(str(exc)) from exc


def load_route_table_file(path: Path) -> RouteTable:
    """Read and parse a route table file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RouteTableError(f"cannot read {path}: {exc}") from exc
    return parse_route_table(text)


class TableRefused(ValueError):
    """A valid table this sidecar cannot run (a tier it lacks); the message says what to do."""


class ActiveRouteTable:
    """The table in use, and what happened to the last one offered.

    A refused table never replaces a good one: the sidecar keeps serving the last good table and
    reports the refusal (on `/config_dump` and in logs). Sources hand a table to `admit`, which
    runs the preparers first (a preparer loads what the table needs, such as its embedding
    model, and raises `TableRefused` when it cannot), then swaps it in.
    """

    def __init__(self) -> None:
        self._current: RouteTable | None = None
        self.last_error: str | None = None
        self._listeners: list[Callable[[RouteTable], None]] = []
        self._preparers: list[Callable[[RouteTable], Awaitable[None]]] = []

    @property
    def current(self) -> RouteTable | None:
        """The table to route with; read it once per request."""
        return self._current

    def on_swap(self, listener: Callable[[RouteTable], None]) -> None:
        """Call `listener` with each new table after it is swapped in."""
        self._listeners.append(listener)

    def add_preparer(self, preparer: Callable[[RouteTable], Awaitable[None]]) -> None:
        """Run `preparer` on every table `admit` is given, before it is swapped in."""
        self._preparers.append(preparer)

    async def admit(self, table: RouteTable) -> bool:
        """Prepare `table`, then offer it; `TableRefused` (recorded) when a preparer refuses."""
        if self._current is not None and self._current.content_hash == table.content_hash:
            return False
        try:
            for preparer in self._preparers:
                await preparer(table)
        except TableRefused as exc:
            self.refuse(f"route table {table.version_label} refused: {exc}")
            raise
        return self.offer(table)

    def offer(self, table: RouteTable) -> bool:
        """Swap in `table` unless it is the same content; return whether it was swapped."""
        if self._current is not None and self._current.content_hash == table.content_hash:
            return False
        self._current = table
        self.last_error = None
        for listener in self._listeners:
            listener(table)
        return True

    def refuse(self, reason: str) -> None:
        """Record that an offered table was invalid; the current one stays."""
        self.last_error = reason
