"""A small cache whose entries expire, for answers the API server gives that rarely change.

The distribution server caches TokenReview results and pod labels with it, and the webhook
namespace labels. An entry lives `seconds`; when the cache holds more than `max_entries`, the
expired ones are dropped. No I/O of its own: the caller's `load` does the lookup; the clock is
injected.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    """Values by key, each kept `seconds` after it was loaded."""

    def __init__(
        self,
        seconds: float,
        *,
        max_entries: int = 8192,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seconds = seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or `load()`'s, kept from now on."""
        now = self._clock()
        cached = self._entries.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        value = await load()
        if len(self._entries) > self._max_entries:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
        self._entries[key] = (now + self._seconds, value)
        return value
