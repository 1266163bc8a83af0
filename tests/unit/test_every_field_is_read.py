"""Every field the API accepts does something: a field that nothing reads fails here.

Two checks, because a value can be lost at either step:

1. Every leaf of the RoutingPolicy and ModelBackend specs, one at a time, is changed in a
   namespace that sets them all, and what the operator makes of the namespace must change: the
   compiled route tables and problems, the vLLM Deployment and Service, or which pods the
   policy's selector picks. The example must set every leaf the schema has, so a new field
   without a use (or without a place here) fails at once.
2. Every field of the route table, the wire format the compiler writes, is read by the sidecar's
   code outside the module that defines it.
"""

from __future__ import annotations

import copy
import json
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from routemesh_operator import workloads
from routemesh_operator.api.v1alpha1 import ModelBackend, RoutingPolicy
from routemesh_operator.api.v1alpha1.modelbackend import ModelBackendSpec
from routemesh_operator.api.v1alpha1.routingpolicy import RoutingPolicySpec
from routemesh_operator.compiler.compile import compile_namespace
from routemesh_operator.compiler.inputs import ReadyAddress, Snapshot
from routemesh_operator.distribution.board import selector_matches
from routemesh_sidecar import routetable as wire

pytestmark = pytest.mark.timeout(60)

SIDECAR = Path(__file__).parents[2] / "sidecar" / "routemesh_sidecar"
NAMESPACE = "apps"


def resilience(scale: int) -> dict[str, Any]:
    """Every resilience setting, with values that differ by `scale` between uses."""
    return {
        "retry": {
            "attempts": 2 + scale,
            "perTryTimeout": f"{10 + scale}s",
            "backoff": {"baseInterval": "100ms", "maxInterval": f"{2 + scale}s", "jitter": "Full"},
            "honorRetryAfter": True,
            "retryOn": ["timeout", "server_error"],
            "budget": {"percent": 20 + scale, "minRetriesPerSecond": 5},
        },
        "timeouts": {"connect": "2s", "firstToken": "15s", "total": f"{60 + scale}s"},
        "circuitBreaker": {
            "consecutiveFailures": 5,
            "failureRate": {"percent": 50, "window": "30s", "minimumRequests": 20},
            "baseOpenTime": "30s",
            "maxOpenTime": "300s",
            "halfOpenProbes": 2,
        },
        "outlierDetection": {
            "consecutiveFailures": 3,
            "baseEjectionTime": "30s",
            "maxEjectionTime": "300s",
            "maxEjectedPercent": 50,
            "panicThresholdPercent": 30,
        },
        "budget": {
            "maxCostPerRequest": "0.05",
            "maxTokensPerRequest": 32000,
            "latencyPerTier": [{"tier": "paid", "firstToken": "2s", "total": "60s"}],
        },
        "hedging": {"delay": "3s", "delayPercentile": 95, "maxExtraAttempts": 1},
    }


MODEL = {
    "name": "gpt-4o",
    "contextWindow": 128000,
    "maxOutputTokens": 16384,
    "capabilities": ["Tools", "Vision"],
    "pricing": {"inputPerMillion": "2.50", "outputPerMillion": "10", "cachedInputPerMillion": "1"},
    "qualityTier": "Premium",
}
BACKENDS: list[dict[str, Any]] = [
    {
        "provider": "OpenAI",
        "endpoint": {"url": "https://api.openai.com/v1"},
        "credentials": {"secretRef": {"name": "openai", "key": "api-key"}},
        "models": [MODEL, {**MODEL, "name": "gpt-4o-mini", "qualityTier": "Standard"}],
        "limits": {"requestsPerMinute": 500, "tokensPerMinute": 200000, "maxConcurrency": 64},
        "locality": {"region": "us-east-1", "zone": "us-east-1a"},
        "dataPolicy": {"retention": "Limited"},
        "healthCheck": {
            "interval": "10s",
            "timeout": "2s",
            "unhealthyThreshold": 3,
            "healthyThreshold": 1,
        },
    },
    {
        "provider": "OpenAICompatible",
        "endpoint": {
            "service": {"name": "gateway", "port": 8080, "scheme": "https", "pathPrefix": "/v1"}
        },
        "models": [{**MODEL, "name": "local"}],
        "healthCheck": {"metrics": {"path": "/metrics", "staleAfter": "30s"}},
    },
    {
        "provider": "VLLM",
        "selfHosted": {
            "image": "vllm/vllm-openai:v0.6.0",
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "servedModelName": "llama",
            "replicas": 2,
            "gpu": {"count": 1, "resourceName": "nvidia.com/gpu"},
            "engineArgs": ["--max-model-len=8192"],
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [
                {
                    "key": "gpu",
                    "operator": "Equal",
                    "value": "true",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                }
            ],
            "port": 8000,
        },
        "models": [{**MODEL, "name": "llama"}],
        "healthCheck": {"interval": "5s", "metrics": {"path": "/metrics", "staleAfter": "15s"}},
    },
]
BACKEND_NAMES = ["openai", "gateway-backend", "llama"]


