"""The sidecar's own OTLP encoder and exporter.

The encoder is checked against the SDK's: the same spans, encoded both ways, parse with the
official OTLP protobuf classes into equal messages. The exporter posts to a real HTTP server
(the standard library's, in a thread) and retries on a virtual clock.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
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

from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.settings import SidecarSettings
from routemesh_sidecar.telemetry.otlp import ExportSettings, OtlpExporter, SpanEncoder
from routemesh_sidecar.telemetry.records import AttemptRecord
from routemesh_sidecar.telemetry.tracing import SCOPE, RequestTrace, SpanRecorder

pytestmark = pytest.mark.timeout(20)

PARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
STATE = {**PARENT, "tracestate": "vendor=opaque,other=1"}
RESOURCE = Resource.create({"service.name": "routemesh-sidecar", "k8s.pod.name": "app-1"})


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


def exporter_to(url: str, **settings: Any) -> OtlpExporter:
    return OtlpExporter(SpanEncoder(RESOURCE, SCOPE), ExportSettings(url, **settings))


class SpanCounts(collections.Counter[str]):
    """The exporter's `count` callback, recording spans by outcome."""

    def __call__(self, outcome: str, spans: int) -> None:
        self[outcome] += spans


def record_spans(recorder: SpanRecorder) -> None:
    """Spans as the sidecar records them: success, failure, retries, events, lists, contexts."""
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


def both_ways(
    url: str = "http://127.0.0.1:9/v1/traces", **settings: Any
) -> tuple[OtlpExporter, list[ReadableSpan]]:
    """The same spans queued as bytes by the exporter and kept as `ReadableSpan`s."""
    sink = Collect()
    exporter = exporter_to(url, **settings)
    recorder = SpanRecorder(
        sink,  # type: ignore[arg-type]
        RESOURCE,
        lambda: 1.0,
        exporter=exporter,
    )
    record_spans(recorder)
    return exporter, sink.spans


def queued_request(exporter: OtlpExporter) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(exporter.encoder.encode(exporter._queued))


def test_the_bytes_parse_into_what_the_sdk_encoder_makes_of_the_same_spans():
    exporter, spans = both_ways()
    assert len(spans) == 13
    assert queued_request(exporter) == encode_spans(spans)


def test_spans_encoded_from_the_cache_still_match_the_sdk():
    sink = Collect()
    exporter = exporter_to("http://127.0.0.1:9/v1/traces")
    recorder = SpanRecorder(sink, RESOURCE, lambda: 1.0, exporter=exporter)  # type: ignore[arg-type]
    record_spans(recorder)
    queued_request(exporter)
    first = len(exporter.encoder._heads), len(exporter.encoder._attributes._keys[9])
    record_spans(recorder)  # the same names and keys again: every one from the cache
    assert (len(exporter.encoder._heads), len(exporter.encoder._attributes._keys[9])) == first
    assert queued_request(exporter) == encode_spans(sink.spans)


@pytest.mark.parametrize("content_chars", [0, 127, 4_000, 20_000, 300_000])
def test_a_batch_with_spans_of_every_length_matches_the_sdk(content_chars: int):
    """Span lengths across the precomputed heads' range and past it (captured content is long)."""
    sink = Collect()
    exporter = exporter_to("http://127.0.0.1:9/v1/traces")
    recorder = SpanRecorder(sink, RESOURCE, lambda: 1.0, exporter=exporter)  # type: ignore[arg-type]
    record_spans(recorder)
    long = {"routemesh.route": "default", "gen_ai.input.messages": "x" * content_chars}
    RequestTrace(recorder, {}, "chat", long).finish(
        usage=None, response_model=None, error_class=None
    )
    record_spans(recorder)
    assert max(len(exporter.encoder.span(span)) for span in exporter._queued) > content_chars
    assert queued_request(exporter) == encode_spans(sink.spans)


