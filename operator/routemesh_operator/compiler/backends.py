"""Compile one ModelBackend into the route table's `Backend`, or say why it cannot be.

Called by `compiler.compile` for every backend of a namespace. It resolves what the schema cannot:
the credentials Secret, and the ready addresses of an in-cluster Service or of the vLLM
Deployment's Service (the operator names that Service after the backend). Absent fields become the
defaults the API documents. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from routemesh_operator.api.v1alpha1.common import parse_duration
from routemesh_operator.api.v1alpha1.kinds import ModelBackend
from routemesh_operator.api.v1alpha1.modelbackend import HealthCheck as ApiHealthCheck
from routemesh_operator.compiler.inputs import CompilerSettings, Snapshot
from routemesh_sidecar.routetable import (
    Backend,
    Credentials,
    Endpoint,
    HealthCheck,
    Locality,
    MetricsScrape,
    ModelInfo,
    Pricing,
)

VLLM_PORT = 8000


@dataclass(frozen=True)
class Problem:
    """Why a resource cannot be used as it is: a CamelCase reason and a message for people."""

    reason: str
    message: str


def backend_name(backend: ModelBackend) -> str:
    """The backend's name, as targets refer to it."""
    return str(backend.metadata["name"])


def compile_backend(
    backend: ModelBackend, snapshot: Snapshot, settings: CompilerSettings
) -> Backend | Problem:
    """The compiled backend, or the problem that keeps it out of route tables."""
    spec = backend.spec
    credentials = None
    if spec.credentials is not None:
        ref = spec.credentials.secret_ref
        if (ref.name, ref.key) not in snapshot.secret_keys:
            return Problem(
                "SecretNotFound",
                f"credentials.secretRef: Secret {ref.name!r} with key {ref.key!r} does not exist "
                f"in namespace {snapshot.namespace!r}; create it, or fix the reference",
            )
        credentials = Credentials(file=Path(str(settings.credentials_dir / ref.name / ref.key)))
    endpoints = _endpoints(backend, snapshot)
    if isinstance(endpoints, Problem):
        return endpoints
    return Backend(
        api="anthropic" if spec.provider == "Anthropic" else "openai",
        endpoints=endpoints,
        credentials=credentials,
        models={
            model.name: ModelInfo(
                context_window=model.context_window,
                max_output_tokens=model.max_output_tokens,
                capabilities=frozenset(model.capabilities or ()),
                pricing=Pricing(
                    input_per_million=float(model.pricing.input_per_million),
                    output_per_million=float(model.pricing.output_per_million),
                    cached_input_per_million=(
                        float(model.pricing.cached_input_per_million)
                        if model.pricing.cached_input_per_million is not None
                        else None
                    ),
                ),
                quality_tier=model.quality_tier,
            )
            for model in spec.models
        },
        max_concurrency=spec.limits.max_concurrency if spec.limits else None,
        requests_per_minute=spec.limits.requests_per_minute if spec.limits else None,
        tokens_per_minute=spec.limits.tokens_per_minute if spec.limits else None,
        locality=Locality(
            region=spec.locality.region if spec.locality else None,
            zone=spec.locality.zone if spec.locality else None,
        ),
        health_check=_health_check(
            spec.health_check, spec.provider in ("VLLM", "OpenAICompatible")
        ),
        retention=spec.data_policy.retention if spec.data_policy else None,
    )


def _endpoints(backend: ModelBackend, snapshot: Snapshot) -> list[Endpoint] | Problem:
    spec = backend.spec
    if spec.endpoint is not None and spec.endpoint.url is not None:
        zone = spec.locality.zone if spec.locality else None
        return [Endpoint(url=spec.endpoint.url, zone=zone)]
    if spec.endpoint is not None and spec.endpoint.service is not None:
        service = spec.endpoint.service
        scheme, prefix = service.scheme or "http", service.path_prefix or "/v1"
        name, port = service.name, service.port
    else:
        # VLLM: the operator's own Service, named after the backend.
        port = (spec.self_hosted.port if spec.self_hosted else None) or VLLM_PORT
        scheme, prefix, name = "http", "/v1", backend_name(backend)
    addresses = snapshot.service_addresses.get((name, port), ())
    if not addresses:
        return Problem(
            "NoReadyEndpoints",
            f"Service {name!r} port {port} has no ready endpoints yet; routes skip this backend "
            "until its pods are ready",
        )
    return [
        Endpoint(url=f"{scheme}://{_host(a.ip)}:{a.port}{prefix}", zone=a.zone)
        for a in sorted(addresses, key=lambda a: (a.ip, a.port))
    ]


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _health_check(check: ApiHealthCheck | None, serves_metrics: bool) -> HealthCheck | None:
    if check is None:
        return None
    metrics = None
    if serves_metrics and check.metrics is not None:  # the schema refuses it for the others
        stale = check.metrics.stale_after
        metrics = MetricsScrape(
            path=check.metrics.path or "/metrics",
            stale_after=parse_duration(stale).total_seconds() if stale else None,
        )
    return HealthCheck(
        interval=parse_duration(check.interval).total_seconds() if check.interval else 10.0,
        timeout=parse_duration(check.timeout).total_seconds() if check.timeout else 2.0,
        unhealthy_threshold=check.unhealthy_threshold or 3,
        healthy_threshold=check.healthy_threshold or 1,
        metrics=metrics,
    )
