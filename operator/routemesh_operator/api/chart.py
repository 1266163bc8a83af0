"""The Helm chart's values, as a documented pydantic model: the source of `values.schema.json`.

`hack/verify.py` generates `charts/routemesh/values.schema.json` from `ChartValues` and fails on
drift; Helm then refuses a values file that does not fit before rendering anything. The chart's
`values.yaml` must validate against it (a test checks). Describes only; no I/O.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Values(BaseModel):
    """camelCase keys, as Helm values are written; unknown keys are refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Image(Values):
    """A container image."""

    repository: str = Field(description="Image repository.")
    tag: str = Field(default="", description="Tag; empty means the chart's appVersion.")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="When the kubelet pulls the image."
    )


class Resources(Values):
    """Container resource requests and limits, as Kubernetes writes them."""

    requests: dict[str, str] = Field(default_factory=dict, description="Requested resources.")
    limits: dict[str, str] = Field(default_factory=dict, description="Resource limits.")


class Distribution(Values):
    """The route-table distribution server that sidecars watch."""

    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=9443, description="Port of the distribution server (TLS)."
    )
    token_audience: str = Field(
        default="routemesh",
        description="Audience of the projected ServiceAccount token a sidecar shows.",
    )


class Webhook(Values):
    """The mutating webhook that injects the sidecar."""

    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=8443, description="Port the operator serves the webhook on (TLS)."
    )
    failure_policy: Literal["Fail", "Ignore"] = Field(
        default="Ignore",
        description="What the API server does when the webhook cannot answer: Ignore creates "
        "the pod without a sidecar (`routemesh status` lists such pods), Fail refuses it until "
        "the operator answers. Either way only pods that opt in reach the webhook: those of a "
        "namespace labelled routemesh.dev/inject=enabled and pods with that label; the system "
        "namespaces, the operator's own and the excluded ones never do.",
    )
    timeout_seconds: Annotated[int, Field(ge=1, le=30)] = Field(
        default=10, description="How long the API server waits for the webhook."
    )
    certificates: Literal["operator", "cert-manager"] = Field(
        default="operator",
        description="Who issues the webhook's certificate: the operator (its own CA, kept in a "
        "Secret, rotated before expiry) or cert-manager (a Certificate and a self-signed "
        "Issuer; cert-manager's CA injector fills the caBundle).",
    )
    excluded_namespaces: list[str] = Field(
        default_factory=list,
        description="More namespaces the webhook never sees, besides kube-system, "
        "kube-public, kube-node-lease and the release's own.",
    )


class Sidecar(Values):
    """The sidecar every injected pod gets."""

    image: Image = Field(
        default_factory=lambda: Image(repository="ghcr.io/routemesh/sidecar"),
        description="The sidecar image.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Its log level (a pod annotation may override it)."
    )
    otlp_endpoint: str = Field(
        default="",
        description="OTLP/HTTP base URL of the collector the sidecars send traces to; empty "
        "sends none.",
    )
    otlp_compression: Literal["none", "gzip"] = Field(
        default="none",
        description="Compression of the sidecars' export bodies (gzip for a collector across "
        "nodes).",
    )
    otlp_timeout_ms: int = Field(
        default=10000, ge=1, description="How long one export, retries included, may take."
    )
    otlp_batch_spans: int = Field(
        default=512, ge=1, description="Spans in one export request at most."
    )
    otlp_schedule_delay_ms: int = Field(
        default=1000,
        ge=1,
        description="How long a sidecar holds a partial batch of spans before posting it.",
    )
    otlp_max_queued_spans: int = Field(
        default=8192,
        ge=1,
        description="Spans a sidecar keeps waiting for export; past it, new spans are dropped "
        "(and counted). At least otlpBatchSpans.",
    )
    otlp_headers_secret: str = Field(
        default="",
        # Empty, or a Secret's name (a DNS subdomain), so that Helm refuses a typo at install.
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$",
        description="Name of a Secret, in each injected pod's namespace, whose key "
        "otlpHeadersSecretKey holds the export's headers as OTEL_EXPORTER_OTLP_HEADERS does "
        "(comma-separated key=value, such as a hosted collector's API key); empty sets none. "
        "Needs otlpEndpoint. A namespace without the Secret still gets its sidecars, which "
        "export without the headers.",
    )
    otlp_headers_secret_key: str = Field(
        default="headers",
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="The headers' key in that Secret.",
    )


class GrafanaDashboard(Values):
    """The Grafana dashboard (docs/monitoring/routemesh-dashboard.json) as a ConfigMap."""

    enabled: bool = Field(
        default=False,
        description="Install the dashboard as a ConfigMap, for Grafana's dashboard sidecar to "
        "load (it watches ConfigMaps by label).",
    )
    namespace: str = Field(
        default="", description="Where the ConfigMap goes (Grafana's); empty is the release's."
    )
    labels: dict[str, str] = Field(
        default_factory=lambda: {"grafana_dashboard": "1"},
        description="Labels Grafana's sidecar selects dashboards by (its default label shown).",
    )


