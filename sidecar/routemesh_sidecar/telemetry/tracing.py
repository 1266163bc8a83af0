"""Spans: one route span per request, one child span per attempt.

The listener opens a `RequestTrace` per request, with the W3C trace context taken from the
downstream's headers; the attempt loop reports attempts to it and sends the attempt span's
context upstream. Attempt spans follow the OpenTelemetry GenAI conventions; the route span carries
the decision under `routemesh.*`. Content is never recorded unless the route table's telemetry
opts in: the listener then passes the content attributes (`telemetry.content`) in. It reads
results and never influences routing.

Spans are kept as plain records while the request runs; when one ends it goes to the sidecar's
OTLP exporter (`telemetry.otlp`, which queues it and encodes it with its batch), or to an SDK
span processor as a `ReadableSpan` (tests read spans that way). The SDK's live `Span` validates
every attribute one by one, under a lock, which cost a fifth of the sidecar's CPU per request;
the attributes here are built by this module from known types, so that work buys nothing.
Attributes that repeat from request to request (an attempt's target, the route span's decision
block from the listener) are one shared, never-mutated mapping, which the encoder writes once.
The trade: these spans are not visible to `opentelemetry.trace.get_current_span` (nothing in the
sidecar needs that).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_current_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.telemetry.otlp import UNSET_STATUS, OtlpExporter, SpanFields
from routemesh_sidecar.telemetry.records import AttemptRecord

ROUTE_SPAN_NAME = "routemesh.route"
SCOPE = InstrumentationScope("routemesh.sidecar")
_PROPAGATOR = TraceContextTextMapPropagator()
_OPERATION_NAMES = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_ALL_TRACES = 2**64
_TARGET_BLOCKS = 4096  # targets whose attempt attributes are kept; past it, the cache starts over
# Immutable (its updates make new ones), so one serves every request that came without one.
_NO_TRACE_STATE = TraceState()


def sampled(parent: SpanContext | None, trace_id: int, ratio: float) -> bool:
    """Follow a valid parent's decision; otherwise compare the trace id's low bits with the ratio.

    Deciding on the trace id (as OpenTelemetry's TraceIdRatioBased does) keeps every sidecar on a
    trace agreeing without talking to each other.
    """
    if parent is not None and parent.is_valid:
        return bool(parent.trace_flags.sampled)
    return (trace_id & (_ALL_TRACES - 1)) < ratio * _ALL_TRACES


class SpanRecorder:
    """Where finished spans go: the sidecar's OTLP exporter, or an SDK span processor, or both.

    In production only one is set: the exporter when an OTLP endpoint is configured. Tests hand
    in an SDK processor (an in-memory exporter) to read spans as `ReadableSpan`s.
    """

    def __init__(
        self,
        processor: SpanProcessor | None,
        resource: Resource,
        sampling_ratio: Callable[[], float],
        ids: IdGenerator | None = None,
        exporter: OtlpExporter | None = None,
    ) -> None:
        self.processor = processor
        self.exporter = exporter
        self.resource = resource
        self.sampling_ratio = sampling_ratio
        self.ids = ids or RandomIdGenerator()
        self._targets: dict[tuple[str, str, str, str, str], Mapping[str, Any]] = {}

    def target_attributes(self, operation: str, record: AttemptRecord) -> Mapping[str, Any]:
        """The attributes an attempt span has from its target alone, one shared block a target.

        The same (operation, provider, model, endpoint, backend) gives the same object, so the
        encoder writes it once and reuses its bytes by identity, and the endpoint's URL is split
        once, not per attempt. Never mutated: an attempt's own attributes go beside it.
        """
        key = (operation, record.api, record.model, record.endpoint, record.backend)
        block = self._targets.get(key)
        if block is None:
            url = urlsplit(record.endpoint)
            block = MappingProxyType(
                {
                    "gen_ai.operation.name": operation,
                    "gen_ai.provider.name": record.api,
                    "gen_ai.request.model": record.model,
                    "server.address": url.hostname or "",
                    "server.port": url.port or (443 if url.scheme == "https" else 80),
                    "routemesh.backend": record.backend,
                }
            )
            if len(self._targets) >= _TARGET_BLOCKS:
                self._targets.clear()  # endpoints come and go: start again rather than stop
            self._targets[key] = block
        return block

    def emit(self, span: SpanFields) -> None:
        """Hand a finished span to the exporter and the processor."""
        if self.exporter is not None:
            self.exporter.add(span)
        if self.processor is not None:
            self.processor.on_end(readable(span, self.resource))


@dataclass
class _OpenSpan:
    """A span being recorded."""

    name: str
    context: SpanContext
    parent: SpanContext | None
    kind: SpanKind
    attributes: dict[str, Any]
    start_ns: int = field(default_factory=time.time_ns)
    events: list[Event] = field(default_factory=list)
    status: Status = UNSET_STATUS
    fixed: Mapping[str, Any] | None = None  # a shared block, before `attributes`

    def fail(self, error_class: str, message: str | None) -> None:
        self.attributes["error.type"] = error_class
        self.status = Status(StatusCode.ERROR, message or error_class)

    def finished(self) -> SpanFields:
        return SpanFields(
            self.name,
            self.context,
            self.parent,
            self.kind,
            self.attributes,
            self.start_ns,
            time.time_ns(),
            self.events,
            self.status,
            self.fixed,
        )


class RequestTrace:
    """The spans of one downstream request."""

    def __init__(
        self,
        recorder: SpanRecorder,
        downstream_headers: Mapping[str, str],
        operation: str,
        attributes: dict[str, Any],
        fixed: Mapping[str, Any] | None = None,
    ) -> None:
        """`fixed`: route-span attributes shared by many requests (a never-mutated block)."""
        self._recorder = recorder
        self._operation = _OPERATION_NAMES.get(operation, operation)
        parent = _parent_context(downstream_headers)
        trace_id = parent.trace_id if parent is not None else recorder.ids.generate_trace_id()
        self.sampled = sampled(parent, trace_id, recorder.sampling_ratio())
        self._flags = _SAMPLED if self.sampled else _NOT_SAMPLED
        self._trace_state = parent.trace_state if parent is not None else _NO_TRACE_STATE
        self.route_span = _OpenSpan(
            ROUTE_SPAN_NAME,
            self._context(trace_id),
            parent,
            SpanKind.SERVER,
            {k: v for k, v in attributes.items() if v is not None},
            fixed=fixed,
        )
        self._attempts: dict[int, _OpenSpan] = {}

    def _context(self, trace_id: int) -> SpanContext:
        return SpanContext(
            trace_id,
            self._recorder.ids.generate_span_id(),
            is_remote=False,
            trace_flags=self._flags,
            trace_state=self._trace_state,
        )

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        """Add an event to the route span."""
        self.route_span.events.append(Event(name, dict(attributes or {})))

    def attempt_started(self, record: AttemptRecord) -> Mapping[str, str]:
        """Open the attempt's span and return the traceparent headers to send upstream."""
        route = self.route_span.context
        span = _OpenSpan(
            f"{self._operation} {record.model}",
            self._context(route.trace_id),
            route,
            SpanKind.CLIENT,
            {"routemesh.attempt.index": record.index, "routemesh.attempt.retry": record.retry},
            fixed=self._recorder.target_attributes(self._operation, record),
        )
        if record.hedge:
            span.attributes["routemesh.attempt.hedge"] = True
        self._attempts[record.index] = span
        return {"traceparent": _traceparent(span.context), **_tracestate(span.context)}

    def attempt_ended(self, record: AttemptRecord) -> None:
        """End a failed, escalated or cancelled attempt's span; a used one stays open until the end.

        An escalated attempt (a cascade's answer the quality gate rejected) succeeded as far as
        the upstream goes: its span is not an error, and says why the answer was not used.
        """
        if record.error_class is None and record.escalation is None and not record.cancelled:
            return
        span = self._attempts.pop(record.index, None)
        if span is None:
            return
        if record.cancelled:  # a hedge race's loser: no error, it was not needed
            span.attributes["routemesh.attempt.cancelled"] = True
            self._emit(span)
            return
        if record.status is not None:
            span.attributes["http.response.status_code"] = record.status
        if record.error_class is not None:
            span.fail(record.error_class, record.message)
        else:
            span.attributes.update(_usage_attributes(record.usage))
            span.attributes["routemesh.cascade.escalated"] = True
            span.attributes["routemesh.cascade.reasons"] = list(record.escalation or ())
        self._emit(span)

    def finish(
        self,
        *,
        usage: Usage | None,
        response_model: str | None,
        error_class: str | None,
        message: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        content: Mapping[str, Any] | None = None,
    ) -> None:
        """End the open attempt span and the route span, with usage or the error.

        `content` (the GenAI content attributes, only when a policy opts in) goes on the attempt
        that answered: in the conventions, it belongs to the inference span.
        """
        usage_attributes = _usage_attributes(usage)
        for span in self._attempts.values():
            span.attributes.update(usage_attributes)
            span.attributes.update(content or {})
            if response_model:
                span.attributes["gen_ai.response.model"] = response_model
            if error_class:
                span.fail(error_class, message)
            self._emit(span)
        self._attempts.clear()
        route = self.route_span
        route.attributes.update(usage_attributes)
        route.attributes.update((k, v) for k, v in (attributes or {}).items() if v is not None)
        if error_class:
            route.fail(error_class, message)
        self._emit(route)

    def _emit(self, span: _OpenSpan) -> None:
        if self.sampled:
            self._recorder.emit(span.finished())


def readable(span: SpanFields, resource: Resource) -> ReadableSpan:
    """The SDK's form of a finished span, for span processors."""
    attributes = span.attributes if span.fixed is None else {**span.fixed, **span.attributes}
    return ReadableSpan(
        span.name,
        context=span.context,
        parent=span.parent,
        resource=resource,
        attributes=attributes,
        events=span.events,
        kind=span.kind,
        status=span.status,
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=SCOPE,
    )


def _parent_context(headers: Mapping[str, str]) -> SpanContext | None:
    """The downstream's W3C trace context, when it sent a valid one."""
    if "traceparent" not in headers:
        return None
    parent = get_current_span(_PROPAGATOR.extract(carrier=headers)).get_span_context()
    return parent if parent.is_valid else None


def _traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _tracestate(context: SpanContext) -> dict[str, str]:
    if context.trace_state is _NO_TRACE_STATE:
        return {}
    state = context.trace_state.to_header()
    return {"tracestate": state} if state else {}


def _usage_attributes(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {}
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cached_input_tokens": usage.cached_input_tokens,
    }
