"""The reliability suite: faults in the control plane and the providers, under traffic.

Each scenario runs the whole system as processes (see conftest), breaks one thing while an app
keeps sending requests through its injected sidecar, and asserts that no request was lost or
answered short, that the system converged afterwards (a policy change still reaches the
sidecar), and, where a request took a detour, that its trace in the backend says why.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import openai
import pytest

from routemesh_testing.fakes import BreakStream
from routemesh_testing.faultproxy import AddLatency, RateLimitStorm
from routemesh_testing.system import CHAT, System, Traffic, assert_nothing_lost
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(240)


def converges(system: System, model: str) -> None:
    """A policy change reaches the sidecar: it runs the version the status shows, and ACKed it."""
    before = system.policy_version()
    system.apply_policy(model)
    version = poll_until(system.policy_version, lambda v: v is not None and v != before, timeout=60)
    assert version != before, "the operator compiled the change"
    assert poll_until(system.sidecar_version, lambda v: v == version, timeout=60) == version
    status = poll_until(
        lambda: system.kubectl.get("routingpolicy", "chat", namespace=system.namespace)["status"],
        lambda s: (s.get("sidecars") or {}).get("synced") == 1,
        timeout=60,
    )
    assert status["sidecars"]["synced"] == 1, status


def rides_out(system: System, fault: AbstractContextManager[object]) -> None:
    """Traffic before, during and after `fault`; then a change must still reach the sidecar."""
    with Traffic(system.base_url) as traffic:
        traffic.wait_for(20)
        with fault:
            traffic.wait_for(50)  # the sidecar keeps serving its last table meanwhile
        converges(system, "m2")
        traffic.wait_for(20)
    assert_nothing_lost(traffic.outcomes)


@contextmanager
def operator_killed(system: System) -> Iterator[None]:
    """SIGKILL the operator for the block, then start a new process."""
    system.operator.kill()
    yield
    system.operator.start()


def test_the_operator_killed_and_restarted_under_load_loses_no_request(system: System):
    rides_out(system, operator_killed(system))


def test_the_api_server_stopped_and_started_again_loses_no_request(system: System):
    rides_out(system, system.plane.apiserver_outage())  # frozen: connections hang


def test_the_api_server_restarted_under_load_loses_no_request(system: System):
    rides_out(system, system.plane.apiserver_restart())  # gone: connections refused


def test_an_invalid_policy_applied_under_load_is_refused_and_the_last_good_table_serves(
    system: System,
):
    good = system.policy_version()
    with Traffic(system.base_url) as traffic:
        traffic.wait_for(20)
        system.apply_policy("m", first="nowhere")  # a backend that does not exist
        status = poll_until(
            lambda: system.kubectl.get("routingpolicy", "chat", namespace=system.namespace)[
                "status"
            ],
            lambda s: any(
                c["type"] == "ResolvedRefs" and c["status"] == "False" for c in s["conditions"]
            ),
            timeout=60,
        )
        resolved = next(c for c in status["conditions"] if c["type"] == "ResolvedRefs")
        assert "nowhere" in resolved["message"]
        traffic.wait_for(30)
        assert system.sidecar_version() == good, "the sidecar never got the invalid table"
        converges(system, "m2")
        traffic.wait_for(10)
    assert_nothing_lost(traffic.outcomes)


def test_a_provider_hard_down_then_back_fails_over_and_the_traces_say_why(system: System):
    with Traffic(system.base_url) as traffic:
        traffic.wait_for(10)
        system.primary.go_down()  # its host is gone: connections refused
        down_at = time.monotonic()
        down_from = len(traffic.outcomes)
        traffic.wait_for(20)
        down = traffic.outcomes[down_from + 1 : len(traffic.outcomes)]
        system.primary.come_back()
        back_from = len(traffic.outcomes)
        poll_until(
            lambda: [o.backend for o in traffic.outcomes[back_from:]][-5:],
            lambda last: last == ["primary"] * 5,
            timeout=30,
        )
        recovered = [o.backend for o in traffic.outcomes[back_from:]][-5:]
    assert_nothing_lost(traffic.outcomes)
    assert {o.backend for o in down} == {"spare"}, "while primary was down, spare served"
    assert recovered == ["primary"] * 5, "once it was back, its breaker closed and it served"
    # The requests sent after it went down tried primary and fell back. The first may have met
    # the idle keep-alive connection the host closed as it went (the write goes out, the reset
    # comes back: server_error, "closed the connection before answering"); from then on the
    # connections are refused. Both causes are the host going away; none other may show.
    failovers = [o for o in traffic.outcomes if o.started > down_at and o.backend == "spare"]
    causes = []
    for failover in failovers[:2]:
        trace = trace_of(system, failover.trace_id, 3)
        [route_span] = [s for s in trace if s["name"] == "routemesh.route"]
        assert route_span["attributes"]["routemesh.backend"] == "spare"
        causes.append(route_span["attributes"]["routemesh.fallback.cause"])
        attempts = {s["attributes"]["routemesh.backend"]: s for s in trace if s is not route_span}
        assert attempts["primary"]["status_code"] == "ERROR"
        assert attempts["primary"]["attributes"]["error.type"] == causes[-1]
        assert attempts["spare"]["attributes"]["gen_ai.usage.output_tokens"] > 0
        if causes[-1] == "connect_error":
            break
    assert causes[-1] == "connect_error", causes
    assert set(causes) <= {"server_error", "connect_error"}, causes
    assert causes.count("server_error") <= 1, causes


def trace_of(system: System, trace_id: str, spans: int) -> list[dict[str, Any]]:
    """The trace's spans, once the backend has `spans` of them."""
    return system.phoenix.wait_for(
        "default", lambda trace: len(trace) >= spans, trace_id=trace_id, timeout=30
    )