def test_attempts_to_one_target_share_one_attribute_block_encoded_once():
    sink = Collect()
    exporter = exporter_to("http://127.0.0.1:9/v1/traces")
    recorder = SpanRecorder(sink, RESOURCE, lambda: 1.0, exporter=exporter)  # type: ignore[arg-type]
    same = [recorder.target_attributes("chat", attempt(index)) for index in range(3)]
    elsewhere = dataclasses.replace(attempt(0), endpoint="https://eu.example.com/v1")
    other = recorder.target_attributes("chat", elsewhere)
    assert same[0] is same[1] is same[2], "one block a target, whatever the attempt's index"
    assert other is not same[0]
    assert (other["server.address"], other["server.port"]) == ("eu.example.com", 443)
    record_spans(recorder)
    record_spans(recorder)
    assert queued_request(exporter) == encode_spans(sink.spans)
    attempt_heads = [head for head in exporter.encoder._heads if head[1] == 2]  # SpanKind.CLIENT
    assert len(attempt_heads) == 1, "every attempt: the same name and target, one head"


def test_past_the_block_limit_the_cache_starts_over_and_spans_still_encode(
    monkeypatch: pytest.MonkeyPatch,
):
    from routemesh_sidecar.telemetry import tracing

    monkeypatch.setattr(tracing, "_TARGET_BLOCKS", 1)
    sink = Collect()
    exporter = exporter_to("http://127.0.0.1:9/v1/traces")
    recorder = SpanRecorder(sink, RESOURCE, lambda: 1.0, exporter=exporter)  # type: ignore[arg-type]
    here = recorder.target_attributes("chat", attempt(0))
    elsewhere = dataclasses.replace(attempt(0), endpoint="https://eu.example.com/v1")
    recorder.target_attributes("chat", elsewhere)
    again = recorder.target_attributes("chat", attempt(0))
    assert again is not here, "built again"
    assert again == here, "with the same attributes"
    assert len(recorder._targets) == 1
    record_spans(recorder)
    assert queued_request(exporter) == encode_spans(sink.spans)


