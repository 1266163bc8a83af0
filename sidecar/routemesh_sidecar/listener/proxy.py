"""The downstream listener: the OpenAI- and Anthropic-compatible API the app calls.

`app` builds it with the parts it needs. For each request it reads the body under a size limit,
validates it (a bad request gets an error in the called API's shape and nothing goes upstream),
routes it with the table the request started with, runs the attempts, and writes the answer:
whole, or as server-sent events relayed one by one. A stream that fails after its first byte ends
with an error event the client sees, never with a clean end.

It owns no routing, retry or classification logic; it wires them to HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from routemesh_sidecar.listener.server import (
    Answer,
    BodyTooLarge,
    DownstreamRequest,
    Handler,
    ListenerServer,
    ServerLimits,
    StreamAnswer,
    UnreadableBody,
)
from routemesh_sidecar.listener.shadow import Shadowed, Shadowing, shadow_attributes
from routemesh_sidecar.protocol.anthropic import parse_messages_request
from routemesh_sidecar.protocol.codec import dumps_json, encode_json
from routemesh_sidecar.protocol.errors import ApiError, anthropic_error, openai_error
from routemesh_sidecar.protocol.openai import (
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
)
from routemesh_sidecar.protocol.sse import encode_event
from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.routetable import (
    ActiveRouteTable,
    Api,
    ModelInfo,
    Route,
    RouteTable,
    TableRefused,
)
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.learned import LearnedRouting
from routemesh_sidecar.routing.pipeline import (
    Decision,
    NoCandidate,
    NoHealthyUpstream,
    NoRoute,
    Router,
)
from routemesh_sidecar.routing.semantic import EmbeddingBusy, SemanticMatcher
from routemesh_sidecar.routing.signals import CHARS_PER_TOKEN
from routemesh_sidecar.routing.tokens import Tokenizers
from routemesh_sidecar.telemetry.accounting import request_cost
from routemesh_sidecar.telemetry.content import (
    Message,
    Part,
    StreamCapture,
    content_attributes,
    input_content,
    output_messages,
)
from routemesh_sidecar.telemetry.metrics import Metrics
from routemesh_sidecar.telemetry.records import AttemptRecord
from routemesh_sidecar.telemetry.tracing import RequestTrace, SpanRecorder
from routemesh_sidecar.upstream.budget import RequestBudget
from routemesh_sidecar.upstream.cascade import BufferedStream
from routemesh_sidecar.upstream.classify import UpstreamFailure
from routemesh_sidecar.upstream.client import DownstreamCall, Operation, UpstreamStream
from routemesh_sidecar.upstream.executor import (
    BudgetExceeded,
    Executor,
    Outcome,
    PlannedTarget,
    RequestFailed,
    transition_event,
)

log = logging.getLogger(__name__)

Parser = Callable[[bytes], dict[str, Any]]

# The status a downstream sees when every attempt failed with this class. A client_error keeps
# the upstream's own status (it is the request's fault, and the app should see exactly why).
# Route-span blocks kept (table, route, model, candidates, plan); past it, the cache starts over.
_DECISION_BLOCKS = 4096
_FAILURE_STATUS = {
    "connect_error": 502,
    "timeout": 504,
    "rate_limited": 429,
    "overloaded": 503,
    "server_error": 502,
    "bad_response": 502,
    "context_length": 400,
    "content_policy": 400,
    "stream_broken": 502,
}


@dataclass
class ListenerParts:
    """What the listener needs from the rest of the sidecar."""

    active: ActiveRouteTable
    router: Router
    executor: Executor
    metrics: Metrics
    spans: SpanRecorder
    max_body_bytes: int
    rng: random.Random
    content_capture_max_bytes: int = 16 * 1024
    shadowing: Shadowing | None = None  # None: shadow routes are not evaluated (unit tests)
    tokenizers: Tokenizers | None = None  # None: token counts are estimates
    semantic: SemanticMatcher | None = None  # None: category tiers that embed are not run
    learned: LearnedRouting | None = None  # None: no table may use the learned router


@dataclass
class Capture:
    """A request's content for its spans, when its route table opts in (and it is sampled)."""

    limit: int
    system: list[Part]
    inputs: list[Message]

    def attributes(
        self, outputs: list[Message] | None = None, truncated: bool = False
    ) -> dict[str, Any]:
        """The GenAI content attributes, with the answer's messages when there is one."""
        return content_attributes(
            self.limit,
            system=self.system,
            inputs=self.inputs,
            outputs=outputs,
            truncated=truncated,
        )


