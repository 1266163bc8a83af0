"""The operator against the real control plane: examples become route tables, bad setups do not.

The operator runs in-process (kopf's KopfRunner, standalone) for the whole module; each test has
its own namespace and applies YAML with the real kubectl, then reads status and the route-table
ConfigMaps back with kubectl.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from routemesh_operator.api.v1alpha1 import ModelBackend, RoutingPolicy
from routemesh_operator.compiler.compile import compile_namespace
from routemesh_operator.compiler.inputs import ReadyAddress, Snapshot
from routemesh_operator.conventions import TABLE_KEY, configmap_name
from routemesh_sidecar.routetable import RouteTable, parse_route_table
from routemesh_testing.controlplane import LocalControlPlane
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import endpoint_slice
from routemesh_testing.operator import running_operator
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(180)

EXAMPLES = Path(__file__).parents[2] / "examples"
# Every example: the sidecars of this version run every strategy (Cascade in tiered-free-paid)
# and every signal (semantic categories in cost-saving-router, on embeddings in semantic-router,
# the learned router in learned-router).
RUNNABLE_EXAMPLES = [
    "multi-provider-failover",
    "canary-split",
    "self-hosted-vllm",
    "tiered-free-paid",
    "cost-saving-router",
    "semantic-router",
    "learned-router",
]
VLLM_ADDRESSES = [("10.1.0.7", "zone-a"), ("10.1.0.8", "zone-b")]


@pytest.fixture(scope="module")
def operator(control_plane: LocalControlPlane) -> Iterator[None]:
    with running_operator(control_plane):
        yield


def example(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((EXAMPLES / f"{name}.yaml").read_text()) if doc]


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def secrets_for(docs: list[dict[str, Any]], key: str | None = None) -> list[dict[str, Any]]:
    """The Secrets the backends refer to, each with a fake key under the referenced name."""
    found = []
    for doc in docs:
        ref = (
            (doc["spec"].get("credentials") or {}).get("secretRef")
            if doc["kind"] == "ModelBackend"
            else None
        )
        if ref:
            found.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": ref["name"]},
                    "stringData": {key or ref["key"]: "sk-test-never-routed"},
                }
            )
    return found


def service_with_endpoints(
    name: str, port: int, addresses: list[tuple[str, str]], *, ready: bool = True
) -> list[dict[str, Any]]:
    """A Service and the EndpointSlice a real cluster's controller would write for its pods."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": port}]},
    }
    return [service, endpoint_slice(name, port, list(addresses), ready=ready)]


def conditions(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, dict[str, Any]]:
    body = kubectl.get(kind, name, namespace=namespace)
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or ()}


def wait_for_condition(
    kubectl: Kubectl,
    namespace: str,
    kind: str,
    name: str,
    type_: str,
    status: str,
    reason: str | None = None,
) -> dict[str, dict[str, Any]]:
    def holds(found: dict[str, dict[str, Any]]) -> bool:
        condition = found.get(type_)
        return (
            condition is not None
            and condition["status"] == status
            and reason in (None, condition["reason"])
        )

    found = poll_until(lambda: conditions(kubectl, namespace, kind, name), holds, timeout=30)
    assert holds(found), f"{kind}/{name}: wanted {type_}={status} ({reason}), got {found}"
    return found


def published_table(kubectl: Kubectl, namespace: str, policy: str) -> RouteTable | None:
    result = kubectl.run(
        "get", "configmap", configmap_name(policy), "-n", namespace, "-o", "json", check=False
    )
    if result.returncode != 0:
        return None
    return parse_route_table(json.loads(result.stdout)["data"][TABLE_KEY])


def expected_tables(docs: list[dict[str, Any]], namespace: str) -> dict[str, RouteTable]:
    """What the pure compiler makes of the same documents, offline."""
    docs = copy.deepcopy(docs)
    for doc in docs:
        doc["metadata"].update(namespace=namespace, generation=1)
    backends = tuple(ModelBackend.model_validate(d) for d in docs if d["kind"] == "ModelBackend")
    snapshot = Snapshot(
        namespace=namespace,
        policies=tuple(
            RoutingPolicy.model_validate(d) for d in docs if d["kind"] == "RoutingPolicy"
        ),
        backends=backends,
        secret_keys=frozenset(
            (b.spec.credentials.secret_ref.name, b.spec.credentials.secret_ref.key)
            for b in backends
            if b.spec.credentials
        ),
        service_addresses={
            ("llama-8b", 8000): tuple(ReadyAddress(ip, 8000, zone) for ip, zone in VLLM_ADDRESSES)
        },
    )
    return {
        name: outcome.table
        for name, outcome in compile_namespace(snapshot).policies.items()
        if outcome.table is not None
    }


