"""A real OTLP/HTTP trace receiver for tests.

The sidecar exports spans with the OpenTelemetry SDK's OTLP/HTTP exporter, exactly as in
production; this receiver decodes the protobuf (or OTLP JSON) requests and keeps the spans, so a
test can wait for a span and assert on its attributes, parent and events. Serve `app` with
`ServerThread`, then call `bind(server)`. Test support only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from routemesh_testing.serving import ServerThread


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as received."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    status_message: str
    start_ns: int
    end_ns: int
    resource: dict[str, Any]
    scope: str


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


class OTLPReceiver:
    """Receives OTLP/HTTP trace exports and keeps the spans."""

    def __init__(self, *, required_headers: Mapping[str, str] | None = None) -> None:
        """A receiver; with `required_headers`, one that refuses exports without them.

        It answers 401, as a hosted collector does to a request without its API key, and
        counts each refusal in `refused`.
        """
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._required = dict(required_headers or {})
        self.refused = 0
        self.endpoint = ""
        self.app = web.Application()
        self.app.router.add_post("/v1/traces", self._export)

    def bind(self, server: ServerThread) -> None:
        """Record where the receiver is served."""
        self.endpoint = f"{server.url}/v1/traces"

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        """Forget the spans received so far."""
        with self._lock:
            self._spans.clear()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans of one trace."""
        return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(
        self, predicate: Callable[[ReceivedSpan], bool], timeout: float = 5.0
    ) -> list[ReceivedSpan]:
        """The matching spans, once there is at least one; AssertionError after the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [s for s in self.spans if predicate(s)]
            if matching:
                return matching
            if time.monotonic() > deadline:
                names = sorted({s.name for s in self.spans})
                raise AssertionError(
                    f"no matching span in {timeout} s; received span names: {names}"
                )
            time.sleep(0.01)

    def route_span(self, route: str) -> ReceivedSpan:
        """The first route span of the named route (waiting for it, as `wait_for` does)."""
        return self.wait_for(
            lambda s: s.name == "routemesh.route" and s.attributes.get("routemesh.route") == route
        )[0]

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if any(request.headers.get(k) != v for k, v in self._required.items()):
            with self._lock:
                self.refused += 1
            return web.json_response({"code": 16, "message": "missing API key"}, status=401)
        message = ExportTraceServiceRequest()
        if request.content_type == "application/json":
            ParseDict(json.loads(body), message)
        else:
            message.ParseFromString(body)
        received = [
            ReceivedSpan(
                name=span.name,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex() or None,
                kind=span.kind,
                attributes=_attributes(span.attributes),
                events=[(event.name, _attributes(event.attributes)) for event in span.events],
                status_code=span.status.code,
                status_message=span.status.message,
                start_ns=span.start_time_unix_nano,
                end_ns=span.end_time_unix_nano,
                resource=_attributes(resource_spans.resource.attributes),
                scope=scope_spans.scope.name,
            )
            for resource_spans in message.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self._spans.extend(received)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )
