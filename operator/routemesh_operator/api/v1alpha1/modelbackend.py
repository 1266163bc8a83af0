"""The ModelBackend kind: one upstream, either a provider API or a self-hosted vLLM deployment.

Users write these by hand; the CRD in `crds/` is generated from these models. The CEL rules here
refuse what is wrong within one object; what needs other objects (a missing Secret or Service) is
the compiler's to report in status. No defaults are set in the schema: where a field is absent,
its description says what the operator assumes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from routemesh_operator.api.v1alpha1.common import (
    SET_LIST,
    ApiModel,
    Conditions,
    Decimal,
    Duration,
    Name,
    SecretKeyRef,
    ShortString,
    cel,
    map_list,
    validations,
)

Provider = Literal["OpenAI", "Anthropic", "OpenAICompatible", "VLLM"]
Capability = Literal["Vision", "Tools", "JSONOutput", "Reasoning"]
QualityTier = Literal["Economy", "Standard", "Premium", "Frontier"]


class ServiceReference(ApiModel):
    """An in-cluster Service in the same namespace that serves the provider's API."""

    name: Name
    """Name of the Service."""
    port: Annotated[int, Field(ge=1, le=65535)]
    """Service port to call."""
    scheme: Literal["http", "https"] | None = None
    """URL scheme. Absent means http."""
    path_prefix: Annotated[str, Field(max_length=256, pattern=r"^/")] | None = None
    """Path the API lives under, for example /v1. Absent means /v1."""


class Endpoint(ApiModel):
    """Where the provider's API is: a URL, or a Service in the cluster. Exactly one of them."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.url) != has(self.service)",
                "set exactly one of endpoint.url and endpoint.service",
            )
        )
    )

    url: Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\s]+$")] | None = None
    """Base URL of the API, including its version path, for example https://api.openai.com/v1."""
    service: ServiceReference | None = None
    """A Service in this namespace; its ready endpoints become the backend's endpoints."""


class Pricing(ApiModel):
    """Price in US dollars per million tokens, as decimal strings (for example "0.15")."""

    input_per_million: Decimal
    """Price of one million input (prompt) tokens."""
    output_per_million: Decimal
    """Price of one million output (completion) tokens."""
    cached_input_per_million: Decimal | None = None
    """Price of one million cached input tokens. Absent means the input price."""


class Model(ApiModel):
    """One model the backend serves, with what routing needs to know about it."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    """The model name the upstream API expects, for example gpt-4o-mini."""
    context_window: Annotated[int, Field(ge=1, le=100_000_000)]
    """Maximum tokens of prompt plus completion the model accepts."""
    max_output_tokens: Annotated[int, Field(ge=1, le=100_000_000)] | None = None
    """Maximum completion tokens per request. Absent means limited only by the context window."""
    capabilities: (
        Annotated[list[Capability], Field(max_length=8, json_schema_extra=SET_LIST)] | None
    ) = None
    """What the model can do beyond text: Vision, Tools, JSONOutput, Reasoning."""
    pricing: Pricing
    """What the model costs; routing and budgets use it."""
    quality_tier: QualityTier
    """Relative quality, lowest to highest: Economy, Standard, Premium, Frontier. Cascades escalate
    upward and score-based routing weighs it."""


class Limits(ApiModel):
    """Provider-side limits the sidecars stay under, shared by all pods using the backend."""

    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    """Requests per minute the account allows. Each sidecar keeps to its share (the limit over
    the sidecars of the namespace, as the operator counts them) over a sliding minute; a backend
    whose share is used up counts as saturated, so requests go to another target instead of
    drawing a 429."""
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None
    """Tokens (input plus output) per minute the account allows; kept to as requestsPerMinute
    is, counting the tokens each answer reports."""
    max_concurrency: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Requests in flight at once, per sidecar; a backend at its limit counts as saturated."""


class Locality(ApiModel):
    """Where the backend runs; routing prefers the caller's own zone, then region."""

    region: ShortString | None = None
    """Region, for example us-east-1 or europe-west4."""
    zone: ShortString | None = None
    """Zone within the region, for example us-east-1a."""


Retention = Literal["None", "Limited", "Standard"]


class DataPolicy(ApiModel):
    """What the provider does with request data. Policies can require a retention level."""

    retention: Retention
    """None: nothing is stored (zero data retention). Limited: stored briefly for abuse checks,
    never for training. Standard: the provider's default terms. A policy's privacy.retention
    sends its requests only to backends at that level or stricter; a backend without a
    dataPolicy counts as Standard."""


class Toleration(ApiModel):
    """A toleration for the vLLM pods, as in a Pod spec."""

    key: ShortString | None = None
    """Taint key to tolerate; absent with operator Exists tolerates every taint."""
    operator: Literal["Exists", "Equal"] | None = None
    """Equal (the default) or Exists."""
    value: ShortString | None = None
    """Taint value to match when the operator is Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; absent matches every effect."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class GPU(ApiModel):
    """The accelerators each vLLM pod requests."""

    count: Annotated[int, Field(ge=0, le=64)]
    """GPUs per pod; vLLM's tensor parallelism should match it."""
    resource_name: (
        Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$")] | None
    ) = None
    """Extended resource name. Absent means nvidia.com/gpu."""