@pytest.mark.usefixtures("operator")
@pytest.mark.parametrize("name", RUNNABLE_EXAMPLES)
def test_each_example_is_accepted_and_publishes_the_expected_route_table(
    kubectl: Kubectl, namespace: str, name: str
):
    docs = example(name)
    extra = secrets_for(docs)
    if name == "self-hosted-vllm":
        # The operator creates the Service; a real cluster's controller writes its slice.
        extra += service_with_endpoints("llama-8b", 8000, VLLM_ADDRESSES)[1:]
    kubectl.apply(dump(extra + docs), namespace=namespace)
    expected = expected_tables(docs, namespace)
    for doc in docs:
        kind, resource = doc["kind"], doc["metadata"]["name"]
        ready = "Programmed" if kind == "RoutingPolicy" else "Ready"
        found = wait_for_condition(kubectl, namespace, kind, resource, ready, "True")
        assert found["Accepted"]["status"] == "True"
        assert found["ResolvedRefs"]["status"] == "True"
        assert found["Accepted"]["observedGeneration"] == 1
    for policy, table in expected.items():
        published = published_table(kubectl, namespace, policy)
        assert published is not None
        assert published.version == 1
        assert published.content_hash == table.content_hash
        status = kubectl.get("routingpolicy", policy, namespace=namespace)["status"]
        assert status["routeTableVersion"] == published.version_label
        assert status["observedGeneration"] == 1
    printed = kubectl.run("get", "rp,mb", "-n", namespace).stdout
    assert "True" in printed


# --- semantically invalid setups ---------------------------------------------------------------

MODEL = {
    "name": "small",
    "contextWindow": 8000,
    "pricing": {"inputPerMillion": "1.00", "outputPerMillion": "2.00"},
    "qualityTier": "Standard",
}
BIGGER = {
    **MODEL,
    "name": "big",
    "capabilities": ["Tools"],
    "pricing": {"inputPerMillion": "0.50", "outputPerMillion": "1.00"},
}


def backend(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "provider": "OpenAI",
        "endpoint": {"url": "https://llm.example/v1"},
        "models": [MODEL, BIGGER],
    }
    body.update(spec)
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": name},
        "spec": body,
    }


def policy(name: str, routes: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "routes": routes, **spec},
    }


def route(
    *targets: tuple[str, str], name: str = "r", strategy: str = "Fallback", **fields: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "strategy": {"type": strategy},
        "targets": [{"backend": b, "model": m} for b, m in targets],
        **fields,
    }


SECRET_KEY = {"credentials": {"secretRef": {"name": "provider-key", "key": "api-key"}}}
INVALID = {
    "missing-backend": (
        policy("missing-backend", [route(("nope", "small"))]),
        "ResolvedRefs",
        "BackendNotFound",
        "'nope' does not exist",
    ),
    "model-not-served": (
        policy("model-not-served", [route(("good", "huge"))]),
        "ResolvedRefs",
        "ModelNotServed",
        "does not serve model 'huge'",
    ),
    "missing-secret": (
        policy("missing-secret", [route(("no-secret", "small"))]),
        "ResolvedRefs",
        "BackendNotResolved",
        "Secret 'absent-key'",
    ),
    "secret-without-key": (
        policy("secret-without-key", [route(("wrong-key", "small"))]),
        "ResolvedRefs",
        "BackendNotResolved",
        "with key 'token'",
    ),
    "no-ready-endpoints": (
        policy("no-ready-endpoints", [route(("in-cluster", "small"))]),
        "ResolvedRefs",
        "BackendNotResolved",
        "no ready endpoints",
    ),
    "cascade-cheaper": (
        policy(
            "cascade-cheaper",
            [
                route(("good", "small"), ("good", "big"), strategy="Cascade")
                | {
                    "strategy": {
                        "type": "Cascade",
                        "cascade": {"qualityGate": {"minOutputTokens": 5}},
                    }
                }
            ],
        ),
        "Accepted",
        "CascadeNotEscalating",
        "'big' costs less than 'small'",
    ),
    "tools-missing": (
        policy(
            "tools-missing", [route(("good", "small"), match={"signals": {"toolsPresent": True}})]
        ),
        "Accepted",
        "CapabilityMissing",
        "cannot call tools",
    ),
    "context-too-small": (
        policy(
            "context-too-small",
            [route(("good", "small"), match={"signals": {"tokens": {"min": 50000}}})],
        ),
        "Accepted",
        "ContextWindowTooSmall",
        "at least 50000",
    ),
    "unreachable-route": (
        policy(
            "unreachable-route",
            [
                route(("good", "small"), name="all"),
                route(("good", "big"), name="later", match={"models": ["big"]}),
            ],
        ),
        "Accepted",
        "RouteUnreachable",
        "('later') are never taken",
    ),
    "vision-missing": (
        policy(
            "vision-missing",
            [route(("good", "small"), match={"signals": {"modalities": ["Image"]}})],
        ),
        "Accepted",
        "CapabilityMissing",
        "cannot read images",
    ),
    "overlap": (
        # Selects every pod, so it overlaps the older `good` policy's pods.
        policy("overlap", [route(("good", "small"))])
        | {"spec": {"selector": {}, "routes": [route(("good", "small"))]}},
        "Accepted",
        "SelectorOverlap",
        "the same pods as the older RoutingPolicy",
    ),
}