def error_response(api: Api, error: ApiError, headers: Mapping[str, str] | None = None) -> Answer:
    """An error in the shape of the API the downstream called."""
    body = (
        anthropic_error(error.status, error.message, type=error.type)
        if api == "anthropic"
        else openai_error(
            error.status, error.message, type=error.type, code=error.code, param=error.param
        )
    )
    return Answer(error.status, encode_json(body), headers)


async def read_body(request: DownstreamRequest, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (checked before reading it all).

    A client that sent `Expect: 100-continue` (curl does, past 1 KiB) waits for the go-ahead
    before its body: it gets it once the declared length is known to fit, and a 413 without
    sending the body when it does not.
    """
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body is larger than the limit of {limit} bytes")
    expect = request.headers.get("expect", "")
    if expect and request.version >= (1, 1):  # an empty Expect expects nothing
        if expect.lower() != "100-continue":
            raise ApiError(417, f"the only expectation understood is 100-continue, not {expect}")
        await request.send_continue()
    try:
        return await request.read()  # the server stops reading past its limit, which is ours
    except BodyTooLarge as exc:
        raise ApiError(413, f"request body is larger than the limit of {limit} bytes") from exc
    except UnreadableBody as exc:
        raise ApiError(400, f"the request body cannot be read: {exc}") from exc


class Listener:
    """The request handlers."""

    def __init__(self, parts: ListenerParts) -> None:
        self.parts = parts
        self._decision_blocks: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        self._by_route = self._routes()

    def server(self) -> ListenerServer:
        """The HTTP server, with the listener's dispatch and body limit.

        The sidecar's own (`listener.server`), not aiohttp's: aiohttp's low-level server cost
        about 57 µs of CPU a request that a bare httptools protocol answers in 7
        (docs/benchmarks.md); a dictionary finds the listener's six (method, path) pairs.
        """
        limits = ServerLimits(max_body_bytes=self.parts.max_body_bytes)
        return ListenerServer(self._dispatch, limits)

    def _routes(self) -> dict[tuple[str, str], Handler]:
        models = self.models
        return {
            ("POST", "/v1/chat/completions"): self._handler("openai", "chat", parse_chat_request),
            ("POST", "/v1/completions"): self._handler(
                "openai", "completions", parse_completion_request
            ),
            ("POST", "/v1/embeddings"): self._handler(
                "openai", "embeddings", parse_embedding_request
            ),
            ("POST", "/v1/messages"): self._handler("anthropic", "chat", parse_messages_request),
            ("GET", "/v1/models"): models,
            ("HEAD", "/v1/models"): models,
        }

    async def _dispatch(self, request: DownstreamRequest) -> Answer | StreamAnswer:
        """The handler of the request's method and path, or the error that says there is none.

        The path is matched with `%2F` and `%25` still encoded, as aiohttp's router did
        (`DownstreamRequest.path`): an encoded slash is part of a segment, not a separator.
        """
        path = request.path
        handler = self._by_route.get((request.method, path))
        if handler is not None:
            return await handler(request)
        api: Api = "anthropic" if path == "/v1/messages" else "openai"
        allowed = sorted(method for method, known in self._by_route if known == path)
        if allowed:
            message = f"{request.method} is not allowed on {path}: use {allowed[0]}"
            return error_response(api, ApiError(405, message), {"Allow": ", ".join(allowed)})
        return error_response(api, ApiError(404, f"no such path: {path}"))

    def _decision_block(
        self, table: RouteTable, decision: Decision, call: DownstreamCall
    ) -> Mapping[str, Any]:
        """The route span's attributes that repeat from request to request, as one shared block.

        The same table, route, API, model, candidates and plan give the same block object,
        which the OTLP encoder writes once and then reuses by identity. Never mutated.
        """
        route = decision.route
        candidates = tuple(c.label for c in decision.candidates)
        plan = tuple(c.label for c in decision.plan)
        model = str(call.body.get("model", ""))
        key = (table.version_label, route.policy, route.name, call.api, model, candidates, plan)
        block = self._decision_blocks.get(key)
        if block is None:
            block = MappingProxyType(
                {
                    "routemesh.table.version": table.version_label,
                    "routemesh.policy": route.policy,
                    "routemesh.route": route.name,
                    "routemesh.strategy": route.strategy,
                    "routemesh.downstream.api": call.api,
                    "routemesh.candidates": list(candidates),
                    "routemesh.plan": list(plan),
                    "gen_ai.request.model": model,
                }
            )
            if len(self._decision_blocks) >= _DECISION_BLOCKS:
                self._decision_blocks.clear()  # tables and health change: start again
            self._decision_blocks[key] = block
        return block

    async def models(self, request: DownstreamRequest) -> Answer:
        """The models the route table offers, as OpenAI's model list."""
        table = self.parts.active.current
        if table is None:
            return error_response("openai", ApiError(503, "no route table loaded yet"))
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "routemesh"}
            for name in table.model_names()
        ]
        return Answer(200, encode_json({"object": "list", "data": data}))

    def _handler(self, api: Api, operation: Operation, parse: Parser) -> Handler:
        async def handle(request: DownstreamRequest) -> Answer | StreamAnswer:
            started = time.perf_counter()
            try:
                table = self.parts.active.current
                if table is None:
                    raise ApiError(503, "no route table loaded yet", type="api_error")
                raw = await read_body(request, self.parts.max_body_bytes)
                body = parse(raw)
            except ApiError as error:
                return error_response(api, error)
            # The headers stay a case-insensitive view: no copy per request.
            call = DownstreamCall(api, operation, body, request.headers, raw)
            shadowing = self.parts.shadowing
            if shadowing is None:
                return await self._route(request, table, call, started)
            shadowing.live_in_flight += 1
            try:
                return await self._route(request, table, call, started)
            finally:
                shadowing.live_in_flight -= 1

        return handle

    async def _decision(
        self, table: RouteTable, routing_request: RoutingRequest, call: DownstreamCall
    ) -> Decision | Answer:
        """The routing decision, or the answer that says why the request has none."""
        try:
            if self.parts.semantic is not None:
                # In the embedding pool (or the cache), before the synchronous match reads it.
                await self.parts.semantic.embed(table, routing_request)
            return self.parts.router.decide(table, routing_request)
        except TableRefused as exc:  # the category model cannot run now: say so, in the API's shape
            return error_response(call.api, ApiError(503, f"cannot route by category: {exc}"))
        except EmbeddingBusy as exc:  # shed: a client retries after a second, as for a 429
            error = ApiError(503, f"cannot route by category now: {exc}", code="overloaded")
            return error_response(call.api, error, {"retry-after": "1"})
        except NoRoute as exc:
            return error_response(
                call.api, ApiError(404, str(exc), code="model_not_found", param="model")
            )
        except NoCandidate as exc:
            return error_response(call.api, ApiError(400, str(exc)))
        except NoHealthyUpstream as exc:
            RequestTrace(
                self.parts.spans,
                call.headers,
                call.operation,
                {
                    "routemesh.table.version": table.version_label,
                    "gen_ai.request.model": str(call.body.get("model", "")),
                    "routemesh.attempts": 0,
                },
            ).finish(
                usage=None,
                response_model=None,
                error_class="no_healthy_upstream",
                message=str(exc),
            )
            return _no_healthy_upstream(call.api, str(exc), exc.retry_after)

    async def _route(
        self, request: DownstreamRequest, table: RouteTable, call: DownstreamCall, started: float
    ) -> Answer | StreamAnswer:
        routing_request = RoutingRequest(
            call.api,
            call.operation,
            str(call.body["model"]),
            call.headers,
            call.body,
            self.parts.rng,
            self.parts.executor.clock.monotonic(),
            len(call.raw) if call.raw is not None else None,
            self.parts.tokenizers,
            self.parts.learned.router if self.parts.learned is not None else None,
        )
        found = await self._decision(table, routing_request, call)
        if not isinstance(found, Decision):
            return found
        decision = found
        trace = RequestTrace(
            self.parts.spans,
            call.headers,
            call.operation,
            _decision_details(decision),
            self._decision_block(table, decision, call),
        )
        capture = self._capture(table, trace, call)
        shadowed = self._shadow(table, decision, routing_request, call, trace)
        for transition in decision.transitions:
            trace.event(*transition_event(transition))
        if decision.degraded:
            trace.event("routemesh.degraded", {"routemesh.degraded.reason": decision.degraded})
        plan = [
            PlannedTarget(c.target.backend, c.backend, c.target.model, c.model_info, c.health)
            for c in decision.plan
        ]
        limits = _request_budget(table, decision.route, routing_request)
        method = routing_request.token_method
        if method is not None:  # which count routing and the budget used, estimate or exact
            trace.route_span.attributes["routemesh.tokens.method"] = method
            trace.route_span.attributes["routemesh.tokens.prompt"] = routing_request.prompt_tokens(
                exact=method != "estimate"
            )
        content_fallbacks = [
            PlannedTarget(c.target.backend, c.backend, c.target.model, c.model_info, c.health)
            for c in self.parts.router.content_policy_plan(table, decision.route, routing_request)
        ]
        try:
            outcome = await self.parts.executor.execute(
                call,
                plan,
                decision.route,
                trace,
                limits=limits,
                content_fallbacks=content_fallbacks,
            )
        except RequestFailed as failed:
            self._record_skips(decision, limits)
            if capture is not None:  # no answer: the route span keeps what was asked
                trace.route_span.attributes.update(capture.attributes())
            if shadowed is not None and self.parts.shadowing is not None:
                self.parts.shadowing.settle(shadowed, None, None)
            return self._failed(call, decision, trace, failed, started, limits=limits)
        except asyncio.CancelledError:  # the app left before its answer began: attempts stopped
            if shadowed is not None and self.parts.shadowing is not None:
                self.parts.shadowing.settle(shadowed, None, None)
            self._downstream_gone(trace, None, "before its answer began")
            trace.finish(usage=None, response_model=None, error_class=None)
            raise
        first_byte_seconds = time.perf_counter() - started
        if isinstance(outcome.result, UpstreamStream | BufferedStream):
            return await self._stream(
                request,
                outcome.result,
                routing=routing_request,
                call=call,
                decision=decision,
                trace=trace,
                outcome=outcome,
                started=started,
                limits=limits,
                capture=capture,
                cost_labels=_cost_labels(table, decision, call),
                shadowed=shadowed,
                first_byte_seconds=first_byte_seconds,
            )
        self._record_answered(decision, outcome, limits, first_byte_seconds)
        reply = outcome.result
        cost = self._account(outcome, reply.usage, _cost_labels(table, decision, call))
        self._settle_shadow(trace, shadowed, reply.usage, cost)
        headers = _routing_headers(decision, outcome) | {"x-routemesh-cost-usd": f"{cost:.8f}"}
        self._finish(decision, outcome, reply.status, started)
        trace.finish(
            usage=reply.usage,
            response_model=reply.response_model,
            error_class=None,
            attributes=_outcome_attributes(outcome, cost) | _budget_attributes(limits),
            content=capture.attributes(output_messages(call.api, reply.body)) if capture else None,
        )
        return Answer(reply.status, reply.body, headers)

    async def _stream(
        self,
        request: DownstreamRequest,
        stream: UpstreamStream | BufferedStream,
        *,
        routing: RoutingRequest,
        call: DownstreamCall,
        decision: Decision,
        trace: RequestTrace,
        outcome: Outcome,
        started: float,
        limits: RequestBudget | None,
        capture: Capture | None,
        cost_labels: CostLabels,
        shadowed: Shadowed | None,
        first_byte_seconds: float,
    ) -> StreamAnswer:
        # Its head leaves with the first event, in one write; an app gone by then is found
        # by that write (`DownstreamGone`), and the relay's end frees the upstream. The
        # attempts are counted after that write: the first token waits for nothing it does
        # not need.
        headers = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            **_routing_headers(decision, outcome),
        }
        try:
            response = request.stream(200, headers)
        except BaseException:
            stream.abandon()  # no answer can start: free the upstream
            raise
        error_class: str | None = None
        message: str | None = None
        downstream_gone = cancelled = recorded = False
        streamed = StreamCapture(call.api, capture.limit) if capture is not None else None
        try:
            # Closed at once when the loop stops (a downstream that went away), not when
            # the generator is collected: its end tells health how the stream ended.
            async with contextlib.aclosing(stream.relay()) as relayed:
                async for data in relayed:
                    await _write_downstream(response, data)
                    if not recorded:
                        recorded = True
                        self._record_answered(decision, outcome, limits, first_byte_seconds)
                    if streamed is not None:
                        streamed.feed(data)
        except DownstreamGone as gone:
            downstream_gone = True
            self._downstream_gone(trace, outcome.target.backend_name, str(gone))
        except asyncio.CancelledError:  # the app left while the upstream had nothing to send
            downstream_gone = cancelled = True
            self._downstream_gone(trace, outcome.target.backend_name, "mid-stream")
        except Exception as exc:  # any other failure after the first byte ends the stream
            error_class = getattr(exc, "error_class", "stream_broken")
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            left = await self._stream_broke(response, call.api, trace, outcome, message)
            downstream_gone = cancelled = left
        if not recorded:  # nothing was written: the app left, or the stream broke at once
            self._record_answered(decision, outcome, limits, first_byte_seconds)
        usage, counted = stream.usage, {}
        if usage is None and isinstance(stream, UpstreamStream):
            # Cut before the upstream said what it used: count what was sent and received, so
            # that the cost and the budgets never read a stream that was billed as free.
            usage, method = counted_usage(routing, stream.target.model, stream.output_text)
            counted = {"routemesh.usage.counted": method}
        cost = self._account(outcome, usage, cost_labels)
        self._settle_shadow(trace, shadowed, usage, cost)
        self._finish(decision, outcome, 200, started)
        trace.finish(
            usage=usage,
            response_model=stream.response_model,
            error_class="stream_broken" if error_class else None,
            message=message,
            attributes=_outcome_attributes(outcome, cost) | _budget_attributes(limits) | counted,
            content=capture.attributes(streamed.messages(), streamed.truncated)
            if capture is not None and streamed is not None
            else None,
        )
        if cancelled:  # the records are finished; the cancellation goes on up
            raise asyncio.CancelledError
        if not downstream_gone:  # a gone downstream's connection is the server's to close
            await response.end()
        return response

    async def _stream_broke(
        self, response: StreamAnswer, api: Api, trace: RequestTrace, outcome: Outcome, message: str
    ) -> bool:
        """Log and count a stream broken after its first byte, and end it with an error event.

        True when the app left while that event was written to it (the server cancels the
        handler then): the caller finishes the request's records first, then re-raises.
        """
        log.warning(
            "stream from %s broke after the first byte: %s", outcome.target.backend_name, message
        )
        self.parts.metrics.of(self.parts.metrics.errors, "stream_broken").inc()
        trace.event("routemesh.stream.broken", {"routemesh.error.message": message})
        try:
            await _write_terminal_error(response, api, message)
        except asyncio.CancelledError:
            reason = {"routemesh.error.message": "while the stream's error was written"}
            trace.event("routemesh.downstream.closed", reason)
            return True
        return False

    def _downstream_gone(self, trace: RequestTrace, backend: str | None, reason: str) -> None:
        """The app closed its connection before its answer ended: its doing, not the upstream's.

        The upstream's stream or attempt is closed already (the relay or the attempt ended),
        and health hears of no fault; the route span says the downstream closed, and the
        attempt spans keep no error (a stopped attempt says it was cancelled).
        """
        message = f"the downstream closed its connection: {reason}"
        log.info("%s (upstream %s)", message, backend or "not chosen yet")
        self.parts.metrics.of(self.parts.metrics.errors, "downstream_closed").inc()
        trace.event("routemesh.downstream.closed", {"routemesh.error.message": reason})
        trace.route_span.fail("downstream_closed", message)

    def _failed(
        self,
        call: DownstreamCall,
        decision: Decision,
        trace: RequestTrace,
        failed: RequestFailed,
        started: float,
        *,
        limits: RequestBudget | None,
    ) -> Answer:
        self._record_attempts(failed.attempts)
        failure = failed.failure
        if isinstance(failed, BudgetExceeded):
            return self._over_budget(call, decision, trace, failed, started, limits=limits)
        if not failed.attempts:  # every breaker opened between routing and the first attempt
            trace.finish(
                attributes={"routemesh.attempts": 0},
                usage=None,
                response_model=None,
                error_class="no_healthy_upstream",
                message=failure.message,
            )
            return _no_healthy_upstream(call.api, failure.message, None)
        status = _failure_status(failure)
        headers = self._end_unanswered(
            decision,
            trace,
            failed,
            started,
            status=status,
            error_class=failure.error_class,
            limits=limits,
        )
        if failure.retry_after is not None:
            headers["retry-after"] = str(int(failure.retry_after + 0.999))
        error = ApiError(
            status, f"{failure.error_class}: {failure.message}", code=failure.error_class
        )
        return error_response(call.api, error, headers)

    def _over_budget(
        self,
        call: DownstreamCall,
        decision: Decision,
        trace: RequestTrace,
        failed: BudgetExceeded,
        started: float,
        *,
        limits: RequestBudget | None,
    ) -> Answer:
        """400, naming the budget: the official clients do not retry it.

        Nothing that would have broken the budget was sent.
        """
        headers = self._end_unanswered(
            decision,
            trace,
            failed,
            started,
            status=400,
            error_class="budget_exceeded",
            limits=limits,
        )
        headers["x-routemesh-error-class"] = "budget_exceeded"
        error = ApiError(
            400,
            failed.failure.message,
            type="invalid_request_error",
            code="budget_exceeded",
            param=failed.budget,
        )
        return error_response(call.api, error, headers)

    def _end_unanswered(
        self,
        decision: Decision,
        trace: RequestTrace,
        failed: RequestFailed,
        started: float,
        *,
        status: int,
        error_class: str,
        limits: RequestBudget | None,
    ) -> dict[str, str]:
        """Count and trace a request its attempts did not answer; its error's routing headers."""
        metrics = self.parts.metrics
        metrics.of(metrics.requests, decision.route.name, "", "", str(status)).inc()
        metrics.of(metrics.duration, decision.route.name).observe(time.perf_counter() - started)
        trace.finish(
            attributes={"routemesh.attempts": len(failed.attempts)} | _budget_attributes(limits),
            usage=None,
            response_model=None,
            error_class=error_class,
            message=failed.failure.message,
        )
        return {
            "x-routemesh-route": decision.route.name,
            "x-routemesh-attempts": str(len(failed.attempts)),
        }

    def _shadow(
        self,
        table: RouteTable,
        decision: Decision,
        request: RoutingRequest,
        call: DownstreamCall,
        trace: RequestTrace,
    ) -> Shadowed | None:
        """The shadow routes' decision, on the route span; None without any."""
        shadowing = self.parts.shadowing
        if table.shadow is None or shadowing is None:
            return None
        shadowed = shadowing.evaluate(table, decision, request, call)
        if shadowed is not None:
            trace.route_span.attributes.update(shadow_attributes(shadowed))
        return shadowed

    def _settle_shadow(
        self, trace: RequestTrace, shadowed: Shadowed | None, usage: Usage | None, cost: float
    ) -> None:
        if shadowed is not None and self.parts.shadowing is not None:
            trace.route_span.attributes.update(self.parts.shadowing.settle(shadowed, usage, cost))

    def _capture(
        self, table: RouteTable, trace: RequestTrace, call: DownstreamCall
    ) -> Capture | None:
        """The request's content, read only when its table captures content and it is traced."""
        if not table.telemetry.capture_content or not trace.sampled:
            return None
        system, inputs = input_content(call.api, call.body)
        return Capture(self.parts.content_capture_max_bytes, system, inputs)

    def _record_answered(
        self,
        decision: Decision,
        outcome: Outcome,
        limits: RequestBudget | None,
        first_byte_seconds: float,
    ) -> None:
        """Count an answered request's attempts and skips, and its time to the first byte."""
        self._record_attempts(outcome.attempts)
        self._record_skips(decision, limits)
        metrics = self.parts.metrics
        target = outcome.target
        metrics.of(metrics.time_to_first_token, target.backend_name, target.model).observe(
            first_byte_seconds
        )

    def _record_skips(self, decision: Decision, limits: RequestBudget | None) -> None:
        if limits is None:
            return
        metrics = self.parts.metrics
        for skip in limits.skipped:
            metrics.of(metrics.budget_skips, decision.route.name, skip.budget).inc()

    def _record_attempts(self, attempts: list[AttemptRecord]) -> None:
        metrics = self.parts.metrics
        for record in attempts:
            outcome = _attempt_outcome(record)
            metrics.of(metrics.attempts, record.backend, record.model, outcome).inc()
            if record.error_class:
                metrics.of(metrics.errors, record.error_class).inc()
            if record.hedge:
                metrics.of(metrics.hedges, record.backend, record.model, outcome).inc()

    def _account(self, outcome: Outcome, usage: Usage | None, labels: CostLabels) -> float:
        """The request's cost: the answer sent, plus a cascade's answers that were not."""
        target = outcome.target
        limiter = target.health.limiter
        if limiter is not None and usage is not None:  # the account counts what it served
            limiter.record_tokens(
                self.parts.executor.clock.monotonic(), usage.input_tokens + usage.output_tokens
            )
        cost = self._account_answer(
            target.backend_name, target.model, target.model_info, usage, labels
        )
        for rejected in outcome.discarded:
            cost += self._account_answer(
                rejected.backend_name, rejected.model, rejected.model_info, rejected.usage, labels
            )
        return cost

    def _account_answer(
        self, backend: str, model: str, info: ModelInfo, usage: Usage | None, labels: CostLabels
    ) -> float:
        cost = request_cost(usage, info.pricing)
        metrics = self.parts.metrics
        if usage is not None:
            for kind, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cached_input", usage.cached_input_tokens),
            ):
                metrics.of(metrics.tokens, backend, model, kind).inc(count)
        policy, route, tier = labels
        metrics.of(metrics.cost, policy, route, backend, model, tier).inc(cost)
        return cost

    def _finish(self, decision: Decision, outcome: Outcome, status: int, started: float) -> None:
        target = outcome.target
        metrics = self.parts.metrics
        metrics.of(
            metrics.requests, decision.route.name, target.backend_name, target.model, str(status)
        ).inc()
        metrics.of(metrics.duration, decision.route.name).observe(time.perf_counter() - started)