def test_ints_past_the_cache_limit_still_match_the_sdk(monkeypatch: pytest.MonkeyPatch):
    """Token counts vary without end: once the cache is full they take the int fast path."""
    from routemesh_sidecar.telemetry import otlp

    monkeypatch.setattr(otlp, "_CACHE_LIMIT", 64)
    sink = Collect()
    exporter = exporter_to("http://127.0.0.1:9/v1/traces")
    recorder = SpanRecorder(sink, RESOURCE, lambda: 1.0, exporter=exporter)  # type: ignore[arg-type]
    for tokens in [0, 1, 127, 128, 16_383, 16_384, 2**31, 2**40, 2**63 - 1, *range(1000, 1100)]:
        trace = RequestTrace(recorder, {}, "chat", {"routemesh.route": "default", "n": -tokens})
        trace.attempt_started(attempt(0))
        trace.finish(usage=Usage(tokens, tokens // 3, 7), response_model="m", error_class=None)
    assert queued_request(exporter) == encode_spans(sink.spans)
    keys = exporter.encoder._attributes._keys[9]
    assert len(keys["gen_ai.usage.input_tokens"].ints) == 64, "the cache stopped at its limit"


def test_an_empty_batch_is_an_empty_request():
    assert exporter_to("http://127.0.0.1:9/v1/traces").encoder.request([]) == b""


@pytest.mark.asyncio
async def test_a_batch_is_encoded_a_chunk_at_a_time_with_the_loop_free_between_chunks(
    monkeypatch: pytest.MonkeyPatch,
):
    """Requests in flight must not wait for a whole batch's encoding."""
    from routemesh_sidecar.telemetry import otlp

    monkeypatch.setattr(otlp, "_ENCODE_CHUNK", 4)
    sink = Collect()
    exporter = exporter_to("http://127.0.0.1:9/v1/traces")
    record_spans(SpanRecorder(sink, RESOURCE, lambda: 1.0, exporter=exporter))  # type: ignore[arg-type]
    encoded: list[int] = []
    turns: list[int] = []
    field = exporter.encoder.field

    def counting(span: Any) -> bytes:
        encoded.append(1)
        return field(span)

    async def other_work() -> None:
        while True:
            turns.append(len(encoded))
            await asyncio.sleep(0)

    monkeypatch.setattr(exporter.encoder, "field", counting)
    task = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    body, spans = await exporter._encode(exporter._queued)
    task.cancel()
    assert spans == len(encoded) == 13
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(sink.spans)
    assert {4, 8, 12} <= set(turns), "the loop ran between chunks of 4 spans"


def test_a_span_is_encoded_when_its_batch_is_and_not_when_it_ends():
    exporter = exporter_to("http://127.0.0.1:9/v1/traces")
    recorder = SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter)
    record_spans(recorder)
    assert exporter.encoder._heads == {}, "nothing encoded yet"
    assert len(exporter._queued) == 13


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


def batch_sizes(handler: type[Collector]) -> list[int]:
    return [
        len(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)
        for _, body in handler.received
    ]


async def posts(handler: type[Collector], count: int) -> None:
    for _ in range(500):
        if len(handler.received) >= count:
            return
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_an_export_posts_protobuf_with_the_configured_headers():
    with collector() as (url, handler):
        exporter, spans = both_ways(url, headers={"x-api-key": "k 1"})
        await exporter.close()
    headers, body = handler.received[0]
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-api-key"] == "k 1"
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(spans)


@pytest.mark.asyncio
async def test_gzip_compression_sends_a_gzip_body():
    with collector() as (url, handler):
        sink = Collect()
        exporter = exporter_to(url, compression="gzip")
        record_spans(SpanRecorder(sink, RESOURCE, lambda: 1.0, exporter=exporter))  # type: ignore[arg-type]
        await exporter.close()
    headers, body = handler.received[0]
    assert headers["content-encoding"] == "gzip"
    assert ExportTraceServiceRequest.FromString(gzip.decompress(body)) == encode_spans(sink.spans)


@pytest.mark.asyncio
async def test_batches_are_posted_a_batch_at_a_time():
    with collector() as (url, handler):
        exporter = exporter_to(url, batch_spans=5)
        record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))
        await exporter.flush()
        await exporter.close()
    assert batch_sizes(handler) == [5, 5, 3]


@pytest.mark.asyncio
async def test_a_full_batch_wakes_the_export_task_before_its_interval():
    with collector() as (url, handler):
        exporter = exporter_to(url, batch_spans=13, interval_seconds=3600)
        task = asyncio.create_task(exporter.run())
        record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))
        await posts(handler, 1)
        task.cancel()
        await exporter.close()
    assert len(handler.received) == 1


@pytest.mark.asyncio
async def test_a_partial_batch_waits_for_the_next_full_one_and_is_not_posted_alone():
    """Under load, posting the few spans queued during the last post made batches of ~15."""
    with collector() as (url, handler):
        exporter = exporter_to(url, batch_spans=5, interval_seconds=3600)
        task = asyncio.create_task(exporter.run())
        record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))  # 13 spans
        await posts(handler, 2)
        for _ in range(20):  # the task has nothing left to post before its interval
            await asyncio.sleep(0)
        assert batch_sizes(handler) == [5, 5]
        assert len(exporter._queued) == 3
        record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))  # 13 more
        await posts(handler, 5)
        assert batch_sizes(handler) == [5, 5, 5, 5, 5], "the 3 left went out with the next"
        assert len(exporter._queued) == 1
        task.cancel()
        await exporter.close()
    assert batch_sizes(handler) == [5, 5, 5, 5, 5, 1]


