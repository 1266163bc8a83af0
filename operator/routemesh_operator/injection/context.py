"""What the operator knows about a Pod at admission that the Pod does not carry itself.

The admission handler fills `InjectionContext` from the request and from the operator's
inventory (which policy's selector matches the pod's labels, and which Secrets that policy's
backends reference) and passes it to `build_patch`. Plain data; no I/O, no lookups.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SecretKey:
    """One key of one Secret that a backend of the selected policy reads its credentials from."""

    name: str
    key: str


@dataclass(frozen=True)
class InjectionContext:
    """The pod's namespace, the policy that selects it, and the credentials that policy needs."""

    namespace: str
    # The RoutingPolicy whose selector matches the pod (the one the operator would serve it),
    # or None when none does yet: the sidecar then has no ConfigMap fallback to start from.
    policy: str | None = None
    secrets: frozenset[SecretKey] = frozenset()
