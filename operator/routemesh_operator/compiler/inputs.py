"""What the compiler reads: the resources of one namespace, as the handlers collected them.

The kopf handlers (issue 6's next step) gather RoutingPolicies, ModelBackends, which Secret keys
exist, and the ready addresses of Services from their EndpointSlices, and pass them here as one
immutable snapshot. The compiler never looks anything up itself, so its tests build snapshots by
hand. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from routemesh_operator.api.v1alpha1.kinds import ModelBackend, RoutingPolicy


@dataclass(frozen=True)
class ReadyAddress:
    """One ready endpoint of a Service, from its EndpointSlices: the pod's address and zone."""

    ip: str
    port: int
    zone: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything in one namespace that route tables are compiled from."""

    namespace: str
    policies: tuple[RoutingPolicy, ...] = ()
    backends: tuple[ModelBackend, ...] = ()
    secret_keys: frozenset[tuple[str, str]] = frozenset()  # (secret name, key) that exist
    # Ready addresses by (Service name, Service port); the handlers map the port to the
    # EndpointSlice's target port.
    service_addresses: Mapping[tuple[str, int], tuple[ReadyAddress, ...]] = field(
        default_factory=dict
    )


@dataclass(frozen=True)
class CompilerSettings:
    """Conventions the compiler shares with sidecar injection."""

    # Injection mounts each referenced Secret at credentials_dir/<secret name>, in the sidecar
    # container only; a route table names the file, never the key.
    credentials_dir: PurePosixPath = field(
        default_factory=lambda: PurePosixPath("/var/run/routemesh/credentials")
    )
