"""The circuit breaker of one backend: closed, open, half_open.

The attempt loop asks `acquire` before sending to a backend and reports the attempt's error class
with `record`; the breaker filter asks `allows` when routing. It opens on failures in a row, or on
a failure rate over a sliding window once enough requests were seen. After the open time it
half-opens and lets a bounded number of probe requests through: all must succeed to close it, and
any failure reopens it for longer (the open time grows with each reopening, up to a maximum). A
429 with Retry-After opens it for exactly that long, and it closes again when that time is over.

Time is passed in (`now`, monotonic seconds), so every transition is testable on a virtual clock.
It does not know about endpoints (outlier detection ejects those), active probing (the health
checker) or HTTP: it reads only error classes, through `counts_against_backend`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from routemesh_sidecar.routetable import CircuitBreaker as CircuitBreakerSettings
from routemesh_sidecar.routetable import ErrorClass, FailureRate
from routemesh_sidecar.upstream.classify import counts_against_backend

BreakerState = Literal["closed", "open", "half_open"]
Permit = Literal["normal", "probe"]
STATE_VALUES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True)
class Transition:
    """A change of health state, for span events, metrics and logs.

    `mechanism` is circuit_breaker, outlier_detection or health_check; `subject` is the backend
    (and for endpoints, the endpoint's URL after a space).
    """

    mechanism: str
    subject: str
    from_state: str
    to_state: str
    reason: str
    until: float | None = None  # monotonic time the new state lasts until, when it is timed


@dataclass
class FailureWindow:
    """Attempts and failures over a sliding window, in ten buckets so memory stays bounded."""

    settings: FailureRate
    _buckets: deque[list[float]] = field(default_factory=deque)  # [start, total, failed]

    def add(self, failed: bool, now: float) -> None:
        """Count one attempt's result."""
        width = self.settings.window / 10
        if not self._buckets or now - self._buckets[-1][0] >= width:
            self._buckets.append([now, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += 1 if failed else 0
        self._expire(now)

    def tripped(self, now: float) -> bool:
        """Whether the failure rate is at or over the threshold with enough requests seen."""
        self._expire(now)
        total = sum(b[1] for b in self._buckets)
        failed = sum(b[2] for b in self._buckets)
        if total < self.settings.minimum_requests:
            return False
        return failed * 100 >= self.settings.percent * total

    def clear(self) -> None:
        """Forget everything (when the breaker closes after probing)."""
        self._buckets.clear()

    def _expire(self, now: float) -> None:
        horizon = now - self.settings.window
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()


class CircuitBreaker:
    """The breaker of one backend, under one route's settings."""

    def __init__(self, backend: str, settings: CircuitBreakerSettings) -> None:
        self.backend = backend
        self.settings = settings
        self.state: BreakerState = "closed"
        self.open_until: float | None = None
        self.consecutive_failures = 0
        self.openings = 0  # openings since the breaker last stayed closed for max_open_time
        self.closed_since = 0.0
        self.cooling = False  # open because of a Retry-After, not because of failures
        self.probes_in_flight = 0
        self.probe_successes = 0
        self.window = FailureWindow(settings.failure_rate) if settings.failure_rate else None
        self.last_success: float | None = None  # this sidecar's own latest evidence of health

    def allows(self, now: float) -> tuple[bool, Transition | None]:
        """Whether a request may go to the backend now (without taking a probe slot)."""
        transition = self._elapse(now)
        if self.state == "closed":
            return True, transition
        if self.state == "half_open":
            return self.probes_in_flight < self.settings.half_open_probes, transition
        return False, transition

    def acquire(self, now: float) -> tuple[Permit | None, Transition | None]:
        """Take permission for one attempt: a normal one, a probe, or none (skip the backend)."""
        transition = self._elapse(now)
        if self.state == "closed":
            return "normal", transition
        if self.state == "half_open" and self.probes_in_flight < self.settings.half_open_probes:
            self.probes_in_flight += 1
            return "probe", transition
        return None, transition

    def release(self, permit: Permit) -> None:
        """Give back a permit whose attempt was never sent."""
        if permit == "probe":
            self.probes_in_flight = max(0, self.probes_in_flight - 1)

    def record(
        self, permit: Permit, error_class: ErrorClass | None, now: float
    ) -> Transition | None:
        """Count an attempt's result; return the transition it caused, if any."""
        failed = error_class is not None and counts_against_backend(error_class)
        if not failed:
            self.last_success = now
        if self.window is not None:
            self.window.add(failed, now)
        if permit == "probe":
            return self._record_probe(failed, now)
        if self.state != "closed":
            return None  # a result of an attempt that started before the breaker opened
        if not failed:
            self.consecutive_failures = 0
            return None
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.settings.consecutive_failures:
            return self._open(now, f"{self.consecutive_failures} failures in a row")
        if self.window is not None and self.window.tripped(now):
            return self._open(now, "failure rate over the window")
        return None

    def cool_down(self, seconds: float, now: float) -> Transition | None:
        """Open for exactly `seconds` (a 429's Retry-After); never shortens a longer opening."""
        until = now + seconds
        if self.state == "open" and self.open_until is not None and self.open_until >= until:
            return None
        previous = self.state
        self.state, self.open_until, self.cooling = "open", until, True
        self.probes_in_flight = self.probe_successes = 0
        return Transition(
            "circuit_breaker",
            self.backend,
            previous,
            "open",
            f"rate limited: Retry-After {seconds:g}s",
            until,
        )

    def open_shared(
        self, seconds: float, now: float, reason: str, fresh: float
    ) -> Transition | None:
        """Open on other pods' evidence, unless this sidecar's own is fresh or it is not closed.

        A success here within the last `fresh` seconds wins over what others saw. The opening
        lasts `seconds`, then half-opens and probes like any other, so local evidence decides
        from then on; it does not count towards the growth of failure openings.
        """
        if self.state != "closed" or seconds <= 0:
            return None
        if self.last_success is not None and now - self.last_success < fresh:
            return None
        self.state, self.open_until, self.cooling = "open", now + seconds, False
        self.probes_in_flight = self.probe_successes = 0
        return Transition(
            "circuit_breaker", self.backend, "closed", "open", f"shared: {reason}", now + seconds
        )

    def _record_probe(self, failed: bool, now: float) -> Transition | None:
        self.probes_in_flight = max(0, self.probes_in_flight - 1)
        if self.state != "half_open":
            return None
        if failed:
            return self._open(now, "a probe failed")
        self.probe_successes += 1
        if self.probe_successes < self.settings.half_open_probes:
            return None
        return self._close(now, f"{self.probe_successes} probes succeeded")

    def _open(self, now: float, reason: str) -> Transition:
        previous = self.state
        if now - self.closed_since >= self.settings.max_open_time and previous == "closed":
            self.openings = 0  # it stayed healthy long enough: start the growth afresh
        self.openings += 1
        duration = min(self.settings.max_open_time, self.settings.base_open_time * self.openings)
        self.state, self.open_until, self.cooling = "open", now + duration, False
        self.consecutive_failures = self.probes_in_flight = self.probe_successes = 0
        return Transition("circuit_breaker", self.backend, previous, "open", reason, now + duration)

    def _close(self, now: float, reason: str) -> Transition:
        previous = self.state
        self.state, self.open_until, self.cooling = "closed", None, False
        self.consecutive_failures = self.probes_in_flight = self.probe_successes = 0
        self.closed_since = now
        if self.window is not None:
            self.window.clear()
        return Transition("circuit_breaker", self.backend, previous, "closed", reason)

    def _elapse(self, now: float) -> Transition | None:
        """Move on from an open state whose time is over."""
        if self.state != "open" or self.open_until is None or now < self.open_until:
            return None
        if self.cooling:
            return self._close(now, "Retry-After time is over")
        self.state, self.open_until = "half_open", None
        self.probes_in_flight = self.probe_successes = 0
        return Transition("circuit_breaker", self.backend, "open", "half_open", "open time is over")
