"""Fake model providers: real HTTP servers that speak the OpenAI, Anthropic and vLLM protocols.

Tests serve them with `ServerThread` and point the sidecar (or an SDK) at them. Each fake records
every request it receives, checks the credentials a real provider would, and plays scripted
behaviours: errors with or without Retry-After, delays, hangs, broken or stalled streams and
garbled bodies. Its default answer is deterministic and names the fake, so a test can tell which
upstream answered. Test support only: product code never imports it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

# The keys the fakes expect; tests give them to the sidecar, never to the app.
OPENAI_KEY = "sk-openai-held-by-the-sidecar"
ANTHROPIC_KEY = "sk-ant-held-by-the-sidecar"

# ----------------------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class Reply:
    """A successful answer: text (default: "Hello from NAME"), or a tool call.

    `chunk_gap_seconds` paces a stream: the wait between two events, as a model generating
    tokens would (benchmarks use it to see whether a proxy holds chunks back).
    """

    text: str | None = None
    tool_call: tuple[str, dict[str, Any]] | None = None
    chunks: int | None = None
    finish_reason: str | None = None
    chunk_gap_seconds: float = 0.0


@dataclass(frozen=True)
class Fail:
    """An error in the provider's shape, with an optional Retry-After header."""

    status: int
    message: str = "scripted failure"
    retry_after: str | None = None
    error_type: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class Delay:
    """Wait before the first byte, then behave as `then`."""

    seconds: float
    then: Behaviour = field(default_factory=Reply)


@dataclass(frozen=True)
class Hang:
    """Accept the request and never answer."""


@dataclass(frozen=True)
class BreakStream:
    """Send `after_chunks` stream events, then cut the connection (0: before any body byte)."""

    after_chunks: int


@dataclass(frozen=True)
class StreamStall:
    """Send `after_chunks` stream events, then stall forever."""

    after_chunks: int


@dataclass(frozen=True)
class Malformed:
    """A garbled body with a success status."""

    body: bytes = b'{"id": "broken", "choices": [ {not json'
    content_type: str = "application/json"
    status: int = 200


Behaviour = Reply | Fail | Delay | Hang | BreakStream | StreamStall | Malformed


@dataclass(frozen=True)
class ReceivedRequest:
    """What a fake received."""

    path: str
    headers: CIMultiDictProxy[str]
    json: Any
    raw: bytes


# ----------------------------------------------------------------------------- the base


class FakeProvider:
    """Recording, credentials and scripting shared by the fakes."""

    def __init__(self, name: str, api_key: str | None) -> None:
        self.name = name
        self.api_key = api_key
        self.requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._script: deque[Behaviour] = deque()
        self._always: Behaviour | None = None
        # Requests whose client closed the connection while the fake was still delaying or
        # hanging (a hedge's loser, cancelled): the provider would have stopped generating.
        self.abandoned: list[ReceivedRequest] = []
        self.app = web.Application()

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours, one per request; the default answer resumes after them."""
        with self._lock:
            self._script.extend(behaviours)

    def always(self, behaviour: Behaviour | None) -> None:
        """Behave this way for every request until changed (None: the default answer)."""
        with self._lock:
            self._always = behaviour

    def reset(self) -> None:
        """Forget the script, the sticky behaviour and the recorded requests."""
        with self._lock:
            self._script.clear()
            self._always = None
            self.requests.clear()
            self.abandoned.clear()

    def count(self, path: str | None = None) -> int:
        """How many requests arrived (on `path`, if given)."""
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    async def _receive(self, request: web.Request) -> tuple[ReceivedRequest, Behaviour]:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        received = ReceivedRequest(
            request.path, CIMultiDictProxy(CIMultiDict(request.headers)), body, raw
        )
        with self._lock:
            self.requests.append(received)
            if self._script:
                behaviour: Behaviour = self._script.popleft()
            else:
                behaviour = self._always or Reply()
        return received, behaviour

    def _default_text(self, reply: Reply) -> str:
        return reply.text if reply.text is not None else f"Hello from {self.name}"

    async def _settle(
        self, behaviour: Behaviour, request: web.Request, received: ReceivedRequest
    ) -> Behaviour:
        """Apply delays and hangs; return what to answer with.

        While waiting it watches the connection: a client that closes it is recorded in
        `abandoned`, and the handler stops there, as a provider stops generating.
        """
        loop = asyncio.get_running_loop()
        while isinstance(behaviour, Delay):
            await self._wait(loop.time() + behaviour.seconds, request, received)
            behaviour = behaviour.then
        if isinstance(behaviour, Hang):
            await self._wait(float("inf"), request, received)
        return behaviour

    async def _wait(self, until: float, request: web.Request, received: ReceivedRequest) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            transport = request.transport
            if transport is None or transport.is_closing():
                with self._lock:
                    self.abandoned.append(received)
                raise asyncio.CancelledError
            await asyncio.sleep(min(0.005, max(0.0, until - loop.time())))


def prompt_tokens_of(body: Any) -> int:
    """A deterministic prompt size: characters of the request JSON / 4, plus one."""
    return len(json.dumps(body)) // 4 + 1


def words(text: str, chunks: int | None) -> list[str]:
    """Split text into stream pieces that join back to it."""
    pieces = [w + " " for w in text.split(" ")]
    pieces[-1] = pieces[-1].rstrip(" ")
    if chunks and chunks < len(pieces):
        size = -(-len(pieces) // chunks)
        pieces = ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)]
    return pieces


async def stream_events(
    request: web.Request, events: list[bytes], behaviour: Behaviour
) -> web.StreamResponse:
    """Write SSE events, breaking or stalling where the behaviour says."""
    if isinstance(behaviour, BreakStream) and behaviour.after_chunks == 0:
        _cut(request)
        return web.StreamResponse()
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    gap = behaviour.chunk_gap_seconds if isinstance(behaviour, Reply) else 0.0
    for index, event in enumerate(events):
        if isinstance(behaviour, BreakStream | StreamStall) and index == behaviour.after_chunks:
            if isinstance(behaviour, StreamStall):
                await asyncio.Event().wait()
            _cut(request)
            return response
        await response.write(event)
        await asyncio.sleep(gap if index else 0)
    await response.write_eof()
    return response


def _cut(request: web.Request) -> None:
    """Abort the TCP connection, as a crashed upstream or a reset would."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE event."""
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


