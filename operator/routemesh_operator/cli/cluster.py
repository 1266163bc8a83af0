"""What the CLI reads from the API server: policies, backends, and a policy's compiled route table.

`Cluster` is built from a kubeconfig (`--kubeconfig`, `--context`, or `KUBECONFIG` as kubectl
reads it) and runs each read on a short-lived event loop. Every failure becomes a `CliError`
whose message says what to do: the cluster cannot be reached, the credentials were refused,
RBAC forbids the read, the CRDs or the policy do not exist. `uninjected_pods` finds the pods that
the webhook configuration's selectors send to the webhook but run without a sidecar (created
while the webhook could not answer, under failurePolicy Ignore). Called by `cli.main` only; it
reads and never writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from routemesh_operator.api.v1alpha1.common import LabelSelector
from routemesh_operator.cli.errors import NOT_FOUND, REFUSED, UNREACHABLE, CliError
from routemesh_operator.conventions import TABLE_KEY, configmap_name
from routemesh_operator.distribution.board import selector_matches
from routemesh_operator.injection import is_injected
from routemesh_operator.kube import ApiError, Credentials, KubeApi

GROUP_VERSION = "routemesh.dev/v1alpha1"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
T = TypeVar("T")


class Cluster:
    """One cluster, as a kubeconfig names it."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes.config import ConfigException  # noqa: PLC0415  (only the CLI needs it)

        try:
            self.credentials = Credentials.from_kubeconfig(kubeconfig, context)
            self.default_namespace = _context_namespace(kubeconfig, context)
        except (ConfigException, OSError) as exc:
            raise CliError(
                f"no usable kubeconfig ({exc}): set KUBECONFIG or pass --kubeconfig, "
                "and --context if the current context is not the cluster you mean",
                UNREACHABLE,
            ) from exc

    def read(self, reads: Callable[[KubeApi], Awaitable[T]]) -> T:
        """Run `reads` against the API server, with every failure explained."""
        return asyncio.run(self._read(reads))

    async def _read(self, reads: Callable[[KubeApi], Awaitable[T]]) -> T:
        server = self.credentials.server
        try:
            async with KubeApi(self.credentials) as api:
                return await reads(api)
        except ApiError as exc:
            raise _refusal(exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise CliError(
                f"cannot reach the Kubernetes API at {server} ({type(exc).__name__}: {exc}); "
                "check that the cluster is up (`kubectl cluster-info`) and that your kubeconfig "
                "names it",
                UNREACHABLE,
            ) from exc


def _refusal(exc: ApiError) -> CliError:
    if exc.status == 401:
        return CliError(
            f"the API server did not accept your credentials ({exc}); log in again or check "
            "the kubeconfig's user",
            REFUSED,
        )
    if exc.status == 403:
        return CliError(
            f"the API server refused the read ({exc}); ask for a Role that allows get and list "
            "on routingpolicies and modelbackends (routemesh.dev) and get on configmaps in "
            "that namespace",
            REFUSED,
        )
    if exc.status == 404:
        return CliError(
            f"not found ({exc}); are the RouteMesh CRDs installed? `kubectl get crd "
            "routingpolicies.routemesh.dev` tells",
            NOT_FOUND,
        )
    return CliError(f"the API server answered an error: {exc}", UNREACHABLE)


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The context's namespace, as kubectl would use it; `default` when it names none."""
    from kubernetes import config  # noqa: PLC0415  (only the CLI needs it)

    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    chosen = next((c for c in contexts if c["name"] == context), None) if context else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def _collection(plural: str, namespace: str | None) -> str:
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"/apis/{GROUP_VERSION}{scope}/{plural}"


async def list_objects(api: KubeApi, plural: str, namespace: str | None) -> list[dict[str, Any]]:
    """Every object of a RouteMesh kind in the namespace (None: all namespaces), by name."""
    found = await api.request("GET", _collection(plural, namespace))
    items: list[dict[str, Any]] = found.get("items") or []
    return sorted(items, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))


