"""The two kinds of `routemesh.dev/v1alpha1`: their resource models and their CRD metadata.

The CRD generator reads `KINDS` to write `crds/`; the operator parses objects with the resource
models. This module only describes; it does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from routemesh_operator.api.v1alpha1.common import API_GROUP, API_VERSION, ApiModel
from routemesh_operator.api.v1alpha1.modelbackend import ModelBackendSpec, ModelBackendStatus
from routemesh_operator.api.v1alpha1.routingpolicy import RoutingPolicySpec, RoutingPolicyStatus

GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"


class RoutingPolicy(ApiModel):
    """A RoutingPolicy as stored in the cluster."""

    api_version: Literal["routemesh.dev/v1alpha1"]
    """The API group and version."""
    kind: Literal["RoutingPolicy"]
    """The kind."""
    metadata: dict[str, Any]
    """Standard object metadata."""
    spec: RoutingPolicySpec
    """What the user asked for."""
    status: RoutingPolicyStatus | None = None
    """What the operator observed."""


class ModelBackend(ApiModel):
    """A ModelBackend as stored in the cluster."""

    api_version: Literal["routemesh.dev/v1alpha1"]
    """The API group and version."""
    kind: Literal["ModelBackend"]
    """The kind."""
    metadata: dict[str, Any]
    """Standard object metadata."""
    spec: ModelBackendSpec
    """What the user asked for."""
    status: ModelBackendStatus | None = None
    """What the operator observed."""


@dataclass(frozen=True)
class PrinterColumn:
    """One column of `kubectl get`."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class KindInfo:
    """What the CRD generator needs to know about one kind."""

    kind: str
    singular: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: tuple[PrinterColumn, ...]

    @property
    def crd_name(self) -> str:
        """The CRD's metadata.name."""
        return f"{self.plural}.{API_GROUP}"


def _condition_column(condition: str, description: str) -> PrinterColumn:
    return PrinterColumn(
        condition, "string", f'.status.conditions[?(@.type=="{condition}")].status', description
    )


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

ROUTING_POLICY = KindInfo(
    kind="RoutingPolicy",
    singular="routingpolicy",
    plural="routingpolicies",
    short_names=("rp",),
    description=(
        "RoutingPolicy routes the LLM requests of the selected pods: ordered routes, each with a "
        "match, a strategy and targets, plus retries, timeouts, circuit breaking, outlier "
        "detection, budgets and hedging."
    ),
    spec=RoutingPolicySpec,
    status=RoutingPolicyStatus,
    printer_columns=(
        _condition_column("Accepted", "Whether the policy is valid and compiled."),
        PrinterColumn(
            "Synced", "integer", ".status.sidecars.synced", "Sidecars on the current route table."
        ),
        PrinterColumn("Desired", "integer", ".status.sidecars.desired", "Sidecars selected."),
        PrinterColumn(
            "Rejected", "integer", ".status.sidecars.rejected", "Sidecars that refused it.", 1
        ),
        PrinterColumn(
            "Version", "string", ".status.routeTableVersion", "Current route-table version.", 1
        ),
        _AGE,
    ),
)

MODEL_BACKEND = KindInfo(
    kind="ModelBackend",
    singular="modelbackend",
    plural="modelbackends",
    short_names=("mb",),
    description=(
        "ModelBackend is one upstream: a provider API (OpenAI, Anthropic, any OpenAI-compatible "
        "server) or a self-hosted vLLM deployment, with its models, prices, limits, locality and "
        "credentials."
    ),
    spec=ModelBackendSpec,
    status=ModelBackendStatus,
    printer_columns=(
        PrinterColumn("Provider", "string", ".spec.provider", "The API the upstream speaks."),
        _condition_column("Accepted", "Whether the backend is valid."),
        PrinterColumn("Ready", "integer", ".status.readyEndpoints", "Endpoints ready to serve."),
        PrinterColumn(
            "Input$/M",
            "string",
            ".spec.models[0].pricing.inputPerMillion",
            "Input price per million tokens of the first model.",
        ),
        PrinterColumn(
            "Output$/M",
            "string",
            ".spec.models[0].pricing.outputPerMillion",
            "Output price per million tokens of the first model.",
        ),
        PrinterColumn("Model", "string", ".spec.models[0].name", "The first model.", 1),
        _AGE,
    ),
)

KINDS: tuple[KindInfo, ...] = (ROUTING_POLICY, MODEL_BACKEND)
