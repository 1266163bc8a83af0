"""`routemesh explain`: one request dry-run against a policy's compiled route table.

It runs the sidecar's own request parser and router (`routemesh_sidecar.routing`) on the table
the operator compiled, so what it shows is what a sidecar on that table would decide for the
request with every backend healthy: the request's signals, the route that takes it (and the
semantic categories' similarities), the candidates, what each filter removed, the scores and
the plan (the first target, then the fallbacks). Nothing is sent to any model. Called by
`cli.main`; pure: a table and a request in, an explanation out.
"""

from __future__ import annotations

import asyncio
import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from routemesh_operator.cli.errors import FINDING, USAGE, CliError
from routemesh_sidecar.protocol.anthropic import parse_messages_request
from routemesh_sidecar.protocol.errors import ApiError
from routemesh_sidecar.protocol.openai import parse_chat_request
from routemesh_sidecar.routetable import Api, RouteTable, TableRefused
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.learned import (
    LearnedRouter,
    LearnedRouterUnavailable,
    load_learned_router,
    uses_learned_router,
)
from routemesh_sidecar.routing.pipeline import Decision, NoCandidate, NoRoute, Router
from routemesh_sidecar.routing.semantic import SemanticMatcher, uses_model
from routemesh_sidecar.settings import SidecarSettings


@dataclass(frozen=True)
class ExplainRequest:
    """The request to explain: a prompt (or a whole body), its model, API and headers."""

    model: str
    prompt: str | None = None
    body: dict[str, Any] | None = None  # the whole JSON body instead of a prompt
    api: Api = "openai"
    headers: dict[str, str] = field(default_factory=dict)

    def raw_body(self) -> bytes:
        """The request body as the app would send it."""
        if self.body is not None:
            return json.dumps({"model": self.model, **self.body}).encode()
        message = {"role": "user", "content": self.prompt or ""}
        body: dict[str, Any] = {"model": self.model, "messages": [message]}
        if self.api == "anthropic":
            body["max_tokens"] = 1024
        return json.dumps(body).encode()


def explain(table_json: str, request: ExplainRequest) -> dict[str, Any]:
    """What a sidecar on this table would do with the request; CliError when nothing would."""
    table = _table(table_json)
    raw = request.raw_body()
    parse = parse_messages_request if request.api == "anthropic" else parse_chat_request
    try:
        body = parse(raw)
    except ApiError as exc:
        raise CliError(f"the sidecar would refuse this request: {exc.message}", USAGE) from exc
    headers = {k.lower(): v for k, v in request.headers.items()}
    routing = RoutingRequest(
        request.api,
        "chat",
        str(body["model"]),
        headers,
        body,
        random.Random(0),
        0.0,
        len(raw),
        learned_router=_learned_router(table),
    )
    try:
        decision = _router(table).decide(table, routing)
    except NoRoute as exc:
        raise CliError(f"no route takes this request: {exc}", FINDING) from exc
    except NoCandidate as exc:
        raise CliError(f"the route has no target that can serve it: {exc}", FINDING) from exc
    return {
        "routeTableVersion": table.version_label,
        "request": {"api": request.api, "model": request.model, "headers": headers},
        "signals": _signals(routing),
        **_decision(decision),
    }


def _router(table: RouteTable) -> Router:
    """A router for the table: with its embedding tier loaded here, when its categories need one.

    The model comes from this machine (the `embeddings` extra, and the Static table at
    ROUTEMESH_SIDECAR_STATIC_MODEL, the quantized MiniLM at ROUTEMESH_SIDECAR_TRANSFORMER_MODEL,
    as in the sidecar image), so explain classifies exactly as
    a sidecar with that image would.
    """
    if not uses_model(table):
        return Router()
    with ThreadPoolExecutor(1, thread_name_prefix="routemesh-explain") as pool:
        settings = SidecarSettings()
        semantic = SemanticMatcher(
            pool,
            static_model=settings.static_model,
            transformer_model=settings.transformer_model,
        )
        try:
            asyncio.run(semantic.prepare(table))
        except TableRefused as exc:
            raise CliError(f"cannot classify like the sidecar would: {exc}", USAGE) from exc
    return Router(semantic=semantic)


def _learned_router(table: RouteTable) -> LearnedRouter | None:
    """The sidecar's shipped learned router, when the table uses it."""
    if not uses_learned_router(table):
        return None
    try:
        return load_learned_router()
    except LearnedRouterUnavailable as exc:
        raise CliError(f"cannot score like the sidecar would: {exc}", USAGE) from exc


def _table(table_json: str) -> RouteTable:
    try:
        return RouteTable.model_validate_json(table_json)
    except ValidationError as exc:
        raise CliError(
            f"the compiled route table does not load in this CLI's version ({exc.error_count()} "
            "errors); use a CLI of the operator's version",
            FINDING,
        ) from exc


def _signals(request: RoutingRequest) -> dict[str, Any]:
    signals = request.signals
    return {
        # The CLI carries no tokenizer: a sidecar with one counts exactly where it matters.
        "promptTokens": signals.prompt_tokens,
        "tokenCount": "estimate",
        "maxOutputTokens": signals.max_output_tokens,
        "codePresent": signals.code_present,
        "toolsPresent": signals.tools_present,
        "modalities": sorted(signals.modalities),
        "messages": signals.message_count,
        "turns": signals.user_turns,
        "reasoning": request.reasoning,
        "language": request.language,
        # Scored only when a route read it, as in the sidecar.
        "learnedRouterScore": request.__dict__.get("strong_need"),
    }


def _decision(decision: Decision) -> dict[str, Any]:
    plan = [c.label for c in decision.plan]
    return {
        "route": decision.route.name,
        "strategy": decision.route.strategy,
        "categories": [
            {
                "category": c.name,
                "similarity": round(c.similarity, 4),
                "threshold": c.threshold,
                "matched": c.matched,
            }
            for c in decision.categories
        ],
        "candidates": [c.label for c in decision.candidates],
        "removed": {name: list(labels) for name, labels in decision.removed.items() if labels},
        "scores": {label: round(score, 6) for label, score in decision.scores.items()},
        "plan": plan,
        "decision": {"target": plan[0] if plan else None, "fallbacks": plan[1:]},
        "degraded": decision.degraded,
    }
