"""Prometheus metrics of the sidecar, in a registry the sidecar owns (never the global one).

The listener and the attempt observer record into `Metrics`; the admin listener serves
`render()` on `/metrics`. Label values are bounded by the route table (routes, backends, models)
and by the fixed set of error classes, never by request content.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Request, attempt, error, token, cost and latency metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "routemesh_requests",
            "Downstream requests, by route, chosen backend and model, and HTTP status.",
            ["route", "backend", "model", "code"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "routemesh_attempts",
            "Upstream attempts, by backend, model and outcome (ok, escalated, cancelled, or the "
            "error class).",
            ["backend", "model", "outcome"],
            registry=self.registry,
        )
        self.hedges = Counter(
            "routemesh_hedges",
            "Hedged attempts (sent beside a slow one), by backend, model and outcome: ok (it "
            "won), cancelled (the first answered), or the error class.",
            ["backend", "model", "outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "routemesh_errors",
            "Failures by error class, at the attempt or (stream_broken) the stream.",
            ["error_class"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "routemesh_tokens",
            "Tokens by backend, model and kind (input, output, cached_input).",
            ["backend", "model", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "routemesh_cost_usd",
            "Cost in US dollars from the live route table's prices, by policy, route, backend, "
            "model and caller tier (a tier the policy names, other, or empty without the header).",
            ["policy", "route", "backend", "model", "tier"],
            registry=self.registry,
        )
        self.budget_skips = Counter(
            "routemesh_budget_skips",
            "Targets a request's budget kept it from trying, by route and budget "
            "(maxCostPerRequest, maxTokensPerRequest, latencyPerTier).",
            ["route", "budget"],
            registry=self.registry,
        )
        self.shadow_decisions = Counter(
            "routemesh_shadow_decisions",
            "Shadow-route decisions, by policy, shadow route and outcome: same (as the live "
            "choice), different, or none (the shadow route had no candidate).",
            ["policy", "shadow_route", "outcome"],
            registry=self.registry,
        )
        self.shadow_cost = Counter(
            "routemesh_shadow_cost_usd",
            "What the shadowed requests would have cost with the shadow's choices (their own "
            "tokens at its prices), by policy.",
            ["policy"],
            registry=self.registry,
        )
        self.shadow_live_cost = Counter(
            "routemesh_shadow_live_cost_usd",
            "What the shadowed requests cost live, by policy (to compare with the shadow's).",
            ["policy"],
            registry=self.registry,
        )
        self.mirror_requests = Counter(
            "routemesh_mirror_requests",
            "Mirrored requests, by policy, backend, model and outcome (ok, dropped when busy, "
            "or the error class).",
            ["policy", "backend", "model", "outcome"],
            registry=self.registry,
        )
        self.mirror_cost = Counter(
            "routemesh_mirror_cost_usd",
            "What mirrored requests cost, apart from the live cost.",
            ["policy", "backend", "model"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "routemesh_request_duration_seconds",
            "Time from the downstream request to the end of the response.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "routemesh_time_to_first_token_seconds",
            "Time from the downstream request to the first byte of the upstream answer.",
            ["backend", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.health_transitions = Counter(
            "routemesh_health_transitions",
            "Breaker transitions, outlier ejections and health-check changes, by mechanism, "
            "backend and the state entered.",
            ["mechanism", "backend", "to_state"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "routemesh_circuit_breaker_state",
            "The breaker's state by backend: 0 closed, 1 half_open, 2 open.",
            ["backend"],
            registry=self.registry,
        )
        self.endpoint_ejected = Gauge(
            "routemesh_endpoint_ejected",
            "1 while outlier detection has ejected the endpoint.",
            ["backend", "endpoint"],
            registry=self.registry,
        )
        self.endpoint_healthy = Gauge(
            "routemesh_endpoint_healthy",
            "1 while the active health check says the endpoint is healthy, 0 when unhealthy.",
            ["backend", "endpoint"],
            registry=self.registry,
        )

        self.spans_exported = Counter(
            "routemesh_spans_exported",
            "Spans the OTLP collector accepted.",
            registry=self.registry,
        )
        self.spans_dropped = Counter(
            "routemesh_spans_dropped",
            "Spans lost before the collector had them, by reason: queue_full (more spans waiting "
            "than the queue holds) or export_failed (a batch refused, or retried until the "
            "export timeout, or a span that could not be encoded).",
            ["reason"],
            registry=self.registry,
        )

    def count_spans(self, outcome: str, spans: int) -> None:
        """What the OTLP exporter did with spans: "exported", or the reason they were dropped."""
        if outcome == "exported":
            self.spans_exported.inc(spans)
        else:
            self.of(self.spans_dropped, outcome).inc(spans)

    def of(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        """The metric's child for these label values, looked up once and then cached.

        prometheus_client's `labels()` takes a lock and validates on every call; a request
        records eight series, so the sidecar keeps the children it has already made.
        """
        key = (metric._name, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def render(self) -> bytes:
        """The exposition text for /metrics."""
        return generate_latest(self.registry)
