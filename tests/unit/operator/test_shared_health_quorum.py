"""Shared health on the operator: a quorum of pods, within a window, for the shortest time."""

from __future__ import annotations

import asyncio

import pytest

from routemesh_operator.distribution.shared_health import SharedHealth

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_pod_is_not_enough_and_two_are():
    clock = Clock()
    shared = SharedHealth(min_reporters=2, window=60, clock=clock)
    shared.report("ns", "a", ("b", None), bad=True, seconds=30, reason="5 failures")
    assert shared.view("ns") == []
    first = shared.revision("ns")
    shared.report("ns", "b", ("b", None), bad=True, seconds=20, reason="3 failures")
    (entry,) = shared.view("ns")
    assert (entry.backend, entry.endpoint, entry.reporters) == ("b", None, 2)
    assert entry.seconds == pytest.approx(20)  # the shortest any reporter asked for
    assert shared.revision("ns") > first
    assert shared.view("other") == []  # namespaces never mix


def test_recovery_expiry_and_the_window_end_sharing():
    clock = Clock()
    shared = SharedHealth(min_reporters=2, window=60, max_seconds=300, clock=clock)
    for pod in ("a", "b", "c"):
        shared.report("ns", pod, ("b", "http://e/v1"), bad=True, seconds=1000)
    (entry,) = shared.view("ns")
    assert entry.seconds == pytest.approx(300)  # capped
    shared.report("ns", "a", ("b", "http://e/v1"), bad=False)
    assert shared.view("ns")[0].reporters == 2
    shared.report("ns", "b", ("b", "http://e/v1"), bad=False)
    assert shared.view("ns") == []
    shared.report("ns", "a", ("x", None), bad=True, seconds=500)
    shared.report("ns", "b", ("x", None), bad=True, seconds=500)
    clock.now += 61  # older than the window: no longer counts, and is forgotten
    assert shared.view("ns") == []
    assert shared.reports("ns") == {}  # every report there was is past the window


@pytest.mark.asyncio
async def test_watchers_wake_on_a_change_and_on_expiry():
    clock = Clock()
    shared = SharedHealth(min_reporters=1, window=60, clock=clock)
    revision = shared.revision("ns")
    waiter = asyncio.create_task(shared.wait_for_change("ns", revision, 5))
    await asyncio.sleep(0)
    shared.report("ns", "a", ("b", None), bad=True, seconds=10)
    assert await asyncio.wait_for(waiter, 2) > revision
    revision = shared.revision("ns")
    clock.now += 11  # the report ran out: the view changes without a report
    assert await asyncio.wait_for(shared.wait_for_change("ns", revision, 3), 4) > revision
    assert shared.view("ns") == []
