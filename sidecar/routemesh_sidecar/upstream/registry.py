"""The live health state of every backend and endpoint, kept across route-table swaps.

The router asks `HealthRegistry.backend` for a candidate's `BackendHealth` once per table (and
keeps it on the candidate); the attempt loop calls `BackendHealth.acquire`, `pick_endpoint` and
`record` around every attempt. The registry owns the state machines (one breaker and one outlier
detector per backend and route settings, one `EndpointState` per endpoint), so a new table version
never resets a breaker that is open, and it forwards every transition to its listeners (metrics and
logs) and to whoever is capturing them for a span.

Keyed by settings as well as by name: two routes that use one backend with the same settings (the
usual case: a policy's defaults) share one breaker, while different settings get their own.
It does no I/O; the health checker does, on the `ActiveHealth` objects it is given.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from routemesh_sidecar.routetable import (
    Backend,
    Endpoint,
    ErrorClass,
    Locality,
    OutlierDetection,
    Route,
    RouteTable,
)
from routemesh_sidecar.routetable import CircuitBreaker as CircuitBreakerSettings
from routemesh_sidecar.upstream.balancer import (
    BackendBalancer,
    DecayingRate,
    EndpointState,
    PeakEwma,
    RateLimitHeadroom,
    endpoint_zone,
)
from routemesh_sidecar.upstream.breaker import CircuitBreaker, Permit, Transition
from routemesh_sidecar.upstream.health import ActiveHealth, ProbeTarget
from routemesh_sidecar.upstream.outlier import OutlierDetector
from routemesh_sidecar.upstream.ratelimit import AccountLimiter
from routemesh_sidecar.upstream.retry import Clock

log = logging.getLogger(__name__)
FIRST_BYTE_SAMPLES = 256  # the window a hedging percentile is read over
FIRST_BYTE_MINIMUM = 20  # samples a percentile needs before it is trusted


@dataclass(frozen=True)
class BalancerSettings:
    """How latency and error signals are smoothed (sidecar settings, not route-table ones)."""

    latency_decay_seconds: float = 10.0
    default_latency_seconds: float = 0.1
    connect_error_decay_seconds: float = 30.0
    locality: Locality = field(default_factory=Locality)


@dataclass
class BackendHealth:
    """One backend's breaker, endpoints and rate-limit headroom, as one route sees them."""

    name: str
    backend: Backend
    breaker: CircuitBreaker
    balancer: BackendBalancer
    headroom: RateLimitHeadroom
    emit: Callable[[Transition], None]
    limiter: AccountLimiter | None = None  # the account's rate limits, when it declares any

    scraped: bool = field(init=False)  # the model servers report their load (vLLM metrics)
    can_fill: bool = field(init=False)  # scraped, or capped by concurrency or a rate limit
    single: EndpointState | None = field(init=False)  # the endpoint, when there is only one
    # Recent times to first byte of answers, for hedging at a percentile of them.
    first_bytes: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        check = self.backend.health_check
        self.scraped = check is not None and check.metrics is not None
        endpoints = self.balancer.endpoints
        self.single = endpoints[0] if len(endpoints) == 1 else None
        self.first_bytes = deque(maxlen=FIRST_BYTE_SAMPLES)
        capped = self.backend.max_concurrency is not None or self.limiter is not None
        self.can_fill = self.scraped or capped

    def has_room(self, now: float) -> bool:
        """Whether one more request fits: model-server load, concurrency and the rate limits."""
        if self.scraped and not self.available(now):
            return False
        cap = self.backend.max_concurrency
        if cap is not None and self.balancer.in_flight() >= cap:
            return False
        return self.limiter is None or self.limiter.has_room(now)

    def seconds_until_room(self, now: float) -> float | None:
        """When a rate-limited backend has room again; None when it is not rate-limited."""
        return self.limiter.seconds_until_room(now) if self.limiter is not None else None

    def observe_first_byte(self, seconds: float) -> None:
        """The time an answer took to its first byte (successes only: a timeout is no answer)."""
        self.first_bytes.append(seconds)

    def first_byte_percentile(self, percentile: int) -> float | None:
        """That percentile of the recent times to first byte; None with too few of them."""
        if len(self.first_bytes) < FIRST_BYTE_MINIMUM:
            return None
        ordered = sorted(self.first_bytes)
        return ordered[min(len(ordered) - 1, len(ordered) * percentile // 100)]

    def allows(self, now: float) -> bool:
        """Whether the breaker lets a request through now."""
        breaker = self.breaker
        if breaker.state == "closed":  # the common case, on every request: no call
            return True
        if breaker.open_until is not None and now < breaker.open_until:
            return False  # open, and staying open: nothing to change
        allowed, transition = self.breaker.allows(now)
        self._emit(transition)
        return allowed

    def available(self, now: float) -> bool:
        """Whether some usable endpoint has room."""
        available = self.balancer.available(now)
        self._flush()
        return available

    def acquire(self, now: float) -> Permit | None:
        """Permission for one attempt from the breaker (a probe while half open)."""
        permit, transition = self.breaker.acquire(now)
        self._emit(transition)
        return permit

    def may_take(self, now: float) -> bool:
        """Whether the breaker would let a request through now, without changing its state.

        The attempt loop asks it of the targets left in a plan, to know whether falling back
        beats waiting on this one.
        """
        breaker = self.breaker
        if breaker.state != "open":
            return True
        return breaker.open_until is not None and now >= breaker.open_until

    def has_other_endpoint(self, now: float, avoid: frozenset[str]) -> bool:
        """Whether a usable endpoint is left outside `avoid` (URLs that failed this request)."""
        if self.single is not None:
            return False
        usable = self.balancer.usable(now).endpoints
        self._flush()
        return any(e.url not in avoid for e in usable)

    def release(self, permit: Permit) -> None:
        """Give back a permit that was not used (the deadline ran out before sending)."""
        self.breaker.release(permit)

    def pick_endpoint(
        self, now: float, rng: random.Random, avoid: frozenset[str] = frozenset()
    ) -> EndpointState:
        """The endpoint for the next attempt, another than those in `avoid` when one is usable."""
        endpoint = self.balancer.pick(now, rng, avoid)
        self._flush()
        return endpoint

    def record(
        self,
        permit: Permit,
        endpoint: EndpointState,
        error_class: ErrorClass | None,
        now: float,
        retry_after: float | None = None,
    ) -> None:
        """Count an attempt's result in the breaker and in outlier detection."""
        endpoint.connect_errors.observe(error_class == "connect_error", now)
        self._emit(self.breaker.record(permit, error_class, now))
        self._emit(self.balancer.outlier.record(endpoint.url, error_class, now))
        if error_class == "rate_limited" and retry_after is not None:
            self._emit(self.breaker.cool_down(retry_after, now))

    def observe_latency(self, endpoint: EndpointState, seconds: float, now: float) -> None:
        """A time to first byte (or a timeout's elapsed time) of the endpoint."""
        endpoint.latency.observe(seconds, now)

    def observe_headers(self, headers: Mapping[str, str], now: float) -> None:
        """Rate-limit headroom from a response's headers."""
        self.headroom.update(headers, now)

    def _emit(self, transition: Transition | None) -> None:
        self._flush()
        if transition is not None:
            self.emit(transition)

    def _flush(self) -> None:
        pending = self.balancer.emit
        while pending:
            self.emit(pending.pop(0))


TransitionListener = Callable[[Transition], None]


class Capture:
    """A `with` block that collects transitions (a class: this runs on every request)."""

    __slots__ = ("_captures", "captured")

    def __init__(self, captures: list[list[Transition]]) -> None:
        self._captures = captures
        self.captured: list[Transition] = []

    def __enter__(self) -> list[Transition]:
        self._captures.append(self.captured)
        return self.captured

    def __exit__(self, *exc: object) -> None:
        self._captures.remove(self.captured)


class HealthRegistry:
    """Every backend's and endpoint's health state in this sidecar."""

    def __init__(self, clock: Clock, settings: BalancerSettings | None = None) -> None:
        self.clock = clock
        self.settings = settings or BalancerSettings()
        self._breakers: dict[tuple[str, CircuitBreakerSettings], CircuitBreaker] = {}
        self._outliers: dict[tuple[str, OutlierDetection], OutlierDetector] = {}
        self._endpoints: dict[tuple[str, str], EndpointState] = {}
        self._headroom: dict[str, RateLimitHeadroom] = {}
        self._limiters: dict[tuple[str, tuple[int | None, int | None]], AccountLimiter] = {}
        # Sidecars sharing the namespace's provider accounts, this one included (the operator
        # says, over shared health); each keeps to its share of a backend's rate limits.
        self.peers = 1
        self._listeners: list[TransitionListener] = []
        self._captures: list[list[Transition]] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)
        # What other pods reported, by (backend, endpoint): (until, reason, fresh seconds).
        self._shared: dict[tuple[str, str | None], tuple[float, str, float]] = {}

    def now(self) -> float:
        """Monotonic seconds on the sidecar's clock."""
        return self.clock.monotonic()

    def on_transition(self, listener: TransitionListener) -> None:
        """Call `listener` with every transition (metrics, logs)."""
        self._listeners.append(listener)

    def capture(self) -> Capture:
        """Collect the transitions made inside a `with` block, for span events.

        The block must not await: the sidecar is one event loop, so without an await no other
        request's transitions can land in the list.
        """
        return Capture(self._captures)

    def emit(self, transition: Transition) -> None:
        """Record a transition and tell the listeners and any capture."""
        log.info(
            "%s %s: %s -> %s (%s)",
            transition.mechanism,
            transition.subject,
            transition.from_state,
            transition.to_state,
            transition.reason,
        )
        self.recent.append(
            {
                "mechanism": transition.mechanism,
                "subject": transition.subject,
                "from": transition.from_state,
                "to": transition.to_state,
                "reason": transition.reason,
                "at": self.now(),
            }
        )
        for captured in self._captures:
            captured.append(transition)
        for listener in self._listeners:
            listener(transition)

    def backend(self, name: str, backend: Backend, route: Route) -> BackendHealth:
        """The health state of a backend under a route's breaker and outlier settings."""
        breaker_key = (name, route.circuit_breaker)
        breaker = self._breakers.get(breaker_key)
        if breaker is None:
            breaker = self._breakers[breaker_key] = CircuitBreaker(name, route.circuit_breaker)
            self._emit_if(self._inherit_shared(name, None, breaker.open_shared))
        endpoints = [self._endpoint(name, backend, e) for e in backend.endpoints]
        urls = [e.url for e in endpoints]
        outlier_key = (name, route.outlier_detection)
        outlier = self._outliers.get(outlier_key)
        if outlier is None:
            outlier = OutlierDetector(name, urls, route.outlier_detection)
            self._outliers[outlier_key] = outlier
            for url in urls:
                eject = functools.partial(outlier.eject_shared, url)
                self._emit_if(self._inherit_shared(name, url, eject))
        elif list(outlier.records) != urls:
            outlier.set_endpoints(urls)
        balancer = BackendBalancer(name, backend, endpoints, outlier, self.settings.locality)
        headroom = self._headroom.setdefault(name, RateLimitHeadroom())
        return BackendHealth(
            name, backend, breaker, balancer, headroom, self.emit, self._limiter(name, backend)
        )

    def _limiter(self, name: str, backend: Backend) -> AccountLimiter | None:
        """The account limiter of a backend, kept across tables while its limits stay the same."""
        limits = (backend.requests_per_minute, backend.tokens_per_minute)
        if limits == (None, None):
            return None
        limiter = self._limiters.get((name, limits))
        if limiter is None:
            limiter = AccountLimiter(*limits, peers=lambda: self.peers)
            self._limiters[(name, limits)] = limiter
        return limiter

    def _endpoint(self, name: str, backend: Backend, endpoint: Endpoint) -> EndpointState:
        key = (name, endpoint.url)
        state = self._endpoints.get(key)
        zone, region = endpoint_zone(backend, endpoint)
        if state is None:
            settings = self.settings
            state = EndpointState(
                endpoint.url,
                endpoint,
                PeakEwma(
                    settings.latency_decay_seconds, settings.default_latency_seconds, self.now()
                ),
                DecayingRate(settings.connect_error_decay_seconds),
                ActiveHealth(f"{name} {endpoint.url}", backend.health_check),
            )
            self._endpoints[key] = state
        state.endpoint, state.zone, state.region = endpoint, zone, region
        state.health.settings = backend.health_check
        return state

    def apply_shared(
        self, backend: str, endpoint: str | None, seconds: float, reason: str, fresh: float
    ) -> int:
        """Open the backend's breakers (or eject its endpoint) on other pods' evidence.

        Every route's breaker (or outlier detector) of the backend takes it, each unless this
        sidecar's own evidence is fresher than `fresh` seconds. Returns how many changed.
        """
        now = self.now()
        # Kept, so that a breaker or detector made later (the first request) starts with it.
        self._shared[(backend, endpoint)] = (now + seconds, reason, fresh)
        changed = 0
        if endpoint is None:
            for (name, _), breaker in self._breakers.items():
                if name == backend:
                    transition = breaker.open_shared(seconds, now, reason, fresh)
                    changed += self._emit_if(transition)
            return changed
        for (name, _), outlier in self._outliers.items():
            if name == backend:
                transition = outlier.eject_shared(endpoint, seconds, now, reason, fresh)
                changed += self._emit_if(transition)
        return changed

    def _inherit_shared(
        self, backend: str, endpoint: str | None, apply: Callable[..., Transition | None]
    ) -> Transition | None:
        shared = self._shared.get((backend, endpoint))
        if shared is None:
            return None
        until, reason, fresh = shared
        now = self.now()
        if until <= now:
            del self._shared[(backend, endpoint)]
            return None
        transition: Transition | None = apply(until - now, now, reason, fresh)
        return transition

    def _emit_if(self, transition: Transition | None) -> int:
        if transition is None:
            return 0
        self.emit(transition)
        return 1

    def probe_targets(self, table: RouteTable) -> list[ProbeTarget]:
        """The endpoints of the table's backends that turn active health checking on."""
        targets = []
        for name, backend in table.backends.items():
            if backend.health_check is None:
                continue
            for endpoint in backend.endpoints:
                state = self._endpoint(name, backend, endpoint)
                targets.append(ProbeTarget(name, backend, endpoint.url, state.health))
        return targets

    def retain(self, table: RouteTable) -> None:
        """Forget the state of backends and endpoints the new table no longer has."""
        present = {(n, e.url) for n, b in table.backends.items() for e in b.endpoints}
        self._endpoints = {k: v for k, v in self._endpoints.items() if k in present}
        names = set(table.backends)
        self._breakers = {k: v for k, v in self._breakers.items() if k[0] in names}
        self._outliers = {k: v for k, v in self._outliers.items() if k[0] in names}
        self._headroom = {k: v for k, v in self._headroom.items() if k in names}

    def snapshot(self) -> dict[str, Any]:
        """The live state of every breaker, endpoint and headroom, for `/config_dump`."""
        now = self.now()
        backends: dict[str, Any] = {}
        for (name, _), breaker in self._breakers.items():
            entry = backends.setdefault(name, {"breakers": [], "endpoints": {}})
            entry["breakers"].append(_breaker_view(breaker, now))
        for name, headroom in self._headroom.items():
            entry = backends.setdefault(name, {"breakers": [], "endpoints": {}})
            entry["rate_limit_headroom"] = headroom.value(now)
        for (name, url), state in self._endpoints.items():
            entry = backends.setdefault(name, {"breakers": [], "endpoints": {}})
            entry["endpoints"][url] = _endpoint_view(state, now, self._ejections(name, url, now))
        shared = [
            {"backend": b, "endpoint": e, "for_seconds": until - now, "reason": reason}
            for (b, e), (until, reason, _) in sorted(self._shared.items(), key=repr)
            if until > now
        ]
        return {"backends": backends, "shared": shared, "recent_transitions": list(self.recent)}

    def _ejections(self, name: str, url: str, now: float) -> list[dict[str, Any]]:
        views = []
        for (backend_name, _), detector in self._outliers.items():
            record = detector.records.get(url)
            if backend_name != name or record is None:
                continue
            ejected = record.ejected_until is not None and now < record.ejected_until
            views.append(
                {
                    "ejected": ejected,
                    "ejected_for_seconds": (record.ejected_until or now) - now if ejected else 0,
                    "ejections": record.ejections,
                    "consecutive_failures": record.consecutive_failures,
                }
            )
        return views


def _breaker_view(breaker: CircuitBreaker, now: float) -> dict[str, Any]:
    return {
        "state": breaker.state,
        "open_for_seconds": max(0.0, breaker.open_until - now) if breaker.open_until else 0.0,
        "cooling_down": breaker.cooling,
        "consecutive_failures": breaker.consecutive_failures,
        "openings": breaker.openings,
        "settings": breaker.settings.model_dump(mode="json"),
    }


def _endpoint_view(
    state: EndpointState, now: float, ejections: list[dict[str, Any]]
) -> dict[str, Any]:
    load = state.health.load
    return {
        "zone": state.zone,
        "region": state.region,
        "latency_ewma_seconds": round(state.latency.value(now), 6),
        "in_flight": state.in_flight,
        "connect_error_rate": round(state.connect_errors.value(now), 4),
        "health_check": {
            "status": state.health.status,
            "last_error": state.health.last_error,
            "saturated": state.health.saturated(now),
            "load": None
            if load is None
            else {
                "waiting": load.waiting,
                "running": load.running,
                "kv_cache_usage": load.kv_cache_usage,
                "age_seconds": round(now - load.scraped_at, 3),
            },
        },
        "outlier_detection": ejections,
    }
