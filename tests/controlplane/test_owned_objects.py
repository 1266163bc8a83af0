"""What the operator owns comes back when someone deletes or changes it by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from routemesh_testing.controlplane import LocalControlPlane
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import self_hosted_example
from routemesh_testing.operator import running_operator
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def operator(control_plane: LocalControlPlane) -> Iterator[None]:
    with running_operator(control_plane):
        yield


@pytest.mark.usefixtures("operator")
def test_a_deleted_table_and_a_hand_scaled_deployment_are_put_back(
    kubectl: Kubectl, namespace: str
):
    setup = self_hosted_example("10.4.0.1")
    kubectl.apply(yaml.safe_dump_all(setup), namespace=namespace)

    def table_version() -> str | None:
        result = kubectl.run(
            "get",
            "configmap",
            "routemesh-rt-self-hosted-first",
            "-n",
            namespace,
            "-o",
            "json",
            check=False,
        )
        if result.returncode != 0:
            return None
        data = json.loads(result.stdout)["data"]["route-table.json"]
        return f"{json.loads(data)['version']}"

    assert poll_until(table_version, bool, timeout=30) == "1"
    kubectl.run("delete", "configmap", "routemesh-rt-self-hosted-first", "-n", namespace)
    # Back, with the same version: nothing changed but the copy.
    assert poll_until(table_version, bool, timeout=30) == "1"

    def replicas() -> int:
        found: int = kubectl.get("deployment", "llama-8b", namespace=namespace)["spec"]["replicas"]
        return found

    assert poll_until(replicas, lambda r: r == 2, timeout=30) == 2
    kubectl.run("scale", "deployment", "llama-8b", "-n", namespace, "--replicas=7")
    assert poll_until(replicas, lambda r: r == 2, timeout=30) == 2
    kubectl.run("delete", "service", "llama-8b", "-n", namespace)
    back = poll_until(
        lambda: kubectl.run("get", "service", "llama-8b", "-n", namespace, check=False).returncode,
        lambda code: code == 0,
        timeout=30,
    )
    assert back == 0
