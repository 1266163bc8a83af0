"""The RoutingPolicy kind: which pods it applies to, their routes, and how requests survive failure.

Users write these by hand; the CRD in `crds/` is generated from these models. CEL rules refuse what
is wrong within one object (weights that do not add up, a cascade with one target, a per-try
timeout longer than the whole request). References to ModelBackends are checked by the compiler,
which reports them in status. No defaults are set in the schema: where a field is absent, its
description says what the sidecar assumes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from routemesh_operator.api.v1alpha1.common import (
    SET_LIST,
    ApiModel,
    Conditions,
    Decimal,
    Duration,
    LabelSelector,
    Name,
    Percent,
    ShortString,
    cel,
    map_list,
    validations,
)
from routemesh_operator.api.v1alpha1.modelbackend import Retention

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
StrategyType = Literal[
    "Fallback", "Weighted", "CheapestCapable", "Fastest", "Cascade", "ScoreBased"
]
Modality = Literal["Text", "Image", "Audio"]
# The languages the sidecar recognises (ISO 639-1): by script, or by common words for Latin ones.
Language = Literal[
    "en", "fr", "de", "es", "it", "pt", "nl", "ru", "zh", "ja", "ko", "ar", "he", "hi", "el", "th"
]
HeaderName = Annotated[
    str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
]
Ratio = Annotated[str, Field(max_length=16, pattern=r"^(0(\.[0-9]+)?|1(\.0+)?)$")]


def _not_longer(shorter: str, longer: str) -> str:
    return (
        f"!has(self.{shorter}) || !has(self.{longer}) || "
        f"duration(self.{shorter}) <= duration(self.{longer})"
    )


# ----------------------------------------------------------------------------- resilience


class Backoff(ApiModel):
    """Exponential backoff between retries, with jitter so that clients do not retry in step."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                _not_longer("baseInterval", "maxInterval"),
                "backoff.baseInterval must not exceed backoff.maxInterval",
            )
        )
    )

    base_interval: Duration | None = None
    """Wait before the first retry; it doubles for each later one. Absent means 100ms."""
    max_interval: Duration | None = None
    """Longest wait between retries. Absent means 10 times baseInterval."""
    jitter: Literal["Full", "None"] | None = None
    """Full: wait a random time up to the computed backoff (the default). None: wait exactly."""


class RetryBudget(ApiModel):
    """Caps retries as a share of recent requests, so they cannot multiply load in an outage."""

    percent: Annotated[int, Field(ge=1, le=100)]
    """Retries allowed, as a percentage of the requests in the last 10 seconds."""
    min_retries_per_second: Annotated[int, Field(ge=0, le=10_000)] | None = None
    """Retries always allowed regardless of the percentage, so that low traffic can still retry.
    Absent means 10."""


class Retry(ApiModel):
    """How a failed attempt is retried against the same target before falling back."""

    attempts: Annotated[int, Field(ge=1, le=10)] | None = None
    """Attempts per target, the first one included. Absent means 2."""
    per_try_timeout: Duration | None = None
    """Time one attempt may take. Absent means the remaining total timeout."""
    backoff: Backoff | None = None
    """Wait between attempts."""
    honor_retry_after: bool | None = None
    """Respect an upstream's Retry-After header. With another target left, the request goes there
    at once and the backend stays cooled down for that long; with none, the sidecar waits when the
    wait fits in the deadline and in backoff.maxInterval, and otherwise passes the 429 and its
    Retry-After to the app. A refused connection is never waited on while another endpoint or
    target is left. Absent means true."""
    retry_on: (
        Annotated[list[ErrorClass], Field(max_length=10, json_schema_extra=SET_LIST)] | None
    ) = None
    """Error classes that are retried. Absent means connect_error, timeout, rate_limited,
    overloaded and server_error. client_error is never retried."""
    budget: RetryBudget | None = None
    """A cap on retries across requests. Absent means 20 percent."""


