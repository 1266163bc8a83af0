"""Latency and throughput the sidecar adds, against a plain pass-through proxy, in one run.

Three ways to reach the same fake provider: directly, through `passthrough_proxy.py` (the least a
proxy can do), and through the sidecar in standalone mode (spans built, no exporter); a fourth
path, a sidecar exporting its spans over OTLP/HTTP (to the fake provider, which drops them), is
reported beside the goals. The proxies run pinned to one core; the fake provider and this load
generator share the other, identically for all. Latency requests are interleaved across the
paths, so that drift in the machine's load hits them all alike. A fifth path is the sidecar with
a cost and token budget on its route, which must meet the same goals. Reported as ratios, because
absolute numbers on a shared 2-core machine are noisy:
  - median added latency (proxy minus direct), sidecar / pass-through; goal: at most 1.5;
  - throughput at 32 concurrent requests, sidecar / pass-through; goal: at least 0.7;
  - time to first token of a stream, sidecar minus direct; goal: under 1 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

BENCH = Path(__file__).parent
REPO = BENCH.parent
SEQUENTIAL = 400
WARMUP = 50
CONCURRENCY = 32
THROUGHPUT_SECONDS = 5.0
BODY = {"model": "m", "messages": [{"role": "user", "content": "Say hello in five words."}]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def process(
    argv: list[str], port: int, cpu: int, extra_env: dict[str, str] | None = None
) -> Iterator[None]:
    inherited = dict(os.environ)  # noqa: TID251  (children inherit this process's environment)
    env = {
        **inherited,
        "PYTHONPATH": os.pathsep.join([str(REPO / "testing"), *sys.path]),
        **(extra_env or {}),
    }
    child = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),  # noqa: PLW1509
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        time.sleep(0.3)
        yield
    finally:
        child.terminate()
        child.wait(timeout=10)


def has_text(line: bytes) -> bool:
    """Whether an SSE line carries a non-empty content delta (the first token)."""
    compact = line.replace(b'": "', b'":"')
    return b'"content":"' in compact and b'"content":""' not in compact


async def one_request(session: aiohttp.ClientSession, url: str, stream: bool) -> float:
    """One request; for a stream, the time to its first content chunk."""
    started = time.perf_counter()
    async with session.post(url, json={**BODY, "stream": stream}) as response:
        if stream:
            async for line in response.content:
                if has_text(line):
                    break
            elapsed = time.perf_counter() - started
            await response.read()
        else:
            await response.read()
            elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"{url}: HTTP {response.status}")
    return elapsed


async def latencies(urls: dict[str, str], stream: bool) -> dict[str, list[float]]:
    """Sequential requests, interleaved across the paths."""
    out: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as session:
        for i in range(WARMUP + SEQUENTIAL):
            for name, url in urls.items():
                elapsed = await one_request(session, url, stream)
                if i >= WARMUP:
                    out[name].append(elapsed)
    return out


async def throughput(url: str) -> float:
    """Completed requests per second with CONCURRENCY requests in flight."""
    done = 0
    stop_at = time.perf_counter() + THROUGHPUT_SECONDS

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            async with session.post(url, json=BODY) as response:
                await response.read()
                if response.status == 200:
                    done += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
        return done / (time.perf_counter() - started)


def route_table(upstream: str, budget: bool = False) -> str:
    """The one-route table; with `budget`, the route has a cost and a token budget."""
    route: dict[str, object] = {"name": "all", "targets": [{"backend": "bench", "model": "m"}]}
    if budget:
        route["budget"] = {"max_cost_usd": 1.0, "max_tokens": 100_000}
    return json.dumps(
        {
            "version": 1,
            "backends": {
                "bench": {
                    "api": "openai",
                    "endpoints": [{"url": upstream + "/v1"}],
                    "models": {
                        "m": {
                            "context_window": 100000,
                            "pricing": {"input_per_million": 1, "output_per_million": 2},
                        }
                    },
                }
            },
            "routes": [route],
        }
    )


def measure() -> dict[str, dict[str, float]]:
    os.sched_setaffinity(0, {1})
    fake_port, proxy_port, sidecar_port, admin_port, otlp_port, otlp_admin = (
        free_port() for _ in range(6)
    )
    budget_port, budget_admin = free_port(), free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "table.json"
        table.write_text(route_table(fake))
        budget_table = Path(tmp) / "budget-table.json"
        budget_table.write_text(route_table(fake, budget=True))

        def sidecar(port: int, admin: int, path: Path = table) -> list[str]:
            return [
                sys.executable,
                "-m",
                "routemesh_sidecar",
                "--route-table",
                str(path),
                "--port",
                str(port),
                "--admin-port",
                str(admin),
                "--log-level",
                "warning",
            ]

        exporting = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{fake}/v1/traces"}
        proxy = [sys.executable, str(BENCH / "passthrough_proxy.py"), str(proxy_port), fake]
        with (
            process(
                [sys.executable, str(BENCH / "fake_provider.py"), str(fake_port)], fake_port, 1
            ),
            process(proxy, proxy_port, 0),
            process(sidecar(sidecar_port, admin_port), sidecar_port, 0),
            process(sidecar(otlp_port, otlp_admin), otlp_port, 0, exporting),
            process(sidecar(budget_port, budget_admin, budget_table), budget_port, 0),
        ):
            urls = {
                name: f"http://127.0.0.1:{port}/v1/chat/completions"
                for name, port in (
                    ("direct", fake_port),
                    ("passthrough", proxy_port),
                    ("sidecar", sidecar_port),
                    ("sidecar+otlp", otlp_port),
                    ("sidecar+budget", budget_port),
                )
            }
            plain = asyncio.run(latencies(urls, stream=False))
            streamed = asyncio.run(latencies(urls, stream=True))
            for name, url in urls.items():
                results[name] = {
                    "median_ms": statistics.median(plain[name]) * 1000,
                    "p90_ms": statistics.quantiles(plain[name], n=10)[-1] * 1000,
                    "ttft_ms": statistics.median(streamed[name]) * 1000,
                    "rps": asyncio.run(throughput(url)),
                }
    return results


def run() -> list[str]:
    r = measure()
    direct = r["direct"]["median_ms"]
    added = {name: values["median_ms"] - direct for name, values in r.items()}
    rows = [
        "| path | median ms | p90 ms | stream TTFT ms | req/s at 32 in flight |",
        "|---|---|---|---|---|",
    ]
    for name, values in r.items():
        rows.append(
            f"| {name} | {values['median_ms']:.3f} | {values['p90_ms']:.3f} | "
            f"{values['ttft_ms']:.3f} | {values['rps']:.0f} |"
        )
    rows.append("")
    for baseline in ("passthrough",):
        latency_ratio = added["sidecar"] / added[baseline] if added[baseline] > 0 else float("inf")
        throughput_ratio = r["sidecar"]["rps"] / r[baseline]["rps"]
        rows.append(
            f"- against {baseline}: added median latency {added[baseline]:.3f} ms vs sidecar "
            f"{added['sidecar']:.3f} ms, ratio {latency_ratio:.2f} (goal <= 1.5); "
            f"throughput ratio {throughput_ratio:.2f} (goal >= 0.7)"
        )
    ttft_added = r["sidecar"]["ttft_ms"] - r["direct"]["ttft_ms"]
    rows.append(f"- stream TTFT added by the sidecar: {ttft_added:.3f} ms (goal < 1 ms)")
    budgeted = r["sidecar+budget"]
    budget_added = budgeted["median_ms"] - direct
    rows.append(
        "- with a cost and token budget on the route (the goals hold for it too): added median "
        f"latency ratio {budget_added / added['passthrough']:.2f} (goal <= 1.5), throughput "
        f"ratio {budgeted['rps'] / r['passthrough']['rps']:.2f} (goal >= 0.7)"
    )
    exporting = r["sidecar+otlp"]
    rows.append(
        "- with span export on (not part of the goals): added median latency ratio "
        f"{(exporting['median_ms'] - direct) / added['passthrough']:.2f}, throughput ratio "
        f"{exporting['rps'] / r['passthrough']['rps']:.2f}, TTFT added "
        f"{exporting['ttft_ms'] - r['direct']['ttft_ms']:.3f} ms"
    )
    return rows


if __name__ == "__main__":
    print("\n".join(run()))
