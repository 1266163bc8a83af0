"""One attempt: send a request to one endpoint of one backend and classify what comes back.

The attempt loop (`upstream.executor`) calls `UpstreamClient.send` once per attempt. This module
builds the upstream body in the backend's API (translating when the downstream spoke the other
one), adds the backend's credentials (the downstream's own keys are never forwarded), applies the
connect and first-byte timeouts, and turns every failure into an `UpstreamFailure` with its class.

For a streaming request it returns once the first event has arrived, so that a failure before
the first byte can still fail over invisibly; the rest is relayed by `UpstreamStream`. It never
decides whether to retry or fall back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from routemesh_sidecar.protocol.codec import dumps_json, encode_json
from routemesh_sidecar.protocol.http1 import ConnectionPool, MalformedResponse, UpstreamResponse
from routemesh_sidecar.protocol.sse import SSEEvent, SSEParser, encode_event
from routemesh_sidecar.protocol.translate import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_request_to_openai,
    anthropic_response_to_openai,
    openai_request_to_anthropic,
    openai_response_to_anthropic,
)
from routemesh_sidecar.protocol.usage import Usage, usage_from_anthropic, usage_from_openai
from routemesh_sidecar.routetable import Api, Backend, Credentials, Endpoint, ErrorClass, ModelInfo
from routemesh_sidecar.upstream.classify import (
    UpstreamFailure,
    classify_exception,
    failure_from_response,
)

Operation = Literal["chat", "completions", "embeddings"]

_PATHS: dict[tuple[Api, Operation], str] = {
    ("openai", "chat"): "/chat/completions",
    ("openai", "completions"): "/completions",
    ("openai", "embeddings"): "/embeddings",
    ("anthropic", "chat"): "/messages",
}
ANTHROPIC_VERSION = "2023-06-01"
# Downstream headers an upstream of the same API may need; everything else (above all any key
# the app sent) is dropped.
_FORWARDED_HEADERS: dict[Api, tuple[str, ...]] = {
    "openai": (),
    "anthropic": ("anthropic-version", "anthropic-beta"),
}
_MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True)
class DownstreamCall:
    """What the downstream asked for, in its own API's shape."""

    api: Api
    operation: Operation
    body: dict[str, Any]
    headers: Mapping[str, str]
    raw: bytes | None = None  # the body as received, sent on unchanged when nothing must change

    @property
    def stream(self) -> bool:
        """Whether the downstream asked for server-sent events."""
        return bool(self.body.get("stream"))

    @property
    def wants_stream_usage(self) -> bool:
        """An OpenAI downstream gets the final usage chunk only if it asked for it."""
        if self.api == "anthropic":
            return True
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))


@dataclass(frozen=True)
class AttemptTarget:
    """Where one attempt goes."""

    backend_name: str
    backend: Backend
    endpoint: Endpoint
    model: str
    model_info: ModelInfo


@dataclass
class UpstreamReply:
    """A complete, successful non-streaming answer, already in the downstream's API."""

    status: int
    body: bytes  # the JSON to send downstream: the upstream's own bytes unless translated
    usage: Usage | None
    response_model: str | None
    headers: Mapping[str, str] = field(default_factory=dict)  # for rate-limit headroom


class CredentialStore:
    """Reads API keys from files (mounted Secrets) or a variables mapping, when first needed.

    A file is re-read when it changes, so a rotated Secret takes effect without a restart.
    """

    def __init__(self, variables: Mapping[str, str]) -> None:
        self._variables = variables
        self._files: dict[Path, tuple[float, str]] = {}

    def key_for(self, credentials: Credentials | None) -> str | None:
        """The API key, or None when the backend needs none."""
        if credentials is None:
            return None
        if credentials.file is not None:
            return self._read_file(credentials.file)
        return self._variables.get(credentials.env or "")

    def _read_file(self, path: Path) -> str | None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        cached = self._files.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
        key = path.read_text().strip()
        self._files[path] = (mtime, key)
        return key


def upstream_body(call: DownstreamCall, target: AttemptTarget) -> dict[str, Any]:
    """The request body in the backend's API, for the target's model."""
    api = target.backend.api
    if call.api == api:
        body = dict(call.body)
    elif call.api == "openai":
        default_max = target.model_info.max_output_tokens or 4096
        body = openai_request_to_anthropic(call.body, default_max_tokens=default_max)
    else:
        body = anthropic_request_to_openai(call.body)
    body["model"] = target.model
    if api == "openai" and body.get("stream"):
        # Ask for the usage chunk so that streams are accounted; it is stripped again for a
        # downstream that did not ask for it.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