def route(name: str, strategy: dict[str, Any], targets: list[dict[str, Any]], **more: Any):
    return {"name": name, "strategy": strategy, "targets": targets, **more}


ROUTES = [
    route(
        "code",
        {
            "type": "Cascade",
            "cascade": {
                "qualityGate": {
                    "minOutputTokens": 20,
                    "rejectRefusals": True,
                    "requireComplete": True,
                }
            },
        },
        [{"backend": "llama", "model": "llama"}, {"backend": "openai", "model": "gpt-4o"}],
        match={
            "models": ["code"],
            "headers": [{"name": "x-team", "value": "a.*", "type": "RegularExpression"}],
            "signals": {
                "tokens": {"min": 1, "max": 8000},
                "codePresent": True,
                "keywords": ["python"],
                "categories": [{"name": "coding", "examples": ["write code"], "threshold": "0.6"}],
                "modalities": ["Text"],
                "toolsPresent": False,
                "turns": {"min": 1, "max": 20},
                "reasoning": False,
                "languages": ["en", "fr"],
                "learnedRouter": {"strongShare": "0.3"},
            },
        },
        privacy={"retention": "Limited"},
        contentPolicyFallbacks=[{"backend": "openai", "model": "gpt-4o-mini"}],
        **resilience(1),
    ),
    route(
        "scored",
        {
            "type": "ScoreBased",
            "score": {"weights": {"cost": 40, "latency": 30, "load": 20, "quality": 10}},
        },
        [
            {"backend": "openai", "model": "gpt-4o"},
            {"backend": "gateway-backend", "model": "local"},
        ],
        match={"models": ["scored"]},
    ),
    route(
        "split",
        {"type": "Weighted"},
        [
            {"backend": "openai", "model": "gpt-4o", "weight": 90},
            {"backend": "openai", "model": "gpt-4o-mini", "weight": 10},
        ],
    ),
]
POLICY: dict[str, Any] = {
    "selector": {
        "matchLabels": {"app": "chat"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}],
    },
    "tierHeader": "x-user-tier",
    "defaults": resilience(0),
    "routes": ROUTES,
    "shadow": {
        # The same routes under other names: every field of a shadow route must work too.
        "routes": [{**copy.deepcopy(r), "name": f"shadow-{r['name']}"} for r in ROUTES],
        "mirror": {"percent": 5},
    },
    "privacy": {"retention": "Standard", "requestHeader": "x-retention"},
    "telemetry": {"captureContent": True, "samplingRatio": "0.25"},
    "categoryMatching": {
        "tier": "Static",
        "method": "NearestExamples",
        "k": 4,
        "lexicalWeight": "0.5",
    },
}
LABEL_SETS = [
    {"app": "chat", "tier": "web"},
    {"app": "chat", "tier": "batch"},
    {"app": "other", "tier": "web"},
    {"app": "chat"},
]


