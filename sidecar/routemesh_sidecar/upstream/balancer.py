"""Choosing an endpoint within a backend, and the live load signals the scorers read.

The attempt loop calls `BackendBalancer.pick` for every attempt. It keeps the endpoints that are
usable (not ejected by outlier detection, not failed by the active health check), unless too few
are (the panic threshold: then it uses them all, rather than none); prefers those in the sidecar's
own zone, then region, failing over to the rest when none of those is usable; drops saturated vLLM
endpoints while any is not; and picks the cheaper of two random ones (power of two choices), where
the cost is the peak-EWMA latency times the work in flight, as Linkerd and Finagle do.

`PeakEwma`, `DecayingRate` and `RateLimitHeadroom` are the signals, each on a clock passed in.
Nothing here does I/O or decides about retries; breaker state belongs to `breaker`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from routemesh_sidecar.routetable import Backend, Endpoint, Locality
from routemesh_sidecar.upstream.breaker import Transition
from routemesh_sidecar.upstream.health import ActiveHealth
from routemesh_sidecar.upstream.outlier import OutlierDetector


@dataclass
class PeakEwma:
    """A latency estimate that jumps up to a slow sample at once and decays down slowly.

    Read without new samples, the estimate decays towards zero, so that an endpoint left alone
    after being slow is tried again and can show it has recovered.
    """

    decay: float  # seconds: the time constant of the exponential decay
    estimate: float  # seconds
    stamp: float  # when the estimate was last updated

    def observe(self, sample: float, now: float) -> None:
        """Fold in one latency sample: at once if it is higher, else blended by elapsed time.

        The blend starts from the decayed reading, so the result lies between what `value` said
        and the sample.
        """
        elapsed = now - self.stamp
        weight = math.exp(-elapsed / self.decay) if elapsed > 0 else 1.0
        current = self.estimate * weight  # what `value(now)` reads
        if sample >= current:
            self.estimate = sample
        else:
            self.estimate = current * weight + sample * (1.0 - weight)
        self.stamp = now

    def value(self, now: float) -> float:
        """The estimate as of `now`, decayed since the last sample."""
        elapsed = now - self.stamp
        if elapsed <= 0:
            return self.estimate
        return self.estimate * math.exp(-elapsed / self.decay)


@dataclass
class DecayingRate:
    """A share of recent events (connect errors among attempts) that fades when nothing happens."""

    decay: float
    alpha: float = 0.2  # weight of the newest event
    rate: float = 0.0
    stamp: float = 0.0

    def observe(self, hit: bool, now: float) -> None:
        """Fold in one event."""
        self.rate = self.value(now) * (1 - self.alpha) + (self.alpha if hit else 0.0)
        self.stamp = now

    def value(self, now: float) -> float:
        """The rate as of `now`."""
        if self.rate == 0.0:
            return 0.0
        elapsed = now - self.stamp
        if elapsed <= 0:
            return self.rate
        return self.rate * math.exp(-elapsed / self.decay)


_HEADROOM_HEADERS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-limit-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-limit-tokens"),
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-limit"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-limit"),
    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-limit"),
    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-limit"),
)

_HEADROOM_FAMILIES = tuple(remaining for remaining, _ in _HEADROOM_HEADERS)


def headroom_from_headers(headers: Mapping[str, str]) -> float | None:
    """The smallest remaining share of any rate limit the provider reported, or None."""
    if not any(name in headers for name in _HEADROOM_FAMILIES):
        return None  # most responses of most servers: six lookups, not twelve reads and parses
    shares: list[float] = []
    for remaining_name, limit_name in _HEADROOM_HEADERS:
        remaining, limit = headers.get(remaining_name), headers.get(limit_name)
        if remaining is None or limit is None:
            continue
        try:
            remaining_value, limit_value = float(remaining), float(limit)
        except ValueError:
            continue
        if limit_value > 0:
            shares.append(min(1.0, max(0.0, remaining_value / limit_value)))
    return min(shares) if shares else None


@dataclass
class RateLimitHeadroom:
    """The account's remaining rate-limit share, as the provider last reported it."""

    fresh_for: float = 60.0  # limits reset within a minute at every provider we know
    share: float | None = None
    stamp: float = 0.0

    def update(self, headers: Mapping[str, str], now: float) -> None:
        """Read the rate-limit headers of a response, if it has any."""
        share = headroom_from_headers(headers)
        if share is not None:
            self.share, self.stamp = share, now

    def value(self, now: float) -> float:
        """The share left (1 when unknown or too old to trust)."""
        if self.share is None or now - self.stamp > self.fresh_for:
            return 1.0
        return self.share


@dataclass
class EndpointState:
    """Live signals of one endpoint, shared by every route that uses its backend."""

    url: str
    endpoint: Endpoint  # the route table's endpoint, as the upstream client takes it
    latency: PeakEwma
    connect_errors: DecayingRate
    health: ActiveHealth
    zone: str | None = None
    region: str | None = None
    in_flight: int = 0

    def cost(self, now: float) -> float:
        """What P2C minimises: expected latency times the work ahead of a new request."""
        waiting = self.health.load.waiting if self.health.load is not None else 0.0
        return self.latency.value(now) * (self.in_flight + 1 + waiting)


@dataclass
class Usable:
    """The endpoints a request may use now, and whether the panic threshold was crossed."""

    endpoints: list[EndpointState]
    panic: bool


