"""Spans: one route span per request, one child span per attempt.

The listener opens a `RequestTrace` per request, with the W3C trace context taken from the
downstream's headers; the attempt loop reports attempts to it and sends the attempt span's
context upstream. Attempt spans follow the OpenTelemetry GenAI conventions; the route span carries
the decision under `routemesh.*`. Content is never recorded here unless the route table's
telemetry opts in. It reads results and never influences routing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import (
    Link,
    Span,
    SpanKind,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.telemetry.records import AttemptRecord

ROUTE_SPAN_NAME = "routemesh.route"
_PROPAGATOR = TraceContextTextMapPropagator()
_OPERATION_NAMES = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}


class TableRatioSampler(Sampler):
    """Samples new traces at the route table's ratio; children follow their parent's decision."""

    def __init__(self, ratio: Callable[[], float]) -> None:
        self._ratio = ratio

    def should_sample(  # noqa: PLR0917  (the signature is the OTel Sampler interface)
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        """Follow a valid parent; otherwise compare the trace id's low bits with the ratio."""
        parent = get_current_span(parent_context).get_span_context()
        if parent.is_valid:
            sampled = parent.trace_flags.sampled
        else:
            sampled = (trace_id & 0xFFFFFFFFFFFFFFFF) < self._ratio() * 2**64
        decision = Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP
        return SamplingResult(decision, attributes if sampled else None, parent.trace_state)

    def get_description(self) -> str:
        """How the sampler shows in debug output."""
        return "RouteMeshTableRatio"


class RequestTrace:
    """The spans of one downstream request."""

    def __init__(
        self,
        tracer: Tracer,
        downstream_headers: Mapping[str, str],
        operation: str,
        attributes: dict[str, Any],
    ) -> None:
        parent = _PROPAGATOR.extract(carrier=downstream_headers)
        self._tracer = tracer
        self._operation = _OPERATION_NAMES.get(operation, operation)
        self.route_span: Span = tracer.start_span(
            ROUTE_SPAN_NAME, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        self._attempts: dict[int, Span] = {}

    def set(self, attributes: Mapping[str, Any]) -> None:
        """Add attributes to the route span (None values are skipped)."""
        for key, value in attributes.items():
            if value is not None:
                self.route_span.set_attribute(key, value)

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        """Add an event to the route span."""
        self.route_span.add_event(name, dict(attributes or {}))

    def attempt_started(self, record: AttemptRecord) -> Mapping[str, str]:
        """Open the attempt's span and return the traceparent headers to send upstream."""
        url = urlsplit(record.endpoint)
        span = self._tracer.start_span(
            f"{self._operation} {record.model}",
            context=set_span_in_context(self.route_span),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": self._operation,
                "gen_ai.provider.name": record.api,
                "gen_ai.request.model": record.model,
                "server.address": url.hostname or "",
                "server.port": url.port or (443 if url.scheme == "https" else 80),
                "routemesh.backend": record.backend,
                "routemesh.attempt.index": record.index,
                "routemesh.attempt.retry": record.retry,
            },
        )
        self._attempts[record.index] = span
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
        return carrier

    def attempt_ended(self, record: AttemptRecord) -> None:
        """End a failed attempt's span; a successful one stays open until the response ends."""
        if record.error_class is None:
            return
        span = self._attempts.pop(record.index, None)
        if span is None:
            return
        span.set_attribute("error.type", record.error_class)
        if record.status is not None:
            span.set_attribute("http.response.status_code", record.status)
        span.set_status(StatusCode.ERROR, record.message or record.error_class)
        span.end()

    def finish(
        self,
        *,
        usage: Usage | None,
        response_model: str | None,
        error_class: str | None,
        message: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """End the open attempt span and the route span, with usage or the error.

        The outcome's attributes come in one call, because each attribute set on a span is
        validated one by one.
        """
        usage_attributes = _usage_attributes(usage)
        for span in self._attempts.values():
            span.set_attributes(usage_attributes)
            if response_model:
                span.set_attribute("gen_ai.response.model", response_model)
            if error_class:
                span.set_attribute("error.type", error_class)
                span.set_status(StatusCode.ERROR, message or error_class)
            span.end()
        self._attempts.clear()
        outcome = {k: v for k, v in (attributes or {}).items() if v is not None}
        self.route_span.set_attributes({**usage_attributes, **outcome})
        if error_class:
            self.route_span.set_attribute("error.type", error_class)
            self.route_span.set_status(StatusCode.ERROR, message or error_class)
        self.route_span.end()


def _usage_attributes(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {}
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cached_input_tokens": usage.cached_input_tokens,
    }
