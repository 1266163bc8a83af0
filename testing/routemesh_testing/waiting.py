"""Poll until something holds, for tests that wait on controllers of the real control plane.

Controllers act asynchronously (garbage collection, namespace deletion, token creation), so a
test polls with a deadline instead of sleeping a fixed time. This never hides a failure: at the
deadline it returns the last result, and the test asserts on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    attempt: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
) -> T:
    """Call `attempt` until `done(result)` or the timeout; return the last result either way."""
    deadline = time.monotonic() + timeout
    while True:
        result = attempt()
        if done(result) or time.monotonic() >= deadline:
            return result
        time.sleep(interval)
