"""The operator's in-memory view of the cluster: what the kopf handlers collected, per namespace.

The handlers feed it every watch event of RoutingPolicies, ModelBackends, Secrets, Services and
EndpointSlices; the reconciler reads a `Snapshot` of one namespace from it to compile. Each
update says whether it changed anything the compiler reads, so a status patch (which comes back
as a watch event) does not trigger another compile. Secrets are kept as key names only: a value
never enters the operator's memory beyond the watch event itself.

Pure bookkeeping: no I/O, no kopf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from routemesh_operator.api.v1alpha1.kinds import ModelBackend, RoutingPolicy
from routemesh_operator.compiler.inputs import ReadyAddress, Snapshot

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class SliceInfo:
    """What routing needs from one EndpointSlice: its Service and ready addresses per port name."""

    service: str
    ready: Mapping[str, tuple[ReadyAddress, ...]]


@dataclass
class NamespaceInventory:
    """The compiler's inputs in one namespace, plus the raw bodies status is written against."""

    policies: dict[str, RoutingPolicy] = field(default_factory=dict)
    backends: dict[str, ModelBackend] = field(default_factory=dict)
    unparsable: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name): error
    bodies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    secret_keys: dict[str, frozenset[str]] = field(default_factory=dict)
    service_ports: dict[str, dict[int, str]] = field(default_factory=dict)  # port -> port name
    slices: dict[str, SliceInfo] = field(default_factory=dict)
    deployments: dict[str, tuple[int, int]] = field(default_factory=dict)  # (replicas, ready)