class Timeouts(ApiModel):
    """Deadlines for one request, across all of its attempts."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(_not_longer("connect", "total"), "timeouts.connect must not exceed timeouts.total"),
            cel(
                _not_longer("firstToken", "total"),
                "timeouts.firstToken must not exceed timeouts.total",
            ),
        )
    )

    connect: Duration | None = None
    """Time to open a connection to an endpoint. Absent means 5s."""
    first_token: Duration | None = None
    """Time from sending the request to the first byte of the response. Absent means 30s."""
    total: Duration | None = None
    """Time for the whole request, retries and fallbacks included. Absent means 300s."""


class FailureRate(ApiModel):
    """Open when this share of recent requests failed, once enough requests were seen."""

    percent: Annotated[int, Field(ge=1, le=100)]
    """Failure percentage that opens the breaker."""
    window: Duration
    """Sliding window the rate is measured over, for example 30s."""
    minimum_requests: Annotated[int, Field(ge=1, le=100_000)]
    """Requests the window must hold before the rate counts."""


class CircuitBreaker(ApiModel):
    """Per backend: stop sending after failures, then probe (closed, open, half_open)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                _not_longer("baseOpenTime", "maxOpenTime"),
                "circuitBreaker.baseOpenTime must not exceed circuitBreaker.maxOpenTime",
            )
        )
    )

    consecutive_failures: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Failures in a row that open the breaker. Absent means 5."""
    failure_rate: FailureRate | None = None
    """Also open on a failure rate over a window."""
    base_open_time: Duration | None = None
    """How long the breaker stays open the first time; it grows with each reopening. Absent
    means 30s."""
    max_open_time: Duration | None = None
    """Longest the breaker stays open. Absent means 300s."""
    half_open_probes: Annotated[int, Field(ge=1, le=100)] | None = None
    """Requests let through while half open; all must succeed to close. Absent means 1."""


class OutlierDetection(ApiModel):
    """Per endpoint: passive ejection of an endpoint by its own recent results."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                _not_longer("baseEjectionTime", "maxEjectionTime"),
                "outlierDetection.baseEjectionTime must not exceed "
                "outlierDetection.maxEjectionTime",
            )
        )
    )

    consecutive_failures: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Failures in a row that eject the endpoint. Absent means 5."""
    base_ejection_time: Duration | None = None
    """Ejection time the first time; multiplied by the number of ejections. Absent means 30s."""
    max_ejection_time: Duration | None = None
    """Longest ejection. Absent means 300s."""
    max_ejected_percent: Percent | None = None
    """Most endpoints of a backend ejected at once, as a percentage. Absent means 50."""
    panic_threshold_percent: Percent | None = None
    """Below this share of healthy endpoints, use all of them rather than none. Absent means 50."""


class TierLatency(ApiModel):
    """A latency budget for callers of one tier."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(_not_longer("firstToken", "total"), "firstToken must not exceed total")
        )
    )

    tier: ShortString
    """Tier name, as sent in the policy's tier header (for example free or paid)."""
    first_token: Duration | None = None
    """Time from the request's arrival to the first byte of its answer, retries and fallbacks
    included: each attempt waits at most what is left, targets whose observed time to first
    token fits are tried first, and a fallback or retry that would not fit is skipped."""
    total: Duration | None = None
    """Whole-request time the tier is promised, retries and fallbacks included; the sooner of
    this and timeouts.total applies."""


class Budget(ApiModel):
    """Limits per request: what it may cost and how long it may take."""

    max_cost_per_request: Decimal | None = None
    """Most a request may cost in US dollars, across all of its attempts (for example "0.05").
    Before each attempt the sidecar estimates its cost from the prompt's tokens and the most
    output it may produce (the request's max_tokens, else the model's maxOutputTokens) at the
    target's prices, and skips a target that would go past what is left. A failed attempt counts
    its prompt when the upstream may have processed it, and a cascade's rejected answer what it
    used. When no target fits, the request fails with HTTP 400 and the code budget_exceeded,
    which the official clients do not retry; it is never sent to a cheaper model instead."""
    max_tokens_per_request: Annotated[int, Field(ge=1)] | None = None
    """Most tokens (prompt plus completion) a request may use, across all of its attempts;
    estimated and enforced as maxCostPerRequest is."""
    latency_per_tier: (
        Annotated[list[TierLatency], Field(max_length=16, json_schema_extra=map_list("tier"))]
        | None
    ) = None
    """Latency budgets by caller tier."""


