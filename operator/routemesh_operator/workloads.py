"""The vLLM Deployment and Service of a self-hosted ModelBackend, as the operator owns them.

The reconciler applies these bodies (server-side apply) for every ModelBackend whose provider is
VLLM, and again whenever their content changes. Both are owned by the backend, so deleting it
garbage-collects them; both carry the labels the operator watches them by. The Service is named
after the backend, which is how the compiler finds its ready endpoints. Pure: builds dicts, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from routemesh_operator.api.v1alpha1.kinds import GROUP_VERSION, ModelBackend
from routemesh_operator.compiler.backends import VLLM_PORT

MANAGED_BY = "routemesh-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
BACKEND_LABEL = "routemesh.dev/backend"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"


def is_self_hosted(backend: ModelBackend) -> bool:
    """Whether the operator deploys this backend."""
    return backend.spec.provider == "VLLM" and backend.spec.self_hosted is not None


def labels(backend: ModelBackend) -> dict[str, str]:
    """Labels of everything the operator creates for a backend."""
    return {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": str(backend.metadata["name"]),
        MANAGED_BY_LABEL: MANAGED_BY,
        BACKEND_LABEL: str(backend.metadata["name"]),
    }


def _metadata(backend: ModelBackend) -> dict[str, Any]:
    metadata = backend.metadata
    return {
        "name": metadata["name"],
        "namespace": metadata["namespace"],
        "labels": labels(backend),
        "ownerReferences": [
            {
                "apiVersion": GROUP_VERSION,
                "kind": "ModelBackend",
                "name": metadata["name"],
                "uid": metadata["uid"],
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ],
    }


def deployment(backend: ModelBackend) -> dict[str, Any]:
    """The vLLM Deployment: GPUs, probes, engine arguments, the model under its served name."""
    hosted = backend.spec.self_hosted
    if hosted is None:
        raise ValueError("not a self-hosted backend")
    port = hosted.port or VLLM_PORT
    gpu = hosted.gpu
    resources: dict[str, Any] = {}
    if gpu.count:
        amount = {gpu.resource_name or DEFAULT_GPU_RESOURCE: str(gpu.count)}
        resources = {"limits": amount, "requests": amount}
    selector = {BACKEND_LABEL: str(backend.metadata["name"])}
    health = {"httpGet": {"path": "/health", "port": "http"}}
    container: dict[str, Any] = {
        "name": "vllm",
        "image": hosted.image,
        # The image's entrypoint is vLLM's OpenAI-compatible server; these are its arguments.
        "args": [
            "--model",
            hosted.model,
            "--served-model-name",
            hosted.served_model_name,
            "--port",
            str(port),
            *(hosted.engine_args or ()),
        ],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": resources,
        # Loading weights can take many minutes: the startup probe allows 30, and only then do
        # liveness failures restart the container.
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],  # noqa: S108 (in the pod)
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        # vLLM's workers share tensors through /dev/shm, which is 64 MiB by default.
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
    }
    if hosted.node_selector:
        pod_spec["nodeSelector"] = dict(hosted.node_selector)
    if hosted.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in hosted.tolerations
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(backend),
        "spec": {
            "replicas": hosted.replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels(backend)}, "spec": pod_spec},
        },
    }


def service(backend: ModelBackend) -> dict[str, Any]:
    """The Service in front of the vLLM pods, named after the backend."""
    hosted = backend.spec.self_hosted
    port = (hosted.port if hosted else None) or VLLM_PORT
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(backend),
        "spec": {
            "selector": {BACKEND_LABEL: str(backend.metadata["name"])},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def drifted(backend: ModelBackend, kind: str, live: Mapping[str, Any]) -> bool:
    """Whether someone changed a field of an owned object that the operator sets."""
    if kind == "Deployment":
        wanted = deployment(backend)["spec"]
        spec = live.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        containers = pod.get("containers") or [{}]
        want_container = wanted["template"]["spec"]["containers"][0]
        return bool(
            spec.get("replicas") != wanted["replicas"]
            or containers[0].get("image") != want_container["image"]
            or containers[0].get("args") != want_container["args"]
            or (containers[0].get("resources") or {}) != want_container["resources"]
        )
    if kind == "Service":
        wanted = service(backend)["spec"]
        spec = live.get("spec") or {}
        ports = [(p.get("port"), p.get("targetPort")) for p in spec.get("ports") or ()]
        return spec.get("selector") != wanted["selector"] or ports != [
            (p["port"], p["targetPort"]) for p in wanted["ports"]
        ]
    return False