def _attempt_outcome(record: AttemptRecord) -> str:
    """An attempt's outcome label: its error class, or ok, escalated, cancelled."""
    if record.error_class:
        return record.error_class
    if record.cancelled:
        return "cancelled"
    return "escalated" if record.escalation else "ok"


CostLabels = tuple[str, str, str]  # policy, route, caller tier


def _cost_labels(table: RouteTable, decision: Decision, call: DownstreamCall) -> CostLabels:
    """Who a request's cost is attributed to; a tier the policy does not name counts as other.

    Only the policy's own tiers become label values, so that a header no one checks cannot
    create a series per value it is sent.
    """
    route = decision.route
    tier = call.headers.get(table.tier_header)
    if tier is None:
        return route.policy, route.name, ""
    return route.policy, route.name, tier if tier in table.known_tiers else "other"


def _request_budget(
    table: RouteTable, route: Route, request: RoutingRequest
) -> RequestBudget | None:
    """The request's own budget, when its route has one (signals are read only then)."""
    budget = route.budget
    if budget is None:
        return None
    return RequestBudget.for_request(
        budget,
        tier=request.headers.get(table.tier_header),
        prompt_tokens=request.prompt_tokens(exact=True),  # a budget is where the number matters
        requested_output=request.signals.max_output_tokens,
        now=request.now,
    )


