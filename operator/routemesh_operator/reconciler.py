"""The reconciler: compile a namespace when its inputs change, publish, and write status.

The kopf handlers update the inventory and `mark` the namespace; one named background task
takes the marked namespaces (after a short debounce, so a burst of watch events compiles once)
and for each: compiles it with the pure compiler, writes changed tables to their ConfigMaps and
the board, withdraws the tables of deleted policies, and patches the status of every policy and
backend whose status changed, posting an Event for each important transition.

A namespace's first compile reads the tables already in its ConfigMaps, so a restarted operator
gives unchanged content its old version and republishes nothing. A failure in one namespace is
logged and retried later; it never stops the loop or holds up other namespaces.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from routemesh_operator import workloads
from routemesh_operator.api.v1alpha1.kinds import GROUP_VERSION, RoutingPolicy
from routemesh_operator.compiler.compile import CompileResult, PolicyOutcome, compile_namespace
from routemesh_operator.compiler.inputs import CompilerSettings
from routemesh_operator.distribution.board import Board, Published
from routemesh_operator.distribution.configmaps import (
    POLICY_ANNOTATION,
    VERSION_ANNOTATION,
    read_tables,
    write_table,
)
from routemesh_operator.distribution.sync import SyncTracker
from routemesh_operator.inventory import Inventory
from routemesh_operator.kube import ApiError, KubeApi, namespaced
from routemesh_operator.status import (
    ConditionSpec,
    EventSpec,
    backend_conditions,
    policy_conditions,
    render,
    same_status,
    shadow_status,
    sidecar_condition,
    transition_events,
)
from routemesh_sidecar.routetable import RouteTable

logger = logging.getLogger(__name__)

CA_CONFIGMAP = "routemesh-ca"
PLURALS = {"RoutingPolicy": "routingpolicies", "ModelBackend": "modelbackends"}


def utc_now() -> str:
    """The current time as the API's RFC 3339 timestamps want it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    """Compiles marked namespaces in one named task; see the module docstring."""

    def __init__(
        self,
        inventory: Inventory,
        api: KubeApi,
        board: Board,
        *,
        tracker: SyncTracker | None = None,
        compiler_settings: CompilerSettings | None = None,
        debounce: float = 0.02,
        retry_after: float = 2.0,
        clock: Callable[[], str] = utc_now,
        owners: Callable[[], list[dict[str, Any]]] = list,
    ) -> None:
        self._inventory = inventory
        self._owners = owners  # of the CA ConfigMaps, which no policy owns (see anchor.py)
        self._api = api
        self._board = board
        self._tracker = tracker or SyncTracker()
        self._compiler_settings = compiler_settings or CompilerSettings()
        self._debounce = debounce
        self._retry_after = retry_after
        self._clock = clock
        self._dirty: set[str] = set()
        self._status_dirty: set[str] = set()
        self._results: dict[str, CompileResult] = {}  # the last compile of each namespace
        self._wake = asyncio.Event()
        self._tables: dict[str, dict[str, RouteTable]] = {}  # namespace -> policy -> table
        self._applied: dict[tuple[str, str], str] = {}  # self-hosted workloads last applied
        self._written: dict[tuple[str, str], str] = {}  # table versions in their ConfigMaps
        # Only the leader writes (status, ConfigMaps, workloads, Events); a follower compiles and
        # keeps its board warm, to take over at once.
        self.writing = True
        # The CA that signed the distribution server's certificate, when it serves TLS: published
        # in every namespace with policies, for the injected sidecars to trust.
        self.ca_bundle: Callable[[], bytes | None] = lambda: None
        self._published_ca: dict[str, tuple[bytes, tuple[str, ...]]] = {}
        self.compiles = 0  # for tests and metrics: how many namespace compiles ran

    def set_writing(self, writing: bool) -> None:
        """Become (or stop being) the replica that writes; a new leader looks at everything."""
        self.writing = writing
        if writing:
            for namespace in self._inventory.namespaces():
                self.mark(namespace)

    def owned_changed(
        self, kind: str, namespace: str, body: Mapping[str, Any], deleted: bool
    ) -> None:
        """Someone deleted or changed what the operator owns: write it again."""
        metadata = body.get("metadata") or {}
        if kind == "ConfigMap":
            policy = (metadata.get("annotations") or {}).get(POLICY_ANNOTATION)
            version = (metadata.get("annotations") or {}).get(VERSION_ANNOTATION)
            key = (namespace, str(policy))
            if policy and (deleted or version != self._written.get(key)):
                self._written.pop(key, None)
                self.mark(namespace)
            return
        backend = (metadata.get("labels") or {}).get(workloads.BACKEND_LABEL)
        if not backend or (namespace, backend) not in self._applied:
            return
        wanted = self._inventory.namespace(namespace).backends.get(backend)
        if deleted or wanted is None or workloads.drifted(wanted, kind, body):
            self._applied.pop((namespace, backend), None)
            self.mark(namespace)

    def mark(self, namespace: str) -> None:
        """Ask for the namespace to be compiled again soon."""
        self._dirty.add(namespace)
        self._wake.set()

    def mark_status(self, namespace: str) -> None:
        """Ask only for the namespace's policy statuses to be written again (sidecar ACKs)."""
        self._status_dirty.add(namespace)
        self._wake.set()

    async def run(self) -> None:
        """The loop; runs until cancelled."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._debounce)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            status_only, self._status_dirty = self._status_dirty - dirty, set()
            for namespace in sorted(status_only):
                try:
                    await self.refresh_status(namespace)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("status of namespace %s failed; recompiling", namespace)
                    dirty.add(namespace)
            for namespace in sorted(dirty):
                try:
                    await self.reconcile(namespace)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("reconciling namespace %s failed; retrying", namespace)
                    asyncio.get_running_loop().call_later(self._retry_after, self.mark, namespace)

    async def reconcile(self, namespace: str) -> CompileResult:
        """Compile, publish and write status for one namespace."""
        if namespace not in self._tables:
            found = await read_tables(self._api, namespace)
            self._tables[namespace] = found
            self._written.update(((namespace, n), t.version_label) for n, t in found.items())
        previous = self._tables[namespace]
        result = compile_namespace(
            self._inventory.snapshot(namespace), previous, self._compiler_settings
        )
        self.compiles += 1
        await self._apply_workloads(namespace)
        await self._publish_ca(namespace)
        policies = self._inventory.namespace(namespace).policies
        for name, outcome in result.policies.items():
            await self._publish(policies[name], outcome)
        for name in sorted(set(previous) - set(result.policies)):
            del previous[name]
            self._written.pop((namespace, name), None)
            self._board.withdraw(namespace, name)
        self._results[namespace] = result
        for name, outcome in result.policies.items():
            await self._policy_status(namespace, name, outcome)
        deployments = self._inventory.namespace(namespace).deployments
        for name, problem in result.backends.items():
            conditions = backend_conditions(problem, result.ready_endpoints[name])
            fields: dict[str, Any] = {"readyEndpoints": result.ready_endpoints[name]}
            if name in deployments:
                fields["replicas"], fields["readyReplicas"] = deployments[name]
            await self._write_status(namespace, "ModelBackend", name, conditions, **fields)
        return result

    async def _publish_ca(self, namespace: str) -> None:
        """Keep the ConfigMap `routemesh-ca` of a namespace with policies on the current CA."""
        bundle = self.ca_bundle()
        if not self.writing or not bundle or not self._inventory.namespace(namespace).policies:
            return
        owners = self._owners()
        # Written again when the owner changes too: one written before the anchor knew the
        # webhook configuration gets its owner, and so goes with the release.
        published = (bundle, tuple(o["uid"] for o in owners))
        if self._published_ca.get(namespace) == published:
            return
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": CA_CONFIGMAP,
                "namespace": namespace,
                "labels": {workloads.MANAGED_BY_LABEL: workloads.MANAGED_BY},
                "ownerReferences": owners,
            },
            "data": {"ca.crt": bundle.decode()},
        }
        await self._api.apply(namespaced("v1", namespace, "configmaps", CA_CONFIGMAP), body)
        self._published_ca[namespace] = published

    async def refresh_status(self, namespace: str) -> None:
        """Write policy statuses from the last compile, with fresh sync counts; no compile."""
        result = self._results.get(namespace)
        if result is None:
            await self.reconcile(namespace)
            return
        for name, outcome in result.policies.items():
            await self._policy_status(namespace, name, outcome)

    async def _apply_workloads(self, namespace: str) -> None:
        """Create or update the vLLM Deployment and Service of each self-hosted backend."""
        if not self.writing:
            return
        for name, backend in self._inventory.namespace(namespace).backends.items():
            if not workloads.is_self_hosted(backend):
                continue
            bodies = [workloads.deployment(backend), workloads.service(backend)]
            fingerprint = json.dumps(bodies, sort_keys=True)
            if self._applied.get((namespace, name)) == fingerprint:
                continue
            await self._api.apply(namespaced("apps/v1", namespace, "deployments", name), bodies[0])
            await self._api.apply(namespaced("v1", namespace, "services", name), bodies[1])
            self._applied[(namespace, name)] = fingerprint

    async def _publish(self, policy: RoutingPolicy, outcome: PolicyOutcome) -> None:
        namespace, name = str(policy.metadata["namespace"]), str(policy.metadata["name"])
        table = outcome.table
        if table is None:
            return  # the sidecars keep the last good table, if there was one
        self._tables[namespace][name] = table
        created = str(policy.metadata.get("creationTimestamp", ""))
        self._board.publish(Published(namespace, name, policy.spec.selector, table, created))
        if not self.writing or self._written.get((namespace, name)) == table.version_label:
            return
        logger.info("publishing route table %s/%s version %s", namespace, name, table.version_label)
        await write_table(self._api, policy, table)
        self._written[(namespace, name)] = table.version_label
        body = self._inventory.body(namespace, "RoutingPolicy", name)
        if body is not None:
            message = f"route table {table.version_label} is published to the sidecars"
            await self._post_event(body, EventSpec("Normal", "RouteTablePublished", message))

    async def _policy_status(self, namespace: str, name: str, outcome: PolicyOutcome) -> None:
        published = self._board.get(namespace, name)
        current = published.table.version_label if published is not None else None
        counts = self._tracker.counts(namespace, name, current)
        fields: dict[str, Any] = {
            "sidecars": {
                "desired": counts.desired,
                "synced": counts.synced,
                "rejected": counts.rejected,
            }
        }
        if current is not None:
            fields["routeTableVersion"] = current
        shadow = self._tracker.shadow_totals(namespace, name)
        if shadow is not None:
            fields["shadow"] = shadow_status(shadow)
        conditions = [*policy_conditions(outcome), sidecar_condition(counts, current)]
        await self._write_status(namespace, "RoutingPolicy", name, conditions, **fields)

    async def _write_status(
        self,
        namespace: str,
        kind: str,
        name: str,
        conditions: list[ConditionSpec],
        **fields: Any,
    ) -> None:
        body = self._inventory.body(namespace, kind, name)
        if body is None or not self.writing:
            return
        previous = body.get("status") or {}
        generation = int(body["metadata"].get("generation", 0))
        status = render(conditions, generation, previous, self._clock(), **fields)
        if same_status(previous, status):
            return
        path = namespaced(GROUP_VERSION, namespace, PLURALS[kind], name) + "/status"
        try:
            patched = await self._api.merge_patch(path, {"status": status})
        except ApiError as exc:
            if exc.status == 404:
                return  # deleted meanwhile; its watch event will clean up
            raise
        body["status"] = patched.get("status", status)
        for event in transition_events(previous, conditions):
            await self._post_event(body, event)

    async def _post_event(self, body: dict[str, Any], event: EventSpec) -> None:
        metadata = body["metadata"]
        now = self._clock()
        try:
            await self._api.create(
                namespaced("v1", metadata["namespace"], "events"),
                {
                    "metadata": {
                        "generateName": f"{metadata['name']}.",
                        "namespace": metadata["namespace"],
                    },
                    "involvedObject": {
                        "apiVersion": body["apiVersion"],
                        "kind": body["kind"],
                        "name": metadata["name"],
                        "namespace": metadata["namespace"],
                        "uid": metadata.get("uid"),
                        "resourceVersion": metadata.get("resourceVersion"),
                    },
                    "type": event.type,
                    "reason": event.reason,
                    "message": event.message[:1024],
                    "source": {"component": "routemesh-operator"},
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                },
            )
        except ApiError as exc:  # an Event is a courtesy; never fail a reconcile for one
            logger.warning("could not post event %s: %s", event.reason, exc)