def upstream_bytes(call: DownstreamCall, target: AttemptTarget) -> bytes:
    """The encoded upstream body: the downstream's own bytes when nothing in them must change.

    That is a non-streaming request to a backend of the same API for the model it named; a
    stream needs the usage option added, and another model or API needs a new body.
    """
    if (
        call.raw is not None
        and call.api == target.backend.api
        and not call.stream
        and call.body.get("model") == target.model
    ):
        return call.raw
    return encode_json(upstream_body(call, target))


def upstream_headers(
    call: DownstreamCall, api: Api, key: str | None, extra: Mapping[str, str]
) -> dict[str, str]:
    """Headers for the upstream: content type, credentials, and the few forwarded ones."""
    headers = {"content-type": "application/json", **extra}
    if call.api == api:
        for name in _FORWARDED_HEADERS[api]:
            if name in call.headers:
                headers[name] = call.headers[name]
    if api == "anthropic":
        headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
        if key:
            headers["x-api-key"] = key
    elif key:
        headers["authorization"] = f"Bearer {key}"
    return headers


class UpstreamPool:
    """One keep-alive connection pool per endpoint, created when first used."""

    def __init__(self, limit_per_endpoint: int = 256) -> None:
        self._limit = limit_per_endpoint
        self._pools: dict[str, ConnectionPool] = {}
        self._ssl: ssl.SSLContext | None = None

    def pool(self, endpoint: Endpoint) -> ConnectionPool:
        """The pool of the endpoint's URL (its path prefixes every request's path)."""
        pool = self._pools.get(endpoint.url)
        if pool is None:
            pool = self._pools[endpoint.url] = ConnectionPool(
                endpoint.url, limit=self._limit, ssl_context=self._tls()
            )
        return pool

    def _tls(self) -> ssl.SSLContext:
        """The system's trust store, loaded once (it costs milliseconds) for every pool."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def close(self) -> None:
        """Close every pool."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()


@dataclass
class AttemptTimeouts:
    """The time limits of one attempt, in seconds."""

    connect: float
    first_byte: float
    remaining: float  # seconds left of the request's deadline (or of the per-try timeout)


class UpstreamClient:
    """Sends attempts; owns the pools and the credentials."""

    def __init__(
        self, pool: UpstreamPool, credentials: CredentialStore, wall: Callable[[], float]
    ) -> None:
        self._pool = pool
        self._credentials = credentials
        self._wall = wall

    async def send(
        self,
        call: DownstreamCall,
        target: AttemptTarget,
        timeouts: AttemptTimeouts,
        trace_headers: Mapping[str, str],
    ) -> UpstreamReply | UpstreamStream:
        """Run one attempt; raise `UpstreamFailure` (classified) if it fails."""
        api = target.backend.api
        key = self._credentials.key_for(target.backend.credentials)
        body = upstream_bytes(call, target)
        headers = upstream_headers(call, api, key, trace_headers)
        now = asyncio.get_running_loop().time()
        deadline = now + timeouts.remaining
        first_byte_by = min(now + timeouts.first_byte, deadline)
        pool = self._pool.pool(target.endpoint)
        response: UpstreamResponse | None = None
        try:
            async with asyncio.timeout_at(first_byte_by) as limit:
                response = await pool.post(
                    _PATHS[(api, call.operation)],
                    headers,
                    body,
                    connect_timeout=timeouts.connect,
                )
                if response.status >= 400:
                    raw = await response.content.read(_MAX_ERROR_BODY)
                    raise failure_from_response(
                        response.status, response.headers, raw, self._wall()
                    )
                if call.stream:
                    stream = UpstreamStream(call, target, response, deadline)
                    await stream.read_first_event()
                    return stream
                if not response.ended:  # the rest may take until the request's deadline
                    limit.reschedule(deadline)
                raw = await response.read()
            reply = _reply(call, target, response.status, raw)
            reply.headers = response.headers
            return reply
        except (TimeoutError, OSError, ValueError) as exc:
            _release(response)
            raise UpstreamFailure(classify_exception(exc), _describe(exc)) from exc
        except BaseException:  # classified already, or cancelled (a hedge's loser): close now
            _release(response)
            raise