def _budget_attributes(limits: RequestBudget | None) -> dict[str, Any]:
    """The route span's budget attributes: its limits, what was spent, what it skipped."""
    if limits is None:
        return {}
    attributes: dict[str, Any] = {"routemesh.budget.spent_before_answer_usd": limits.spent_cost}
    if limits.max_cost is not None:
        attributes["routemesh.budget.max_cost_usd"] = limits.max_cost
    if limits.max_tokens is not None:
        attributes["routemesh.budget.max_tokens"] = limits.max_tokens
    if limits.tier is not None:
        attributes["routemesh.budget.tier"] = limits.tier
    if limits.skipped:
        attributes["routemesh.budget.skipped"] = [str(skip) for skip in limits.skipped]
    return attributes


def _no_healthy_upstream(api: Api, message: str, retry_after: float | None) -> Answer:
    """503 with a class of its own: nothing was sent, because nothing healthy was left."""
    headers = {"x-routemesh-error-class": "no_healthy_upstream"}
    if retry_after is not None:
        headers["retry-after"] = str(max(1, int(retry_after + 0.999)))
    error = ApiError(503, message, code="no_healthy_upstream")
    return error_response(api, error, headers)


def _failure_status(failure: UpstreamFailure) -> int:
    if failure.error_class == "client_error" and failure.status:
        return failure.status
    return _FAILURE_STATUS.get(failure.error_class, 502)


