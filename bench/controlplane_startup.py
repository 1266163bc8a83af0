"""How long the local control plane takes to become ready, and to stop.

This is the fixed cost every test session pays before its first cluster test. Measured with the
same `LocalControlPlane` the pytest plugin uses, several times in one run, reported as the median
and the spread.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from routemesh_testing.controlplane import Binaries, ControlPlaneSettings, LocalControlPlane

RUNS = 5
TEST_CRDS = sorted((Path(__file__).parents[1] / "tests/fixtures/crds").glob("*.yaml"))


def run() -> list[str]:
    """Start and stop the control plane RUNS times; return Markdown table rows."""
    settings = ControlPlaneSettings()
    binaries = Binaries.locate(settings)
    starts: list[float] = []
    stops: list[float] = []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="routemesh-bench-") as workdir:
            plane = LocalControlPlane(binaries, Path(workdir), settings)
            t0 = time.perf_counter()
            plane.start(crds=TEST_CRDS)
            t1 = time.perf_counter()
            plane.stop()
            starts.append(t1 - t0)
            stops.append(time.perf_counter() - t1)
    return [
        "| measure | median | min | max | runs |",
        "|---|---|---|---|---|",
        _row("start to ready (etcd, apiserver, 1 CRD, kcm)", starts),
        _row("stop", stops),
    ]


def _row(label: str, samples: list[float]) -> str:
    median = statistics.median(samples)
    return f"| {label} | {median:.2f} s | {min(samples):.2f} s | {max(samples):.2f} s | {RUNS} |"
