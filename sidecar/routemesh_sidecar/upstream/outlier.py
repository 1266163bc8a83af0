"""Outlier detection: passive ejection of one endpoint of a backend by its own recent results.

The attempt loop reports each attempt's error class per endpoint with `record`; the balancer asks
`ejected` before choosing an endpoint. An endpoint with too many failures in a row is ejected for
the base ejection time multiplied by how often it was ejected before (up to a maximum), and comes
back by itself when that time is over. No more than `max_ejected_percent` of a backend's endpoints
are ejected at once (at least one may be, when the percentage allows any).

This is not the circuit breaker (which judges the whole backend) nor the active health check
(which probes); the panic threshold that overrides all three lives in the balancer. Time is passed
in, so every transition is testable on a virtual clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from routemesh_sidecar.routetable import ErrorClass, OutlierDetection
from routemesh_sidecar.upstream.breaker import Transition
from routemesh_sidecar.upstream.classify import counts_against_endpoint


@dataclass
class EndpointRecord:
    """What outlier detection remembers about one endpoint."""

    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float | None = None
    last_success: float | None = None  # this sidecar's own latest evidence of health


class OutlierDetector:
    """Ejection state of every endpoint of one backend, under one route's settings."""

    def __init__(self, backend: str, endpoint_urls: list[str], settings: OutlierDetection) -> None:
        self.backend = backend
        self.settings = settings
        self.records: dict[str, EndpointRecord] = {url: EndpointRecord() for url in endpoint_urls}

    def set_endpoints(self, endpoint_urls: list[str]) -> None:
        """Follow a new endpoint list (pods come and go); known endpoints keep their state."""
        self.records = {url: self.records.get(url) or EndpointRecord() for url in endpoint_urls}

    def ejected(self, url: str, now: float) -> tuple[bool, Transition | None]:
        """Whether the endpoint is ejected now; its ejection ends here if its time is over."""
        record = self.records.get(url)
        if record is None or record.ejected_until is None:
            return False, None
        if now < record.ejected_until:
            return True, None
        record.ejected_until = None
        record.consecutive_failures = 0
        return False, self._transition(url, "ejected", "healthy", "ejection time is over")

    def record(self, url: str, error_class: ErrorClass | None, now: float) -> Transition | None:
        """Count one attempt's result on the endpoint; return the ejection it caused, if any."""
        record = self.records.get(url)
        if record is None:
            return None
        if error_class is None or not counts_against_endpoint(error_class):
            record.consecutive_failures = 0
            if error_class is None:
                record.last_success = now
            return None
        record.consecutive_failures += 1
        if record.ejected_until is not None:
            return None
        if record.consecutive_failures < self.settings.consecutive_failures:
            return None
        if not self._may_eject(now):
            return None
        record.ejections += 1
        duration = min(
            self.settings.max_ejection_time, self.settings.base_ejection_time * record.ejections
        )
        record.ejected_until = now + duration
        reason = f"{record.consecutive_failures} failures in a row"
        return self._transition(url, "healthy", "ejected", reason, now + duration)

    def eject_shared(
        self, url: str, seconds: float, now: float, reason: str, fresh: float
    ) -> Transition | None:
        """Eject on other pods' evidence, within the max ejected percent.

        Only when this sidecar has no success of its own with the endpoint in the last `fresh`
        seconds: local evidence wins once it is fresh.
        """
        record = self.records.get(url)
        if record is None or record.ejected_until is not None or seconds <= 0:
            return None
        if record.last_success is not None and now - record.last_success < fresh:
            return None
        if not self._may_eject(now):
            return None
        record.ejected_until = now + seconds
        return self._transition(url, "healthy", "ejected", f"shared: {reason}", now + seconds)

    def ejected_count(self, now: float) -> int:
        """Endpoints whose ejection has not ended by `now`."""
        return sum(
            1
            for r in self.records.values()
            if r.ejected_until is not None and now < r.ejected_until
        )

    def _may_eject(self, now: float) -> bool:
        percent = self.settings.max_ejected_percent
        if percent == 0:
            return False
        allowed = max(1, len(self.records) * percent // 100)
        return self.ejected_count(now) < allowed

    def _transition(
        self, url: str, from_state: str, to_state: str, reason: str, until: float | None = None
    ) -> Transition:
        return Transition(
            "outlier_detection", f"{self.backend} {url}", from_state, to_state, reason, until
        )
