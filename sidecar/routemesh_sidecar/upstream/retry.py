"""Retry policy mechanics: jittered exponential backoff and the retry budget.

The attempt loop asks `RetryBudget.allow_retry()` before every retry and `backoff_delay()` for how
long to wait. Time and randomness are injected (a `Clock`, a `random.Random`), so that tests run
on a virtual clock. This module decides nothing about which errors are retriable: that is the
route's `retry_on` set of error classes.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from routemesh_sidecar.backoff import capped_exponential, full_jitter
from routemesh_sidecar.routetable import Backoff
from routemesh_sidecar.routetable import RetryBudget as RetryBudgetSettings


class Clock(Protocol):
    """Monotonic seconds, and wall-clock seconds for HTTP dates."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def wall(self) -> float:
        """Seconds since the epoch."""


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """Seconds on the system's monotonic clock."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch."""
        return time.time()


def backoff_delay(settings: Backoff, retry_index: int, rng: random.Random) -> float:
    """Wait before retry number `retry_index` (0 for the first retry).

    Full jitter unless the route asks for none (see `routemesh_sidecar.backoff`).
    """
    if settings.jitter == "None":
        return capped_exponential(settings.base, settings.max, retry_index)
    return full_jitter(settings.base, settings.max, retry_index, rng)


@dataclass
class RetryBudget:
    """Allows retries up to a percentage of recent requests, plus a floor per second.

    Counted over a sliding window, per sidecar and route. In an outage every request fails, and
    without a budget each would be retried, multiplying the load on a struggling upstream.
    """

    settings: RetryBudgetSettings
    clock: Clock
    _requests: deque[float] = field(default_factory=deque)
    _retries: deque[float] = field(default_factory=deque)

    def record_request(self) -> None:
        """Count one downstream request."""
        self._requests.append(self.clock.monotonic())

    def allow_retry(self) -> bool:
        """Whether one more retry fits the budget; if it does, it is counted."""
        now = self.clock.monotonic()
        self._expire(now)
        allowed = (
            len(self._requests) * self.settings.percent / 100.0
            + self.settings.min_retries_per_second * self.settings.window
        )
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now)
        return True

    def _expire(self, now: float) -> None:
        horizon = now - self.settings.window
        for queue in (self._requests, self._retries):
            while queue and queue[0] <= horizon:
                queue.popleft()