def documents() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The backends' specs and the policy's spec, fresh for each mutation."""
    return copy.deepcopy(BACKENDS), copy.deepcopy(POLICY)


def observe(backend_specs: list[dict[str, Any]], policy_spec: dict[str, Any]) -> str:
    """Everything the operator makes of the namespace, as one comparable string."""
    backends = tuple(
        ModelBackend.model_validate(
            {
                "apiVersion": "routemesh.dev/v1alpha1",
                "kind": "ModelBackend",
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "generation": 1,
                    "uid": f"uid-{name}",
                },
                "spec": spec,
            }
        )
        for name, spec in zip(BACKEND_NAMES, backend_specs, strict=True)
    )
    policy = RoutingPolicy.model_validate(
        {
            "apiVersion": "routemesh.dev/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": "chat", "namespace": NAMESPACE, "generation": 1},
            "spec": policy_spec,
        }
    )
    snapshot = Snapshot(
        namespace=NAMESPACE,
        policies=(policy,),
        backends=backends,
        secret_keys=frozenset({("openai", "api-key")}),
        service_addresses={
            ("gateway", 8080): (ReadyAddress("10.0.0.5", 8443, "us-east-1a"),),
            ("llama", 8000): (ReadyAddress("10.0.0.7", 8000, "us-east-1b"),),
        },
    )
    result = compile_namespace(snapshot)
    outcome = result.policies["chat"]
    parts: list[Any] = [
        outcome.table.model_dump(mode="json", exclude={"version"}) if outcome.table else None,
        [(p.reason, p.message) for p in outcome.not_accepted + outcome.unresolved],
        outcome.notes,
        {name: (p.reason if p else None) for name, p in result.backends.items()},
        [selector_matches(policy.spec.selector, labels) for labels in LABEL_SETS],
    ]
    for backend in backends:
        if workloads.is_self_hosted(backend):
            parts += [workloads.deployment(backend), workloads.service(backend)]
    return json.dumps(parts, sort_keys=True, default=str)


# ----------------------------------------------------------------------------- the schema's leaves


def _unwrap(annotation: Any) -> Iterator[Any]:
    """The types inside Optional, Annotated, unions, lists and dicts."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        yield from _unwrap(get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType) or origin in (list, tuple, dict):
        for arg in get_args(annotation):
            yield from _unwrap(arg)
    else:
        yield annotation


