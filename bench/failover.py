"""What a refused primary and a 429 with Retry-After add to a request that has a fallback.

Two bugs found from outside with the official client: a refused primary took 3 attempts and
92 ms before the fallback answered, and a primary answering 429 with Retry-After: 30 held the
request for 30 s. Goals: a refused primary adds under 50 ms to the first request and nothing
once its breaker is open; a Retry-After with a healthy fallback adds no wait. Measured with the
OpenAI client against a sidecar in this process's threads, the fallback a fake provider, and a
healthy primary as the baseline, median of `ROUNDS` fresh sidecars (the first request of each).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from routemesh_testing.fakes import OPENAI_KEY, Fail, FakeOpenAI
from routemesh_testing.faults import refused_url
from routemesh_testing.serving import ServerThread
from routemesh_testing.sidecar import SidecarThread
from routemesh_testing.tables import backend, route, table

ROUNDS = 5
REQUESTS = 8  # per sidecar: the breaker opens after five refusals


def _requests(primary: str, spare: str, workdir: Path) -> list[tuple[float, str]]:
    """Milliseconds and attempts of each request through a fresh sidecar."""
    routes = table(
        {
            "primary": backend(primary, key_env="KEY"),
            "spare": backend(spare, key_env="KEY"),
        },
        route("chat", ("primary", "m"), ("spare", "m")),
    )
    out: list[tuple[float, str]] = []
    with (
        SidecarThread(routes, workdir, variables={"KEY": OPENAI_KEY}) as sidecar,
        openai.OpenAI(base_url=sidecar.openai_base_url, api_key="app", max_retries=0) as client,
    ):
        for _ in range(REQUESTS):
            started = time.perf_counter()
            raw = client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            out.append(
                ((time.perf_counter() - started) * 1000, raw.headers["x-routemesh-attempts"])
            )
    return out


def run() -> list[str]:
    """Rows for docs/benchmarks.md."""
    spare = FakeOpenAI(name="spare", api_key=OPENAI_KEY)
    limited = FakeOpenAI(name="limited", api_key=OPENAI_KEY)
    limited.always(Fail(429, retry_after="30"))
    results: dict[str, list[list[tuple[float, str]]]] = {"healthy": [], "refused": [], "429": []}
    with ServerThread(spare.app) as fallback, ServerThread(limited.app) as rate_limited:
        primaries: dict[str, Any] = {
            "healthy": lambda: fallback.url + "/v1",
            "refused": lambda: refused_url() + "/v1",
            "429": lambda: rate_limited.url + "/v1",
        }
        with tempfile.TemporaryDirectory() as tmp:
            _requests(fallback.url + "/v1", fallback.url + "/v1", Path(tmp))  # warm imports
            for index in range(ROUNDS):
                for name, primary in primaries.items():
                    workdir = Path(tmp) / f"{name}-{index}"
                    workdir.mkdir()
                    results[name].append(_requests(primary(), fallback.url + "/v1", workdir))
    rows = [
        "| primary | first request ms (median) | its attempts | later requests ms (median) | "
        "attempts of requests 2-8 |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        first = statistics.median(r[0][0] for r in runs)
        later = statistics.median(ms for r in runs for ms, _ in r[1:])
        rows.append(
            f"| {name} | {first:.1f} | {runs[0][0][1]} | {later:.1f} | "
            f"{','.join(a for _, a in runs[0][1:])} |"
        )
    added = statistics.median(r[0][0] for r in results["refused"]) - statistics.median(
        r[0][0] for r in results["healthy"]
    )
    rows.append("")
    rows.append(f"- a refused primary adds {added:.1f} ms to the first request (goal < 50 ms)")
    return rows


if __name__ == "__main__":
    print("\n".join(run()))