class Hedging(ApiModel):
    """Send an extra attempt to another target when the first is slow; the first answer wins.

    A hedge goes to the plan's next target (the one a fallback would take) once the delay has
    passed without a first byte. The first good answer wins and every other attempt is cancelled
    at once, its upstream connection closed so that the provider stops generating. A stream is
    hedged only before its first byte. Hedges count against the retry budget and the request's
    cost and token budget (a cancelled attempt is charged its prompt). Cascade routes never
    hedge: their answers are judged one after the other.
    """

    delay: Duration
    """Wait this long for the first byte before hedging, for example 2s; with delayPercentile,
    the wait used until the target has 20 observed times to first byte."""
    delay_percentile: Annotated[int, Field(ge=50, le=99)] | None = None
    """Hedge after this percentile of the target's observed time to first byte instead (for
    example 95: hedge the slowest 5 percent), once it has 20 observations. Absent means the fixed
    delay."""
    max_extra_attempts: Annotated[int, Field(ge=1, le=3)] | None = None
    """Extra attempts in flight at most. Absent means 1."""


class Resilience(ApiModel):
    """Retry, timeout, breaker, outlier-detection, budget and hedging settings."""

    retry: Retry | None = None
    """How failed attempts are retried."""
    timeouts: Timeouts | None = None
    """Connect, first-token and total deadlines."""
    circuit_breaker: CircuitBreaker | None = None
    """When to stop sending to a backend."""
    outlier_detection: OutlierDetection | None = None
    """When to eject one endpoint."""
    budget: Budget | None = None
    """Cost, token and latency limits per request."""
    hedging: Hedging | None = None
    """Parallel attempts for slow requests. Absent means no hedging."""


# ----------------------------------------------------------------------------- match


class HeaderMatch(ApiModel):
    """A request header the route requires."""

    name: HeaderName
    """Header name, matched case-insensitively."""
    value: Annotated[str, Field(max_length=4096)]
    """Value to match."""
    type: Literal["Exact", "RegularExpression"] | None = None
    """Exact (the default) or RegularExpression (RE2 syntax, matched against the whole value)."""


class TokenRange(ApiModel):
    """A range of estimated prompt tokens."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.min) || !has(self.max) || self.min <= self.max",
                "tokens.min must not exceed tokens.max",
            )
        )
    )

    min: Annotated[int, Field(ge=0)] | None = None
    """Fewest tokens, inclusive."""
    max: Annotated[int, Field(ge=0)] | None = None
    """Most tokens, inclusive."""


class TurnRange(ApiModel):
    """A range of conversation depths: user messages in the request, this one included."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.min) || !has(self.max) || self.min <= self.max",
                "turns.min must not exceed turns.max",
            )
        )
    )

    min: Annotated[int, Field(ge=0)] | None = None
    """Fewest user messages, inclusive."""
    max: Annotated[int, Field(ge=0)] | None = None
    """Most user messages, inclusive."""


class Category(ApiModel):
    """A semantic category, defined by example utterances rather than by keywords."""

    name: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ]
    """Category name, shown in traces."""
    examples: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=2048)]],
        Field(min_length=1, max_length=64),
    ]
    """Utterances typical of the category; a request matches when it is close enough to them."""
    threshold: Ratio | None = None
    """Similarity (0 to 1) a request needs to match, for example "0.6". Absent means 0.5."""


