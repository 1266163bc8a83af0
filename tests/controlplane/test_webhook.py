"""The real kube-apiserver calls a mutating webhook on 127.0.0.1 over TLS and stores its patch."""

from pathlib import Path

import pytest

from routemesh_testing.kubectl import Kubectl, KubectlError
from routemesh_testing.pytest_plugin import TEST_NAMESPACE_LABEL
from routemesh_testing.webhook import TLSWebhookServer

SIDECAR = {
    "name": "routemesh-sidecar",
    "image": "routemesh/sidecar:test",
    "restartPolicy": "Always",
}


def add_sidecar(request):
    return [
        {"op": "add", "path": "/metadata/labels", "value": {"routemesh.dev/injected": "true"}},
        {"op": "add", "path": "/spec/initContainers", "value": [SIDECAR]},
    ]


def webhook_configuration(name: str, namespace: str, server: TLSWebhookServer, policy: str) -> str:
    # The namespace selector confines the webhook to this test's namespace: a test webhook must
    # never intercept Pods elsewhere.
    return f"""
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {name}
  labels:
    {TEST_NAMESPACE_LABEL}: "true"
webhooks:
  - name: inject.routemesh.dev
    clientConfig:
      url: {server.url}
      caBundle: {server.ca_bundle}
    rules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [CREATE]
        resources: [pods]
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: {namespace}
    failurePolicy: {policy}
    sideEffects: None
    admissionReviewVersions: [v1]
    timeoutSeconds: 5
"""


POD = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
    - name: app
      image: example/app:1
"""


@pytest.fixture
def webhook(tmp_path: Path):
    with TLSWebhookServer(add_sidecar, tmp_path) as server:
        yield server


def test_apiserver_calls_the_webhook_and_stores_its_patch(
    kubectl: Kubectl, namespace: str, webhook: TLSWebhookServer
):
    name = f"inject-{namespace}"
    kubectl.apply(webhook_configuration(name, namespace, webhook, "Fail"))
    try:
        kubectl.apply(POD.format(name="app"), namespace=namespace)
    finally:
        kubectl.run("delete", "mutatingwebhookconfiguration", name)

    stored = kubectl.get("pod", "app", namespace=namespace)
    assert stored["metadata"]["labels"]["routemesh.dev/injected"] == "true"
    [sidecar] = stored["spec"]["initContainers"]
    assert sidecar["name"] == "routemesh-sidecar"
    assert sidecar["restartPolicy"] == "Always"
    assert [c["name"] for c in stored["spec"]["containers"]] == ["app"]

    [review] = [r for r in webhook.reviews if r["request"]["namespace"] == namespace]
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["request"]["operation"] == "CREATE"
    assert review["request"]["object"]["spec"]["containers"][0]["image"] == "example/app:1"


def test_unreachable_webhook_blocks_only_under_fail_policy(
    kubectl: Kubectl, namespace: str, webhook: TLSWebhookServer
):
    name = f"dead-{namespace}"
    webhook.close()
    try:
        kubectl.apply(webhook_configuration(name, namespace, webhook, "Fail"))
        with pytest.raises(KubectlError, match="failed calling webhook"):
            kubectl.apply(POD.format(name="blocked"), namespace=namespace)

        kubectl.apply(webhook_configuration(name, namespace, webhook, "Ignore"))
        kubectl.apply(POD.format(name="allowed"), namespace=namespace)
    finally:
        kubectl.run("delete", "mutatingwebhookconfiguration", name)
    stored = kubectl.get("pod", "allowed", namespace=namespace)
    assert "initContainers" not in stored["spec"]
