"""The kopf handlers: the only code that imports kopf.

`build_registry` returns a registry (never kopf's global one) whose handlers collect inputs from
the cluster into the runtime's inventory; the runtime's reconciler compiles, publishes and patches
status. The handlers are watch-event handlers only: they add no finalizers, so neither deleting a
resource nor deleting its namespace ever waits for the operator. What the operator owns is
cleaned up by owner references and the garbage collector.
"""

from __future__ import annotations

from typing import Any

import kopf

from routemesh_operator.api.v1alpha1.common import API_GROUP, API_VERSION
from routemesh_operator.distribution.configmaps import TABLE_LABEL
from routemesh_operator.kube import Credentials
from routemesh_operator.runtime import Runtime
from routemesh_operator.settings import OperatorSettings
from routemesh_operator.workloads import MANAGED_BY, MANAGED_BY_LABEL

# (group, version, plural) -> the kind the runtime knows it by.
RESOURCES = {
    (API_GROUP, API_VERSION, "routingpolicies"): "RoutingPolicy",
    (API_GROUP, API_VERSION, "modelbackends"): "ModelBackend",
    ("", "v1", "secrets"): "Secret",
    ("", "v1", "services"): "Service",
    ("discovery.k8s.io", "v1", "endpointslices"): "EndpointSlice",
    ("apps", "v1", "deployments"): "Deployment",
    ("", "v1", "configmaps"): "ConfigMap",
}
# Of the Deployments and ConfigMaps, only those the operator owns.
LABEL_FILTERS = {
    "deployments": {MANAGED_BY_LABEL: MANAGED_BY},
    "configmaps": {TABLE_LABEL: "true"},  # the route tables it writes, to write them again
}


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers, bound to these settings."""
    registry = kopf.OperatorRegistry()

    credentials = Credentials.load(settings.kubeconfig)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf watches with the same identity the runtime writes with.
        return kopf.ConnectionInfo(
            server=credentials.server,
            ca_path=credentials.ca_file,
            insecure=not credentials.verify,
            token=credentials.bearer_token(),
            certificate_path=credentials.cert_file,
            private_key_path=credentials.key_file,
        )

    @kopf.on.startup(registry=registry)
    async def start(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = 30  # post kopf's own Events for warnings and errors only
        settings.watching.server_timeout = 300
        runtime = Runtime(operator_settings, credentials)
        await runtime.start()
        memo["runtime"] = runtime

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        runtime = memo.get("runtime")
        if isinstance(runtime, Runtime):
            await runtime.stop()

    for (group, version, plural), kind in RESOURCES.items():
        _watch(registry, group, version, plural, kind)

    operator_settings = settings
    return registry


def _watch(
    registry: kopf.OperatorRegistry, group: str, version: str, plural: str, kind: str
) -> None:
    @kopf.on.event(
        group,
        version,
        plural,
        registry=registry,
        id=f"observe-{plural}",
        labels=LABEL_FILTERS.get(plural),
    )
    def observe(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        runtime = memo.get("runtime")
        if isinstance(runtime, Runtime):
            body = dict(event["object"])
            body.setdefault("kind", kind)
            runtime.observe(kind, event.get("type"), body)


async def run_operator(settings: OperatorSettings) -> None:
    """Run the operator until it is stopped (the process entry point's coroutine)."""
    namespaces = settings.watch_namespaces
    # kopf itself never peers: every replica observes (its handlers only read), and the
    # runtime's Lease decides which one writes.
    await kopf.operator(
        registry=build_registry(settings),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
    )