def _is_list(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _is_list(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in get_args(annotation) if a is not type(None))
    return origin is list


def leaves(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every leaf field path of an API model, lists marked with []."""
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or to_camel(name)}".lstrip(".")
        nested = [
            t for t in _unwrap(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if nested:
            step = path + "[]" if _is_list(field.annotation) else path
            for inner in nested:
                yield from leaves(inner, step)
        else:
            yield path


def _locations(document: Any, path: str) -> Iterator[tuple[Any, str | int]]:
    """Where a path's value sits in a document: (container, key), for every list element."""
    head, _, rest = path.partition(".")
    key, is_list = head.removesuffix("[]"), head.endswith("[]")
    if not isinstance(document, dict) or key not in document:
        return
    if not rest:
        yield document, key
        return
    value = document[key]
    for item in value if is_list else [value]:
        yield from _locations(item, rest)


def _alternatives(value: Any) -> list[Any]:
    """Values to try in place of `value`, most likely to be valid first."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, str):
        swapped = {
            "Full": "None",
            "Limited": "None",
            "Standard": "None",
            "Premium": "Frontier",
            "RegularExpression": "Exact",
            "Equal": "Exists",
            "NoExecute": "NoSchedule",
            "https": "http",
            "In": "NotIn",
            "Text": "Image",
            "OpenAI": "Anthropic",
            "Cascade": "Fallback",
            "ScoreBased": "Fastest",
            "Static": "Transformer",
            "NearestExamples": "Centroid",
        }
        candidates = [swapped.get(value), value + "x", "7s", "0.77", "/changed", "9"]
        if value.endswith("s") and value[:-1].isdigit():
            candidates.insert(0, f"{int(value[:-1]) + 1}s")
        return [c for c in candidates if c is not None and c != value]
    if isinstance(value, list):
        return [value[:-1], [*value, value[-1]]] if value else []
    if isinstance(value, dict):
        return [{k: str(v) + "x" for k, v in value.items()}]
    return []


def _mutants(kind: str, path: str) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """The namespace with the first occurrence of `path` changed, once per alternative value."""
    backend_specs, policy_spec = documents()
    targets = backend_specs if kind == "ModelBackend" else [policy_spec]
    for index, document in enumerate(targets):
        for container, key in _locations(document, path):
            for alternative in _alternatives(container[key]):
                specs, spec = documents()
                copy_target = (specs if kind == "ModelBackend" else [spec])[index]
                for copy_container, copy_key in _locations(copy_target, path):
                    if copy_container[copy_key] == container[key]:
                        copy_container[copy_key] = alternative
                        break
                yield specs, spec
            return  # the first occurrence is enough


SPECS: list[tuple[str, type[BaseModel]]] = [
    ("ModelBackend", ModelBackendSpec),
    ("RoutingPolicy", RoutingPolicySpec),
]
PATHS = [(kind, path) for kind, model in SPECS for path in sorted(set(leaves(model)))]


def test_the_example_sets_every_leaf_of_both_specs():
    backend_specs, policy_spec = documents()
    missing = [
        f"{kind} spec.{path}"
        for kind, path in PATHS
        if not any(
            True
            for document in (backend_specs if kind == "ModelBackend" else [policy_spec])
            for _ in _locations(document, path)
        )
    ]
    assert missing == [], "set these in the example above, and give them a use"


@pytest.mark.parametrize(("kind", "path"), PATHS, ids=[f"{k}.{p}" for k, p in PATHS])
def test_changing_the_field_changes_what_the_operator_makes(kind: str, path: str):
    baseline = observe(*documents())
    tried = 0
    for specs, spec in _mutants(kind, path):
        try:
            changed = observe(specs, spec)
        except ValidationError:
            continue  # not a value the schema takes; try another
        tried += 1
        if changed != baseline:
            return
    assert tried, f"no valid other value for {kind} spec.{path}: teach _alternatives one"
    pytest.fail(f"{kind} spec.{path} is accepted, and nothing the operator makes reads it")


# ----------------------------------------------------------------------------- the wire format


def wire_fields(model: type[BaseModel], seen: set[type] | None = None) -> Iterator[tuple[str, str]]:
    """(model, field) for every field of the route table's models."""
    seen = seen if seen is not None else set()
    if model in seen:
        return
    seen.add(model)
    for name, field in model.model_fields.items():
        yield model.__name__, name
        for inner in _unwrap(field.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from wire_fields(inner, seen)


SOURCE = "\n".join(
    p.read_text() for p in sorted(SIDECAR.rglob("*.py")) if p.name != "routetable.py"
)
# Read by the sidecar through the table model itself (its validators, properties and methods),
# or by name: each with where.
READ_IN_ROUTETABLE = {
    ("RouteTable", "version"),  # version_label, on every response and span
    ("RouteTable", "sources"),  # the resources it came from, in /config_dump
    ("SourceRef", "kind"),
    ("SourceRef", "namespace"),
    ("SourceRef", "name"),
    ("SourceRef", "generation"),
    ("Budget", "latency_per_tier"),  # Budget.tier_latency and RouteTable.known_tiers
    ("MetricsScrape", "stale_after"),  # HealthCheck.metrics_stale_after
    ("ScoreWeights", "cost"),  # pipeline._weight reads each weight by its name
    ("ScoreWeights", "latency"),
    ("ScoreWeights", "load"),
    ("ScoreWeights", "quality"),
}


@pytest.mark.parametrize(
    ("model", "field"),
    sorted(set(wire_fields(wire.RouteTable))),
    ids=[f"{m}.{f}" for m, f in sorted(set(wire_fields(wire.RouteTable)))],
)
def test_every_route_table_field_is_read_by_the_sidecar(model: str, field: str):
    if (model, field) in READ_IN_ROUTETABLE:
        return
    assert re.search(rf"\.{field}\b", SOURCE), (
        f"route table field {model}.{field} is compiled, and the sidecar never reads it"
    )
