"""Run a real sidecar for a test: in a background thread (injectable), or as a process.

`SidecarThread` runs `routemesh_sidecar.app.Sidecar` on its own event loop in a thread, so that the
official sync SDK clients in the test thread and async ones in the test's loop can both call it,
while the test still injects randomness and a tracer provider. Its route table comes from a file,
through the same file source as standalone mode. `SidecarProcess` runs
`python -m routemesh_sidecar --route-table FILE`, as a developer would on a laptop.

Test support only: product code never imports it.
"""

from __future__ import annotations

import random
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry.sdk.trace import SpanProcessor
from prometheus_client.parser import text_string_to_metric_families

from routemesh_sidecar.app import Sidecar
from routemesh_sidecar.discovery.file import FileRouteTableSource
from routemesh_sidecar.routetable import RouteTable
from routemesh_sidecar.settings import SidecarSettings
from routemesh_sidecar.upstream.retry import Clock
from routemesh_testing.controlplane import free_port, terminate
from routemesh_testing.serving import LoopThread
from routemesh_testing.waiting import http_ok, poll_until

T = TypeVar("T")


def write_table(path: Path, table: RouteTable) -> None:
    """Write a route table file atomically, as a ConfigMap update would appear."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(table.model_dump_json(indent=1))
    temporary.replace(path)


def metric_samples(admin_url: str, name: str, **labels: str) -> list[float]:
    """The values of a sidecar's samples (admin /metrics) with this name and these labels."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return [
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


# Long enough for a sidecar process's drain (20 s by default) to end on its own before SIGKILL.
DRAIN_GRACE = 25.0


class SidecarThread:
    """A sidecar on a private event loop in a daemon thread."""

    def __init__(
        self,
        table: RouteTable | None,
        directory: Path,
        *,
        rng: random.Random | None = None,
        span_processor: SpanProcessor | None = None,
        variables: Mapping[str, str] | None = None,
        max_body_bytes: int = 1024 * 1024,
        clock: Clock | None = None,
        **settings: Any,
    ) -> None:
        self.table_path = directory / "route-table.json"
        if table is not None:
            write_table(self.table_path, table)
        self.settings = SidecarSettings(
            listen_port=0,
            admin_port=0,
            route_table_path=self.table_path,
            route_table_poll_seconds=3600,  # tests reload explicitly, never by waiting
            max_body_bytes=max_body_bytes,
            # A test that leaves a request hanging (a fake that never answers, on a virtual
            # clock no timeout fires on) must not wait out a production drain at teardown.
            **{"drain_seconds": 1.0, **settings},
        )
        self._options: dict[str, Any] = {
            "clock": clock,
            "rng": rng or random.Random(0),
            "span_processor": span_processor,
            "variables": dict(variables or {}),
        }
        self._loop_thread: LoopThread | None = None
        self.sidecar: Sidecar | None = None

    def __enter__(self) -> SidecarThread:
        self._loop_thread = LoopThread("sidecar")
        self.sidecar = self.run(self._start())
        return self

    async def _start(self) -> Sidecar:
        sidecar = Sidecar(self.settings, **self._options)
        await sidecar.start()
        return sidecar

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.sidecar is not None:
            self.run(self.sidecar.stop())
        if self._loop_thread is not None:
            self._loop_thread.close()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the sidecar's loop and return its result."""
        if self._loop_thread is None:
            raise RuntimeError("the sidecar is not started: use SidecarThread as a context manager")
        return self._loop_thread.run(coroutine, timeout)

    @property
    def running(self) -> Sidecar:
        """The started sidecar."""
        if self.sidecar is None:
            raise RuntimeError("the sidecar is not started: use SidecarThread as a context manager")
        return self.sidecar

    @property
    def base_url(self) -> str:
        """The listener's origin, e.g. http://127.0.0.1:PORT (the Anthropic SDK's base URL)."""
        return f"http://127.0.0.1:{self.running.listen_port}"

    @property
    def openai_base_url(self) -> str:
        """The OpenAI SDK's base URL: the origin plus /v1."""
        return self.base_url + "/v1"

    @property
    def admin_url(self) -> str:
        """The admin listener's origin."""
        return f"http://127.0.0.1:{self.running.admin_port}"

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value from the admin /metrics, by name and labels (0 when absent)."""
        return next(iter(metric_samples(self.admin_url, name, **labels)), 0.0)

    def swap(self, table: RouteTable) -> None:
        """Write a new table file and have the file source load it now."""
        write_table(self.table_path, table)
        source = self.running.source
        if not isinstance(source, FileRouteTableSource):
            raise TypeError("this sidecar does not read its route table from a file")
        self.run(source.poll_once())


class SidecarProcess:
    """`python -m routemesh_sidecar --route-table FILE` as a child process."""

    def __init__(self, table_path: Path, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.table_path = table_path
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SidecarProcess:
        argv = [
            sys.executable,
            "-m",
            "routemesh_sidecar",
            "--route-table",
            str(self.table_path),
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if not poll_until(self._ready, bool, timeout=30, interval=0.05):
            raise RuntimeError(f"sidecar not ready in 30 s: {self.log_path.read_text()[-2000:]}")
        return self

    def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"sidecar exited: {self.log_path.read_text()[-2000:]}")
        return http_ok(f"{self.admin_url}/readyz", 1.0)

    @property
    def base_url(self) -> str:
        """The listener's origin."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The admin listener's origin."""
        return f"http://127.0.0.1:{self.admin_port}"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            terminate(self.process, grace=DRAIN_GRACE)


# Starts a sidecar on a route table (and settings), for as long as the test runs.
StartSidecar = Callable[..., SidecarThread]