class LearnedRouter(ApiModel):
    """The learned router's verdict: the request needs the strong model.

    A model trained offline (RouteLLM-style, shipped in the sidecar) scores how much each
    request needs a strong model; the route takes those scoring at or above the threshold at
    which `strongShare` of held-out public prompts do.
    """

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("double(self.strongShare) > 0.0", "learnedRouter.strongShare must be above 0")
        )
    )

    strong_share: Ratio
    """The share of typical requests (0 to 1, for example "0.3") this route should take: the
    router's threshold is calibrated so that this share of held-out prompts score above it."""


class Signals(ApiModel):
    """Features of the request itself. All that are set must hold."""

    tokens: TokenRange | None = None
    """Estimated prompt size."""
    code_present: bool | None = None
    """The prompt contains source code (true) or does not (false)."""
    keywords: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=256)]],
            Field(max_length=128, json_schema_extra=SET_LIST),
        ]
        | None
    ) = None
    """Words or phrases, any of which must occur in the prompt (case-insensitive)."""
    categories: (
        Annotated[list[Category], Field(max_length=32, json_schema_extra=map_list())] | None
    ) = None
    """Semantic categories, any of which must match."""
    modalities: (
        Annotated[list[Modality], Field(max_length=3, json_schema_extra=SET_LIST)] | None
    ) = None
    """Input modalities, any of which must be present: Text, Image, Audio."""
    tools_present: bool | None = None
    """The request offers tools (true) or does not (false)."""
    turns: TurnRange | None = None
    """The conversation's depth: how many user messages the request holds."""
    reasoning: bool | None = None
    """What the user last wrote reads like reasoning, math or analysis (true) or does not
    (false): asks to go step by step, prove, derive, calculate or compare, or math notation."""
    languages: (
        Annotated[list[Language], Field(max_length=16, json_schema_extra=SET_LIST)] | None
    ) = None
    """Languages (ISO 639-1), any of which what the user last wrote must be in. A message whose
    language is not recognised (too short, or not among these) matches none."""
    learned_router: LearnedRouter | None = None
    """What the user last wrote needs the strong model, as the learned router scores it."""


class RouteMatch(ApiModel):
    """Which requests a route takes. Every part that is set must hold; absent means any."""

    models: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=256)]],
            Field(max_length=64, json_schema_extra=SET_LIST),
        ]
        | None
    ) = None
    """Requested model names or aliases (the `model` field the app sends), any of which matches."""
    headers: (
        Annotated[list[HeaderMatch], Field(max_length=16, json_schema_extra=map_list())] | None
    ) = None
    """Headers the request must carry, all of them."""
    signals: Signals | None = None
    """Features of the request."""


# ----------------------------------------------------------------------------- strategy


class QualityGate(ApiModel):
    """When a cascade accepts an answer instead of escalating to the next target."""

    min_output_tokens: Annotated[int, Field(ge=0)] | None = None
    """Answers shorter than this escalate. Absent means 1."""
    reject_refusals: bool | None = None
    """Answers that refuse the task escalate. Absent means true."""
    require_complete: bool | None = None
    """Answers cut off by the token limit escalate. Absent means true."""


class CascadeSettings(ApiModel):
    """Settings of the Cascade strategy: try targets cheapest first, escalate on a weak answer."""

    quality_gate: QualityGate
    """What counts as good enough."""


class ScoreWeights(ApiModel):
    """Relative weights of the scorers; only their ratios matter."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.cost) ? self.cost : 0) + (has(self.latency) ? self.latency : 0) + "
                "(has(self.load) ? self.load : 0) + (has(self.quality) ? self.quality : 0) > 0",
                "at least one score weight must be above zero",
            )
        )
    )

    cost: Annotated[int, Field(ge=0, le=100)] | None = None
    """Weight of cheapness."""
    latency: Annotated[int, Field(ge=0, le=100)] | None = None
    """Weight of low time to first token (peak EWMA)."""
    load: Annotated[int, Field(ge=0, le=100)] | None = None
    """Weight of spare capacity (requests in flight, queue depth, rate-limit headroom)."""
    quality: Annotated[int, Field(ge=0, le=100)] | None = None
    """Weight of the model's quality tier."""


