"""OTLP/HTTP span export: finished spans queued, then encoded by hand and posted in batches.

`telemetry.tracing` calls `OtlpExporter.add` with each finished span (on the event loop);
`app.Sidecar` runs `OtlpExporter.run` as the named task `otlp-export` and closes the exporter
last when it stops, handing it `Metrics.count_spans` to count what was exported and what was
dropped. Why not the SDK's `BatchSpanProcessor` and `OTLPSpanExporter`: the SDK's
encoder builds a protobuf object per span, attribute and value, measured at 59 µs a span
(2026-12-03, 2 cores), and its processor exports from a thread that fights the event loop for the
GIL; with two spans a request, exporting cost a quarter of the sidecar's throughput. Here each
(key, value) attribute is encoded once and its bytes reused (route, backend and model names repeat
on every request), a block of attributes shared by many spans (`SpanFields.fixed`: an attempt's
target, a route's decision) is encoded once and found again by identity, the wire format is
written by hand, spans are encoded a batch at a time just before the batch is posted, and the
batch is posted with the sidecar's own HTTP/1.1 client. A test checks that the bytes parse, with
the official OTLP protobuf classes, into what the SDK's encoder makes of the same spans.

It must not decide what is sampled or recorded (the tracing module does), block the loop on the
network, or retry forever: a failed post is retried with backoff within the export timeout, then
the batch is dropped and logged, as the SDK's exporter does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from routemesh_sidecar.protocol.http1 import ConnectionPool

log = logging.getLogger(__name__)

_CACHE_LIMIT = 8192  # attribute encodings kept; values beyond it are encoded every time
_ENCODE_CHUNK = 64  # spans encoded between two turns of the loop: about 0.2 ms
_RETRYABLE = frozenset({429, 502, 503, 504})
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags in trace.proto
_DOUBLE = struct.Struct("<d")
_TIMES = struct.Struct("<BQBQ")  # start (field 7) and end (field 8), both fixed64
# trace_id (field 1, 16 bytes big-endian, as two halves) and span_id (field 2, 8 bytes)
_IDS = struct.Struct(">BBQQBBQ")
_IDS_PARENT = struct.Struct(">BBQQBBQBBQ")  # the same, then parent_span_id (field 4)
_LOW64 = 0xFFFFFFFFFFFFFFFF
# The status of every span that did not fail: one object, so the encoder knows it by identity.
UNSET_STATUS = Status(StatusCode.UNSET)
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)  # field 16, fixed32
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return bytes((value,))
    out = bytearray()
    value &= 0xFFFFFFFFFFFFFFFF  # int64 negatives are ten bytes, two's complement
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _utf8(text: str) -> bytes:
    """Text as UTF-8, as protobuf strings must be.

    A lone surrogate (JSON lets an upstream's error message carry one) becomes "?" rather than
    fail the span.
    """
    return text.encode("utf-8", "replace")


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _span_head(length: int) -> bytes:
    """The head of a Span field (2) of ScopeSpans: its tag and length."""
    return b"\x12" + _varint(length)


_SPAN_HEADS = [_span_head(length) for length in range(4096)]  # nearly every span is shorter


def _any_value(value: Any) -> bytes:  # noqa: PLR0911  (one return per AnyValue kind)
    """An AnyValue message; bool before int, since a bool is an int in Python."""
    if isinstance(value, str):
        return _field(1, _utf8(value))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    return _field(1, _utf8(str(value)))


class _KeyEntry:
    """One attribute key's encodings: the values seen with it, and the prefix of a float."""

    __slots__ = ("bools", "float_prefix", "head", "int_prefixes", "ints", "number", "seqs", "strs")

    def __init__(self, number: int, key: str) -> None:
        self.number = number
        self.head = _field(1, _utf8(key))
        self.strs: dict[Any, bytes] = {}
        self.ints: dict[Any, bytes] = {}
        self.seqs: dict[Any, bytes] = {}
        self.bools = (self._encode(False), self._encode(True))
        body_length = len(self.head) + 11  # the value: tag, length 9, then a tagged double
        self.float_prefix = (
            _varint(number << 3 | 2) + _varint(body_length) + self.head + b"\x12\x09\x21"
        )
        # An int's field up to its varint, by the varint's length (1 to 10 bytes): token counts
        # vary past any cache, and must not fall to the slow path when it is full.
        self.int_prefixes = [b""] + [
            _varint(number << 3 | 2)
            + _varint(len(self.head) + 3 + size)
            + self.head
            + bytes((0x12, 1 + size, 0x18))
            for size in range(1, 11)
        ]

    def _encode(self, value: Any) -> bytes:
        return _field(self.number, self.head + _field(2, _any_value(value)))

    def encode(self, value: Any) -> bytes:
        """The KeyValue field for this value: from the cache, but for floats (costs, times)."""
        kind = type(value)
        if kind is bool:
            return self.bools[value]
        if kind is float:
            return self.float_prefix + _DOUBLE.pack(value)
        if kind is int or kind is str:  # a bool is an int, but was answered above
            return self._int(value) if kind is int else self._cached(self.strs, value)
        if kind is list or kind is tuple:  # the decision's candidates: the same most times
            try:
                return self._cached(self.seqs, tuple(value))
            except TypeError:  # an unhashable item: not an OTel attribute, but still encoded
                return self._encode(tuple(value))
        return self._encode(value)

    def _int(self, value: int) -> bytes:
        """An int's field: its prefix and varint, kept in the cache while it has room."""
        varint = _varint(value)
        encoded = self.int_prefixes[len(varint)] + varint
        if len(self.ints) < _CACHE_LIMIT:
            self.ints[value] = encoded
        return encoded

    def _cached(self, cache: dict[Any, bytes], value: Any) -> bytes:
        encoded = cache.get(value)
        if encoded is None:
            encoded = self._encode(value)
            if len(cache) < _CACHE_LIMIT:
                cache[value] = encoded
        return encoded


class _AttributeCodec:
    """KeyValue messages, each distinct (key, value) encoded once and its bytes reused."""

    def __init__(self) -> None:
        self._keys: dict[int, dict[str, _KeyEntry]] = {}

    def key_values(self, number: int, attributes: Mapping[str, Any] | None) -> bytes:
        """Every attribute as a repeated KeyValue field `number` of the enclosing message."""
        if not attributes:
            return b""
        keys = self._keys.setdefault(number, {})
        parts: list[bytes] = []
        append = parts.append
        for key, value in attributes.items():
            entry = keys.get(key)
            if entry is None:
                entry = _KeyEntry(number, key)
                if len(keys) < _CACHE_LIMIT:
                    keys[key] = entry
            # The common cases inline: a string or an int seen before (this loop runs for every
            # attribute of every span, on the event loop).
            kind = type(value)
            if kind is str:
                encoded = entry.strs.get(value)
            elif kind is int:
                encoded = entry.ints.get(value)
            else:
                encoded = None
            append(encoded if encoded is not None else entry.encode(value))
        return b"".join(parts)


@dataclass(frozen=True)
class SpanFields:
    """What one finished span is made of, as the tracing module records it.

    Handed over when the span ends, and read again only when its batch is encoded: whoever
    made it never changes it (nor its attributes or events) after that.
    """

    name: str
    context: SpanContext
    parent: SpanContext | None
    kind: SpanKind
    attributes: Mapping[str, Any]
    start_ns: int
    end_ns: int
    events: Sequence[Event]
    status: Status
    # Attributes shared by many spans (an attempt's target, a route's decision), encoded once
    # and found again by identity; the span's own `attributes` follow, never repeating a key.
    fixed: Mapping[str, Any] | None = None


class SpanEncoder:
    """OTLP protobuf bytes: spans one at a time, then the request around a batch of them.

    A span's bytes are written in three pieces. What spans of one kind share (the name and
    kind, the shared `fixed` block) is one cached `head`, found by the name, the kind and the
    block's identity; the ids and times are packed by one `struct` call each; only the span's
    own attributes go through the attribute codec. Protobuf lets a message's fields come in any
    order, so the shared pieces are written together, whatever their field numbers.
    """

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self._attributes = _AttributeCodec()
        # (name, kind, id of the fixed block) -> (the block, its span's head); holding the
        # block keeps its id from being given to another object.
        self._heads: dict[tuple[str, int, int], tuple[Mapping[str, Any] | None, bytes]] = {}
        self._statuses: dict[tuple[int, str | None], bytes] = {}
        unset = self._status(UNSET_STATUS.status_code.value, UNSET_STATUS.description)
        self._tails = (unset + _FLAGS_LOCAL, unset + _FLAGS_REMOTE)
        resource_body = self._attributes.key_values(1, resource.attributes)
        self._resource = _field(1, resource_body)
        if resource.schema_url:
            self._resource_schema = _field(3, resource.schema_url.encode())
        else:
            self._resource_schema = b""
        scope_body = _field(1, scope.name.encode())
        if scope.version:
            scope_body += _field(2, scope.version.encode())
        self._scope = _field(1, scope_body)
        if scope.schema_url:
            self._scope += _field(3, scope.schema_url.encode())

    def request(self, fields: Sequence[bytes]) -> bytes:
        """An ExportTraceServiceRequest around spans encoded by `field` (one resource, one scope).

        The lengths are added up first and the message joined once: wrapping each span, then
        the scope, then the resource, as nested fields, copied a 512-span batch four times
        (602 µs a batch, against 60-88 µs joined once; 2026-12-06).
        """
        if not fields:
            return b""
        size = sum(map(len, fields))
        # ResourceSpans: the resource, then ScopeSpans (field 2: the scope, then the spans).
        inner = self._resource + b"\x12" + _varint(len(self._scope) + size) + self._scope
        head = b"\x0a" + _varint(len(inner) + size + len(self._resource_schema)) + inner
        return b"".join((head, *fields, self._resource_schema))

    def encode(self, spans: Sequence[SpanFields]) -> bytes:
        """The ExportTraceServiceRequest of these spans, in one step."""
        return self.request(list(map(self.field, spans)))

    def field(self, span: SpanFields) -> bytes:
        """One span as a field of its ScopeSpans: the tag, the length, then the Span message."""
        body = self.span(span)
        length = len(body)
        return (_SPAN_HEADS[length] if length < len(_SPAN_HEADS) else _span_head(length)) + body

    def span(self, span: SpanFields) -> bytes:
        """One Span message.

        This runs twice a request, so it reads what it needs the cheap way: a SpanContext is a
        tuple (trace_id, span_id, is_remote, flags, state, is_valid), unpacked in one step
        rather than through six properties, and enum members give `_value_` rather than the
        slower `.value` descriptor. The SDK-equivalence test catches a layout change.
        """
        trace_id, span_id, _, _, trace_state, _ = span.context
        high, low = trace_id >> 64, trace_id & _LOW64
        parent = span.parent
        if parent is None:
            remote = False
            ids = _IDS.pack(0x0A, 0x10, high, low, 0x12, 0x08, span_id)
        else:
            _, parent_span_id, remote, _, _, _ = parent
            ids = _IDS_PARENT.pack(
                0x0A, 0x10, high, low, 0x12, 0x08, span_id, 0x22, 0x08, parent_span_id
            )
        kind, fixed = span.kind._value_, span.fixed
        known = self._heads.get((span.name, kind, id(fixed)))
        head = known[1] if known is not None and known[0] is fixed else self._head(span, kind)
        parts = [ids, _TIMES.pack(0x39, span.start_ns, 0x41, span.end_ns), head]
        if trace_state:
            parts.append(_field(3, trace_state.to_header().encode()))
        if span.attributes:
            parts.append(self._attributes.key_values(9, span.attributes))
        for event in span.events:
            body = b"\x09" + struct.pack("<Q", event.timestamp) + _field(2, _utf8(event.name))
            parts.append(_field(11, body + self._attributes.key_values(3, event.attributes)))
        status = span.status
        if status is UNSET_STATUS:
            parts.append(self._tails[remote])
        else:
            parts.append(self._status(status.status_code._value_, status.description))
            parts.append(_FLAGS_REMOTE if remote else _FLAGS_LOCAL)
        return b"".join(parts)

    def _head(self, span: SpanFields, kind: int) -> bytes:
        """The name and kind (the proto's kinds start at 1, the SDK's at 0), then the block."""
        head = _field(5, _utf8(span.name)) + b"\x30" + _varint(kind + 1)
        if span.fixed is not None:
            head += self._attributes.key_values(9, span.fixed)
        if len(self._heads) >= _CACHE_LIMIT:
            self._heads.clear()  # blocks are replaced as tables and endpoints change: start again
        self._heads[span.name, kind, id(span.fixed)] = (span.fixed, head)
        return head

    def _status(self, code: int, description: str | None) -> bytes:
        encoded = self._statuses.get((code, description))
        if encoded is None:
            body = _field(2, _utf8(description)) if description else b""
            if code:
                body += b"\x18" + _varint(code)
            encoded = _field(15, body)
            if len(self._statuses) < _CACHE_LIMIT:
                self._statuses[(code, description)] = encoded
        return encoded


@dataclass(frozen=True)
class ExportSettings:
    """Where and how batches are posted (from the sidecar's settings)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: float = 10.0
    compression: str = "none"
    certificate: str | None = None
    batch_spans: int = 512
    interval_seconds: float = 1.0
    max_queued_spans: int = 8192


class OtlpExporter:
    """Queues finished spans, and encodes and posts them in batches from a task on the loop.

    Nothing here runs in a thread but gzip (zlib lets go of the GIL): the SDK's batch processor
    exports from one, and its fight for the GIL with the event loop cost more than the encoding.
    A span is queued as it ended and encoded with its batch, just before the post, a chunk of
    `_ENCODE_CHUNK` spans at a time with the loop free between chunks: encoding a span as it
    ended, between a request's other work, took 8 µs a span under load, against 2-5 µs in a
    batch, where the encoder's code and caches stay warm (2026-12-07, see docs/benchmarks.md).
    A queue past `max_queued_spans` drops new spans and counts them, rather than grow.
    `count(outcome, spans)` is told of every batch the collector took ("exported") and of every
    span lost ("queue_full", or "export_failed" for a batch given up on or a span that could not
    be encoded): once a batch, so the metrics cost nothing per span unless spans are dropped.
    """

    def __init__(
        self,
        encoder: SpanEncoder,
        settings: ExportSettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        count: Callable[[str, int], None] = lambda outcome, spans: None,
    ) -> None:
        self.encoder = encoder
        self.settings = settings
        self._count = count
        self._sleep = sleep
        self._queued: list[SpanFields] = []
        self._wake = asyncio.Event()
        tls = ssl.create_default_context(cafile=settings.certificate)
        self._pool = ConnectionPool(settings.url, limit=2, ssl_context=tls)
        self._headers = {"content-type": "application/x-protobuf", **settings.headers}
        if settings.compression == "gzip":
            self._headers["content-encoding"] = "gzip"

    def add(self, span: SpanFields) -> None:
        """Queue a finished span (never changed after this: see `SpanFields`)."""
        queued = self._queued
        if len(queued) >= self.settings.max_queued_spans:
            self._count("queue_full", 1)
            return
        queued.append(span)
        if len(queued) >= self.settings.batch_spans:
            self._wake.set()

    async def run(self) -> None:
        """Post whole batches as they fill, and what is queued once an interval passes without.

        A partial batch waits for the next full one or for the interval, as with the SDK's
        batch processor: posting whatever had queued while the last post was out sent batches
        of 15 spans on average under load, each an HTTP request of its own (2026-12-07, see
        docs/benchmarks.md).
        """
        while True:
            full = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.interval_seconds):
                    await self._wake.wait()
                    full = True
            self._wake.clear()
            await self._export(partial=not full)

    async def flush(self) -> None:
        """Post everything queued, one batch at a time."""
        while self._queued:
            await self._export(partial=True)

    async def _export(self, *, partial: bool) -> None:
        """Post the whole batches queued now; with `partial`, the rest queued now as well.

        The queue is read again before each batch: a `flush` may have emptied it meanwhile.
        """
        size = self.settings.batch_spans
        due = len(self._queued) if partial else len(self._queued) // size * size
        while (take := min(size, due, len(self._queued))) > 0:
            batch, self._queued = self._queued[:take], self._queued[take:]
            due -= take
            try:
                body, encoded = await self._encode(batch)
            except asyncio.CancelledError:  # stopping: `close` posts the batch, not sent yet
                self._queued[:0] = batch
                raise
            if encoded:
                await self._send(body, encoded)

    async def close(self) -> None:
        """Post what is left (within the export timeout), then close the connections."""
        try:
            await self.flush()
        finally:
            await self._pool.close()

    async def _encode(self, batch: list[SpanFields]) -> tuple[bytes, int]:
        """The batch's request body and how many spans it holds; compressed in a thread."""
        fields = self._fields(batch[:_ENCODE_CHUNK])
        for start in range(_ENCODE_CHUNK, len(batch), _ENCODE_CHUNK):
            await asyncio.sleep(0)  # requests in flight go on between chunks
            fields += self._fields(batch[start : start + _ENCODE_CHUNK])
        body = self.encoder.request(fields)
        if self.settings.compression == "gzip":  # zlib lets go of the GIL: off the loop
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(None, gzip.compress, body, 5)
        return body, len(fields)

    def _fields(self, spans: list[SpanFields]) -> list[bytes]:
        """The spans encoded; one that cannot be is dropped and counted, never the batch."""
        try:
            return list(map(self.encoder.field, spans))
        except Exception:  # a bug of one span's: the export task must go on
            fields = []
            for span in spans:
                try:
                    fields.append(self.encoder.field(span))
                except Exception:
                    log.exception("dropped a span that could not be encoded: %s", span.name)
                    self._count("export_failed", 1)
            return fields

    async def _send(self, body: bytes, spans: int) -> None:
        """Post one batch; retry a retryable failure with backoff until the timeout, then drop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_seconds
        delay = 0.5
        while True:
            retryable, reason = await self._post(body, deadline)
            if reason is None:
                self._count("exported", spans)
                return
            if not retryable or loop.time() + delay >= deadline:
                log.warning("dropped %d spans: %s (%s)", spans, reason, self.settings.url)
                self._count("export_failed", spans)
                return
            await self._sleep(delay)
            delay *= 2

    async def _post(self, body: bytes, deadline: float) -> tuple[bool, str | None]:
        """(whether to retry, why it failed); (False, None) when the collector took the batch."""
        try:
            async with asyncio.timeout_at(deadline):
                answer = await self._pool.post(
                    "", self._headers, body, connect_timeout=self.settings.timeout_seconds
                )
                await answer.read()
        except (OSError, ValueError, TimeoutError) as exc:
            return True, f"{type(exc).__name__}: {exc}"
        if 200 <= answer.status < 300:
            return False, None
        return answer.status in _RETRYABLE, f"HTTP {answer.status}"
