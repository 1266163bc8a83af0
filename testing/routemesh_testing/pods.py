"""Namespaces and bare Pods for the injection tests: created with the real kubectl, read back.

No kubelet runs, so a Pod here is only what the API server stored after admission: the tests
read it to see whether (and how) the webhook injected the sidecar. Test support only.
"""

from __future__ import annotations

import secrets
from typing import Any

import yaml

from routemesh_testing.kubectl import Kubectl
from routemesh_testing.pytest_plugin import TEST_NAMESPACE_LABEL

SIDECAR = "routemesh-sidecar"


def make_namespace(kubectl: Kubectl, name: str, labels: dict[str, str]) -> None:
    """A namespace the session cleanup deletes, once its `default` ServiceAccount exists."""
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {TEST_NAMESPACE_LABEL: "true", **labels}},
    }
    kubectl.apply(yaml.safe_dump(body))
    kubectl.wait_for_default_service_account(name)


def create_pod(
    kubectl: Kubectl,
    namespace: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Create a one-container Pod and return it as the API server stored it."""
    name = f"app-{secrets.token_hex(3)}"
    container: dict[str, Any] = {"name": "app", "image": "example/app:1"}
    if env is not None:
        container["env"] = env
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {"containers": [container]},
    }
    kubectl.apply(yaml.safe_dump(body), namespace=namespace)
    stored: dict[str, Any] = kubectl.get("pod", name, namespace=namespace)
    return stored


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The injected sidecar container of a stored Pod, if it has one."""
    found = [c for c in pod["spec"].get("initContainers") or () if c["name"] == SIDECAR]
    return found[0] if found else None