@pytest.mark.asyncio
async def test_what_is_queued_is_posted_once_an_interval_passes_without_a_full_batch():
    with collector() as (url, handler):
        exporter = exporter_to(url, batch_spans=512, interval_seconds=0.05)
        task = asyncio.create_task(exporter.run())
        record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))
        await posts(handler, 1)
        task.cancel()
        await exporter.close()
    assert batch_sizes(handler) == [13]


def test_an_error_message_with_a_lone_surrogate_is_encoded_not_fatal():
    """JSON lets an upstream's error message carry one; protobuf strings must be UTF-8."""
    exporter = exporter_to("http://127.0.0.1:9/v1/traces")
    recorder = SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter)
    trace = RequestTrace(recorder, {}, "chat", {"routemesh.route": "r\ud800"})
    trace.finish(usage=None, response_model=None, error_class="server_error", message="x\ud800y")
    message = queued_request(exporter)
    span = message.resource_spans[0].scope_spans[0].spans[0]
    assert span.status.message == "x?y"
    assert span.attributes[0].value.string_value == "r?"


@pytest.mark.asyncio
async def test_a_span_that_cannot_be_encoded_is_dropped_and_counted_and_the_export_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    counts = SpanCounts()
    with collector() as (url, handler):
        exporter = OtlpExporter(
            SpanEncoder(RESOURCE, SCOPE), ExportSettings(url, batch_spans=5), count=counts
        )
        record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))
        field = exporter.encoder.field
        broken = exporter._queued[1]

        def failing(span: Any) -> bytes:
            if span is broken:
                raise ValueError("a bug")
            return field(span)

        monkeypatch.setattr(exporter.encoder, "field", failing)
        task = asyncio.create_task(exporter.run())
        await posts(handler, 2)
        task.cancel()
        await exporter.close()
    assert batch_sizes(handler) == [4, 5, 3]
    assert counts == {"exported": 12, "export_failed": 1}
    assert "dropped a span that could not be encoded" in caplog.text


@pytest.mark.asyncio
async def test_a_flush_during_an_export_posts_and_counts_each_span_once():
    counts = SpanCounts()
    with collector() as (url, handler):
        exporter = OtlpExporter(
            SpanEncoder(RESOURCE, SCOPE), ExportSettings(url, batch_spans=5), count=counts
        )
        record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))
        export = asyncio.create_task(exporter._export(partial=True))
        await asyncio.sleep(0)  # the export took its first batch and awaits its post
        await exporter.flush()
        await export
        await exporter.close()
    assert sorted(batch_sizes(handler)) == [3, 5, 5]
    assert counts == {"exported": 13}


@pytest.mark.asyncio
async def test_a_batch_being_encoded_when_the_task_stops_is_posted_by_close(
    monkeypatch: pytest.MonkeyPatch,
):
    from routemesh_sidecar.telemetry import otlp

    monkeypatch.setattr(otlp, "_ENCODE_CHUNK", 4)
    counts = SpanCounts()
    with collector() as (url, handler):
        exporter = OtlpExporter(
            SpanEncoder(RESOURCE, SCOPE), ExportSettings(url, batch_spans=13), count=counts
        )
        record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))
        task = asyncio.create_task(exporter.run())
        await asyncio.sleep(0)  # woken by the full batch
        await asyncio.sleep(0)  # the batch left the queue, its first chunk encoded
        assert exporter._queued == []
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(exporter._queued) == 13, "back in the queue, in order"
        await exporter.close()
    assert batch_sizes(handler) == [13]
    assert counts == {"exported": 13}


def test_a_queue_past_its_limit_drops_and_counts_new_spans():
    counts = SpanCounts()
    exporter = OtlpExporter(
        SpanEncoder(RESOURCE, SCOPE),
        ExportSettings("http://127.0.0.1:9/v1/traces", max_queued_spans=10),
        count=counts,
    )
    record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))
    assert len(exporter._queued) == 10
    assert counts == {"queue_full": 3}