@pytest.mark.usefixtures("operator")
def test_invalid_setups_get_their_reason_and_never_a_route_table(kubectl: Kubectl, namespace: str):
    setup = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "provider-key"},
            "stringData": {"api-key": "k"},
        },
        backend("good", **SECRET_KEY),
        backend("no-secret", credentials={"secretRef": {"name": "absent-key", "key": "api-key"}}),
        backend("wrong-key", credentials={"secretRef": {"name": "provider-key", "key": "token"}}),
        backend(
            "in-cluster",
            provider="OpenAICompatible",
            endpoint={"service": {"name": "llm-gateway", "port": 8080}},
        ),
        *service_with_endpoints("llm-gateway", 8080, [("10.2.0.1", "zone-a")], ready=False),
        policy("good", [route(("good", "small"))]),
    ]
    kubectl.apply(dump(setup), namespace=namespace)
    wait_for_condition(kubectl, namespace, "routingpolicy", "good", "Programmed", "True")
    kubectl.apply(dump([case[0] for case in INVALID.values()]), namespace=namespace)
    for name, (_, condition, reason, message) in INVALID.items():
        found = wait_for_condition(kubectl, namespace, "routingpolicy", name, condition, "False")
        reasons = {c["reason"] for c in found.values()}
        assert reason in reasons or found[condition]["reason"] == reason, (name, found)
        assert message in found[condition]["message"], (name, found[condition]["message"])
        assert found["Programmed"]["status"] == "False"
        assert published_table(kubectl, namespace, name) is None, f"{name} reached the sidecars"
    # The backends say what is wrong with them too.
    found = wait_for_condition(
        kubectl, namespace, "modelbackend", "no-secret", "ResolvedRefs", "False", "SecretNotFound"
    )
    assert found["Ready"]["status"] == "False"
    wait_for_condition(
        kubectl, namespace, "modelbackend", "in-cluster", "Ready", "False", "NoReadyEndpoints"
    )
    events = kubectl.get(
        "events", "--field-selector", "involvedObject.name=missing-backend", namespace=namespace
    )
    assert any(e["reason"] == "BackendNotFound" and e["type"] == "Warning" for e in events["items"])


@pytest.mark.usefixtures("operator")
def test_a_policy_change_gets_a_new_version_and_an_invalid_one_keeps_the_last_good_table(
    kubectl: Kubectl, namespace: str
):
    setup = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "provider-key"},
            "stringData": {"api-key": "k"},
        },
        backend("good", **SECRET_KEY),
        policy("p", [route(("good", "small"))]),
    ]
    kubectl.apply(dump(setup), namespace=namespace)
    wait_for_condition(kubectl, namespace, "routingpolicy", "p", "Programmed", "True")
    first = published_table(kubectl, namespace, "p")
    assert first is not None
    assert first.version == 1

    kubectl.apply(dump([policy("p", [route(("good", "big"))])]), namespace=namespace)
    second = poll_until(
        lambda: published_table(kubectl, namespace, "p"),
        lambda table: table is not None and table.version == 2,
    )
    assert second is not None
    assert second.version == 2
    assert second.routes[0].targets[0].model == "big"
    status = poll_until(
        lambda: kubectl.get("routingpolicy", "p", namespace=namespace)["status"],
        lambda s: s.get("observedGeneration") == 2,
    )
    assert status["routeTableVersion"] == second.version_label

    kubectl.apply(dump([policy("p", [route(("gone", "big"))])]), namespace=namespace)
    wait_for_condition(
        kubectl, namespace, "routingpolicy", "p", "ResolvedRefs", "False", "BackendNotFound"
    )
    kept = published_table(kubectl, namespace, "p")
    assert kept is not None
    assert kept.content_hash == second.content_hash  # the sidecars keep the last good table


