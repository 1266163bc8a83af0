"""`make demo` runs from start to end and shows what it promises (the README's first command)."""

from __future__ import annotations

import pytest

from routemesh_testing import demo

pytestmark = pytest.mark.timeout(240)


def test_the_demo_routes_around_the_failing_provider_and_shows_status_and_traces(
    control_plane: object, capfd: pytest.CaptureFixture[str]
):
    # `control_plane` only makes sure the binaries exist; the demo starts its own.
    assert demo.main([]) == 0
    shown = capfd.readouterr().out
    assert "initContainers=['routemesh-sidecar']" in shown
    assert shown.count("'Hello from steady'  backend=steady") == 5
    assert "attempts=2" in shown  # the first ones try flaky first
    assert "attempts=1" in shown  # then its breaker keeps requests away from it
    assert "routingpolicy.routemesh.dev/chat   True" in shown
    assert "routemesh.fallback.cause = overloaded" in shown
