"""Health scenarios: a real sidecar, fake providers, and a fault-injecting proxy between them.

Each scenario asserts what the client saw (no error whenever a healthy fallback exists), where the
traffic went (counted at the proxy, so an open breaker is seen to send nothing but its probes),
and what the trace and the admin endpoints recorded. Latencies are real; the long waits (open
times, ejections, EWMA decay) are skipped by moving the sidecar's `JumpClock` forward, never by
sleeping.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import SpanProcessor

from routemesh_testing.clock import JumpClock
from routemesh_testing.fakes import OPENAI_KEY
from routemesh_testing.faultproxy import (
    AddLatency,
    FaultyUpstream,
    RateLimitStorm,
    Reset,
    Status,
)
from routemesh_testing.faults import Blackhole
from routemesh_testing.otlp import OTLPReceiver, ReceivedSpan
from routemesh_testing.sidecar import SidecarThread
from routemesh_testing.tables import backend, model_info, route, table

pytestmark = pytest.mark.timeout(90)

CHAT = "/chat/completions"
NO_RETRY = {
    "retry": {"attempts": 1},
    "timeouts": {"connect": 0.5, "first_token": 1.0, "total": 10.0},
}
BREAKER = {"consecutive_failures": 3, "base_open_time": 30, "max_open_time": 300}


@pytest.fixture
def primary() -> Iterator[FaultyUpstream]:
    with FaultyUpstream("primary", OPENAI_KEY) as upstream:
        yield upstream


@pytest.fixture
def spare() -> Iterator[FaultyUpstream]:
    with FaultyUpstream("spare", OPENAI_KEY) as upstream:
        yield upstream


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


def start(
    workdir: Path,
    routes_table: Any,
    clock: JumpClock,
    span_processor: SpanProcessor,
    **settings: Any,
) -> SidecarThread:
    return SidecarThread(
        routes_table,
        workdir,
        span_processor=span_processor,
        variables={"OPENAI_KEY": OPENAI_KEY},
        clock=clock,
        **settings,
    )


def ask(sidecar: SidecarThread, model: str = "any") -> Any:
    with openai.OpenAI(
        base_url=sidecar.openai_base_url, api_key="app", max_retries=0, timeout=20
    ) as client:
        return client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )


def status_of(sidecar: SidecarThread, model: str = "any") -> int:
    """The HTTP status the client saw, error or not."""
    try:
        return int(ask(sidecar, model).status_code)
    except openai.APIStatusError as error:
        return error.status_code


def backend_of(raw: Any) -> str:
    return str(raw.headers["x-routemesh-backend"])


def admin_json(sidecar: SidecarThread, path: str) -> Any:
    with urllib.request.urlopen(sidecar.admin_url + path, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def admin_text(sidecar: SidecarThread, path: str) -> str:
    with urllib.request.urlopen(sidecar.admin_url + path, timeout=10) as response:  # noqa: S310
        return str(response.read().decode())


def events_named(otlp: OTLPReceiver, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    spans: list[ReceivedSpan] = otlp.spans
    return [event for span in spans for event in span.events if event[0].startswith(prefix)]


def fallback_table(primary_url: str, spare_url: str, **route_fields: Any) -> Any:
    fields = {**NO_RETRY, "circuit_breaker": BREAKER, **route_fields}
    return table(
        {
            "primary": backend(primary_url, key_env="OPENAI_KEY"),
            "spare": backend(spare_url, key_env="OPENAI_KEY"),
        },
        route("chat", ("primary", "m"), ("spare", "m"), **fields),
    )


def test_a_5xx_storm_opens_the_breaker_and_only_probes_reach_the_backend_until_it_recovers(
    workdir: Path,
    primary: FaultyUpstream,
    spare: FaultyUpstream,
    clock: JumpClock,
    span_processor: SpanProcessor,
    otlp: OTLPReceiver,
):
    primary.faults.set_fault(Status(500), paths=(CHAT,))
    with start(workdir, fallback_table(primary.url, spare.url), clock, span_processor) as sidecar:
        answers = [ask(sidecar) for _ in range(20)]
        assert all(a.status_code == 200 for a in answers), "the spare served every request"
        assert primary.faults.received(CHAT) == 3, "three failures opened it; then nothing"
        assert all(backend_of(a) == "spare" for a in answers)
        opened = events_named(otlp, "routemesh.circuit_breaker.open")
        assert len(opened) == 1
        assert opened[0][1]["routemesh.health.subject"] == "primary"
        assert opened[0][1]["routemesh.health.reason"] == "3 failures in a row"

        dump = admin_json(sidecar, "/config_dump")["health"]["backends"]["primary"]
        assert dump["breakers"][0]["state"] == "open"
        assert 0 < dump["breakers"][0]["open_for_seconds"] <= 30
        metrics = admin_text(sidecar, "/metrics")
        assert 'routemesh_circuit_breaker_state{backend="primary"} 2.0' in metrics
        assert (
            'routemesh_health_transitions_total{backend="primary",mechanism="circuit_breaker",'
            'to_state="open"} 1.0' in metrics
        )

        clock.advance(31)  # half open: one probe goes through, fails, and it reopens for longer
        assert ask(sidecar).status_code == 200
        assert primary.faults.received(CHAT) == 4
        assert [ask(sidecar).status_code for _ in range(5)] == [200] * 5
        assert primary.faults.received(CHAT) == 4, "reopened: still nothing but the probe"
        dump = admin_json(sidecar, "/config_dump")["health"]["backends"]["primary"]
        assert 30 < dump["breakers"][0]["open_for_seconds"] <= 60, "the second opening is longer"

        primary.faults.clear()
        clock.advance(61)  # the next probe succeeds and closes it
        assert backend_of(ask(sidecar)) == "primary"
        assert [backend_of(ask(sidecar)) for _ in range(5)] == ["primary"] * 5
        assert events_named(otlp, "routemesh.circuit_breaker.closed")


def test_connection_resets_fail_over_with_no_client_error_and_open_the_breaker(
    workdir: Path,
    primary: FaultyUpstream,
    spare: FaultyUpstream,
    clock: JumpClock,
    span_processor: SpanProcessor,
):
    primary.faults.set_fault(Reset(), paths=(CHAT,))
    with start(workdir, fallback_table(primary.url, spare.url), clock, span_processor) as sidecar:
        assert [ask(sidecar).status_code for _ in range(10)] == [200] * 10
        assert primary.faults.received(CHAT) == 3


def test_a_blackholed_backend_costs_connect_timeouts_only_until_the_breaker_opens(
    workdir: Path,
    spare: FaultyUpstream,
    clock: JumpClock,
    span_processor: SpanProcessor,
):
    fields = {**NO_RETRY, "timeouts": {"connect": 0.3, "first_token": 1.0, "total": 10.0}}
    with Blackhole() as hole:
        routes = fallback_table(hole.url + "/v1", spare.url, **fields)
        with start(workdir, routes, clock, span_processor) as sidecar:
            assert [ask(sidecar).status_code for _ in range(3)] == [200] * 3
            started = time.monotonic()
            assert [ask(sidecar).status_code for _ in range(5)] == [200] * 5
            assert time.monotonic() - started < 0.3 * 5, "no connect timeout once it is open"
            dump = admin_json(sidecar, "/config_dump")["health"]["backends"]["primary"]
            assert dump["breakers"][0]["state"] == "open"
            assert dump["endpoints"][hole.url + "/v1"]["latency_ewma_seconds"] >= 0.25, (
                "a connect that times out is a slow sample"
            )


def test_a_429_storm_with_retry_after_cools_the_backend_down_for_exactly_that_long(
    workdir: Path,
    primary: FaultyUpstream,
    spare: FaultyUpstream,
    clock: JumpClock,
    span_processor: SpanProcessor,
    otlp: OTLPReceiver,
):
    primary.faults.set_fault(RateLimitStorm(retry_after=20), paths=(CHAT,))
    with start(workdir, fallback_table(primary.url, spare.url), clock, span_processor) as sidecar:
        assert [backend_of(ask(sidecar)) for _ in range(8)] == ["spare"] * 8
        assert primary.faults.received(CHAT) == 1, "one 429 was enough to cool it down"
        cooled = events_named(otlp, "routemesh.circuit_breaker.open")
        assert cooled[0][1]["routemesh.health.reason"] == "rate limited: Retry-After 20s"

        clock.advance(19)
        assert backend_of(ask(sidecar)) == "spare", "still within Retry-After"
        assert primary.faults.received(CHAT) == 1

        primary.faults.clear()
        clock.advance(1.5)
        assert backend_of(ask(sidecar)) == "primary", "back right after Retry-After, no probing"


def test_a_429_storm_without_retry_after_counts_as_failures(
    workdir: Path,
    primary: FaultyUpstream,
    spare: FaultyUpstream,
    clock: JumpClock,
    span_processor: SpanProcessor,
):
    primary.faults.set_fault(RateLimitStorm(), paths=(CHAT,))
    with start(workdir, fallback_table(primary.url, spare.url), clock, span_processor) as sidecar:
        assert [ask(sidecar).status_code for _ in range(10)] == [200] * 10
        assert primary.faults.received(CHAT) == 3


def test_a_hanging_backend_is_left_after_the_breaker_opens_so_later_requests_are_fast(
    workdir: Path,
    primary: FaultyUpstream,
    spare: FaultyUpstream,
    clock: JumpClock,
    span_processor: SpanProcessor,
):
    primary.faults.set_fault(AddLatency(5.0), paths=(CHAT,))
    fields = {
        **NO_RETRY,
        "timeouts": {"connect": 0.5, "first_token": 0.3, "total": 10.0},
    }
    routes = fallback_table(primary.url, spare.url, **fields)
    with start(workdir, routes, clock, span_processor) as sidecar:
        assert [ask(sidecar).status_code for _ in range(3)] == [200] * 3
        dump = admin_json(sidecar, "/config_dump")["health"]["backends"]["primary"]
        assert dump["breakers"][0]["state"] == "open"
        endpoint = dump["endpoints"][primary.url]
        assert endpoint["latency_ewma_seconds"] >= 0.3, "timeouts count as slow samples"
        assert [ask(sidecar).status_code for _ in range(5)] == [200] * 5
        assert primary.faults.received(CHAT) == 3


def test_traffic_moves_away_from_a_slow_endpoint_and_comes_back_after_it_recovers(
    workdir: Path,
    primary: FaultyUpstream,
    spare: FaultyUpstream,
    clock: JumpClock,
    span_processor: SpanProcessor,
):
    # One backend with two endpoints (two proxies in front of two servers).
    routes = table(
        {"pool": backend([primary.url, spare.url], key_env="OPENAI_KEY")},
        route("chat", ("pool", "m"), **NO_RETRY),
    )
    primary.faults.set_fault(AddLatency(0.25), paths=(CHAT,))
    # The fast endpoint answers in a known 10 ms, not in whatever this machine's loopback takes
    # (a millisecond when idle): how soon the slow one's decaying estimate drops below the fast
    # one's must not depend on how busy the machine is.
    spare.faults.set_fault(AddLatency(0.01), paths=(CHAT,))
    with start(workdir, routes, clock, span_processor) as sidecar:
        for _ in range(4):
            assert ask(sidecar).status_code == 200
        slow_before = primary.faults.received(CHAT)
        assert slow_before <= 2, "P2C with peak EWMA leaves the slow endpoint within two requests"
        for _ in range(16):
            assert ask(sidecar).status_code == 200
        assert primary.faults.received(CHAT) == slow_before, "no more traffic to the slow one"

        primary.faults.clear()
        came_back_after = None
        for step in range(30):
            clock.advance(5)  # time passes while the fast endpoint keeps serving
            assert ask(sidecar).status_code == 200
            if primary.faults.received(CHAT) > slow_before:
                came_back_after = step + 1
                break
        assert came_back_after is not None, "the recovered endpoint was tried again"
        assert came_back_after <= 12
        before = primary.faults.received(CHAT)
        for _ in range(20):
            clock.advance(1)
            assert ask(sidecar).status_code == 200
        assert primary.faults.received(CHAT) - before >= 5, "and it stays in rotation"


def test_a_failing_endpoint_is_ejected_and_its_siblings_serve_without_client_errors(
    workdir: Path,
    primary: FaultyUpstream,
    spare: FaultyUpstream,
    clock: JumpClock,
    span_processor: SpanProcessor,
    otlp: OTLPReceiver,
):
    routes = table(
        {"pool": backend([primary.url, spare.url], key_env="OPENAI_KEY")},
        route(
            "chat",
            ("pool", "m"),
            retry={"attempts": 2, "backoff": {"base": 0.001, "max": 0.002}},
            circuit_breaker={"consecutive_failures": 100},
            outlier_detection={"consecutive_failures": 1, "base_ejection_time": 30},
        ),
    )
    primary.faults.set_fault(Status(502), paths=(CHAT,))
    with start(workdir, routes, clock, span_processor) as sidecar:
        assert [ask(sidecar).status_code for _ in range(12)] == [200] * 12
        assert primary.faults.received(CHAT) <= 1, "ejected after its first failure"
        ejected = events_named(otlp, "routemesh.outlier_detection.ejected")
        assert ejected
        assert ejected[0][1]["routemesh.health.subject"] == f"pool {primary.url}"
        dump = admin_json(sidecar, "/config_dump")["health"]["backends"]["pool"]
        assert dump["endpoints"][primary.url]["outlier_detection"][0]["ejected"] is True

        primary.faults.clear()
        clock.advance(31)
        for _ in range(20):
            assert ask(sidecar).status_code == 200
        assert primary.faults.received(CHAT) > 1, "back in rotation after the ejection time"


def vllm_table(gpu_url: str, cloud_url: str) -> Any:
    check = {
        "interval": 3600,  # the test probes on demand
        "timeout": 2,
        "metrics": {"stale_after": 30, "max_waiting": 8},
    }
    return table(
        {
            "gpu": backend(gpu_url, key_env="OPENAI_KEY", health_check=check),
            "cloud": backend(cloud_url, key_env="OPENAI_KEY"),
        },
        route("chat", ("gpu", "m"), ("cloud", "m"), **NO_RETRY),
    )


def probe_all(sidecar: SidecarThread) -> None:
    running = sidecar.running
    targets = running.health.probe_targets(running.active.current)  # type: ignore[arg-type]
    for target in targets:
        sidecar.run(running.health_checker.probe(target))


def test_a_saturated_vllm_server_is_avoided_until_its_metrics_show_room(
    workdir: Path,
    primary: FaultyUpstream,
    spare: FaultyUpstream,
    clock: JumpClock,
    span_processor: SpanProcessor,
):
    gpu, cloud = primary, spare
    with start(workdir, vllm_table(gpu.url, cloud.url), clock, span_processor) as sidecar:
        probe_all(sidecar)
        assert backend_of(ask(sidecar)) == "gpu"

        gpu.fake.gauges["vllm:num_requests_waiting"] = 12
        probe_all(sidecar)
        served = gpu.faults.received(CHAT)
        assert [backend_of(ask(sidecar)) for _ in range(5)] == ["cloud"] * 5
        assert gpu.faults.received(CHAT) == served, "nothing sent to the saturated server"
        endpoint = admin_json(sidecar, "/config_dump")["health"]["backends"]["gpu"]["endpoints"]
        assert endpoint[gpu.url]["health_check"]["saturated"] is True
        assert endpoint[gpu.url]["health_check"]["load"]["waiting"] == 12

        gpu.fake.gauges["vllm:num_requests_waiting"] = 0
        gpu.fake.gauges["vllm:kv_cache_usage_perc"] = 0.99
        probe_all(sidecar)
        assert backend_of(ask(sidecar)) == "cloud", "a full KV cache is saturation too"

        gpu.fake.gauges["vllm:kv_cache_usage_perc"] = 0.2
        probe_all(sidecar)
        assert backend_of(ask(sidecar)) == "gpu"

        clock.advance(31)  # no scrape for longer than stale_after: stale counts as saturated
        assert backend_of(ask(sidecar)) == "cloud"
        probe_all(sidecar)
        assert backend_of(ask(sidecar)) == "gpu"


def test_when_every_target_is_open_any_healthy_capable_backend_serves_and_the_trace_says_so(
    workdir: Path,
    primary: FaultyUpstream,
    spare: FaultyUpstream,
    clock: JumpClock,
    span_processor: SpanProcessor,
    otlp: OTLPReceiver,
):
    routes = table(
        {
            "primary": backend(
                primary.url, key_env="OPENAI_KEY", models={"m": model_info(8000, tier="Premium")}
            ),
            "spare": backend(
                spare.url, key_env="OPENAI_KEY", models={"other": model_info(8000, tier="Premium")}
            ),
        },
        route(
            "chat", ("primary", "m"), match={"models": ["m"]}, **NO_RETRY, circuit_breaker=BREAKER
        ),
        route(
            "other",
            ("spare", "other"),
            match={"models": ["other"]},
            **NO_RETRY,
            circuit_breaker=BREAKER,
        ),
    )
    primary.faults.set_fault(Status(503), paths=(CHAT,))
    with start(workdir, routes, clock, span_processor) as sidecar:
        codes = [status_of(sidecar, "m") for _ in range(3)]
        assert codes == [503, 503, 503], "no fallback in the route while the breaker is closed"
        raw = ask(sidecar, "m")
        assert raw.status_code == 200
        assert backend_of(raw) == "spare"
        assert raw.headers["x-routemesh-model"] == "other"
        degraded = events_named(otlp, "routemesh.degraded")
        assert degraded, "the trace says the route degraded"
        route_spans = [s for s in otlp.spans if s.name == "routemesh.route"]
        assert any(s.attributes.get("routemesh.degraded") is True for s in route_spans)
        assert primary.faults.received(CHAT) == 3

        spare.faults.set_fault(Status(503), paths=(CHAT,))
        for _ in range(3):
            assert status_of(sidecar, "other") == 503
        forwarded = spare.faults.received(CHAT) + primary.faults.received(CHAT)
        with (
            pytest.raises(openai.APIStatusError) as failed,
            openai.OpenAI(
                base_url=sidecar.openai_base_url, api_key="app", max_retries=0, timeout=20
            ) as client,
        ):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert failed.value.status_code == 503
        body = failed.value.body
        assert isinstance(body, dict)
        assert body["code"] == "no_healthy_upstream"
        assert failed.value.response.headers["retry-after"]
        assert spare.faults.received(CHAT) + primary.faults.received(CHAT) == forwarded, (
            "failing fast sends nothing"
        )