class DownstreamGone(ConnectionError):
    """A write to the app failed: it closed its connection (or reset it) mid-answer."""


async def _write_downstream(response: StreamAnswer, data: bytes) -> None:
    """Write to the app, turning its connection's failure into `DownstreamGone`.

    So that an app that left is never taken for an upstream whose stream broke.
    """
    try:
        await response.write(data)
    except ConnectionError as exc:
        raise DownstreamGone(str(exc) or type(exc).__name__) from exc


async def _write_terminal_error(response: StreamAnswer, api: Api, message: str) -> None:
    """End a broken stream with an error event both SDKs raise on (never a clean end)."""
    text = f"upstream stream broke: {message}"
    if api == "anthropic":
        body = anthropic_error(502, text, type="api_error")
        payload = encode_event(dumps_json(body), "error")
    else:
        body = openai_error(502, text, type="server_error", code="stream_broken")
        payload = encode_event(dumps_json(body))
    try:
        await response.write(payload)
    except (ConnectionError, RuntimeError):
        log.info("downstream went away before the stream error could be sent")


def _routing_headers(decision: Decision, outcome: Outcome) -> dict[str, str]:
    return {
        "x-routemesh-route": decision.route.name,
        "x-routemesh-backend": outcome.target.backend_name,
        "x-routemesh-model": outcome.target.model,
        "x-routemesh-attempts": str(len(outcome.attempts)),
    }