class VirtualSleep:
    """asyncio.sleep on a virtual clock: the loop's time does not move, the record does."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


@pytest.mark.asyncio
async def test_a_retryable_status_is_retried_with_backoff_until_it_succeeds():
    sleep, counts = VirtualSleep(), SpanCounts()
    with collector(503, 429) as (url, handler):
        exporter = OtlpExporter(
            SpanEncoder(RESOURCE, SCOPE), ExportSettings(url), sleep=sleep, count=counts
        )
        record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))
        await exporter.close()
    assert len(handler.received) == 3
    assert sleep.slept == [0.5, 1.0]
    assert counts == {"exported": 13}  # counted once, when the collector took them


@pytest.mark.asyncio
async def test_a_refused_batch_is_dropped_at_once_and_logged(caplog: pytest.LogCaptureFixture):
    sleep, counts = VirtualSleep(), SpanCounts()
    with collector(400) as (url, handler):
        exporter = OtlpExporter(
            SpanEncoder(RESOURCE, SCOPE), ExportSettings(url), sleep=sleep, count=counts
        )
        record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))
        await exporter.close()
    assert len(handler.received) == 1
    assert sleep.slept == []
    assert "dropped 13 spans: HTTP 400" in caplog.text
    assert counts == {"export_failed": 13}


@pytest.mark.asyncio
async def test_an_unreachable_collector_is_retried_until_the_timeout_then_dropped(
    caplog: pytest.LogCaptureFixture,
):
    sleep, counts = VirtualSleep(), SpanCounts()
    exporter = OtlpExporter(
        SpanEncoder(RESOURCE, SCOPE),
        ExportSettings("http://127.0.0.1:9/v1/traces", timeout_seconds=1.2),
        sleep=sleep,
        count=counts,
    )
    record_spans(SpanRecorder(None, RESOURCE, lambda: 1.0, exporter=exporter))
    await exporter.close()
    assert sleep.slept  # retried: a refused connection may be a collector restarting
    assert "dropped 13 spans: ConnectFailed" in caplog.text
    assert counts == {"export_failed": 13}


def test_the_standard_otel_variables_configure_the_export(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=a%20b, tenant = t1,broken")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    settings = SidecarSettings()
    assert settings.otlp_header_map() == {"x-api-key": "a b", "tenant": "t1"}
    assert settings.otlp_compression == "gzip"


def test_the_batch_processor_and_timeout_variables_configure_the_exporter(
    monkeypatch: pytest.MonkeyPatch,
):
    from routemesh_sidecar.app import Sidecar

    for name, value in {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",  # milliseconds, as OTel writes it
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64",
        "OTEL_BSP_SCHEDULE_DELAY": "250",
        "OTEL_BSP_MAX_QUEUE_SIZE": "1024",
    }.items():
        monkeypatch.setenv(name, value)
    sidecar = Sidecar(SidecarSettings())
    try:
        assert sidecar.spans.exporter is not None
        settings = sidecar.spans.exporter.settings
    finally:
        sidecar.embedding_pool.shutdown()
    assert settings.url == "http://collector:4318/v1/traces"
    assert (settings.timeout_seconds, settings.interval_seconds) == (2.5, 0.25)
    assert (settings.batch_spans, settings.max_queued_spans) == (64, 1024)


def test_without_the_otel_variables_the_defaults_and_the_sidecars_own_timeout_hold(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("ROUTEMESH_SIDECAR_OTLP_TIMEOUT_SECONDS", "3")
    settings = SidecarSettings()
    assert settings.export_timeout_seconds == 3.0
    assert (settings.otlp_batch_spans, settings.otlp_schedule_delay_ms) == (512, 1000)
    assert settings.otlp_max_queued_spans == 8192
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "400")
    assert SidecarSettings().export_timeout_seconds == 0.4, "the OTel variable wins"


def test_a_batch_larger_than_the_queue_is_refused_with_both_variables_named(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "2048")
    with pytest.raises(ValueError, match=r"BATCH_SIZE \(4096\) must not exceed .*QUEUE_SIZE"):
        SidecarSettings()
