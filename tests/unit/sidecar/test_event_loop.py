"""The sidecar's event loop setting: uvloop when chosen or installed, asyncio otherwise."""

import sys

import pytest
import uvloop

from routemesh_sidecar.__main__ import loop_factory

pytestmark = pytest.mark.timeout(10)


def test_auto_and_uvloop_choose_uvloop_when_it_is_installed():
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop


def test_asyncio_keeps_the_standard_loop():
    assert loop_factory("asyncio") is None


def test_without_uvloop_auto_falls_back_and_uvloop_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` raise ImportError
    assert loop_factory("auto") is None
    with pytest.raises(SystemExit, match="uvloop is not installed"):
        loop_factory("uvloop")


def test_a_loop_from_the_factory_runs_the_sidecars_coroutines():
    factory = loop_factory("auto")
    assert factory is not None
    loop = factory()
    try:
        assert loop.run_until_complete(_answer()) == 42
    finally:
        loop.close()


async def _answer() -> int:
    return 42
