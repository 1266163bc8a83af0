"""The local control plane itself: readiness, version, clients, namespaces, RBAC."""

import subprocess
from pathlib import Path

import pytest
import yaml

from routemesh_testing.controlplane import LocalControlPlane, pinned_versions
from routemesh_testing.kubectl import Kubectl, KubectlError
from routemesh_testing.pytest_plugin import TEST_NAMESPACE_LABEL
from routemesh_testing.waiting import poll_until


def test_readyz_answers_ok(kubectl: Kubectl):
    assert kubectl.run("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_server_runs_the_pinned_version(kubectl: Kubectl):
    version = yaml.safe_load(kubectl.run("version", "-o", "yaml").stdout)
    assert version["serverVersion"]["gitVersion"] == pinned_versions()["k8s"]


def test_python_client_reads_the_same_cluster(kube_api_client, namespace: str):
    from kubernetes import client

    listed = client.CoreV1Api(kube_api_client).list_namespace().items
    names = {ns.metadata.name for ns in listed if ns.metadata}
    assert {"default", "kube-system", namespace} <= names


def test_each_test_gets_a_labelled_namespace_with_a_service_account(
    kubectl: Kubectl, namespace: str
):
    ns = kubectl.get("namespace", namespace)
    assert ns["metadata"]["labels"][TEST_NAMESPACE_LABEL] == "true"
    assert kubectl.get("serviceaccount", "default", namespace=namespace)["metadata"]["name"]


def test_service_account_controller_publishes_the_root_ca(kubectl: Kubectl, namespace: str):
    # root-ca-certificate-publisher-controller: pods mount this to verify the API server.
    configmap = _wait_for(
        lambda: kubectl.run(
            "get", "configmap", "kube-root-ca.crt", "-n", namespace, "-o", "yaml", check=False
        )
    )
    assert "BEGIN CERTIFICATE" in yaml.safe_load(configmap.stdout)["data"]["ca.crt"]


def test_rbac_is_enforced_for_service_account_tokens(
    kubectl: Kubectl, namespace: str, control_plane: LocalControlPlane, tmp_path: Path
):
    kubectl.run("create", "serviceaccount", "reader", "-n", namespace)
    token = kubectl.run("create", "token", "reader", "-n", namespace).stdout.strip()
    as_reader = Kubectl(kubectl.binary, _token_kubeconfig(control_plane, token, tmp_path))

    with pytest.raises(KubectlError, match="Forbidden"):
        as_reader.run("get", "configmaps", "-n", namespace)

    kubectl.run(
        "create", "role", "read-cm", "--verb=list", "--resource=configmaps", "-n", namespace
    )
    kubectl.run(
        "create", "rolebinding", "read-cm", "--role=read-cm",
        f"--serviceaccount={namespace}:reader", "-n", namespace,
    )  # fmt: skip
    assert (
        "kube-root-ca.crt"
        in _wait_for(
            lambda: as_reader.run("get", "configmaps", "-n", namespace, check=False)
        ).stdout
    )
    with pytest.raises(KubectlError, match="Forbidden"):
        as_reader.run("get", "secrets", "-n", namespace)


def test_deleting_a_namespace_completes(kubectl: Kubectl):
    # The namespace controller empties and removes it; without kube-controller-manager a
    # namespace stays Terminating forever.
    kubectl.run("create", "namespace", "doomed")
    kubectl.run("create", "configmap", "c", "-n", "doomed", "--from-literal=k=v")
    kubectl.run("delete", "namespace", "doomed", "--timeout=60s")
    assert kubectl.run("get", "namespace", "doomed", check=False).returncode != 0


def _token_kubeconfig(plane: LocalControlPlane, token: str, directory: Path) -> Path:
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path = directory / "token.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def _succeeded(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0


def _wait_for(attempt) -> subprocess.CompletedProcess[str]:
    return poll_until(attempt, _succeeded)