class SelfHosted(ApiModel):
    """A vLLM deployment the operator creates, owns and watches."""

    image: Annotated[str, Field(min_length=1, max_length=1024)]
    """Container image of the vLLM OpenAI-compatible server."""
    model: Annotated[str, Field(min_length=1, max_length=512)]
    """Model id vLLM loads, for example meta-llama/Llama-3.1-8B-Instruct, or a path in the image."""
    served_model_name: Annotated[str, Field(min_length=1, max_length=256)]
    """Name the server answers to; must be one of spec.models[].name."""
    replicas: Annotated[int, Field(ge=0, le=1000)]
    """Number of vLLM pods."""
    gpu: GPU
    """Accelerators per pod."""
    engine_args: (
        Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=64)] | None
    ) = None
    """Extra vLLM command-line arguments, for example --max-model-len=8192."""
    node_selector: Annotated[dict[str, ShortString], Field(max_length=32)] | None = None
    """Node labels the pods must run on."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    """Taints the pods tolerate, for example on GPU nodes."""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Port vLLM listens on. Absent means 8000."""


class MetricsScrape(ApiModel):
    """Scrape vLLM's Prometheus metrics for queue depth and KV-cache use."""

    path: Annotated[str, Field(max_length=256, pattern=r"^/")] | None = None
    """Metrics path. Absent means /metrics."""
    stale_after: Duration | None = None
    """Metrics older than this count as saturated. Absent means three intervals."""


class HealthCheck(ApiModel):
    """Active health checking of each endpoint. Present means enabled."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.timeout) || !has(self.interval) || "
                "duration(self.timeout) < duration(self.interval)",
                "healthCheck.timeout must be shorter than healthCheck.interval",
            )
        )
    )

    interval: Duration | None = None
    """Time between probes. Absent means 10s."""
    timeout: Duration | None = None
    """Time a probe may take. Absent means 2s."""
    unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] | None = None
    """Failed probes in a row before the endpoint counts as unhealthy. Absent means 3."""
    healthy_threshold: Annotated[int, Field(ge=1, le=100)] | None = None
    """Passed probes in a row before it counts as healthy again. Absent means 1."""
    metrics: MetricsScrape | None = None
    """Also scrape the model server's Prometheus metrics for queue depth and KV-cache use (vLLM's
    names), for VLLM and OpenAICompatible backends (an in-cluster server); hosted OpenAI and
    Anthropic have none, and are refused."""


class ModelBackendSpec(ApiModel):
    """One upstream: where it is, how to authenticate, what it serves and what that costs."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.provider == 'VLLM' ? has(self.selfHosted) : !has(self.selfHosted)",
                "selfHosted is required for provider VLLM and not allowed for any other provider",
            ),
            cel(
                "self.provider == 'VLLM' || has(self.endpoint)",
                "endpoint is required unless the provider is VLLM (the operator then serves it)",
            ),
            cel(
                "!(self.provider in ['OpenAI', 'Anthropic']) || has(self.credentials)",
                "OpenAI and Anthropic backends need credentials.secretRef",
            ),
            cel(
                "!has(self.healthCheck) || !has(self.healthCheck.metrics) || "
                "self.provider in ['VLLM', 'OpenAICompatible']",
                "healthCheck.metrics is for model servers (VLLM, OpenAICompatible); hosted "
                "OpenAI and Anthropic serve no metrics",
                field_path=".healthCheck.metrics",
            ),
            cel(
                "!has(self.selfHosted) || "
                "self.models.exists(m, m.name == self.selfHosted.servedModelName)",
                "selfHosted.servedModelName must be one of spec.models[].name",
                field_path=".selfHosted.servedModelName",
            ),
        )
    )

    provider: Provider
    """The API the upstream speaks: OpenAI, Anthropic, OpenAICompatible (any server with the
    OpenAI API), or VLLM (a deployment the operator creates)."""
    endpoint: Endpoint | None = None
    """Where the API is. Required unless the provider is VLLM."""
    credentials: Credentials | None = None
    """How the sidecar authenticates upstream. Only the sidecar container ever mounts the key."""
    models: Annotated[list[Model], Field(min_length=1, max_length=64, json_schema_extra=map_list())]
    """The models this backend serves, by name."""
    limits: Limits | None = None
    """Rate and concurrency limits of the provider account."""
    locality: Locality | None = None
    """Where the backend runs."""
    data_policy: DataPolicy | None = None
    """What the provider keeps of request data."""
    self_hosted: SelfHosted | None = None
    """The vLLM deployment to run. Required when the provider is VLLM."""
    health_check: HealthCheck | None = None
    """Active health checking. Absent means passive only (breakers and outlier detection)."""


class Credentials(ApiModel):
    """Where the API key is. There is deliberately no field for an inline key."""

    secret_ref: SecretKeyRef
    """The Secret key holding the API key."""


class ModelBackendStatus(ApiModel):
    """What the operator observed about this backend."""

    conditions: Conditions | None = None
    """Accepted, ResolvedRefs and Ready, with reasons and messages."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation the status describes."""
    ready_endpoints: Annotated[int, Field(ge=0)] | None = None
    """Endpoints that are ready to serve (pods for VLLM, 1 for a provider URL)."""
    replicas: Annotated[int, Field(ge=0)] | None = None
    """For VLLM: pods the Deployment wants."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """For VLLM: pods that are ready."""


ModelBackendSpec.model_rebuild()
