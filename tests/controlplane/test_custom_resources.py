"""Custom resources on the real API server.

OpenAPI schema, CEL rules, the status subresource, and garbage collection of owned objects: a
fake API server would pass none of these.
"""

import json

import pytest

from routemesh_testing.kubectl import Kubectl, KubectlError
from routemesh_testing.waiting import poll_until


def widget(name: str, min_replicas: int, max_replicas: int, mode: str = "cheap") -> str:
    return f"""
apiVersion: testing.routemesh.dev/v1
kind: Widget
metadata:
  name: {name}
spec:
  minReplicas: {min_replicas}
  maxReplicas: {max_replicas}
  mode: {mode}
"""


def test_valid_resource_is_created_with_kubectl_apply(kubectl: Kubectl, namespace: str):
    out = kubectl.apply(widget("ok", 1, 3), namespace=namespace)
    assert "widget.testing.routemesh.dev/ok created" in out
    assert kubectl.get("widget", "ok", namespace=namespace)["spec"]["maxReplicas"] == 3


def test_cel_rule_refuses_with_its_message(kubectl: Kubectl, namespace: str):
    with pytest.raises(KubectlError) as refused:
        kubectl.apply(widget("inverted", 5, 2), namespace=namespace)
    assert "minReplicas must not exceed maxReplicas" in refused.value.stderr
    assert "spec.minReplicas" in refused.value.stderr
    assert kubectl.run("get", "widget", "inverted", "-n", namespace, check=False).returncode != 0


def test_openapi_schema_refuses_a_value_outside_the_enum(kubectl: Kubectl, namespace: str):
    with pytest.raises(KubectlError) as refused:
        kubectl.apply(widget("odd", 1, 2, mode="turbo"), namespace=namespace)
    assert 'spec.mode: Unsupported value: "turbo"' in refused.value.stderr


def test_status_is_patched_separately_from_the_spec(kubectl: Kubectl, namespace: str):
    kubectl.apply(widget("w", 1, 2), namespace=namespace)
    created = kubectl.get("widget", "w", namespace=namespace)
    assert created["metadata"]["generation"] == 1

    status_patch = {
        "status": {"phase": "Ready", "observedGeneration": 1},
        "spec": {"maxReplicas": 9},
    }
    kubectl.run(
        "patch", "widget", "w", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps(status_patch),
    )  # fmt: skip
    after_status = kubectl.get("widget", "w", namespace=namespace)
    assert after_status["status"] == {"phase": "Ready", "observedGeneration": 1}
    # Through /status the spec is ignored and the generation does not move.
    assert after_status["spec"]["maxReplicas"] == 2
    assert after_status["metadata"]["generation"] == 1

    spec_patch = {"spec": {"maxReplicas": 4}, "status": {"phase": "Lost"}}
    kubectl.run(
        "patch", "widget", "w", "-n", namespace, "--type=merge", "-p", json.dumps(spec_patch)
    )
    after_spec = kubectl.get("widget", "w", namespace=namespace)
    assert after_spec["spec"]["maxReplicas"] == 4
    assert after_spec["metadata"]["generation"] == 2
    # Through the main resource the status is ignored.
    assert after_spec["status"]["phase"] == "Ready"


def test_deleting_the_owner_garbage_collects_what_it_owns(kubectl: Kubectl, namespace: str):
    kubectl.apply(widget("owner", 1, 2), namespace=namespace)
    owner_uid = kubectl.get("widget", "owner", namespace=namespace)["metadata"]["uid"]
    kubectl.apply(
        f"""
apiVersion: v1
kind: ConfigMap
metadata:
  name: owned
  ownerReferences:
    - apiVersion: testing.routemesh.dev/v1
      kind: Widget
      name: owner
      uid: {owner_uid}
      controller: true
      blockOwnerDeletion: true
data:
  k: v
""",
        namespace=namespace,
    )
    kubectl.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bystander}\n", namespace=namespace
    )

    kubectl.run("delete", "widget", "owner", "-n", namespace)

    gone = poll_until(
        lambda: kubectl.run("get", "configmap", "owned", "-n", namespace, check=False),
        lambda result: result.returncode != 0,
        timeout=60,
    )
    assert "NotFound" in gone.stderr
    # Only the owned object goes: the garbage collector follows owner references, nothing else.
    assert kubectl.get("configmap", "bystander", namespace=namespace)["metadata"]["name"]
