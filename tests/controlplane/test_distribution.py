"""Route tables reach sidecars through the operator's watch; ACKs and NACKs come back as status.

The operator runs in-process against the real control plane. Sidecars authenticate with real
ServiceAccount tokens (the TokenRequest API, audience `routemesh`), which the operator checks
with real TokenReviews. One sidecar is the real sidecar (in a thread); others are plain HTTP
watch clients, which is all a sidecar is to the operator.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from routemesh_testing.controlplane import LocalControlPlane, free_port
from routemesh_testing.fakes import FakeOpenAI
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import chat_setup, wait_for_table_version
from routemesh_testing.operator import running_operator
from routemesh_testing.serving import ServerThread
from routemesh_testing.sidecar import SidecarThread
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(180)

AUDIENCE = "routemesh"


@pytest.fixture(scope="module")
def distribution_url(control_plane: LocalControlPlane) -> Iterator[str]:
    port = free_port()
    with running_operator(
        control_plane,
        distribution_host="127.0.0.1",
        distribution_port=port,
        token_audiences=[AUDIENCE],
    ):
        yield f"http://127.0.0.1:{port}"


def apply_setup(kubectl: Kubectl, namespace: str, model: str = "small") -> None:
    docs = chat_setup(model, service_account="app")
    kubectl.apply(yaml.safe_dump_all(docs), namespace=namespace)


def token(kubectl: Kubectl, namespace: str, account: str = "app") -> str:
    result = kubectl.run(
        "create", "token", account, "-n", namespace, "--audience", AUDIENCE, "--duration", "1h"
    )
    return result.stdout.strip()


def watch(
    url: str, bearer: str, *, wait: float = 0, **params: str | list[str]
) -> tuple[int, dict[str, Any]]:
    """One watch request, as a sidecar makes it."""
    query = urllib.parse.urlencode({"wait": str(wait), **params}, doseq=True)
    request = urllib.request.Request(  # noqa: S310 (an http URL the test built)
        f"{url}/v1/routetable?{query}", headers={"Authorization": f"Bearer {bearer}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=wait + 10) as response:  # noqa: S310
            body = response.read()
            return response.status, json.loads(body) if body else {}
    except urllib.error.HTTPError as error:
        with error:  # an HTTPError holds the response's socket until closed
            body = error.read()
        return error.code, json.loads(body) if body else {}


def policy_status(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = kubectl.get("routingpolicy", "chat", namespace=namespace).get(
        "status", {}
    )
    return status


def wait_for_status(kubectl: Kubectl, namespace: str, check: Any) -> dict[str, Any]:
    status = poll_until(lambda: policy_status(kubectl, namespace), check, timeout=30)
    assert check(status), status
    return status


def test_a_policy_change_reaches_a_running_sidecar_and_status_shows_it_synced(
    kubectl: Kubectl, namespace: str, distribution_url: str, tmp_path: Path
):
    apply_setup(kubectl, namespace)
    first = wait_for_table_version(kubectl, namespace)
    token_file = tmp_path / "token"
    token_file.write_text(token(kubectl, namespace))
    labels_file = tmp_path / "labels"
    labels_file.write_text('app="chat"\npod-template-hash="abc"\n')
    with SidecarThread(
        None,
        tmp_path,
        discovery_url=distribution_url,
        discovery_token_path=token_file,
        pod_name="chat-1",
        pod_namespace=namespace,
        pod_labels_path=labels_file,
        last_good_path=tmp_path / "last-good" / "route-table.json",
    ) as sidecar:
        table = sidecar.running.active.current
        assert table is not None
        assert table.version_label == first
        synced = wait_for_status(
            kubectl, namespace, lambda s: s.get("sidecars", {}).get("synced") == 1
        )
        assert synced["sidecars"] == {"desired": 1, "synced": 1, "rejected": 0}

        apply_setup(kubectl, namespace, model="big")
        changed = poll_until(
            lambda: sidecar.running.active.current,
            lambda t: t is not None and t.routes[0].targets[0].model == "big",
            timeout=30,
        )
        assert changed is not None
        assert changed.version == table.version + 1
        status = wait_for_status(
            kubectl,
            namespace,
            lambda s: (
                s.get("routeTableVersion") == changed.version_label
                and s.get("sidecars", {}).get("synced") == 1
            ),
        )
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["SidecarsSynced"]["status"] == "True"
        # The sidecar kept what it ran, to restart from while the operator is away.
        kept = json.loads((tmp_path / "last-good" / "route-table.json").read_text())
        assert kept["version"] == changed.version


def test_a_nack_is_counted_as_rejected_with_its_reason(
    kubectl: Kubectl, namespace: str, distribution_url: str
):
    apply_setup(kubectl, namespace)
    bearer = token(kubectl, namespace)
    code, body = watch(distribution_url, bearer, namespace=namespace, pod="p-1", label=["app=chat"])
    assert code == 200
    version = body["version"]
    assert body["policy"] == "chat"
    code, _ = watch(
        distribution_url,
        bearer,
        namespace=namespace,
        pod="p-1",
        label=["app=chat"],
        version="",
        nack=version,
        error="strategy Quantum is not supported by this sidecar",
    )
    assert code == 200  # the NACKed table is sent again: the sidecar still has none
    status = wait_for_status(
        kubectl, namespace, lambda s: s.get("sidecars", {}).get("rejected") == 1
    )
    assert status["sidecars"] == {"desired": 1, "synced": 0, "rejected": 1}
    condition = {c["type"]: c for c in status["conditions"]}["SidecarsSynced"]
    assert condition["reason"] == "SidecarsRejected"
    assert "strategy Quantum is not supported" in condition["message"]
    events = kubectl.get(
        "events", "--field-selector", "involvedObject.name=chat", namespace=namespace
    )
    assert any(e["reason"] == "SidecarsRejected" for e in events["items"])


def test_a_token_of_another_namespace_is_refused_its_tables(
    kubectl: Kubectl, namespace: str, distribution_url: str
):
    apply_setup(kubectl, namespace)
    wait_for_table_version(kubectl, namespace)
    kubectl.run("create", "namespace", f"{namespace}-other")
    try:
        kubectl.run("create", "serviceaccount", "intruder", "-n", f"{namespace}-other")
        stranger = token(kubectl, f"{namespace}-other", "intruder")
        code, body = watch(
            distribution_url, stranger, namespace=namespace, pod="x", label=["app=chat"]
        )
        assert code == 403
        assert "may not read the route tables" in body["error"]["message"]
        code, _ = watch(distribution_url, "not-a-token", namespace=namespace, pod="x")
        assert code == 401
        # A token for the API server's own audience is not one for RouteMesh.
        plain = kubectl.run("create", "token", "app", "-n", namespace).stdout.strip()
        code, _ = watch(distribution_url, plain, namespace=namespace, pod="x")
        assert code == 401
    finally:
        kubectl.run("delete", "namespace", f"{namespace}-other", "--wait=false", check=False)


def test_an_unchanged_version_waits_and_then_answers_not_modified(
    kubectl: Kubectl, namespace: str, distribution_url: str
):
    apply_setup(kubectl, namespace)
    bearer = token(kubectl, namespace)
    code, body = watch(distribution_url, bearer, namespace=namespace, pod="p", label=["app=chat"])
    assert code == 200
    code, _ = watch(
        distribution_url,
        bearer,
        wait=0.5,
        namespace=namespace,
        pod="p",
        label=["app=chat"],
        version=body["version"],
        ack=body["version"],
    )
    assert code == 304
    # A pod the policy does not select gets nothing, rather than some other policy's table.
    code, _ = watch(
        distribution_url, bearer, wait=0.2, namespace=namespace, pod="q", label=["app=other"]
    )
    assert code == 304


def test_a_pod_bound_token_gets_the_table_of_the_pods_real_labels(
    kubectl: Kubectl, namespace: str, distribution_url: str
):
    apply_setup(kubectl, namespace)
    batch_policy = {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "batch"},
        "spec": {
            "selector": {"matchLabels": {"app": "batch"}},
            "routes": [
                {
                    "name": "r",
                    "strategy": {"type": "Fallback"},
                    "targets": [{"backend": "provider", "model": "big"}],
                }
            ],
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "batch-1", "labels": {"app": "batch"}},
        "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "app:1"}]},
    }
    kubectl.apply(yaml.safe_dump_all([batch_policy, pod]), namespace=namespace)
    wait_for_table_version(kubectl, namespace, "batch")
    bound = kubectl.run(
        "create",
        "token",
        "app",
        "-n",
        namespace,
        "--audience",
        AUDIENCE,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "batch-1",
    ).stdout.strip()
    # It claims the chat pods' labels and another name; the token says who it is.
    code, body = watch(
        distribution_url, bound, namespace=namespace, pod="chat-9", label=["app=chat"]
    )
    assert code == 200
    assert body["policy"] == "batch"
    assert body["table"]["routes"][0]["targets"][0]["model"] == "big"


def test_a_shadow_routes_divergence_reaches_the_policys_status(
    kubectl: Kubectl, namespace: str, distribution_url: str, tmp_path: Path
):
    fake = FakeOpenAI(name="fake-provider", api_key=None)
    with ServerThread(fake.app) as server:
        docs = chat_setup("small", service_account="app", url=server.url + "/v1")
        backend, policy = docs[-2], docs[-1]
        backend["spec"]["models"][1]["pricing"] = {"inputPerMillion": "3", "outputPerMillion": "6"}
        policy["spec"]["shadow"] = {
            "routes": [
                {
                    "name": "to-big",
                    "strategy": {"type": "Fallback"},
                    "targets": [{"backend": "provider", "model": "big"}],
                }
            ]
        }
        kubectl.apply(yaml.safe_dump_all(docs), namespace=namespace)
        wait_for_table_version(kubectl, namespace)
        token_file = tmp_path / "token"
        token_file.write_text(token(kubectl, namespace))
        labels_file = tmp_path / "labels"
        labels_file.write_text('app="chat"\n')
        with SidecarThread(
            None,
            tmp_path,
            discovery_url=distribution_url,
            discovery_token_path=token_file,
            pod_name="chat-shadow",
            pod_namespace=namespace,
            pod_labels_path=labels_file,
            shadow_report_seconds=0.2,
        ) as sidecar:
            with openai.OpenAI(
                base_url=sidecar.openai_base_url, api_key="app", max_retries=0
            ) as client:
                for _ in range(3):
                    answer = client.chat.completions.create(
                        model="small", messages=[{"role": "user", "content": "hi"}]
                    )
                    assert answer.model == "small", "the live route answered; the shadow never ran"
            status = wait_for_status(
                kubectl, namespace, lambda s: s.get("shadow", {}).get("evaluated") == 3
            )
    assert [r.json["model"] for r in fake.requests] == ["small"] * 3
    shadow = status["shadow"]
    assert shadow["divergent"] == 3
    assert shadow["divergentPercent"] == "100.0"
    assert shadow["costChangePercent"] == "200.0", "the same tokens at three times the prices"
    assert float(shadow["shadowCostUsd"]) == pytest.approx(
        3 * float(shadow["liveCostUsd"]), rel=1e-3
    )
