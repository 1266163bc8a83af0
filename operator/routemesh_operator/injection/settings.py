"""What injection needs to know that a Pod does not say: one documented pydantic model.

The operator builds `InjectionSettings` once at start (from its own settings and the chart's
values) and passes it to `decide` and `build_patch` with every admission request. It is a plain
model, not a settings source: it reads no environment and does no I/O, so tests construct it by
hand. Pod annotations may override the port, admin port, log level and resources for one pod
(`injection.options`); everything else is the cluster operator's choice alone.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from routemesh_operator import __version__
from routemesh_operator.injection.quantities import is_quantity, quantity_value

LogLevel = Literal["debug", "info", "warning", "error"]
# A Secret's name (a DNS subdomain) and a key in its data, as the API server checks them
# (patterns, not passwords: hence the noqa).
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"  # noqa: S105
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # noqa: S105
Port = Annotated[int, Field(ge=1, le=65535)]


def resource_problems(
    requests: dict[str, str | None], limits: dict[str, str | None], source: str
) -> list[str]:
    """Why these requests and limits would be refused (bad spelling, request above limit)."""
    problems = []
    for kind, values in (("request", requests), ("limit", limits)):
        for resource, value in values.items():
            if value is not None and not is_quantity(value):
                problems.append(
                    f"{source}: {resource} {kind} {value!r} is not a Kubernetes quantity "
                    "(such as 100m, 0.5, 128Mi, 1G)"
                )
    if problems:
        return problems
    for resource, limit in limits.items():
        request = requests.get(resource)
        if limit is None:
            continue
        if quantity_value(limit) == 0:
            problems.append(f"{source}: {resource} limit must be above zero")
        elif request is not None and quantity_value(request) > quantity_value(limit):
            problems.append(f"{source}: {resource} request {request} is above its limit {limit}")
    return problems


class InjectionSettings(BaseModel):
    """Which pods are injected, and the sidecar container every injected pod gets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    operator_namespace: str = Field(
        default="routemesh-system",
        description="The operator's own namespace: its pods are never injected.",
    )
    excluded_namespaces: tuple[str, ...] = Field(
        default=(),
        description="More namespaces that are never injected, besides kube-system, "
        "kube-public and kube-node-lease, which always are.",
    )
    version: str = Field(
        default=__version__,
        description="Written into the routemesh.dev/injected annotation of every injected pod.",
    )
    sidecar_image: str = Field(
        default=f"ghcr.io/routemesh/sidecar:{__version__}",
        min_length=1,
        description="The sidecar image (the chart's sidecarImage).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="When the kubelet pulls the sidecar image."
    )
    sidecar_command: tuple[str, ...] = Field(
        default=("routemesh-sidecar",),
        min_length=1,
        description="The sidecar's command; set as `command`, so the image's entrypoint does "
        "not matter.",
    )
    discovery_url: str = Field(
        default="https://routemesh-operator.routemesh-system.svc:9443",
        min_length=1,
        description="The operator's distribution Service, as the sidecars reach it.",
    )
    discovery_ca_configmap: str | None = Field(
        default=None,
        description="A ConfigMap, in the pod's namespace, holding the CA that signed the "
        "distribution server's certificate; mounted next to the token when set. None trusts "
        "the sidecar image's system CAs (or serves plain HTTP in tests).",
    )
    discovery_ca_key: str = Field(
        default="ca.crt", min_length=1, description="The CA bundle's key in that ConfigMap."
    )
    token_audience: str = Field(
        default="routemesh",
        min_length=1,
        description="Audience of the projected ServiceAccount token (the operator's "
        "token_audiences must include it).",
    )
    token_expiration_seconds: int = Field(
        default=3600,
        ge=600,  # the API server's minimum
        description="Lifetime of the projected token; the kubelet renews it at 80%.",
    )
    listen_port: Port = Field(
        default=4000, description="The sidecar's API port on 127.0.0.1, where the app calls it."
    )
    admin_port: Port = Field(
        default=15000, description="The admin port: probes (/healthz, /readyz) and /metrics."
    )
    admin_host: str = Field(
        default="0.0.0.0",  # noqa: S104 (the kubelet probes the pod's IP, not its loopback)
        description="Address of the admin listener: the kubelet's probes and metric scrapers "
        "reach it on the pod's IP. The API listener always stays on loopback.",
    )
    log_level: LogLevel = Field(default="info", description="The sidecar's log level.")
    cpu_request: str | None = Field(default="100m", description="CPU request; None sets none.")
    memory_request: str | None = Field(
        default="128Mi", description="Memory request; None sets none."
    )
    cpu_limit: str | None = Field(
        default=None,
        description="CPU limit; none by default, since throttling a proxy adds latency to "
        "every request of the app.",
    )
    memory_limit: str | None = Field(default="512Mi", description="Memory limit; None sets none.")
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP base URL of the collector (the chart's value); None exports no "
        "traces.",
    )
    otel_service_name: str = Field(
        default="routemesh-sidecar", min_length=1, description="service.name of the spans."
    )
    otlp_compression: Literal["none", "gzip"] = Field(
        default="none", description="Compression of export bodies (OTEL_EXPORTER_OTLP_COMPRESSION)."
    )
    otlp_timeout_ms: int = Field(
        default=10000, ge=1, description="Export timeout (OTEL_EXPORTER_OTLP_TIMEOUT)."
    )
    otlp_batch_spans: int = Field(
        default=512, ge=1, description="Spans a request at most (OTEL_BSP_MAX_EXPORT_BATCH_SIZE)."
    )
    otlp_schedule_delay_ms: int = Field(
        default=1000, ge=1, description="How often queued spans go out (OTEL_BSP_SCHEDULE_DELAY)."
    )
    otlp_max_queued_spans: int = Field(
        default=8192, ge=1, description="Spans waiting at most (OTEL_BSP_MAX_QUEUE_SIZE)."
    )
    otlp_headers_secret: str | None = Field(
        default=None,
        pattern=SECRET_NAME_PATTERN,
        description="A Secret in each injected pod's namespace whose key `otlp_headers_secret_key` "
        "holds the export's headers (OTEL_EXPORTER_OTLP_HEADERS: comma-separated key=value, "
        "such as a hosted collector's API key). Optional in the pod: a namespace without it "
        "still gets its sidecars, which export without the headers. None sets none.",
    )
    otlp_headers_secret_key: str = Field(
        default="headers",
        pattern=SECRET_KEY_PATTERN,
        description="The headers' key in that Secret.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.listen_port == self.admin_port:
            raise ValueError(f"listen_port and admin_port are both {self.listen_port}")
        if self.otlp_headers_secret is not None and self.otlp_endpoint is None:
            raise ValueError(
                f"otlp_headers_secret ({self.otlp_headers_secret}) is set but otlp_endpoint is "
                "not: set sidecar.otlpEndpoint, or the headers go nowhere"
            )
        if self.otlp_batch_spans > self.otlp_max_queued_spans:
            raise ValueError(
                f"otlp_batch_spans ({self.otlp_batch_spans}) is more than otlp_max_queued_spans "
                f"({self.otlp_max_queued_spans}): set sidecar.otlpMaxQueuedSpans at least as high"
            )
        problems = resource_problems(
            {"cpu": self.cpu_request, "memory": self.memory_request},
            {"cpu": self.cpu_limit, "memory": self.memory_limit},
            "injection settings",
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self
