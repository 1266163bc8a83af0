"""The sidecar measured from outside, the way a user would see it: `make bench-proxy`.

`wrk` (a separate process) posts a small chat completion to an nginx backend that answers a fixed
completion, through each target in turn, in one run:
  - direct to nginx, and nginx as a proxy (what a compiled proxy costs);
  - the floor: `passthrough_proxy.py`, aiohttp on uvloop, the least a Python proxy must do;
  - the sidecar in standalone mode with one route, its route spans built at sampling 1.0 and not
    exported; the same sidecar exporting every span over OTLP/HTTP (to an nginx location that
    answers 200, so the sink costs nothing); and the sidecar streaming (nginx answers a fixed
    event stream, which the sidecar parses for usage as it forwards it);
  - four servers that answer with no upstream (`answering_server.py`): an aiohttp.web
    application (as the floor is built), aiohttp's low-level server (as the sidecar's listener
    was), the sidecar's own server (as its listener is), and a bare httptools protocol, the
    least a Python HTTP/1.1 server does: what the server framework costs each request.
Every target runs pinned to core 0; wrk, nginx's backend, the providers and this process (the
stream part's client) share core 1. The targets take turns
for ROUNDS rounds, so that drift in the machine's load hits them all alike, and each figure is
the median of its rounds. Results are ratios against the floor, because absolute numbers on a
shared 2-core machine are noisy. Each throughput goal's ratio (the sidecar over the floor at 1
and at 16 in flight, the exporting sidecar over the unexported one at 16) is also measured in
PAIRS pairs, the two targets back to back in alternating order, each pair a ratio: the two are
then seconds apart, not a round apart. On this shared host even pairs spread by 30% or more,
so the two goals at 16 in flight are also measured with both targets on core 0 at the same
time, each loaded by its own wrk, for SHARED_ROUNDS rounds: the scheduler halves the core
between them, their rates' ratio is the inverse of their CPU a request, and the machine's noise
in a round falls on both. A control runs the sidecar against a second copy of itself, started
with it and given the same rounds, which must come out at 1: its median and spread are the
method's bias and noise. After the wrk part, the exporting sidecar's `/metrics` says how many
spans the sink accepted and how many were dropped, so that an export that fails (and so costs
nothing) cannot pass for a cheap one.

A second part times streams: a fake provider (core 1) sends content events GAP_MS apart, and a
client here records when each event arrives, directly, through the floor and through the sidecar:
the time to first token the proxy adds, and whether any event arrived later than its upstream
pacing says (a proxy that buffers would deliver them together, at the end).

It never asserts; `docs/benchmarks.md` records what it printed, with the date and the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from sidecar_overhead import free_port, has_text, process, route_table

BENCH = Path(__file__).parent
ROUNDS = 3
SECONDS = 4
IN_FLIGHT = (1, 16)
# The throughput goals' ratios are a few percent from their lines, and the machine drifts by more
# than that between rounds: each is measured again in pairs, its two targets back to back, in
# alternating order, and each pair gives a ratio.
PAIRS = 8
FLOOR = "floor: aiohttp + uvloop"
EXPORTED = "sidecar, every span exported"
# The same goals at 16 in flight, measured a second way: both targets share core 0 at once,
# each loaded by its own wrk, so that whatever the machine does in a round it does to both.
# A control pairs the sidecar with a second copy of itself: the method's own bias and spread.
SHARED_ROUNDS = 8
SHARED_SECONDS = 5
CONTROL = "sidecar, a second copy"
SHARED_GOALS: tuple[tuple[str, str, float | None], ...] = (
    ("sidecar", FLOOR, 0.7),
    (EXPORTED, "sidecar", 0.9),
    (CONTROL, "sidecar", None),
)
# (numerator, denominator, in flight, goal): the ratios the throughput goals read.
PAIRED_GOALS = (
    ("sidecar", FLOOR, 1, 0.7),
    ("sidecar", FLOOR, 16, 0.7),
    (EXPORTED, "sidecar", 16, 0.9),
)
# Servers that answer without an upstream (`answering_server.py`): what the server framework
# alone costs a request, against the least a Python HTTP/1.1 server does.
SERVER_ALONE = {
    "aiohttp": "aiohttp.web application alone, answering",
    "aiohttp-server": "aiohttp low-level server alone, answering",
    "listener": "the sidecar's own server alone, answering",
    "httptools": "bare httptools protocol, answering",
}
STREAM_REQUESTS = 150
GAP_MS = 5
CHUNKS = 6
BODY = {"model": "m", "messages": [{"role": "user", "content": "Say hello in five words."}]}
COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1764720000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, how are you?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 14, "completion_tokens": 7, "total_tokens": 21},
}


def _event_stream() -> str:
    """A fixed OpenAI chat stream: a role event, five words, a usage event, then [DONE]."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "m"}
    deltas = [{"role": "assistant", "content": ""}] + [
        {"content": word} for word in ("Hello ", "there, ", "how ", "are ", "you?")
    ]
    events = [{**base, "choices": [{"index": 0, "delta": d}]} for d in deltas]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**base, "choices": [], "usage": COMPLETION["usage"]})
    lines = [f"data: {json.dumps(e, separators=(',', ':'))}\\n\\n" for e in events]
    return "".join(lines) + "data: [DONE]\\n\\n"


