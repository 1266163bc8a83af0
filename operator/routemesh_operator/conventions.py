"""Names the operator's parts must agree on: where a policy's route table is kept for sidecars.

The distribution writes the ConfigMap under this name and key; injection mounts the same one
into the sidecar as its fallback. Injection may not import the distribution (it must stay pure),
so both take the names from here. No I/O.
"""

from __future__ import annotations

import hashlib

TABLE_KEY = "route-table.json"


def configmap_name(policy: str) -> str:
    """The ConfigMap that holds a policy's table (within the 253-character name limit)."""
    name = f"routemesh-rt-{policy}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(policy.encode()).hexdigest()[:10]
    return f"{name[:242]}-{digest}"
