"""The sidecar process's garbage collector: a higher young threshold, start-up frozen when ready.

The setting is read by the entry point (`__main__.main`), which is the only process-wide code:
these tests run `main` with the sidecar swapped for a stand-in that reports itself ready at once,
and restore the collector after each.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from routemesh_sidecar import __main__ as entry
from routemesh_sidecar.app import Sidecar
from routemesh_sidecar.settings import SidecarSettings
from routemesh_testing import tables
from routemesh_testing.sidecar import write_table

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

    async def run_forever(self, before_listening: Callable[[], None] | None = None) -> None:
        before = (gc.get_threshold(), gc.get_freeze_count())
        _ReadyAtOnce.seen.append(before)
        if before_listening is not None:
            before_listening()
        _ReadyAtOnce.seen.append((gc.get_threshold(), gc.get_freeze_count()))


def _run_main(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[tuple[Any, int]]:
    monkeypatch.delenv("ROUTEMESH_SIDECAR_GC_YOUNG_THRESHOLD", raising=False)
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


def test_a_sidecar_calls_the_hook_once_started_and_before_its_listener_binds(tmp_path: Path):
    """The freeze runs with the table loaded and the admin listener up, before any request."""
    table_path = tmp_path / "route-table.json"
    nowhere = "http://127.0.0.1:9"  # never called: no request is sent
    write_table(table_path, tables.cheap_or_strong(nowhere, nowhere, "r", {}))
    settings = SidecarSettings(listen_port=0, admin_port=0, route_table_path=table_path)
    sidecar = Sidecar(settings, variables={})
    seen: list[tuple[bool, int | None, int | None]] = []

    def before_listening() -> None:
        seen.append((sidecar.active.current is not None, sidecar.admin_port, sidecar.listen_port))

    async def start_and_stop() -> None:
        await sidecar.start(before_listening)
        try:
            assert sidecar.listen_port  # bound after the hook
        finally:
            await sidecar.stop()

    asyncio.run(start_and_stop())
    assert len(seen) == 1
    table_loaded, admin_port, listen_port = seen[0]
    assert table_loaded
    assert admin_port
    assert not listen_port  # not yet bound when the hook ran: no request could be in flight


def test_run_forever_hands_the_hook_to_start(monkeypatch: pytest.MonkeyPatch):
    calls: list[object] = []

    async def start(self: Sidecar, before_listening: object = None) -> None:
        calls.append(before_listening)
        raise RuntimeError("stop here")  # run_forever need not go on to wait for a signal

    monkeypatch.setattr(Sidecar, "start", start)
    hook = entry.settle_heap
    with pytest.raises(RuntimeError, match="stop here"):
        asyncio.run(Sidecar(SidecarSettings(), variables={}).run_forever(hook))
    assert calls == [hook]
