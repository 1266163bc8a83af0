"""The sidecar's own OTLP encoder and exporter.

The encoder is checked against the SDK's: the same spans, encoded both ways, parse with the
official OTLP protobuf classes into equal messages. The exporter posts to a real HTTP server
(the standard library's, in a thread) and retries on a virtual clock.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.settings import SidecarSettings
from routemesh_sidecar.telemetry.otlp import ProtobufSpanExporter, SpanEncoder
from routemesh_sidecar.telemetry.records import AttemptRecord
from routemesh_sidecar.telemetry.tracing import RequestTrace, SpanRecorder

pytestmark = pytest.mark.timeout(20)

PARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
STATE = {**PARENT, "tracestate": "vendor=opaque,other=1"}


class Collect:
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)

    def shutdown(self) -> None:
        pass


def attempt(index: int, **fields: Any) -> AttemptRecord:
    return AttemptRecord(
        index=index,
        backend="primary",
        api="openai",
        model="gpt-4o-mini",
        endpoint="https://api.example.com/v1",
        retry=0,
        **fields,
    )


def recorded_spans() -> list[ReadableSpan]:
    """Spans as the sidecar records them: success, failure, retries, events, lists, contexts."""
    sink = Collect()
    recorder = SpanRecorder(
        sink,  # type: ignore[arg-type]
        Resource.create({"service.name": "routemesh-sidecar", "k8s.pod.name": "app-1"}),
        lambda: 1.0,
    )
    for headers in ({}, PARENT, STATE):
        trace = RequestTrace(
            recorder,
            headers,
            "chat",
            {
                "routemesh.route": "default",
                "routemesh.attempts": 2,
                "routemesh.cost.usd": 0.000125,
                "routemesh.degraded": False,
                "gen_ai.request.model": "gpt-4o-mini",
                "routemesh.empty": "",
                "routemesh.negative": -3,
            },
        )
        first = attempt(0, hedge=True)
        trace.attempt_started(first)
        first.error_class, first.status, first.message = "server_error", 503, "upstream 503"
        trace.attempt_ended(first)
        escalated = attempt(1, usage=Usage(12, 3, 0), escalation=("too_short", "refused"))
        trace.attempt_started(escalated)
        trace.attempt_ended(escalated)
        trace.event("routemesh.retry_after", {"routemesh.retry.delay_s": 1.5, "n": 2})
        trace.attempt_started(attempt(2))
        trace.finish(
            usage=Usage(120, 30, 100),
            response_model="gpt-4o-mini-2024-07-18",
            error_class=None,
            attributes={"routemesh.outcome": "ok", "routemesh.skipped": ["a", "b"]},
        )
    failing = RequestTrace(recorder, {}, "embeddings", {"routemesh.route": "embed"})
    failing.finish(usage=None, response_model=None, error_class="timeout", message="too slow")
    return sink.spans


def test_the_bytes_parse_into_what_the_sdk_encoder_makes_of_the_same_spans():
    spans = recorded_spans()
    assert len(spans) == 13
    ours = ExportTraceServiceRequest.FromString(SpanEncoder().encode(spans))
    assert ours == encode_spans(spans)


def test_a_reused_encoder_gives_the_same_bytes_from_its_cache():
    spans = recorded_spans()
    encoder = SpanEncoder()
    first = encoder.encode(spans)
    assert encoder.encode(spans) == first
    assert ExportTraceServiceRequest.FromString(first) == encode_spans(spans)


def test_an_empty_batch_is_an_empty_request():
    assert SpanEncoder().encode([]) == b""


class Collector(BaseHTTPRequestHandler):
    """Answers the scripted statuses in turn, then 200; keeps what it received."""

    statuses: list[int]
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        status = self.statuses.pop(0) if self.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def collector(*statuses: int) -> Iterator[tuple[str, type[Collector]]]:
    handler = type("Handler", (Collector,), {"statuses": list(statuses), "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-collector", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/traces", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_export_posts_protobuf_with_the_configured_headers():
    spans = recorded_spans()
    with collector() as (url, handler):
        exporter = ProtobufSpanExporter(url, headers={"x-api-key": "k 1"})
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
    headers, body = handler.received[0]
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["x-api-key"] == "k 1"
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(spans)


def test_gzip_compression_sends_a_gzip_body():
    spans = recorded_spans()
    with collector() as (url, handler):
        exporter = ProtobufSpanExporter(url, compression="gzip")
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
    headers, body = handler.received[0]
    assert headers["Content-Encoding"] == "gzip"
    assert ExportTraceServiceRequest.FromString(gzip.decompress(body)) == encode_spans(spans)


def test_a_retryable_status_is_retried_with_backoff_until_it_succeeds():
    slept: list[float] = []
    with collector(503, 429) as (url, handler):
        exporter = ProtobufSpanExporter(url, sleep=slept.append)
        assert exporter.export(recorded_spans()) is SpanExportResult.SUCCESS
        exporter.shutdown()
    assert len(handler.received) == 3
    assert slept == [0.5, 1.0]


def test_a_refused_batch_is_dropped_at_once_and_logged(caplog: pytest.LogCaptureFixture):
    slept: list[float] = []
    with collector(400) as (url, handler):
        exporter = ProtobufSpanExporter(url, sleep=slept.append)
        assert exporter.export(recorded_spans()) is SpanExportResult.FAILURE
        exporter.shutdown()
    assert len(handler.received) == 1
    assert slept == []
    assert "dropped 13 spans: HTTP 400" in caplog.text


class VirtualClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_retries_stop_at_the_timeout():
    clock = VirtualClock()
    slept = clock.slept
    with collector(503, 503, 503, 503) as (url, handler):
        exporter = ProtobufSpanExporter(
            url, timeout_seconds=1.2, sleep=clock.sleep, clock=lambda: clock.now
        )
        assert exporter.export(recorded_spans()) is SpanExportResult.FAILURE
        exporter.shutdown()
    assert slept == [0.5]  # a second wait (1.0 s) would pass the 1.2 s timeout
    assert len(handler.received) == 2


def test_the_standard_otel_variables_configure_the_export(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=a%20b, tenant = t1,broken")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    settings = SidecarSettings()
    assert settings.otlp_header_map() == {"x-api-key": "a b", "tenant": "t1"}
    assert settings.otlp_compression == "gzip"