class ScoreSettings(ApiModel):
    """Settings of the ScoreBased strategy."""

    weights: ScoreWeights
    """How much each signal counts."""


class Strategy(ApiModel):
    """How a route chooses among its targets."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.type == 'ScoreBased' ? has(self.score) : !has(self.score)",
                "strategy.score is required for type ScoreBased and not allowed for any other type",
            ),
            cel(
                "!has(self.cascade) || self.type == 'Cascade'",
                "strategy.cascade is only allowed for type Cascade",
            ),
        )
    )

    type: StrategyType
    """Fallback: targets in order, the next on failure. Weighted: split by weight (canaries
    too). CheapestCapable: the cheapest target that can serve the request. Fastest: the lowest
    recent time to first token. Cascade: cheapest first, escalating when the answer fails the
    quality gate. ScoreBased: the best weighted score of cost, latency, load and quality."""
    cascade: CascadeSettings | None = None
    """Cascade settings. Absent means the default quality gate."""
    score: ScoreSettings | None = None
    """ScoreBased settings. Required for ScoreBased."""


class Target(ApiModel):
    """A model on a backend that a route may send to."""

    backend: Name
    """Name of a ModelBackend in this namespace."""
    model: Annotated[str, Field(min_length=1, max_length=256)]
    """One of the backend's spec.models[].name."""
    weight: Annotated[int, Field(ge=0, le=100)] | None = None
    """Share of traffic in percent, for the Weighted strategy only."""


class ModelRef(ApiModel):
    """A model on a backend, named outside a route's targets."""

    backend: Name
    """Name of a ModelBackend in this namespace."""
    model: Annotated[str, Field(min_length=1, max_length=256)]
    """One of the backend's spec.models[].name."""


_TARGETS_RULES = validations(
    cel(
        "self.strategy.type != 'Weighted' || (self.targets.all(t, has(t.weight)) && "
        "self.targets.map(t, t.weight).sum() == 100)",
        "a Weighted route needs a weight on every target, and the weights must add up to 100",
        field_path=".targets",
    ),
    cel(
        "self.strategy.type == 'Weighted' || self.targets.all(t, !has(t.weight))",
        "target weights are only used by the Weighted strategy",
        field_path=".targets",
    ),
    cel(
        "self.strategy.type != 'Cascade' || size(self.targets) >= 2",
        "a Cascade route needs at least two targets, cheapest first",
        field_path=".targets",
    ),
    cel(
        "self.targets.all(t, "
        "self.targets.exists_one(u, u.backend == t.backend && u.model == t.model))",
        "each backend and model may appear only once in a route's targets",
        field_path=".targets",
    ),
)


class RoutePrivacy(ApiModel):
    """The retention level a route's requests require, beside the policy's."""

    retention: Retention
    """Send this route's requests only to backends whose dataPolicy.retention is this level or
    stricter (None is the strictest, then Limited, then Standard). The stricter of this and the
    policy's privacy.retention applies."""


class Privacy(ApiModel):
    """Which backends may see the requests' data, by what they retain."""

    retention: Retention | None = None
    """Send every request only to backends whose dataPolicy.retention is this level or stricter
    (None, the strictest, means zero data retention; then Limited, then Standard). A backend
    without a dataPolicy counts as Standard. A route that no target of that level can serve is
    refused; when the targets that meet it are all down, the request fails with 503 and is never
    sent to a backend that does not. Absent means no requirement."""
    request_header: HeaderName | None = None
    """A request header through which a request may require a stricter level for itself (for
    example x-routemesh-retention: None), never a looser one. A value other than None, Limited or
    Standard is refused with 400. Absent means requests cannot ask."""


