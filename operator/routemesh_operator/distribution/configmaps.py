"""Route tables as ConfigMaps: the copy a sidecar can start from while the operator is down.

The reconciler writes one ConfigMap per policy into the policy's namespace when the table's
version changes, owned by the policy so that deleting the policy garbage-collects it. At start,
the reconciler reads them back to learn the versions already published, which is what keeps
versions content-addressed across restarts. Only this module knows the ConfigMap's layout;
injection mounts the same name and key.
"""

from __future__ import annotations

import logging
from typing import Any

from routemesh_operator.api.v1alpha1.kinds import GROUP_VERSION, RoutingPolicy
from routemesh_operator.conventions import TABLE_KEY, configmap_name
from routemesh_operator.kube import KubeApi, namespaced
from routemesh_sidecar.routetable import RouteTable, RouteTableError, parse_route_table

logger = logging.getLogger(__name__)

TABLE_LABEL = "routemesh.dev/route-table"
POLICY_ANNOTATION = "routemesh.dev/policy"
VERSION_ANNOTATION = "routemesh.dev/route-table-version"


def configmap_body(policy: RoutingPolicy, table: RouteTable) -> dict[str, Any]:
    """The ConfigMap for one policy's table, owned by the policy."""
    metadata = policy.metadata
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(str(metadata["name"])),
            "namespace": metadata["namespace"],
            "labels": {TABLE_LABEL: "true"},
            "annotations": {
                POLICY_ANNOTATION: metadata["name"],
                VERSION_ANNOTATION: table.version_label,
            },
            "ownerReferences": [
                {
                    "apiVersion": GROUP_VERSION,
                    "kind": "RoutingPolicy",
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                    "controller": True,
                    # Never hold up the policy's (or the namespace's) deletion.
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "data": {TABLE_KEY: table.model_dump_json(indent=1)},
    }


async def write_table(api: KubeApi, policy: RoutingPolicy, table: RouteTable) -> None:
    """Create or replace the policy's ConfigMap."""
    body = configmap_body(policy, table)
    name = body["metadata"]["name"]
    await api.apply(namespaced("v1", str(policy.metadata["namespace"]), "configmaps", name), body)


async def read_tables(api: KubeApi, namespace: str) -> dict[str, RouteTable]:
    """The tables already published in a namespace, by policy name; unreadable ones are skipped."""
    listing = await api.request(
        "GET",
        namespaced("v1", namespace, "configmaps"),
        params={"labelSelector": f"{TABLE_LABEL}=true"},
    )
    tables: dict[str, RouteTable] = {}
    for item in listing.get("items") or ():
        policy = (item["metadata"].get("annotations") or {}).get(POLICY_ANNOTATION)
        text = (item.get("data") or {}).get(TABLE_KEY)
        if not policy or not text:
            continue
        try:
            tables[policy] = parse_route_table(text)
        except RouteTableError as exc:
            logger.warning("ignoring unreadable route table in ConfigMap %s: %s", policy, exc)
    return tables
