"""A clock for whole-sidecar tests: real time that a test can move forward at once.

Scenario tests run a real sidecar against real servers, so latencies must be measured in real
time, but breaker open times, ejections and EWMA decay span tens of seconds. `JumpClock` reads the
real clocks plus an offset that `advance` grows, so a test skips the wait instead of sleeping.
Test support only.
"""

from __future__ import annotations

import threading
import time


class JumpClock:
    """Real monotonic and wall time, plus an offset the test advances."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds`."""
        with self._lock:
            self._offset += seconds

    def monotonic(self) -> float:
        """Real monotonic seconds plus the offset."""
        return time.monotonic() + self._offset

    def wall(self) -> float:
        """Real epoch seconds plus the offset."""
        return time.time() + self._offset
