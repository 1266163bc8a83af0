"""Two operator replicas: one leads (writes, serves), the other stands by and takes over.

Both run in-process against the real control plane and elect a leader on a real Lease in the
test's namespace, with a short lease so that a takeover happens within the test.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from contextlib import ExitStack
from typing import Any

import pytest
import yaml

from routemesh_testing.controlplane import LocalControlPlane, free_port
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import chat_setup, table_version
from routemesh_testing.operator import running_operator
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(180)


def ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return error.code
    except (urllib.error.URLError, OSError):
        return 0


def setup(model: str) -> list[dict[str, Any]]:
    return chat_setup(model, selector={})


def test_one_replica_leads_and_the_other_takes_over_when_it_stops(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str
):
    first_port, second_port = free_port(), free_port()

    def replica(port: int, name: str) -> Any:
        return running_operator(
            control_plane,
            standalone=False,
            namespace=namespace,  # where the Lease lives
            pod_name=name,
            lease_seconds=3,
            distribution_host="127.0.0.1",
            distribution_port=port,
        )

    leader = ExitStack()
    leader.enter_context(replica(first_port, "replica-a"))
    try:
        # The first replica takes the free Lease; the second finds it held.
        assert poll_until(lambda: ready(first_port), lambda s: s == 200, timeout=30) == 200
        with replica(second_port, "replica-b"):
            assert ready(second_port) == 503
            lease = kubectl.get("lease", "routemesh-operator", namespace=namespace)
            assert lease["spec"]["holderIdentity"] == "replica-a"
            kubectl.apply(yaml.safe_dump_all(setup("small")), namespace=namespace)
            first = poll_until(lambda: table_version(kubectl, namespace), bool, timeout=30)
            assert first is not None
            assert first.startswith("1-")
            assert ready(second_port) == 503  # the standby compiled but wrote nothing
            leader.close()
            # The leader is gone: the standby takes the Lease once it runs out, and writes.
            assert poll_until(lambda: ready(second_port), lambda s: s == 200, timeout=30) == 200
            lease = kubectl.get("lease", "routemesh-operator", namespace=namespace)
            assert lease["spec"]["holderIdentity"] == "replica-b"
            assert lease["spec"]["leaseTransitions"] >= 1
            kubectl.apply(yaml.safe_dump_all(setup("big")[-1:]), namespace=namespace)
            second = poll_until(
                lambda: table_version(kubectl, namespace),
                lambda v: v not in (None, first),
                timeout=30,
            )
            assert second is not None
            assert second.startswith("2-")
            table = json.loads(
                kubectl.get("configmap", "routemesh-rt-chat", namespace=namespace)["data"][
                    "route-table.json"
                ]
            )
            assert table["routes"][0]["targets"][0]["model"] == "big"
    finally:
        leader.close()


def test_without_the_lease_namespace_the_operator_says_so_loudly_and_is_not_ready(
    control_plane: LocalControlPlane, caplog: pytest.LogCaptureFixture
):
    # Found as a new user would: started by hand where routemesh-system does not exist, the
    # operator never led, never wrote a status, and said so in one WARNING line.
    port = free_port()
    with running_operator(
        control_plane,
        standalone=False,
        namespace="routemesh-system-missing",
        pod_name="replica-a",
        lease_seconds=3,
        distribution_host="127.0.0.1",
        distribution_port=port,
    ):

        def readiness() -> tuple[int, dict[str, Any]]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as r:
                    return int(r.status), json.loads(r.read())
            except urllib.error.HTTPError as error:
                with error:
                    return error.code, json.loads(error.read())

        status, body = poll_until(readiness, lambda r: "reason" in r[1], timeout=30)
    assert status == 503
    assert "namespace 'routemesh-system-missing' does not exist" in body["reason"]
    assert "kubectl create namespace routemesh-system-missing" in body["reason"]
    assert "ROUTEMESH_OPERATOR_STANDALONE=true" in body["reason"]
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "Lease" in r.getMessage()]
    assert len(errors) == 1, "said once, loudly, not every renewal"
