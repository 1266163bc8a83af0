"""Pydantic models of RoutingPolicy and ModelBackend, `routemesh.dev/v1alpha1`.

The CRD YAML in `crds/` is generated from these models and checked in; `make verify` fails on
drift. Models describe and validate; they do no I/O.
"""

from routemesh_operator.api.v1alpha1.kinds import (
    GROUP_VERSION,
    KINDS,
    MODEL_BACKEND,
    ROUTING_POLICY,
    KindInfo,
    ModelBackend,
    PrinterColumn,
    RoutingPolicy,
)

__all__ = [
    "GROUP_VERSION",
    "KINDS",
    "MODEL_BACKEND",
    "ROUTING_POLICY",
    "KindInfo",
    "ModelBackend",
    "PrinterColumn",
    "RoutingPolicy",
]