# ----------------------------------------------------------------------------- OpenAI and vLLM


class FakeOpenAI(FakeProvider):
    """An OpenAI-compatible server (chat, completions, embeddings, models) and vLLM's /metrics."""

    def __init__(
        self, name: str = "fake-openai", api_key: str | None = None, models: list[str] | None = None
    ) -> None:
        super().__init__(name, api_key)
        self.models = models or ["m"]
        self.gauges: dict[str, float] = {
            "vllm:num_requests_waiting": 0.0,
            "vllm:num_requests_running": 0.0,
            "vllm:kv_cache_usage_perc": 0.0,
        }
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/v1/completions", self._completions)
        self.app.router.add_post("/v1/embeddings", self._embeddings)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/metrics", self._metrics)

    def _error(
        self,
        status: int,
        message: str,
        kind: str | None,
        code: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        default = (
            "rate_limit_error"
            if status == 429
            else "server_error"
            if status >= 500
            else "invalid_request_error"
        )
        body = {"error": {"message": message, "type": kind or default, "param": None, "code": code}}
        return web.json_response(body, status=status, headers=headers)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(
                401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"
            )
        return None

    async def _prelude(
        self, request: web.Request
    ) -> tuple[ReceivedRequest, Behaviour, web.StreamResponse | None]:
        received, behaviour = await self._receive(request)
        refused = self._unauthorized(request)
        if refused is not None:
            return received, behaviour, refused
        behaviour = await self._settle(behaviour, request, received)
        if isinstance(behaviour, Fail):
            headers = {"retry-after": behaviour.retry_after} if behaviour.retry_after else None
            return (
                received,
                behaviour,
                self._error(
                    behaviour.status,
                    behaviour.message,
                    behaviour.error_type,
                    behaviour.code,
                    headers,
                ),
            )
        if isinstance(behaviour, Malformed):
            response = web.Response(
                status=behaviour.status,
                body=behaviour.body,
                headers={"content-type": behaviour.content_type},
            )
            return received, behaviour, response
        return received, behaviour, None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        received, behaviour, early = await self._prelude(request)
        if early is not None:
            return early
        body = received.json or {}
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        usage = self._usage(body, reply)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await stream_events(
                request, self._chat_chunks(body, reply, usage, include_usage), behaviour
            )
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        finish = reply.finish_reason or "stop"
        if reply.tool_call and body.get("tools"):
            name, arguments = reply.tool_call
            message["tool_calls"] = [
                {
                    "id": "call_fake_1",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)},
                }
            ]
            finish = reply.finish_reason or "tool_calls"
        else:
            message["content"] = self._default_text(reply)
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": body.get("model", self.models[0]),
                "choices": [
                    {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
                ],
                "usage": usage,
            }
        )

    def _usage(self, body: Any, reply: Reply) -> dict[str, Any]:
        prompt = prompt_tokens_of(body)
        completion = len(words(self._default_text(reply), None))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    def _chat_chunks(
        self, body: dict[str, Any], reply: Reply, usage: dict[str, Any], include_usage: bool
    ) -> list[bytes]:
        model = body.get("model", self.models[0])

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return sse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1_700_000_000,
                    "model": model,
                    "choices": [
                        {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                    ],
                }
            )

        events = [chunk({"role": "assistant", "content": ""})]
        if reply.tool_call and body.get("tools"):
            name, arguments = reply.tool_call
            text = json.dumps(arguments)
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_fake_1",
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            half = len(text) // 2
            for piece in (text[:half], text[half:]):
                events.append(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                )
            events.append(chunk({}, reply.finish_reason or "tool_calls"))
        else:
            events += [
                chunk({"content": piece})
                for piece in words(self._default_text(reply), reply.chunks)
            ]
            events.append(chunk({}, reply.finish_reason or "stop"))
        if include_usage:
            events.append(
                sse(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": 1_700_000_000,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        events.append(sse("[DONE]"))
        return events

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        received, behaviour, early = await self._prelude(request)
        if early is not None:
            return early
        body = received.json or {}
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        return web.json_response(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1_700_000_000,
                "model": body.get("model", self.models[0]),
                "choices": [
                    {
                        "index": 0,
                        "text": self._default_text(reply),
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": self._usage(body, reply),
            }
        )

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        received, _, early = await self._prelude(request)
        if early is not None:
            return early
        body = received.json or {}
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [float(len(str(item)) % 7), 0.5, float(i)],
            }
            for i, item in enumerate(items)
        ]
        tokens = prompt_tokens_of(body)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        await self._receive(request)
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _metrics(self, request: web.Request) -> web.Response:
        lines = []
        for metric, value in self.gauges.items():
            lines += [
                f"# TYPE {metric} gauge",
                f'{metric}{{model_name="{self.models[0]}"}} {value}',
            ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


# ----------------------------------------------------------------------------- Anthropic


class FakeAnthropic(FakeProvider):
    """An Anthropic Messages server, with the real event sequence when streaming."""

    def __init__(self, name: str = "fake-anthropic", api_key: str | None = None) -> None:
        super().__init__(name, api_key)
        self.app.router.add_post("/v1/messages", self._messages)

    def _error(
        self,
        status: int,
        message: str,
        kind: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }
        body = {
            "type": "error",
            "error": {"type": kind or kinds.get(status, "api_error"), "message": message},
        }
        return web.json_response(body, status=status, headers=headers)

    def _refusal(self, request: web.Request, body: Any) -> web.Response | None:
        key = request.headers.get("x-api-key") or request.headers.get(
            "authorization", ""
        ).removeprefix("Bearer ")
        if self.api_key is not None and key != self.api_key:
            return self._error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        if not isinstance(body, dict) or not isinstance(body.get("max_tokens"), int):
            return self._error(400, "max_tokens: Field required")
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        received, behaviour = await self._receive(request)
        body = received.json
        refused = self._refusal(request, body)
        if refused is not None:
            return refused
        behaviour = await self._settle(behaviour, request, received)
        if isinstance(behaviour, Fail):
            headers = {"retry-after": behaviour.retry_after} if behaviour.retry_after else None
            return self._error(behaviour.status, behaviour.message, behaviour.error_type, headers)
        if isinstance(behaviour, Malformed):
            return web.Response(
                status=behaviour.status,
                body=behaviour.body,
                headers={"content-type": behaviour.content_type},
            )
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        text = self._default_text(reply)
        usage = {
            "input_tokens": prompt_tokens_of(body),
            "output_tokens": len(words(text, None)),
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }
        tool = reply.tool_call if reply.tool_call and body.get("tools") else None
        if body.get("stream"):
            return await stream_events(
                request, self._events(body, reply, text, usage, tool), behaviour
            )
        content: list[dict[str, Any]] = (
            [{"type": "tool_use", "id": "toolu_fake_1", "name": tool[0], "input": tool[1]}]
            if tool
            else [{"type": "text", "text": text}]
        )
        return web.json_response(
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": body.get("model"),
                "content": content,
                "stop_reason": "tool_use" if tool else (reply.finish_reason or "end_turn"),
                "stop_sequence": None,
                "usage": usage,
            }
        )

    def _events(
        self,
        body: dict[str, Any],
        reply: Reply,
        text: str,
        usage: dict[str, Any],
        tool: tuple[str, dict[str, Any]] | None,
    ) -> list[bytes]:
        start_usage = {**usage, "output_tokens": 1}
        message: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        events = [sse({"type": "message_start", "message": message}, "message_start")]
        if tool:
            block = {"type": "tool_use", "id": "toolu_fake_1", "name": tool[0], "input": {}}
            events.append(
                sse(
                    {"type": "content_block_start", "index": 0, "content_block": block},
                    "content_block_start",
                )
            )
            arguments = json.dumps(tool[1])
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                events.append(
                    sse(
                        {"type": "content_block_delta", "index": 0, "delta": delta},
                        "content_block_delta",
                    )
                )
        else:
            events.append(
                sse(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                    "content_block_start",
                )
            )
            events.append(sse({"type": "ping"}, "ping"))
            for piece in words(text, reply.chunks):
                delta = {"type": "text_delta", "text": piece}
                events.append(
                    sse(
                        {"type": "content_block_delta", "index": 0, "delta": delta},
                        "content_block_delta",
                    )
                )
        events.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        stop = "tool_use" if tool else (reply.finish_reason or "end_turn")
        events.append(
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
                "message_delta",
            )
        )
        events.append(sse({"type": "message_stop"}, "message_stop"))
        return events