def fallback_trace(system: System, trace_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A failover's route span and its failed attempt on the primary, from the backend."""
    trace = trace_of(system, trace_id, 3)
    [route_span] = [s for s in trace if s["name"] == "routemesh.route"]
    [failed] = [
        s
        for s in trace
        if s["attributes"].get("routemesh.backend") == "primary" and s is not route_span
    ]
    return route_span, failed


@pytest.mark.parametrize("retry_after", [1.0, None], ids=["with-retry-after", "without"])
def test_a_429_storm_fails_over_and_each_failover_is_marked_rate_limited(
    system: System, retry_after: float | None
):
    with Traffic(system.base_url) as traffic:
        traffic.wait_for(10)
        system.primary.faults.set_fault(RateLimitStorm(retry_after=retry_after), paths=(CHAT,))
        storm_from = len(traffic.outcomes)
        traffic.wait_for(30)
        system.primary.faults.clear()
        traffic.wait_for(5)
    assert_nothing_lost(traffic.outcomes)
    storm = traffic.outcomes[storm_from + 1 : storm_from + 30]
    assert {o.backend for o in storm} == {"spare"}
    first = next(o for o in traffic.outcomes[storm_from:] if o.backend == "spare")
    route_span, failed = fallback_trace(system, first.trace_id)
    assert route_span["attributes"]["routemesh.fallback.cause"] == "rate_limited"
    assert failed["attributes"]["error.type"] == "rate_limited"
    assert failed["attributes"]["http.response.status_code"] == 429


def test_a_slow_provider_is_left_for_the_spare_after_its_first_token_timeout(system: System):
    with Traffic(system.base_url) as traffic:
        traffic.wait_for(10)
        system.primary.faults.set_fault(AddLatency(3.0), paths=(CHAT,))
        slow_from = len(traffic.outcomes)
        traffic.wait_for(10)
        system.primary.faults.clear()
    assert_nothing_lost(traffic.outcomes)
    first = next(o for o in traffic.outcomes[slow_from:] if o.backend == "spare")
    route_span, failed = fallback_trace(system, first.trace_id)
    assert route_span["attributes"]["routemesh.fallback.cause"] == "timeout"
    assert failed["attributes"]["error.type"] == "timeout"


def stream(system: System, trace_id: str = "") -> tuple[str, str, list[str | None]]:
    """One streamed request: (its trace id, the text received, the finish reasons)."""
    trace_id = trace_id or secrets.token_hex(16)
    with openai.OpenAI(base_url=system.base_url, api_key="app", max_retries=0) as client:
        chunks = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "tell me"}],
            stream=True,
            extra_headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        )
        text, finishes = "", []
        for chunk in chunks:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finishes.append(choice.finish_reason)
    return trace_id, text, [f for f in finishes if f]


def test_a_stream_broken_before_its_first_byte_fails_over_unseen(system: System):
    system.primary.fake.always(BreakStream(after_chunks=0))
    trace_id, text, finishes = stream(system)
    assert text == "Hello from spare"
    assert finishes == ["stop"]
    route_span, failed = fallback_trace(system, trace_id)
    assert route_span["attributes"]["routemesh.backend"] == "spare"
    # The connection closed before any event: the classifier's class for an upstream that hung
    # up without an answer (Envoy's "upstream connection termination").
    assert failed["attributes"]["error.type"] == "server_error"
    assert failed["status_code"] == "ERROR"


def test_a_stream_broken_after_its_first_byte_ends_in_an_error_never_a_clean_finish(
    system: System,
):
    system.primary.fake.always(BreakStream(after_chunks=2))
    trace_id = secrets.token_hex(16)
    with pytest.raises(openai.APIError) as broken:
        stream(system, trace_id)
    assert "stream" in str(broken.value).lower(), "the client is told the stream broke"
    [route_span] = [s for s in trace_of(system, trace_id, 2) if s["name"] == "routemesh.route"]
    assert route_span["attributes"]["error.type"] == "stream_broken"
    assert route_span["status_code"] == "ERROR"