def _tool(name: str) -> str | None:
    """A program's path; nginx lives in /usr/sbin, which a non-root PATH may lack."""
    found = shutil.which(name)
    if found is None and Path(f"/usr/sbin/{name}").exists():
        return f"/usr/sbin/{name}"
    return found


_NGINX_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_main(tmp: Path, http: str) -> str:
    """An nginx config around `http` (its servers): one worker, in the foreground, files in tmp."""
    temp = "\n".join(f"  {kind}_temp_path {tmp}/{kind};" for kind in _NGINX_TEMP_KINDS)
    return f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
{http}
}}
"""


def nginx_conf(tmp: Path, backend_port: int, proxy_port: int | None = None) -> str:
    """The backend's config (fixed answers, an OTLP sink); with `proxy_port`, a proxy's to it."""
    completion = json.dumps(COMPLETION, separators=(",", ":"))
    backend = f"""
  server {{
    listen 127.0.0.1:{backend_port} reuseport;
    location = /v1/chat/completions {{ default_type application/json; return 200 '{completion}'; }}
    location = /sse/v1/chat/completions {{
      default_type text/event-stream; return 200 '{_event_stream()}';
    }}
    location = /v1/traces {{ default_type application/x-protobuf; return 200 ''; }}
  }}"""
    proxy = f"""
  server {{
    listen 127.0.0.1:{proxy_port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}"""
    return nginx_main(
        tmp,
        f"""  keepalive_requests 10000000;
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}"""
        + (backend if proxy_port is None else proxy),
    )


@contextmanager
def nginx(tmp: Path, name: str, conf: str, port: int, cpu: int) -> Iterator[None]:
    """One nginx master on `cpu`, with its own directory for its pid, logs and temp files."""
    directory = tmp / f"nginx-{name}"
    directory.mkdir()
    for kind in _NGINX_TEMP_KINDS:
        (directory / kind).mkdir()
    path = directory / "nginx.conf"
    path.write_text(conf.replace(str(tmp) + "/", str(directory) + "/"))
    binary = _tool("nginx") or "nginx"
    with process([binary, "-c", str(path), "-e", "stderr"], port, cpu):
        yield


@contextmanager
def nginx_pair(tmp: Path, backend_port: int, proxy_port: int) -> Iterator[None]:
    """Start two nginx masters: the backend on core 1, the proxy to it on core 0.

    Each gets a config with only its own server: a port picked for the other one's unused copy
    could be one already handed to a target that had not bound it yet (it happened: the floor's
    port answered as nginx, in one run).
    """
    with (
        nginx(tmp, "backend", nginx_conf(tmp, backend_port), backend_port, 1),
        nginx(tmp, "proxy", nginx_conf(tmp, backend_port, proxy_port), proxy_port, 0),
    ):
        yield


def nginx_stream_proxy_conf(tmp: Path, port: int, upstream_port: int) -> str:
    """An nginx that relays a stream as it comes (unbuffered): the compiled reference for TTFT."""
    return nginx_main(
        tmp,
        f"""  upstream provider {{ server 127.0.0.1:{upstream_port}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://provider;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}""",
    )


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run (or the median of several) measured."""

    rps: float
    p50_us: float
    p99_us: float
    errors: int


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def _micros(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def _percentile(output: str, percent: str) -> float:
    """A latency percentile from wrk's distribution (its own lines: `  50%  359.00us`)."""
    found = re.search(rf"^\s+{percent}%\s+(\S+)\s*$", output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no {percent}% line in wrk's output:\n{output}")
    return _micros(found.group(1))


def wrk_argv(url: str, script: Path, connections: int, seconds: int, *flags: str) -> list[str]:
    """One wrk run against `url`, pinned to core 1 with the backend."""
    return [
        *("taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"),
        *("--latency", *flags, "-s", str(script), url),
    ]


def wrk_rate(output: str) -> float:
    """The requests a second wrk printed."""
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise RuntimeError(f"no rate in wrk's output:\n{output}")
    return float(found.group(1))


def wrk_output(url: str, script: Path, connections: int, seconds: int, *flags: str) -> str:
    """What one wrk run against `url` prints, wrk pinned to core 1 with the backend."""
    return subprocess.run(
        wrk_argv(url, script, connections, seconds, *flags),
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds * 4 + 10,
    ).stdout


def wrk_errors(output: str) -> int:
    """The requests wrk saw fail: non-2xx answers and socket errors."""
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    socket = re.search(r"Socket errors: (.*)", output)
    errors += sum(int(n) for n in re.findall(r"\d+", socket.group(1))) if socket else 0
    return errors


def wrk(url: str, script: Path, connections: int) -> WrkResult:
    """One wrk run against `url` for SECONDS: its rate, p50, p99 and errors."""
    out = wrk_output(url, script, connections, SECONDS)
    p50, p99 = (_percentile(out, p) for p in ("50", "99"))
    return WrkResult(wrk_rate(out), p50, p99, wrk_errors(out))


def require_tools() -> None:
    """Stop with the fix when wrk, nginx or taskset is missing."""
    for tool in ("wrk", "nginx", "taskset"):
        if _tool(tool) is None:
            raise SystemExit(f"{tool} is missing: `make bench-tools` installs it from Debian")


def sidecar_argv(table: Path, port: int, admin: int | None = None) -> list[str]:
    """A standalone sidecar on `port` (its admin on `admin`, or a free port), logging warnings."""
    admin_port = free_port() if admin is None else admin
    flags = ["--port", str(port), "--admin-port", str(admin_port), "--log-level", "warning"]
    return [sys.executable, "-m", "routemesh_sidecar", "--route-table", str(table), *flags]


def wrk_targets(tmp: Path, stack: ExitStack) -> tuple[dict[str, str], str]:
    """Start everything the wrk part measures; each target's URL, and the exporter's admin URL."""
    ports = [free_port() for _ in range(8)]
    backend, nginx_proxy, floor, sidecar, exporting, streaming, exporting_admin, control = ports
    alone = {kind: free_port() for kind in SERVER_ALONE}
    origin = f"http://127.0.0.1:{backend}"
    stack.enter_context(nginx_pair(tmp, backend, nginx_proxy))
    floor_argv = [sys.executable, str(BENCH / "passthrough_proxy.py"), str(floor), origin]
    stack.enter_context(process(floor_argv, floor, 0))
    plain_table, sse_table = tmp / "table.json", tmp / "sse-table.json"
    plain_table.write_text(route_table(origin))
    sse_table.write_text(route_table(origin + "/sse"))
    export = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{origin}/v1/traces"}
    stack.enter_context(process(sidecar_argv(plain_table, sidecar), sidecar, 0))
    # The shared core's control: the same sidecar again, started and loaded alongside it.
    stack.enter_context(process(sidecar_argv(plain_table, control), control, 0))
    exporting_argv = sidecar_argv(plain_table, exporting, exporting_admin)
    stack.enter_context(process(exporting_argv, exporting, 0, export))
    stack.enter_context(process(sidecar_argv(sse_table, streaming), streaming, 0))
    for kind, port in alone.items():
        answering = [sys.executable, str(BENCH / "answering_server.py"), kind, str(port)]
        stack.enter_context(process(answering, port, 0))
    path = "/v1/chat/completions"
    return {
        "direct to nginx": f"{origin}{path}",
        "nginx as a proxy": f"http://127.0.0.1:{nginx_proxy}{path}",
        FLOOR: f"http://127.0.0.1:{floor}{path}",
        "sidecar": f"http://127.0.0.1:{sidecar}{path}",
        CONTROL: f"http://127.0.0.1:{control}{path}",
        EXPORTED: f"http://127.0.0.1:{exporting}{path}",
        "floor, streaming": f"http://127.0.0.1:{floor}/sse{path}",
        "sidecar, streaming": f"http://127.0.0.1:{streaming}{path}",
        **{SERVER_ALONE[kind]: f"http://127.0.0.1:{port}{path}" for kind, port in alone.items()},
    }, f"http://127.0.0.1:{exporting_admin}"


@dataclass(frozen=True)
class ExportCounts:
    """What the exporting sidecar's /metrics said once the wrk part was over."""

    requests: float
    exported: float
    dropped: float


def export_counts(admin_url: str) -> ExportCounts:
    """Read the exporting sidecar's counters, after its last batch has had time to go out."""
    time.sleep(2.5)  # the export interval is 1 s; a batch in flight gets its answer
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    totals = {"routemesh_requests_total": 0.0, "routemesh_spans_exported_total": 0.0}
    totals["routemesh_spans_dropped_total"] = 0.0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        name = name.partition("{")[0]
        if name in totals:
            totals[name] += float(value)
    return ExportCounts(*totals.values())


def paired_ratios(
    targets: dict[str, str], script: Path, numerator: str, denominator: str, connections: int
) -> list[float]:
    """`numerator`'s throughput over `denominator`'s, PAIRS times, each pair back to back.

    Alternating which goes first cancels a steady drift within a pair; the median of the
    pairs' ratios is the estimate, their range its spread.
    """
    ratios = []
    for index in range(PAIRS):
        order = (numerator, denominator) if index % 2 else (denominator, numerator)
        rates = {name: wrk(targets[name], script, connections).rps for name in order}
        ratios.append(rates[numerator] / rates[denominator])
    return ratios


Paired = dict[tuple[str, str, int, float], list[float]]
Shared = dict[tuple[str, str, float | None], list[float]]


def rates_at_once(urls: list[str], script: Path, connections: int, seconds: int) -> list[float]:
    """Each URL's rate with all of them loaded at the same time, a wrk each (core 1).

    A run that failed, or whose target answered an error or dropped a connection, stops the
    benchmark with wrk's output: wrk counts error answers in its rate, so a failing target
    would read as a fast one.
    """
    runs = [
        subprocess.Popen(
            wrk_argv(url, script, connections, seconds), stdout=subprocess.PIPE, text=True
        )
        for url in urls
    ]
    try:
        outputs = [run.communicate(timeout=seconds * 4 + 10)[0] for run in runs]
    finally:
        for run in runs:
            run.kill()
            run.wait()
    for url, run, out in zip(urls, runs, outputs, strict=True):
        if run.returncode != 0 or wrk_errors(out):
            raise RuntimeError(f"wrk against {url} failed or saw errors:\n{out}")
    rates = [wrk_rate(out) for out in outputs]
    if not all(rates):
        raise RuntimeError(f"a target served nothing: {dict(zip(urls, rates, strict=True))}")
    return rates


def shared_core_rounds(targets: dict[str, str], script: Path) -> Shared:
    """Each of SHARED_GOALS' ratios, with both its targets on core 0 at once, SHARED_ROUNDS times.

    At 16 in flight each target always has work, so the scheduler gives each half the core and
    the ratio of their rates is the inverse ratio of their CPU a request, with the machine's
    noise in that round falling on both. (At 1 in flight neither fills the core: not measured
    this way.) The goals and the control take turns within each round, so that the control
    sees the same moments of the run as the goals, and whose wrk starts first alternates from
    round to round, so that no target always leads.
    """
    shared: Shared = {goal: [] for goal in SHARED_GOALS}
    for index in range(SHARED_ROUNDS):
        for goal in SHARED_GOALS:
            numerator, denominator = targets[goal[0]], targets[goal[1]]
            order = [numerator, denominator] if index % 2 == 0 else [denominator, numerator]
            rates = rates_at_once(order, script, IN_FLIGHT[-1], SHARED_SECONDS)
            rate = dict(zip(order, rates, strict=True))
            shared[goal].append(rate[numerator] / rate[denominator])
    return shared


def measure_wrk(
    tmp: Path,
) -> tuple[Paired, Shared, dict[tuple[str, int], WrkResult], ExportCounts]:
    """Each target at each in-flight count, ROUNDS times in turn; the median of each.

    Then each goal's pairs (`paired_ratios`), the goals at 16 in flight on a shared core with
    the control (`shared_core_rounds`), and the exporting sidecar's counters.
    """
    plain = tmp / "post.lua"
    plain.write_text(WRK_SCRIPT.format(body=json.dumps(BODY)))
    streamed = tmp / "post-stream.lua"
    streamed.write_text(
        WRK_SCRIPT.format(
            body=json.dumps({**BODY, "stream": True, "stream_options": {"include_usage": True}})
        )
    )
    runs: dict[tuple[str, int], list[WrkResult]] = {}
    with ExitStack() as stack:
        targets, exporting_admin = wrk_targets(tmp, stack)
        for name, url in targets.items():  # warm up: connections, caches, the route table
            wrk(url, streamed if "streaming" in name else plain, 16)
        for _ in range(ROUNDS):
            for name, url in targets.items():
                script = streamed if "streaming" in name else plain
                for connections in IN_FLIGHT:
                    runs.setdefault((name, connections), []).append(wrk(url, script, connections))
        pairs = {goal: paired_ratios(targets, plain, *goal[:3]) for goal in PAIRED_GOALS}
        shared = shared_core_rounds(targets, plain)
        counts = export_counts(exporting_admin)
    return (
        pairs,
        shared,
        {
            key: WrkResult(
                statistics.median(r.rps for r in results),
                statistics.median(r.p50_us for r in results),
                statistics.median(r.p99_us for r in results),
                sum(r.errors for r in results),
            )
            for key, results in runs.items()
        },
        counts,
    )


def pair_rows(pairs: Paired) -> list[str]:
    """The paired estimate of each throughput goal's ratio."""
    return [
        f"- {numerator} over {denominator}, {len(ratios)} back-to-back pairs at {connections} in "
        f"flight: median {statistics.median(ratios):.3f}x, pairs "
        f"{min(ratios):.3f}-{max(ratios):.3f}x (goal >= {goal}): "
        + ", ".join(f"{ratio:.3f}" for ratio in ratios)
        for (numerator, denominator, connections, goal), ratios in pairs.items()
    ]


def shared_rows(shared: Shared) -> list[str]:
    """Each goal's ratio with both targets on core 0 at once, and the control's."""
    rows = []
    for (numerator, denominator, goal), ratios in shared.items():
        verdict = f"goal >= {goal}" if goal is not None else "the method's control: 1 expected"
        rows.append(
            f"- {numerator} over {denominator}, sharing core 0 at once, {len(ratios)} rounds of "
            f"{SHARED_SECONDS} s at {IN_FLIGHT[-1]} in flight: median "
            f"{statistics.median(ratios):.3f}x, rounds {min(ratios):.3f}-{max(ratios):.3f}x "
            f"({verdict}): " + ", ".join(f"{ratio:.3f}" for ratio in ratios)
        )
    return rows


async def stream_timings(session: aiohttp.ClientSession, url: str) -> list[float]:
    """Seconds from sending the request to the arrival of each content event."""
    started = time.perf_counter()
    arrivals: list[float] = []
    body = {**BODY, "stream": True}
    async with session.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
        async for line in response.content:
            compact = line.replace(b": ", b":")
            if line.startswith(b"data: {") and has_text(compact):
                arrivals.append(time.perf_counter() - started)
    return arrivals


async def measure_streams(urls: dict[str, str]) -> dict[str, list[list[float]]]:
    """STREAM_REQUESTS paced streams per path, interleaved across the paths.

    The order is reversed every other round: a Python proxy that runs right after another finds
    the interpreter's shared code warm (about 0.1 ms of its first token, measured), so a fixed
    order would favour whichever came second.
    """
    out: dict[str, list[list[float]]] = {name: [] for name in urls}
    names = list(urls)
    async with aiohttp.ClientSession() as session:
        for i in range(STREAM_REQUESTS + 10):
            for name in names if i % 2 == 0 else names[::-1]:
                url = urls[name]
                timings = await stream_timings(session, url)
                if len(timings) != CHUNKS:
                    raise RuntimeError(f"{name}: {len(timings)} content events, not {CHUNKS}")
                if i >= 10:
                    out[name].append(timings)
    return out


def stream_part(tmp: Path) -> dict[str, list[list[float]]]:
    """Paced streams directly, through nginx, the floor and the sidecar (all on core 0)."""
    provider, nginx_port, floor, sidecar = (free_port() for _ in range(4))
    origin = f"http://127.0.0.1:{provider}"
    table = tmp / "paced-table.json"
    table.write_text(route_table(origin))
    paced = [sys.executable, str(BENCH / "fake_provider.py"), str(provider), str(GAP_MS)]
    conf = nginx_stream_proxy_conf(tmp, nginx_port, provider)
    with ExitStack() as stack:
        stack.enter_context(process([*paced, str(CHUNKS)], provider, 1))
        stack.enter_context(nginx(tmp, "stream-proxy", conf, nginx_port, 0))
        floor_argv = [sys.executable, str(BENCH / "passthrough_proxy.py"), str(floor), origin]
        stack.enter_context(process(floor_argv, floor, 0))
        stack.enter_context(process(sidecar_argv(table, sidecar), sidecar, 0))
        path = "/v1/chat/completions"
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(
                measure_streams(
                    {
                        "direct": f"{origin}{path}",
                        "nginx as a proxy": f"http://127.0.0.1:{nginx_port}{path}",
                        "floor": f"http://127.0.0.1:{floor}{path}",
                        "sidecar": f"http://127.0.0.1:{sidecar}{path}",
                    }
                )
            )


def export_row(counts: ExportCounts) -> str:
    """Whether every span reached the sink: two a request (the route span and its attempt)."""
    return (
        f"- the exporting sidecar served {counts.requests:,.0f} requests; the OTLP sink accepted "
        f"{counts.exported:,.0f} spans ({counts.exported / max(counts.requests, 1):.2f} a "
        f"request, 2 expected) and {counts.dropped:,.0f} were dropped"
    )


def wrk_rows(r: dict[tuple[str, int], WrkResult]) -> list[str]:
    names = list(dict.fromkeys(name for name, _ in r))
    rows = [
        "| target | p50 µs at 1 | p99 µs at 1 | req/s at 1 | p50 µs at 16 | req/s at 16 | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        one, many = r[(name, 1)], r[(name, 16)]
        rows.append(
            f"| {name} | {one.p50_us:.0f} | {one.p99_us:.0f} | {one.rps:,.0f} | "
            f"{many.p50_us:.0f} | {many.rps:,.0f} | {one.errors + many.errors} |"
        )
    direct = r[("direct to nginx", 1)].p50_us
    floor_added = r[(FLOOR, 1)].p50_us - direct
    rows.append("")
    for name in ("sidecar", EXPORTED):
        added = r[(name, 1)].p50_us - direct
        rows.append(
            f"- {name}: throughput {r[(name, 1)].rps / r[(FLOOR, 1)].rps:.2f}x the floor at "
            f"1 in flight and {r[(name, 16)].rps / r[(FLOOR, 16)].rps:.2f}x at 16 (goal >= "
            f"0.7); added p50 {added:.0f} µs against the floor's {floor_added:.0f} µs, "
            f"{added / floor_added:.2f}x (goal <= 1.5)"
        )
    for connections in IN_FLIGHT:
        ratio = r[(EXPORTED, connections)].rps / r[("sidecar", connections)].rps
        rows.append(
            f"- every span exported, at {connections} in flight: {ratio:.2f}x the unexported "
            "sidecar's throughput (goal >= 0.9)"
        )
    streaming = r[("sidecar, streaming", 16)].rps / r[("floor, streaming", 16)].rps
    rows.append(f"- streaming at 16 in flight: {streaming:.2f}x the floor's throughput")
    rows.append(server_row(r))
    return rows


def server_row(r: dict[tuple[str, int], WrkResult]) -> str:
    """What the server framework costs a request, from the rates at 16 in flight.

    Each target is CPU-bound on its one core at 16 in flight, so a request's CPU time there is
    about the inverse of the rate.
    """
    micros = {name: 1e6 / r[(name, IN_FLIGHT[-1])].rps for name, _ in r}
    application, low_level, own, bare = (micros[SERVER_ALONE[kind]] for kind in SERVER_ALONE)
    sidecar = micros["sidecar"]
    return (
        f"- server framework, CPU a request at {IN_FLIGHT[-1]} in flight, answering alone: "
        f"aiohttp.web application {application:.1f} µs (the floor's), aiohttp's low-level "
        f"server {low_level:.1f} µs, the sidecar's own server {own:.1f} µs, a bare httptools "
        f"protocol {bare:.1f} µs; the sidecar spends {sidecar:.1f} µs a request, "
        f"{(own - bare) / sidecar:.0%} of it the difference between its server and the bare "
        "protocol"
    )


def stream_rows(s: dict[str, list[list[float]]]) -> list[str]:
    def ttft_ms(name: str) -> float:
        return statistics.median(t[0] for t in s[name]) * 1000

    def lags_ms(name: str) -> list[float]:
        """Per stream: how much later than the upstream's pacing its latest event came."""
        gap = GAP_MS / 1000
        return [max(t[k] - t[0] - k * gap for k in range(CHUNKS)) * 1000 for t in s[name]]

    rows = [
        f"| path | TTFT ms (median) | added TTFT ms | event lag ms, median / p99 ({CHUNKS} "
        f"events {GAP_MS} ms apart) |",
        "|---|---|---|---|",
    ]
    for name in s:
        added = ttft_ms(name) - ttft_ms("direct")
        lags = lags_ms(name)
        p99 = statistics.quantiles(lags, n=100)[-1]
        rows.append(
            f"| {name} | {ttft_ms(name):.3f} | {added:.3f} | "
            f"{statistics.median(lags):.2f} / {p99:.2f} |"
        )
    rows.append("")
    rows.append(
        f"- time to first token the sidecar adds: {ttft_ms('sidecar') - ttft_ms('direct'):.3f} ms"
        " (goal < 1 ms); a buffered stream would show an event lag near "
        f"{(CHUNKS - 1) * GAP_MS} ms"
    )
    return rows


def run() -> list[str]:
    require_tools()
    # The stream part's timing client is this process: it shares core 1 with the providers, as
    # wrk does, and never lands on the core the proxies run on.
    os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as tmp:
        pairs, shared, measured, counts = measure_wrk(Path(tmp))
        streams = stream_part(Path(tmp))
    return [
        *wrk_rows(measured),
        *pair_rows(pairs),
        *shared_rows(shared),
        export_row(counts),
        "",
        *stream_rows(streams),
    ]


if __name__ == "__main__":
    print("\n".join(run()))