def _release(response: UpstreamResponse | None) -> None:
    if response is not None:
        response.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "upstream did not answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _reply(call: DownstreamCall, target: AttemptTarget, status: int, raw: bytes) -> UpstreamReply:
    """Check a successful body, read its usage, and translate it if the APIs differ.

    An upstream of the downstream's own API has its bytes passed on unchanged; they are parsed
    only to be sure they are a whole JSON object (never a silent truncation) and for the usage.
    """
    try:
        data = orjson.loads(raw)
    except ValueError as exc:
        raise UpstreamFailure("bad_response", f"upstream body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UpstreamFailure("bad_response", "upstream body is not a JSON object")
    api = target.backend.api
    usage = usage_from_anthropic(data) if api == "anthropic" else usage_from_openai(data)
    response_model = data.get("model") if isinstance(data.get("model"), str) else None
    if call.api == api:
        return UpstreamReply(status, raw, usage, response_model)
    requested = str(call.body.get("model", target.model))
    try:
        if api == "anthropic":
            data = anthropic_response_to_openai(data, model=requested, created=0)
        else:
            data = openai_response_to_anthropic(data, model=requested)
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamFailure("bad_response", f"cannot translate upstream body: {exc}") from exc
    return UpstreamReply(status, encode_json(data), usage, response_model)


class StreamBroken(Exception):
    """The upstream stream failed after its first event was relayed."""

    def __init__(self, error_class: ErrorClass, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message


@dataclass
class UpstreamStream:
    """A streaming answer whose first event has arrived; relays the rest, translated if needed.

    `relay()` yields downstream-ready bytes event by event (never buffering the stream). It raises
    `StreamBroken` if the upstream ends without its terminating event or the connection fails, so
    that the caller ends the downstream stream with an error rather than a clean end.
    """

    call: DownstreamCall
    target: AttemptTarget
    response: UpstreamResponse
    deadline: float  # loop time by which the whole stream must have ended
    usage: Usage | None = None
    response_model: str | None = None
    _parser: SSEParser = field(default_factory=SSEParser)
    _pending: list[SSEEvent] = field(default_factory=list)
    _done: bool = False
    _translator: AnthropicToOpenAIStream | OpenAIToAnthropicStream | None = None
    # The text the upstream streamed, kept so that a stream cut before its usage arrived can
    # still be counted (and billed) by what was received.
    _output: list[str] = field(default_factory=list)
    # Told how the stream ended (None: properly), so health counts a stream by its end.
    on_end: Callable[[ErrorClass | None], None] | None = None

    def __post_init__(self) -> None:
        api, downstream = self.target.backend.api, self.call.api
        model = str(self.call.body.get("model", self.target.model))
        if api == "anthropic" and downstream == "openai":
            self._translator = AnthropicToOpenAIStream(model=model, created=0)
        elif api == "openai" and downstream == "anthropic":
            self._translator = OpenAIToAnthropicStream(model=model, message_id="msg_routemesh")

    @property
    def output_text(self) -> str:
        """What the upstream streamed so far, as text."""
        return "".join(self._output)

    async def read_first_event(self) -> None:
        """Read until one event has arrived; an error event here is a failure (it can fail over)."""
        content_type = self.response.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            raise UpstreamFailure("bad_response", f"stream answered with {content_type!r}")
        while not self._pending:
            chunk = await self.response.content.readany()
            if not chunk:
                raise UpstreamFailure("server_error", "upstream closed the stream before any event")
            self._pending.extend(self._parser.feed(chunk))
        first = self._pending[0]
        if first.event == "error" or first.data.startswith('{"error"'):
            raise UpstreamFailure(*_stream_error(first.data))

    async def relay(self) -> AsyncGenerator[bytes, None]:
        """Yield downstream bytes for each upstream event until the stream's proper end."""
        ended: ErrorClass | None = "stream_broken"  # unless it reaches its end or breaks known
        try:
            async with contextlib.aclosing(self._relay()) as events:
                async for data in events:
                    yield data
            ended = None
        except StreamBroken as broken:
            ended = broken.error_class
            raise
        except (GeneratorExit, asyncio.CancelledError):
            # The downstream stopped reading, or the request was cancelled while the stream
            # was read (a cascade buffers it): no fault of the upstream's.
            ended = None
            raise
        finally:
            self._ended(ended)

    def abandon(self) -> None:
        """Close the upstream response without relaying it (the downstream went away)."""
        self.response.close()
        self._ended(None)

    def _ended(self, error_class: ErrorClass | None) -> None:
        """Tell `on_end` once how the stream ended."""
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end(error_class)

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        # The request's deadline fails the answer once, rather than a timeout around each read.
        self.response.fail_at(self.deadline, TimeoutError())
        try:
            while True:
                out, broken = self._handle_pending()
                if out:
                    yield out
                if broken is not None:
                    raise broken
                if self._done:
                    return
                try:
                    chunk = await self.response.content.readany()
                except TimeoutError as exc:
                    raise StreamBroken(
                        "timeout", "the request's total timeout ended the stream"
                    ) from exc
                if not chunk:
                    raise StreamBroken("stream_broken", "upstream ended the stream before its end")
                self._pending.extend(self._parser.feed(chunk))
        except (OSError, MalformedResponse) as exc:
            raise StreamBroken(
                "stream_broken", f"upstream stream failed: {_describe(exc)}"
            ) from exc
        finally:
            # A stream that reached its terminating event keeps its connection (the chunked
            # end follows at once); one that broke, or was cut, closes it.
            if self._done:
                self.response.release()
            else:
                self.response.close()

    def _handle_pending(self) -> tuple[bytes, Exception | None]:
        """The downstream bytes of every event that has arrived, joined into one write.

        Events that came in one read go out in one write (a write per event cost a system call
        each); nothing waits for more. An error event (or one that cannot be read) ends the
        batch: the events before it still go out, then the error is raised, as one by one.
        """
        outputs: list[bytes] = []
        broken: Exception | None = None
        for event in self._pending:
            try:
                out = self._handle(event)
            except Exception as exc:  # re-raised by the caller, after the events before it
                broken = exc
                break
            if out:
                outputs.append(out)
        self._pending.clear()
        return b"".join(outputs), broken

    def _handle(self, event: SSEEvent) -> bytes:
        if event.event == "error" or event.data.startswith('{"error"'):
            error_class, message = _stream_error(event.data)[:2]
            raise StreamBroken(error_class, message)
        if self.target.backend.api == "openai":
            return self._from_openai(event)
        return self._from_anthropic(event)

    def _from_openai(self, event: SSEEvent) -> bytes:
        if event.data == "[DONE]":
            self._done = True
            if isinstance(self._translator, OpenAIToAnthropicStream):
                return b"".join(
                    encode_event(dumps_json(d), e) for e, d in self._translator.finish()
                )
            return encode_event("[DONE]")
        chunk = orjson.loads(event.data)
        if isinstance(chunk.get("model"), str):
            self.response_model = chunk["model"]
        choices = chunk.get("choices")
        usage_only = not choices and chunk.get("usage")
        if chunk.get("usage"):
            self.usage = usage_from_openai(chunk)
        for choice in choices or ():
            content = (
                (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
            )
            if isinstance(content, str):
                self._output.append(content)
        if isinstance(self._translator, OpenAIToAnthropicStream):
            return b"".join(encode_event(dumps_json(d), e) for e, d in self._translator.feed(chunk))
        if usage_only and not self.call.wants_stream_usage:
            return b""
        return encode_event(event.data)

    def _from_anthropic(self, event: SSEEvent) -> bytes:
        data = orjson.loads(event.data)
        name = event.event or str(data.get("type", ""))
        if name == "content_block_delta":
            text = (data.get("delta") or {}).get("text")
            if isinstance(text, str):
                self._output.append(text)
        if name == "message_stop":
            self._done = True
        if isinstance(self._translator, AnthropicToOpenAIStream):
            chunks = self._translator.feed(name, data)
            self.usage = self._translator.usage
            out = b"".join(
                encode_event(dumps_json(c))
                for c in chunks
                if c.get("choices") or self.call.wants_stream_usage
            )
            return out + (encode_event("[DONE]") if self._done else b"")
        self._track_anthropic_usage(name, data)
        return encode_event(event.data, event.event)

    def _track_anthropic_usage(self, name: str, data: dict[str, Any]) -> None:
        if name == "message_start":
            message = data.get("message") or {}
            self.response_model = message.get("model", self.response_model)
            self.usage = usage_from_anthropic(message)
        elif name == "message_delta" and self.usage is not None:
            delta_usage = data.get("usage") or {}
            if "output_tokens" in delta_usage:
                self.usage = Usage(
                    input_tokens=self.usage.input_tokens,
                    output_tokens=int(delta_usage["output_tokens"]),
                    cached_input_tokens=self.usage.cached_input_tokens,
                )


def _stream_error(data: str) -> tuple[ErrorClass, str, int | None]:
    """Classify an error event sent inside a stream (both APIs put it in `error`)."""
    try:
        error = json.loads(data).get("error") or {}
    except (ValueError, AttributeError):
        return ("bad_response", "upstream sent an unreadable error event", None)
    kind = str(error.get("type", ""))
    message = str(error.get("message", "upstream stream error"))
    if "overloaded" in kind:
        return ("overloaded", message, None)
    if "rate_limit" in kind:
        return ("rate_limited", message, None)
    return ("server_error", message, None)