class Scrape(Values):
    """A Prometheus Operator scrape object (monitoring.coreos.com/v1); its CRD must exist."""

    enabled: bool = Field(default=False, description="Install it.")
    interval: str = Field(
        default="30s",
        pattern=r"^[0-9]+(ms|s|m|h)$",
        description="How often Prometheus scrapes.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels your Prometheus selects scrape objects by (kube-prometheus-stack: "
        "`release: <its release>`).",
    )


class Monitoring(Values):
    """What the chart installs for monitoring."""

    grafana_dashboard: GrafanaDashboard = Field(
        default_factory=GrafanaDashboard, description="The sidecars' Grafana dashboard."
    )
    service_monitor: Scrape = Field(
        default_factory=Scrape,
        description="A ServiceMonitor for the operator's own metrics (its Service's `metrics` "
        "port): leadership, route tables, sidecars by sync state, webhook answers, the "
        "webhook certificate's expiry.",
    )
    pod_monitor: Scrape = Field(
        default_factory=Scrape,
        description="A PodMonitor for every injected sidecar's `/metrics` (the pods labelled "
        "`routemesh.dev/injected`, in every namespace; port `routemesh-admin`): the metrics "
        "the dashboard and alerts read.",
    )


class Operator(Values):
    """The operator Deployment."""

    replicas: Annotated[int, Field(ge=1, le=10)] = Field(
        default=1,
        description="Replicas; more than one elect a leader on a Lease: it writes and serves "
        "the sidecars, the others stand by with the route tables compiled.",
    )
    image: Image = Field(
        default_factory=lambda: Image(repository="ghcr.io/routemesh/operator"),
        description="The operator image.",
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "1Gi"}
        ),
        description="The operator container's resources.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )
    pod_anti_affinity: Literal["soft", "hard", "none"] = Field(
        default="soft",
        description="Spread the replicas over nodes: soft prefers it, hard requires it (each "
        "replica needs its own node), none leaves it to the scheduler. Only with 2 replicas "
        "or more.",
    )
    max_unavailable: Annotated[int, Field(ge=1)] = Field(
        default=1,
        description="The PodDisruptionBudget's maxUnavailable, with 2 replicas or more: a node "
        "drain never takes every replica at once (one leads, the others stand by).",
    )
    metrics_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=8080,
        description="Port of the operator's own metrics (plain HTTP, `/metrics`), also on its "
        "Service as `metrics`.",
    )
    watch_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces to watch (globs allowed); empty watches the whole cluster.",
    )


class ChartValues(Values):
    """Everything `values.yaml` may set."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        title="RouteMesh Helm chart values",
    )

    operator: Operator = Field(default_factory=Operator, description="The operator.")
    distribution: Distribution = Field(
        default_factory=Distribution, description="Route-table distribution to the sidecars."
    )
    webhook: Webhook = Field(default_factory=Webhook, description="Sidecar injection.")
    sidecar: Sidecar = Field(default_factory=Sidecar, description="The injected sidecar.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Monitoring.")
    service_account_name: str = Field(
        default="routemesh-operator", description="The operator's ServiceAccount."
    )


def values_reference() -> str:
    """docs/chart-values.md: every value, its type, default and meaning, from the model."""
    lines = [
        "# Chart values",
        "",
        "Every value `charts/routemesh/values.yaml` may set. Generated from",
        "`routemesh_operator.api.chart` by `make generate`; `make verify` fails when it drifts.",
        "Helm refuses a value that is not here (`values.schema.json`, from the same model).",
        "",
        "| value | type | default | what it does |",
        "|---|---|---|---|",
    ]
    defaults = ChartValues().model_dump(by_alias=True, mode="json")
    lines += list(_reference_rows(ChartValues, defaults, ""))
    return "\n".join(lines) + "\n"


def _reference_rows(model: type[BaseModel], defaults: dict[str, Any], prefix: str) -> Any:
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _reference_rows(annotation, defaults[field.alias or name], f"{key}.")
            continue
        default = json.dumps(defaults[field.alias or name])
        kind = _type_name(annotation)
        description = (field.description or "").replace("|", "\\|")
        yield f"| `{key}` | {kind} | `{default}` | {description} |"


def _type_name(annotation: Any) -> str:
    text = repr(annotation).replace("typing.", "")
    if "Literal[" in text:
        return " \\| ".join(f"`{v}`" for v in getattr(annotation, "__args__", ()))
    if isinstance(annotation, type):
        return annotation.__name__
    return text.replace("|", "or")


def values_schema() -> str:
    """`values.schema.json`, as checked in."""
    schema: dict[str, Any] = ChartValues.model_json_schema(by_alias=True)
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
