"""The sidecar process's garbage collector: a higher young threshold, start-up frozen when ready.

The setting is read by the entry point (`__main__.main`), which is the only process-wide code:
these tests run `main` with the sidecar swapped for a stand-in that reports itself ready at once,
and restore the collector after each.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from routemesh_sidecar import __main__ as entry
from routemesh_sidecar.settings import SidecarSettings

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _ReadyAtOnce:
    """Stands in for `Sidecar`: `run_forever` calls `started` as a started sidecar would."""

    seen: list[tuple[tuple[int, int, int], int]]

    def __init__(self, settings: SidecarSettings, variables: dict[str, str]) -> None:
        self.settings = settings

    async def run_forever(self, started: Callable[[], None] | None = None) -> None:
        before = (gc.get_threshold(), gc.get_freeze_count())
        _ReadyAtOnce.seen.append(before)
        if started is not None:
            started()
        _ReadyAtOnce.seen.append((gc.get_threshold(), gc.get_freeze_count()))


def _run_main(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[tuple[Any, int]]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _ReadyAtOnce.seen = []
    monkeypatch.setattr(entry, "Sidecar", _ReadyAtOnce)
    entry.main(["--log-level", "warning"])
    return list(_ReadyAtOnce.seen)


def test_the_default_raises_the_young_threshold_and_freezes_start_up_once_ready(
    monkeypatch: pytest.MonkeyPatch,
):
    gc.set_threshold(700, 10, 10)
    (before_ready, after_ready) = _run_main(monkeypatch)
    assert before_ready == ((10_000, 10, 10), 0)  # set before start; nothing frozen yet
    assert after_ready[0] == (10_000, 10, 10)
    assert after_ready[1] > 1000  # the modules and objects loaded so far


def test_a_threshold_from_the_environment_keeps_the_older_generations_ratios(
    monkeypatch: pytest.MonkeyPatch,
):
    gc.set_threshold(700, 7, 13)
    (_, after_ready) = _run_main(monkeypatch, ROUTEMESH_SIDECAR_GC_YOUNG_THRESHOLD="2500")
    assert after_ready[0] == (2500, 7, 13)


def test_zero_leaves_the_collector_as_python_set_it_and_freezes_nothing(
    monkeypatch: pytest.MonkeyPatch,
):
    gc.set_threshold(700, 10, 10)
    seen = _run_main(monkeypatch, ROUTEMESH_SIDECAR_GC_YOUNG_THRESHOLD="0")
    assert seen == [((700, 10, 10), 0), ((700, 10, 10), 0)]


def test_a_negative_threshold_is_refused_with_the_settings_name():
    with pytest.raises(ValidationError, match="gc_young_threshold"):
        SidecarSettings(gc_young_threshold=-1)


def test_frozen_objects_still_die_by_reference_count():
    """Freezing keeps collections from scanning start-up; it does not keep anything alive."""
    entry.settle_heap()
    assert gc.get_freeze_count() > 0
    freed: list[str] = []

    class Tracked:
        def __del__(self) -> None:
            freed.append("tracked")

    frozen_later = Tracked()
    gc.freeze()  # frozen_later is now in the permanent generation
    del frozen_later
    assert freed == ["tracked"]