@dataclass
class BackendBalancer:
    """Endpoint choice for one backend, with one route's outlier-detection settings."""

    backend_name: str
    backend: Backend
    endpoints: list[EndpointState]
    outlier: OutlierDetector
    locality: Locality
    emit: list[Transition] = field(default_factory=list)  # transitions awaiting the registry
    _single: Usable | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # A backend with one endpoint always uses it: ejected or failed, it is under any panic
        # threshold, so it is used anyway, and the backend's health is the breaker's business.
        # It is not reported as panic.
        self._single = (
            Usable(list(self.endpoints), panic=False) if len(self.endpoints) == 1 else None
        )

    def usable(self, now: float) -> Usable:
        """Endpoints not ejected and not failed, or all of them below the panic threshold."""
        if self._single is not None:
            return self._single
        healthy = [e for e in self.endpoints if self._healthy(e, now)]
        threshold = self.outlier.settings.panic_threshold_percent
        if len(healthy) * 100 < threshold * len(self.endpoints) or not healthy:
            return Usable(list(self.endpoints), panic=True)
        return Usable(healthy, panic=False)

    def _healthy(self, endpoint: EndpointState, now: float) -> bool:
        ejected, transition = self.outlier.ejected(endpoint.url, now)
        if transition is not None:
            self.emit.append(transition)
            if not ejected:
                # Back from an ejection: what it measured before it failed says nothing now.
                # A zero estimate wins the next comparison, so it gets a request at once and
                # shows its latency, instead of waiting behind siblings measured since.
                endpoint.latency.estimate, endpoint.latency.stamp = 0.0, now
        return not ejected and endpoint.health.status != "unhealthy"

    def local_first(self, endpoints: list[EndpointState]) -> list[EndpointState]:
        """The endpoints in the sidecar's zone, else its region, else all of them."""
        if self.locality.zone:
            same_zone = [e for e in endpoints if e.zone == self.locality.zone]
            if same_zone:
                return same_zone
        if self.locality.region:
            same_region = [e for e in endpoints if e.region == self.locality.region]
            if same_region:
                return same_region
        return endpoints

    def unsaturated(self, endpoints: list[EndpointState], now: float) -> list[EndpointState]:
        """Endpoints whose load metrics leave room."""
        return [e for e in endpoints if not e.health.saturated(now)]

    def available(self, now: float) -> bool:
        """Whether any usable endpoint has room (a saturated backend is filtered out)."""
        return bool(self.unsaturated(self.usable(now).endpoints, now))

    def pick(
        self, now: float, rng: random.Random, avoid: frozenset[str] = frozenset()
    ) -> EndpointState:
        """The endpoint for the next attempt: local, with room, the cheaper of two.

        Endpoints whose URL is in `avoid` (this request's failed ones) are passed over while
        another is usable: a retry after a refused connection goes elsewhere.
        """
        if self._single is not None:
            self._healthy(self.endpoints[0], now)  # ends an ejection whose time is over
            return self.endpoints[0]
        usable = self.usable(now).endpoints
        if avoid:
            usable = [e for e in usable if e.url not in avoid] or usable
        pool = self.local_first(self.unsaturated(usable, now) or usable)
        if len(pool) == 1:
            return pool[0]
        first, second = rng.sample(pool, 2)
        return first if first.cost(now) <= second.cost(now) else second

    def latency(self, now: float) -> float:
        """The best latency estimate among the usable endpoints."""
        if self._single is not None:
            return self.endpoints[0].latency.value(now)
        return min(e.latency.value(now) for e in self.usable(now).endpoints)

    def in_flight(self) -> int:
        """Requests in flight to the backend from this sidecar."""
        if self._single is not None:
            return self.endpoints[0].in_flight
        return sum(e.in_flight for e in self.endpoints)

    def queue_pressure(self, now: float) -> float:
        """How full the least loaded usable model server is, in [0, 1] (0 without metrics)."""
        settings = self.backend.health_check
        if settings is None or settings.metrics is None:
            return 0.0
        pressures = []
        for endpoint in self.usable(now).endpoints:
            if endpoint.health.saturated(now):
                pressures.append(1.0)
                continue
            load = endpoint.health.load
            if load is None:
                continue
            queue = load.waiting / max(1, settings.metrics.max_waiting)
            cache = load.kv_cache_usage / settings.metrics.max_kv_cache_usage
            pressures.append(min(1.0, max(queue, cache)))
        return min(pressures) if pressures else 0.0

    def connect_error_rate(self, now: float) -> float:
        """The mean connect-error rate of the usable endpoints."""
        if self._single is not None:
            return self.endpoints[0].connect_errors.value(now)
        usable = self.usable(now).endpoints
        return sum(e.connect_errors.value(now) for e in usable) / len(usable)

    @property
    def locality_known(self) -> bool:
        """Whether the sidecar knows its own zone or region."""
        return bool(self.locality.zone or self.locality.region)

    def locality_rank(self) -> int:
        """0 when an endpoint is in the sidecar's zone, 1 in its region, 2 otherwise or unknown."""
        if self.locality.zone and any(e.zone == self.locality.zone for e in self.endpoints):
            return 0
        if self.locality.region and any(e.region == self.locality.region for e in self.endpoints):
            return 1
        return 2


def endpoint_zone(backend: Backend, endpoint: Endpoint) -> tuple[str | None, str | None]:
    """An endpoint's zone and region: its own, or else its backend's."""
    return (
        endpoint.zone or backend.locality.zone,
        endpoint.region or backend.locality.region,
    )
