"""Poll until something holds, for tests that wait on controllers of the real control plane.

Controllers act asynchronously (garbage collection, namespace deletion, token creation), so a
test polls with a deadline instead of sleeping a fixed time. This never hides a failure: at the
deadline it returns the last result, and the test asserts on it.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
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


def http_ok(url: str, timeout: float = 2.0, context: ssl.SSLContext | None = None) -> bool:
    """Whether `url` answers 200 now. Any other answer, or none, is False.

    An error status arrives as an HTTPError that holds the connection: it is closed here, so a
    poll of a not-yet-ready server leaks no sockets.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except urllib.error.HTTPError as error:
        error.close()
        return False
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False