async def routing_policy(api: KubeApi, namespace: str, name: str) -> dict[str, Any]:
    """One RoutingPolicy; a missing one is an error that says how to list them."""
    found = await api.get(f"{_collection('routingpolicies', namespace)}/{name}")
    if found is None and await api.get(_collection("routingpolicies", namespace)) is None:
        raise CliError(
            "the API server has no RoutingPolicy kind: are the RouteMesh CRDs installed? "
            "`kubectl get crd routingpolicies.routemesh.dev` tells",
            NOT_FOUND,
        )
    if found is None:
        raise CliError(
            f"no RoutingPolicy {name!r} in namespace {namespace!r}; "
            f"`routemesh status -n {namespace}` lists the policies there",
            NOT_FOUND,
        )
    return found


async def route_table_json(api: KubeApi, namespace: str, policy: str) -> str:
    """The route table the operator compiled for a policy, from the ConfigMap it keeps."""
    resource = await routing_policy(api, namespace, policy)
    configmap = await api.get(f"/api/v1/namespaces/{namespace}/configmaps/{configmap_name(policy)}")
    table = ((configmap or {}).get("data") or {}).get(TABLE_KEY)
    if table is None:
        conditions = (resource.get("status") or {}).get("conditions") or []
        why = "; ".join(f"{c['type']}={c['status']}: {c.get('message', '')}" for c in conditions)
        raise CliError(
            f"RoutingPolicy {namespace}/{policy} has no compiled route table yet "
            f"({why or 'no status: is the operator running?'})",
            NOT_FOUND,
        )
    return str(table)


WEBHOOK_CONFIGURATION = "routemesh-sidecar-injector"


@dataclass
class NotInjected:
    """Pods that opt in but run without a sidecar, or why they could not be looked for."""

    pods: list[dict[str, str]]
    unchecked: str | None = None  # set when nobody knows: RBAC, or no webhook configuration


async def uninjected_pods(api: KubeApi, namespace: str | None) -> NotInjected:
    """Live pods the webhook configuration's selectors send it, that have no sidecar.

    The selectors are read from the configuration in the cluster and evaluated as the API
    server evaluates them, so a pod counts exactly when the webhook would have been called for
    it: one created while the webhook could not answer (failurePolicy Ignore).
    """
    scope = f"/namespaces/{namespace}" if namespace else ""
    try:
        configuration = await api.get(f"{WEBHOOKS}/{WEBHOOK_CONFIGURATION}")
        if configuration is None:
            return NotInjected([], f"no {WEBHOOK_CONFIGURATION} webhook configuration")
        pods = (await api.request("GET", f"/api/v1{scope}/pods")).get("items") or []
        if namespace:
            namespaces = [await api.request("GET", f"/api/v1/namespaces/{namespace}")]
        else:
            namespaces = (await api.request("GET", "/api/v1/namespaces")).get("items") or []
    except ApiError as exc:
        if exc.status == 403:
            return NotInjected([], "RBAC forbids reading pods, namespaces or the configuration")
        raise
    labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in namespaces}
    entries = [
        (
            str(entry.get("name")),
            LabelSelector.model_validate(entry.get("namespaceSelector") or {}),
            LabelSelector.model_validate(entry.get("objectSelector") or {}),
        )
        for entry in configuration.get("webhooks") or ()
    ]
    found = []
    for pod in pods:
        metadata = pod["metadata"]
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        host = (pod.get("spec") or {}).get("hostNetwork") is True
        if finished or host or metadata.get("deletionTimestamp") or is_injected(pod):
            continue
        namespace_labels = labels.get(metadata["namespace"], {})
        sent = [
            name
            for name, namespaces_, objects in entries
            if selector_matches(namespaces_, namespace_labels)
            and selector_matches(objects, metadata.get("labels") or {})
        ]
        if sent:
            found.append(
                {
                    "namespace": metadata["namespace"],
                    "name": metadata["name"],
                    "created": metadata.get("creationTimestamp", ""),
                    "why": f"its labels and its namespace's select it for webhook {sent[0]}",
                }
            )
    return NotInjected(sorted(found, key=lambda p: (p["namespace"], p["name"])))