class Inventory:
    """Every namespace's inventory; updates return True when the compiler's inputs changed."""

    def __init__(self) -> None:
        self._namespaces: dict[str, NamespaceInventory] = {}

    def namespace(self, name: str) -> NamespaceInventory:
        """The inventory of one namespace (empty when nothing was seen there)."""
        return self._namespaces.setdefault(name, NamespaceInventory())

    def namespaces(self) -> list[str]:
        """Namespaces with anything in them."""
        return sorted(self._namespaces)

    def body(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        """The last body seen of a policy or backend, with its status."""
        return self.namespace(namespace).bodies.get((kind, name))

    def upsert_resource(self, body: Mapping[str, Any]) -> bool:
        """A RoutingPolicy or ModelBackend was created or changed."""
        kind, namespace, name = _identity(body)
        inventory = self.namespace(namespace)
        before = inventory.bodies.get((kind, name))
        inventory.bodies[(kind, name)] = dict(body)
        if before is not None and _compiled_part(before) == _compiled_part(body):
            return False
        store: dict[str, Any] = (
            inventory.policies if kind == "RoutingPolicy" else inventory.backends
        )
        model = RoutingPolicy if kind == "RoutingPolicy" else ModelBackend
        try:
            store[name] = model.model_validate(dict(body))
            inventory.unparsable.pop((kind, name), None)
        except ValidationError as exc:
            # The API server validated the schema; this happens only when the CRD installed is
            # older or newer than the operator. Report it rather than guess.
            store.pop(name, None)
            inventory.unparsable[(kind, name)] = str(exc)
        return True

    def remove_resource(self, body: Mapping[str, Any]) -> bool:
        """A RoutingPolicy or ModelBackend is gone."""
        kind, namespace, name = _identity(body)
        inventory = self.namespace(namespace)
        inventory.bodies.pop((kind, name), None)
        inventory.unparsable.pop((kind, name), None)
        store: dict[str, Any] = (
            inventory.policies if kind == "RoutingPolicy" else inventory.backends
        )
        return store.pop(name, None) is not None

    def upsert_secret(self, namespace: str, name: str, keys: Iterable[str]) -> bool:
        """A Secret's key names (never its values)."""
        inventory = self.namespace(namespace)
        new = frozenset(keys)
        changed = inventory.secret_keys.get(name) != new
        inventory.secret_keys[name] = new
        return changed

    def remove_secret(self, namespace: str, name: str) -> bool:
        """A Secret is gone."""
        return self.namespace(namespace).secret_keys.pop(name, None) is not None

    def upsert_service(self, namespace: str, name: str, spec: Mapping[str, Any]) -> bool:
        """A Service's ports, to map a backend's Service port to its EndpointSlice port name."""
        ports = {int(p["port"]): str(p.get("name") or "") for p in spec.get("ports") or ()}
        inventory = self.namespace(namespace)
        changed = inventory.service_ports.get(name) != ports
        inventory.service_ports[name] = ports
        return changed

    def remove_service(self, namespace: str, name: str) -> bool:
        """A Service is gone."""
        return self.namespace(namespace).service_ports.pop(name, None) is not None

    def upsert_slice(self, namespace: str, name: str, body: Mapping[str, Any]) -> bool:
        """An EndpointSlice's ready addresses."""
        info = _slice_info(body)
        inventory = self.namespace(namespace)
        if info is None:
            return inventory.slices.pop(name, None) is not None
        changed = inventory.slices.get(name) != info
        inventory.slices[name] = info
        return changed

    def remove_slice(self, namespace: str, name: str) -> bool:
        """An EndpointSlice is gone."""
        return self.namespace(namespace).slices.pop(name, None) is not None

    def upsert_deployment(self, namespace: str, name: str, body: Mapping[str, Any]) -> bool:
        """A Deployment the operator owns: its replica counts, for the backend's status."""
        status = body.get("status") or {}
        counts = (int(status.get("replicas") or 0), int(status.get("readyReplicas") or 0))
        inventory = self.namespace(namespace)
        changed = inventory.deployments.get(name) != counts
        inventory.deployments[name] = counts
        return changed

    def remove_deployment(self, namespace: str, name: str) -> bool:
        """An owned Deployment is gone."""
        return self.namespace(namespace).deployments.pop(name, None) is not None

    def snapshot(self, namespace: str) -> Snapshot:
        """The compiler's input for one namespace, in a stable order."""
        inventory = self.namespace(namespace)
        return Snapshot(
            namespace=namespace,
            policies=tuple(inventory.policies[n] for n in sorted(inventory.policies)),
            backends=tuple(inventory.backends[n] for n in sorted(inventory.backends)),
            secret_keys=frozenset(
                (secret, key) for secret, keys in inventory.secret_keys.items() for key in keys
            ),
            service_addresses=_service_addresses(inventory),
        )


def _identity(body: Mapping[str, Any]) -> tuple[str, str, str]:
    metadata = body["metadata"]
    return str(body["kind"]), str(metadata["namespace"]), str(metadata["name"])


def _compiled_part(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the compiler reads from a resource: not its status, not its resourceVersion."""
    metadata = body.get("metadata", {})
    return (
        body.get("spec"),
        metadata.get("generation"),
        metadata.get("creationTimestamp"),
        metadata.get("uid"),
    )


def _slice_info(body: Mapping[str, Any]) -> SliceInfo | None:
    service = (body.get("metadata", {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service:
        return None
    ready: list[tuple[str, str | None]] = []
    for endpoint in body.get("endpoints") or ():
        # An absent `ready` means ready, per the EndpointSlice API.
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        ready.extend((address, endpoint.get("zone")) for address in endpoint.get("addresses") or ())
    by_port: dict[str, tuple[ReadyAddress, ...]] = {}
    for port in body.get("ports") or ():
        if port.get("port") is None:
            continue
        by_port[str(port.get("name") or "")] = tuple(
            ReadyAddress(ip, int(port["port"]), zone) for ip, zone in ready
        )
    return SliceInfo(service=str(service), ready=by_port)


def _service_addresses(
    inventory: NamespaceInventory,
) -> dict[tuple[str, int], tuple[ReadyAddress, ...]]:
    """Ready addresses by (Service, Service port), joining Services with their slices."""
    addresses: dict[tuple[str, int], list[ReadyAddress]] = {}
    for info in inventory.slices.values():
        for port, port_name in inventory.service_ports.get(info.service, {}).items():
            addresses.setdefault((info.service, port), []).extend(info.ready.get(port_name, ()))
    return {key: tuple(sorted(set(found), key=repr)) for key, found in addresses.items()}