class Route(Resilience):
    """One rule: the requests it takes, how it chooses, where it sends, and its overrides.

    Each of retry, timeouts, circuitBreaker, outlierDetection, budget and hedging set here replaces
    the policy's default of the same name as a whole.
    """

    model_config = ConfigDict(json_schema_extra=_TARGETS_RULES)

    name: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ]
    """Route name, unique in the policy; shown in traces and metrics."""
    match: RouteMatch | None = None
    """Which requests the route takes. Absent means every request (a catch-all)."""
    strategy: Strategy
    """How the route picks among its targets."""
    targets: Annotated[list[Target], Field(min_length=1, max_length=16)]
    """Where requests may go. For Fallback and Cascade, order matters."""
    privacy: RoutePrivacy | None = None
    """A retention level this route's requests require. Absent means the policy's alone."""
    content_policy_fallbacks: Annotated[list[ModelRef], Field(max_length=8)] | None = None
    """Models that may take a request an upstream refused for its content policy, tried in
    order in place of the route's remaining targets (they need not be among them). The request
    must still fit their capabilities, context window and the policy's retention level. Absent
    means never: a content_policy refusal goes to the app as a 400, as it would fail alike
    elsewhere."""


class Mirror(ApiModel):
    """Also send a share of the requests to the shadow's choice, and discard its answers."""

    percent: Annotated[int, Field(ge=1, le=100)]
    """Share of requests mirrored, in percent. Mirrors run off the request path, never delay or
    change the live answer, are dropped first when the sidecar is busy, and their cost is
    counted apart (routemesh_mirror_cost_usd_total)."""


class Shadow(ApiModel):
    """Routes evaluated for every request, with the decision recorded in the trace, never sent.

    Each request's shadow decision and its predicted cost (the live answer's tokens at the shadow
    choice's prices) are recorded in its route span; the share of requests where it differs from
    the live choice, and the predicted cost change, reach the sidecars' metrics and, through
    their reports, the policy's status.shadow.
    """

    routes: Annotated[list[Route], Field(min_length=1, max_length=32, json_schema_extra=map_list())]
    """Candidate routes to compare with the live ones: the first whose match holds decides, as
    for the live routes."""
    mirror: Mirror | None = None
    """Also send a sampled share of requests to the shadow's choice. Absent means never."""


class Telemetry(ApiModel):
    """What the sidecars record about the requests this policy routes."""

    capture_content: bool | None = None
    """Record prompts and responses in spans. Absent means false: content is never recorded
    unless this is set."""
    sampling_ratio: Ratio | None = None
    """Share of routing decisions traced, from "0" to "1" (for example "0.01" for one in a
    hundred). A string, as Kubernetes APIs avoid floats. Absent means "1": every decision."""


