"""Sustained load through one sidecar while a backend is killed and restored (`make bench`).

`wrk` (one thread, 16 connections, pinned to core 1, a separate process) posts a small chat
completion for 60 s through a standalone sidecar (core 0) whose route falls back from `primary`
to `spare`, both nginx (core 1) answering a fixed completion. At 20 s the primary's nginx is
killed (SIGKILL of its process group: connections reset, then refused); at 40 s it starts again
on the same port. The goal: at least 500 requests a second and zero client errors, since a
fallback exists; the p99 under load is recorded. The sidecar's own counters say where the
attempts went and how often its breaker moved.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from proxy import (
    BODY,
    COMPLETION,
    WRK_SCRIPT,
    _micros,
    _percentile,
    _tool,
    nginx_main,
    require_tools,
    sidecar_argv,
    wrk_errors,
    wrk_output,
    wrk_rate,
)
from routemesh_testing.tables import backend, model_info, route, table
from sidecar_overhead import free_port, process

SECONDS = 60
KILL_AT, RESTORE_AT = 20, 40
CONNECTIONS = 16


def nginx_backend_conf(tmp: Path, port: int) -> str:
    completion = json.dumps(COMPLETION, separators=(",", ":"))
    return nginx_main(
        tmp,
        f"""  keepalive_requests 10000000;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location = /v1/chat/completions {{ default_type application/json; return 200 '{completion}'; }}
  }}""",
    )


class Nginx:
    """One nginx master and its worker, in a process group of their own, so both die at once."""

    def __init__(self, tmp: Path, name: str, port: int) -> None:
        self.directory = tmp / f"nginx-{name}"
        self.directory.mkdir()
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.directory / kind).mkdir()
        self.conf = self.directory / "nginx.conf"
        self.conf.write_text(nginx_backend_conf(self.directory, port))
        self.port = port
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (on core 1) and give it a moment to bind."""
        binary = _tool("nginx") or "nginx"
        self.popen = subprocess.Popen(
            ["taskset", "-c", "1", binary, "-c", str(self.conf), "-e", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bound once it accepts a connection
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"nginx did not listen on {self.port} within 10 s")

    def kill(self) -> None:
        """SIGKILL the master and its worker."""
        if self.popen is not None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
            self.popen = None


def table_json(primary: str, spare: str) -> str:
    models = {"m": model_info(context_window=100_000)}
    routes = table(
        {
            "primary": backend(primary + "/v1", models=models),
            "spare": backend(spare + "/v1", models=models),
        },
        route(
            "all",
            ("primary", "m"),
            ("spare", "m"),
            retry={"attempts": 1},
            timeouts={"connect": 0.5, "first_token": 5.0, "total": 10.0},
            circuit_breaker={"consecutive_failures": 3, "base_open_time": 2, "max_open_time": 10},
        ),
    )
    return routes.model_dump_json()


def _max_ms(output: str) -> float:
    """The slowest request, from wrk's `Latency` line (average, deviation, max)."""
    found = re.search(r"^\s*Latency\s+\S+\s+\S+\s+(\S+)", output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no Latency line in wrk's output:\n{output}")
    return _micros(found.group(1)) / 1000


def sidecar_counts(admin_url: str) -> dict[str, float]:
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "routemesh_attempts_total":
                key = f"attempts {sample.labels['backend']} {sample.labels['outcome']}"
            elif sample.name == "routemesh_health_transitions_total":
                labels = sample.labels
                key = f"{labels['mechanism']} {labels['backend']} -> {labels['to_state']}"
            else:
                continue
            counts[key] = counts.get(key, 0.0) + float(sample.value)
    return counts


def measure(tmp: Path) -> tuple[str, dict[str, float], list[str]]:
    primary, spare = Nginx(tmp, "primary", free_port()), Nginx(tmp, "spare", free_port())
    primary.start()
    spare.start()
    timeline: list[str] = []
    started = time.monotonic()
    ended = threading.Event()  # set if wrk ends early: the faults stop where they are

    def faults() -> None:
        if ended.wait(KILL_AT):
            return
        primary.kill()
        timeline.append(f"{time.monotonic() - started:.1f} s: primary killed")
        if ended.wait(RESTORE_AT - KILL_AT):
            return
        primary.start()
        timeline.append(f"{time.monotonic() - started:.1f} s: primary restored")

    path = tmp / "table.json"
    path.write_text(
        table_json(f"http://127.0.0.1:{primary.port}", f"http://127.0.0.1:{spare.port}")
    )
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=json.dumps(BODY)))
    port, admin = free_port(), free_port()
    argv = sidecar_argv(path, port, admin)
    try:
        with process(argv, port, 0):
            fault_thread = threading.Thread(target=faults, name="faults", daemon=True)
            started = time.monotonic()
            fault_thread.start()
            try:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                output = wrk_output(url, script, CONNECTIONS, SECONDS, "--timeout", "10s")
            finally:
                ended.set()
                fault_thread.join()
            counts = sidecar_counts(f"http://127.0.0.1:{admin}")
    finally:
        primary.kill()
        spare.kill()
    return output, counts, timeline


def run() -> list[str]:
    require_tools()
    os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as tmp:
        output, counts, timeline = measure(Path(tmp))
    rps = wrk_rate(output)
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = wrk_errors(output)
    return [
        f"{SECONDS} s, {CONNECTIONS} connections; primary killed at {KILL_AT} s, restored at "
        f"{RESTORE_AT} s ({'; '.join(timeline)})",
        "",
        "| requests | req/s | p50 ms | p99 ms | max ms | client errors (non-2xx + socket) |",
        "|---|---|---|---|---|---|",
        f"| {total:,} | {rps:,.0f} | {_percentile(output, '50') / 1000:.2f} | "
        f"{_percentile(output, '99') / 1000:.2f} | {_max_ms(output):.2f} | {errors} |",
        "",
        f"- goal: at least 500 req/s ({'met' if rps >= 500 else 'NOT met'}) and zero client "
        f"errors ({'met' if errors == 0 else 'NOT met'})",
        "- the sidecar's counters:",
        *(f"  - {key}: {value:,.0f}" for key, value in sorted(counts.items())),
    ]


if __name__ == "__main__":
    print("\n".join(run()))
