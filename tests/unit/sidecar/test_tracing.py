"""Spans built by `RequestTrace`: sampling, parentage, propagation and the finished records.

The spans go through the OpenTelemetry SDK's own SimpleSpanProcessor into its in-memory exporter
(the seam where the OTLP exporter sits in production).
"""

from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags

from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.routetable import ErrorClass
from routemesh_sidecar.telemetry.records import AttemptRecord
from routemesh_sidecar.telemetry.tracing import RequestTrace, SpanRecorder, sampled

pytestmark = pytest.mark.timeout(10)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def recorder(ratio: float = 1.0) -> tuple[SpanRecorder, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    spans = SpanRecorder(
        SimpleSpanProcessor(exporter), Resource.create({"service.name": "t"}), lambda: ratio
    )
    return spans, exporter


def attempt(
    index: int, error: ErrorClass | None = None, status: int | None = None
) -> AttemptRecord:
    return AttemptRecord(
        index, "primary", "openai", "m", "https://api.example:8443/v1", 0, error, status, error
    )


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_a_successful_request_gives_a_route_span_and_a_child_attempt_span():
    spans, exporter = recorder()
    trace = RequestTrace(spans, {}, "chat", {"routemesh.route": "r", "skipped": None})
    headers = trace.attempt_started(attempt(0))
    trace.attempt_ended(attempt(0))
    trace.finish(
        usage=Usage(10, 5, 2),
        response_model="m-2025",
        error_class=None,
        attributes={"routemesh.cost.usd": 0.5, "routemesh.fallback.cause": None},
    )
    child, route = exporter.get_finished_spans()
    assert route.name == "routemesh.route"
    assert route.kind is SpanKind.SERVER
    assert route.parent is None
    assert attributes(route) == {
        "routemesh.route": "r",
        "routemesh.cost.usd": 0.5,
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cached_input_tokens": 2,
    }
    assert child.name == "chat m"
    assert child.kind is SpanKind.CLIENT
    assert child.parent == route.context
    assert child.context.trace_id == route.context.trace_id
    assert attributes(child)["server.address"] == "api.example"
    assert attributes(child)["server.port"] == 8443
    assert attributes(child)["gen_ai.response.model"] == "m-2025"
    assert child.status.status_code is StatusCode.UNSET
    assert (child.start_time or 0) <= (child.end_time or 0)
    assert headers == {
        "traceparent": f"00-{child.context.trace_id:032x}-{child.context.span_id:016x}-01"
    }


def test_a_failed_attempt_ends_at_once_with_its_class_and_status():
    spans, exporter = recorder()
    trace = RequestTrace(spans, {}, "chat", {})
    trace.attempt_started(attempt(0))
    trace.attempt_ended(attempt(0, "server_error", 503))
    [failed] = exporter.get_finished_spans()
    assert attributes(failed)["error.type"] == "server_error"
    assert attributes(failed)["http.response.status_code"] == 503
    assert failed.status.status_code is StatusCode.ERROR
    trace.finish(usage=None, response_model=None, error_class="server_error", message="down")
    route = exporter.get_finished_spans()[-1]
    assert route.status.status_code is StatusCode.ERROR
    assert route.status.description == "down"
    assert attributes(route)["error.type"] == "server_error"


def test_the_downstream_trace_context_is_the_parent_and_travels_upstream():
    spans, exporter = recorder(ratio=0.0)  # a sampled parent wins over the ratio
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT}-01", "tracestate": "vendor=1"}
    trace = RequestTrace(spans, headers, "embeddings", {})
    upstream = trace.attempt_started(attempt(0))
    trace.finish(usage=None, response_model=None, error_class=None)
    child, route = exporter.get_finished_spans()
    assert route.parent is not None
    assert route.parent.span_id == int(PARENT, 16)
    assert route.context.trace_id == int(TRACE_ID, 16)
    assert child.name == "embeddings m"
    assert upstream["traceparent"].startswith(f"00-{TRACE_ID}-")
    assert upstream["traceparent"].endswith("-01")
    assert upstream["tracestate"] == "vendor=1"


def test_an_unsampled_request_exports_nothing_but_still_propagates_its_trace():
    spans, exporter = recorder(ratio=1.0)  # an unsampled parent wins over the ratio
    trace = RequestTrace(spans, {"traceparent": f"00-{TRACE_ID}-{PARENT}-00"}, "chat", {})
    upstream = trace.attempt_started(attempt(0))
    trace.finish(usage=None, response_model=None, error_class=None)
    assert exporter.get_finished_spans() == ()
    assert upstream["traceparent"].startswith(f"00-{TRACE_ID}-")
    assert upstream["traceparent"].endswith("-00")


def test_a_malformed_traceparent_starts_a_new_trace():
    spans, exporter = recorder()
    trace = RequestTrace(spans, {"traceparent": "00-zz-01"}, "chat", {})
    trace.finish(usage=None, response_model=None, error_class=None)
    [route] = exporter.get_finished_spans()
    assert route.parent is None
    assert route.context.trace_id != 0


def test_events_are_recorded_on_the_route_span():
    spans, exporter = recorder()
    trace = RequestTrace(spans, {}, "chat", {})
    trace.event("routemesh.stream.broken", {"routemesh.error.message": "reset"})
    trace.finish(usage=None, response_model=None, error_class="stream_broken")
    [route] = exporter.get_finished_spans()
    [event] = route.events
    assert event.name == "routemesh.stream.broken"
    assert event.attributes == {"routemesh.error.message": "reset"}


@pytest.mark.parametrize(
    ("ratio", "trace_id", "expected"),
    [
        (1.0, 2**64 - 1, True),
        (0.0, 0, False),
        (0.5, 2**62, True),
        (0.5, 2**63 + 1, False),
        (0.5, (7 << 64) | 2**62, True),  # only the low 64 bits count
    ],
)
def test_new_traces_are_sampled_by_the_low_bits_of_the_trace_id(ratio, trace_id, expected):
    assert sampled(None, trace_id, ratio) is expected


def test_a_valid_parent_decides_sampling():
    parent = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    assert sampled(parent, 2**64 - 1, 0.0) is True
    unsampled = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(0))
    assert sampled(unsampled, 0, 1.0) is False