@pytest.mark.usefixtures("operator")
def test_a_missing_secret_created_later_resolves_the_policy(kubectl: Kubectl, namespace: str):
    kubectl.apply(
        dump([backend("good", **SECRET_KEY), policy("p", [route(("good", "small"))])]),
        namespace=namespace,
    )
    wait_for_condition(
        kubectl, namespace, "modelbackend", "good", "ResolvedRefs", "False", "SecretNotFound"
    )
    kubectl.apply(
        dump(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "provider-key"},
                    "stringData": {"api-key": "k"},
                }
            ]
        ),
        namespace=namespace,
    )
    wait_for_condition(kubectl, namespace, "routingpolicy", "p", "Programmed", "True")
    wait_for_condition(kubectl, namespace, "modelbackend", "good", "Ready", "True")


@pytest.mark.usefixtures("operator")
def test_deleting_a_policy_garbage_collects_its_table(kubectl: Kubectl, namespace: str):
    setup = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "provider-key"},
            "stringData": {"api-key": "k"},
        },
        backend("good", **SECRET_KEY),
        policy("p", [route(("good", "small"))]),
    ]
    kubectl.apply(dump(setup), namespace=namespace)
    wait_for_condition(kubectl, namespace, "routingpolicy", "p", "Programmed", "True")
    kubectl.run("delete", "routingpolicy", "p", "-n", namespace, "--wait=true", "--timeout=20s")
    gone = poll_until(
        lambda: published_table(kubectl, namespace, "p"), lambda table: table is None, timeout=60
    )
    assert gone is None


@pytest.mark.usefixtures("operator")
def test_a_self_hosted_backend_gets_its_deployment_and_service_and_loses_them_on_delete(
    kubectl: Kubectl, namespace: str
):
    docs = example("self-hosted-vllm")
    kubectl.apply(dump(docs[:1]), namespace=namespace)
    deployment = poll_until(
        lambda: kubectl.run(
            "get", "deployment", "llama-8b", "-n", namespace, "-o", "json", check=False
        ),
        lambda result: result.returncode == 0,
    )
    assert deployment.returncode == 0, deployment.stderr
    body = json.loads(deployment.stdout)
    assert body["metadata"]["ownerReferences"][0]["kind"] == "ModelBackend"
    assert body["spec"]["replicas"] == 2
    pod = body["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "vllm/vllm-openai:v0.6.4"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container["args"][:6] == [
        "--model",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name",
        "llama-3.1-8b",
        "--port",
        "8000",
    ]
    assert "--enable-prefix-caching" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    service = kubectl.get("service", "llama-8b", namespace=namespace)
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service["spec"]["selector"] == body["spec"]["selector"]["matchLabels"]

    # A spec change updates the Deployment.
    docs[0]["spec"]["selfHosted"]["replicas"] = 3
    kubectl.apply(dump(docs[:1]), namespace=namespace)
    scaled = poll_until(
        lambda: kubectl.get("deployment", "llama-8b", namespace=namespace)["spec"]["replicas"],
        lambda replicas: replicas == 3,
    )
    assert scaled == 3

    # What the Deployment reports reaches the backend's status (no kubelet here: say it by hand).
    kubectl.run(
        "patch",
        "deployment",
        "llama-8b",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"replicas": 3, "readyReplicas": 2}}),
    )
    status = poll_until(
        lambda: kubectl.get("modelbackend", "llama-8b", namespace=namespace).get("status", {}),
        lambda s: s.get("readyReplicas") == 2,
    )
    assert status["replicas"] == 3
    assert status["readyReplicas"] == 2

    kubectl.run("delete", "modelbackend", "llama-8b", "-n", namespace, "--timeout=20s")
    # The garbage collector removes what the backend owned.
    gone = poll_until(
        lambda: [
            kubectl.run("get", kind, "llama-8b", "-n", namespace, check=False).returncode
            for kind in ("deployment", "service")
        ],
        lambda codes: all(code != 0 for code in codes),
        timeout=60,
    )
    assert all(code != 0 for code in gone)