def counted_usage(routing: RoutingRequest, model: str, output: str) -> tuple[Usage, str]:
    """A stream's usage counted from its prompt and the text it streamed; and how it was counted.

    With a tokenizer, both counts are exact (the answering model's vocabulary for the output);
    without one, both are the estimate.
    """
    tokenizers = routing.tokenizers
    if tokenizers is None:
        estimate = -(-len(output) // CHARS_PER_TOKEN)
        return Usage(routing.prompt_tokens(exact=False), estimate), "estimate"
    tokenizer = tokenizers.for_model(model)
    return Usage(routing.prompt_tokens(exact=True), tokenizer.count(output)), tokenizer.name


def _decision_details(decision: Decision) -> dict[str, Any]:
    """What the route span says of this decision beyond its block: health, filters, scores."""
    attributes: dict[str, Any] = {}
    # Only the breakers that are not closed: the usual all-closed case costs nothing.
    not_closed = [
        f"{c.label}={c.health.breaker.state}"
        for c in decision.candidates
        if c.health.breaker.state != "closed"
    ]
    if not_closed:
        attributes["routemesh.breaker.not_closed"] = not_closed
    if decision.degraded:
        attributes["routemesh.degraded"] = True
    for filter_name, removed in decision.removed.items():
        attributes[f"routemesh.filter.{filter_name}.removed"] = removed
    if decision.scores:
        attributes["routemesh.scores"] = [
            f"{label}={score:.4f}" for label, score in decision.scores.items()
        ]
    if decision.categories:  # the closest category of each route checked, to tune thresholds
        attributes["routemesh.categories"] = [
            f"{found.name}={found.similarity:.4f}" for found in decision.categories
        ]
        category = decision.category
        if category is not None:
            attributes["routemesh.category"] = category.name
            attributes["routemesh.category.similarity"] = category.similarity
    if decision.strong_need is not None:
        attributes["routemesh.learned_router.score"] = round(decision.strong_need, 4)
    return attributes


def _outcome_attributes(outcome: Outcome, cost: float) -> dict[str, Any]:
    failures = [a for a in outcome.attempts if a.error_class]
    attributes: dict[str, Any] = {
        "routemesh.backend": outcome.target.backend_name,
        "routemesh.model": outcome.target.model,
        "routemesh.attempts": len(outcome.attempts),
        "routemesh.fallback.cause": failures[-1].error_class if failures else None,
        "routemesh.cost.usd": cost,
    }
    if outcome.cascade is not None:
        attributes.update(_cascade_attributes(outcome))
    return attributes


def _cascade_attributes(outcome: Outcome) -> dict[str, Any]:
    """Which targets a cascade tried, in order, which answers it rejected and why, how it ended."""
    tried = list(dict.fromkeys(f"{a.backend}/{a.model}" for a in outcome.attempts))
    return {
        "routemesh.cascade.outcome": outcome.cascade,
        "routemesh.cascade.tried": tried,
        "routemesh.cascade.escalations": [
            f"{e.label}: {','.join(e.verdict.reasons)}" for e in outcome.escalations
        ],
    }