class CategoryMatching(ApiModel):
    """How the sidecars measure a request's similarity to the categories' examples."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.k) || (has(self.method) && self.method == 'NearestExamples')",
                "k is read only with method NearestExamples",
            ),
            cel(
                "!has(self.method) || self.method == 'BestExample' "
                "|| (has(self.tier) && self.tier != 'Lexical')",
                "method Centroid and NearestExamples need tier Static or Transformer: "
                "the Lexical tier scores a category by its best example",
            ),
            cel(
                "!has(self.lexicalWeight) || (has(self.tier) && self.tier != 'Lexical')",
                "lexicalWeight blends the Lexical tier into a model tier: it needs tier Static "
                "or Transformer",
            ),
        )
    )

    tier: Literal["Lexical", "Static", "Transformer"] | None = None
    """The model: Lexical (TF-IDF over words and trigrams; no model, in every sidecar image),
    Static (a token table distilled from MiniLM; about 0.3 ms a request) or Transformer
    (MiniLM on onnxruntime, int8 compute in the image; 5-9 ms for a chat prompt on one core).
    Static and Transformer need the sidecar image with the embeddings extra; a sidecar without
    it refuses the table (NACK) and the status says so. Absent means Lexical."""
    method: Literal["BestExample", "Centroid", "NearestExamples"] | None = None
    """A category's similarity: its best example's (BestExample), its examples' mean
    direction's (Centroid), or the mean of its examples among the k nearest of all categories'
    (NearestExamples). Absent means BestExample."""
    k: Annotated[int, Field(ge=1, le=32)] | None = None
    """How many nearest examples NearestExamples reads. Absent means 3."""
    lexical_weight: Ratio | None = None
    """Weight of the Lexical tier's similarity blended into the model's, from "0" to "1": a
    category's similarity is the model's times (1 - weight) plus the lexical one's times weight,
    and its threshold applies to that. Words and meaning fail differently (code shares its words
    with code examples; a paraphrase shares none), so a blend can beat both: with the
    Transformer tier and Centroid, "0.3" to "0.7" gave 0.720 to 0.758 on the routing-quality
    benchmark, against 0.681 for the Transformer alone and 0.638 for Lexical
    (docs/benchmarks.md). Needs tier Static or Transformer. Absent means "0"."""


class RoutingPolicySpec(ApiModel):
    """Which pods the policy applies to, and how their requests are routed."""

    selector: LabelSelector
    """Pods in this namespace whose sidecars use the policy. `{}` selects every pod."""
    tier_header: HeaderName | None = None
    """Request header carrying the caller's tier, for tier matches and latency budgets. Absent
    means x-routemesh-tier."""
    defaults: Resilience | None = None
    """Settings for every route that does not set its own."""
    routes: Annotated[list[Route], Field(min_length=1, max_length=32, json_schema_extra=map_list())]
    """Routes in order: a request takes the first whose match holds."""
    shadow: Shadow | None = None
    """Routes evaluated but not executed, to try a change on live traffic safely."""
    privacy: Privacy | None = None
    """The data-retention level every request requires, and whether a request may ask for a
    stricter one."""
    telemetry: Telemetry | None = None
    """Tracing settings."""
    category_matching: CategoryMatching | None = None
    """How semantic categories (match.signals.categories) are matched: the model and the
    method. A request's text is embedded once, off the request's event loop, and repeated
    prompts are answered from a cache."""


class SidecarCounts(ApiModel):
    """How many sidecars run the policy's current route table."""

    desired: Annotated[int, Field(ge=0)]
    """Sidecars the policy selects."""
    synced: Annotated[int, Field(ge=0)]
    """Sidecars that acknowledged the current route-table version."""
    rejected: Annotated[int, Field(ge=0)]
    """Sidecars that refused it (a NACK); their conditions say why."""


class ShadowStatus(ApiModel):
    """How the policy's shadow routes compare with the live ones, over the sidecars' requests."""

    evaluated: Annotated[int, Field(ge=0)]
    """Requests the shadow routes were evaluated for, summed over the sidecars that run the
    policy now (each counts since it started)."""
    divergent: Annotated[int, Field(ge=0)]
    """Of them, requests where the shadow would have chosen another backend or model."""
    divergent_percent: Decimal | None = None
    """divergent as a share of evaluated, in percent (for example "12.5")."""
    live_cost_usd: Decimal | None = None
    """What the evaluated requests cost, in US dollars."""
    shadow_cost_usd: Decimal | None = None
    """What they would have cost with the shadow's choices: the same tokens at its prices."""
    cost_change_percent: Annotated[str, Field(max_length=32)] | None = None
    """shadowCostUsd against liveCostUsd, in percent (for example "-40.0": 40 percent cheaper)."""


class RoutingPolicyStatus(ApiModel):
    """What the operator observed about this policy."""

    conditions: Conditions | None = None
    """Accepted, ResolvedRefs and Programmed, with reasons and messages."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation the status describes."""
    route_table_version: Annotated[str, Field(max_length=128)] | None = None
    """Version of the route table compiled from this generation."""
    sidecars: SidecarCounts | None = None
    """Sync counts from the sidecars' acknowledgements."""
    shadow: ShadowStatus | None = None
    """The shadow routes' divergence and predicted cost change, when the policy has some."""
