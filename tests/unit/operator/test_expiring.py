"""The expiring cache: a value is loaded once while it lives, and again after."""

from __future__ import annotations

import pytest

from routemesh_operator.expiring import ExpiringCache

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_a_value_lives_its_seconds_and_expired_ones_are_dropped_when_full():
    clock = Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(10, max_entries=2, clock=clock)
    loads: list[str] = []

    async def load(key: str) -> int:
        loads.append(key)
        return len(loads)

    assert await cache.get("a", lambda: load("a")) == 1
    assert await cache.get("a", lambda: load("a")) == 1
    clock.now = 10
    assert await cache.get("a", lambda: load("a")) == 2
    await cache.get("b", lambda: load("b"))
    await cache.get("c", lambda: load("c"))
    clock.now = 21  # all three expired; the next load finds the cache over its bound
    await cache.get("d", lambda: load("d"))
    assert list(cache._entries) == ["d"]
    assert loads == ["a", "a", "b", "c", "d"]
