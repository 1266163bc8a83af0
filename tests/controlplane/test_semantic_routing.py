"""examples/semantic-router.yaml end to end: embedding-based routing in an injected sidecar.

The example is applied to the real control plane (its backends pointed at fake providers on
127.0.0.1, which answer with their own names), the real operator compiles it and injects the
sidecar into a Pod, and that sidecar runs as a process, with the environment the image with the
embeddings extra gives it (the Static tier's model file). The official OpenAI client asks it
three kinds of request; the response headers say where each went. Then a sidecar without the
model is offered the same tier: it refuses the table, the policy's status counts it rejected,
and it keeps answering on the table it had.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from routemesh_testing.controlplane import REPO_ROOT, free_port
from routemesh_testing.fakes import ANTHROPIC_KEY, OPENAI_KEY, FakeAnthropic, FakeOpenAI
from routemesh_testing.injecting import Injecting
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import key_secret, wait_for_table_version
from routemesh_testing.models import static_model, transformer_model
from routemesh_testing.podrun import InjectedSidecar
from routemesh_testing.pods import create_pod
from routemesh_testing.serving import ServerThread
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(240)

EXAMPLE = REPO_ROOT / "examples" / "semantic-router.yaml"
# What the image built with EXTRAS=sidecar,embeddings sets (images/sidecar.Dockerfile).
EMBEDDINGS_IMAGE = {
    "ROUTEMESH_SIDECAR_STATIC_MODEL": "__static__",
    "ROUTEMESH_SIDECAR_TRANSFORMER_MODEL": "__transformer__",
}


@pytest.fixture(scope="module")
def providers() -> Iterator[dict[str, str]]:
    with (
        ServerThread(FakeOpenAI(name="openai", api_key=OPENAI_KEY).app) as openai_server,
        ServerThread(FakeAnthropic(name="anthropic", api_key=ANTHROPIC_KEY).app) as anthropic,
    ):
        yield {"openai": openai_server.url + "/v1", "anthropic": anthropic.url + "/v1"}


def example_documents(urls: dict[str, str], tier: str | None = None) -> list[dict[str, Any]]:
    """The example, with its backends at the fakes and the keys it names, optionally retiered."""
    docs = [doc for doc in yaml.safe_load_all(EXAMPLE.read_text()) if doc]
    secrets = []
    for doc in docs:
        if doc["kind"] == "ModelBackend":
            doc["spec"]["endpoint"]["url"] = urls[doc["metadata"]["name"]]
            reference = doc["spec"]["credentials"]["secretRef"]["name"]
            key = OPENAI_KEY if doc["metadata"]["name"] == "openai" else ANTHROPIC_KEY
            secrets.append(key_secret(reference, key))
        if doc["kind"] == "RoutingPolicy" and tier is not None:
            # Only the tier: Centroid is refused with Lexical (it would be ignored there).
            doc["spec"]["categoryMatching"] = {"tier": tier}
    return secrets + docs


def ask(sidecar: InjectedSidecar, prompt: str) -> tuple[str, str, str]:
    """The route, backend and model the sidecar's answer names, through the official client."""
    with openai.OpenAI(
        base_url=sidecar.app_env()["OPENAI_BASE_URL"], api_key="app", max_retries=0, timeout=30
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}]
        )
    answer = raw.parse()
    assert answer.choices[0].message.content
    return (
        raw.headers["x-routemesh-route"],
        raw.headers["x-routemesh-backend"],
        raw.headers["x-routemesh-model"],
    )


def sidecar_pod(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    ports = {
        "routemesh.dev/sidecar-port": str(free_port()),
        "routemesh.dev/sidecar-admin-port": str(free_port()),
    }
    return create_pod(kubectl, namespace, labels={"app": "chat"}, annotations=ports)


def image_env() -> dict[str, str]:
    """The environment the embeddings image sets, with this machine's built models."""
    built = {"__static__": str(static_model()), "__transformer__": str(transformer_model())}
    return {name: built[value] for name, value in EMBEDDINGS_IMAGE.items()}


def test_the_semantic_router_example_routes_by_meaning_in_an_injected_sidecar(
    kubectl: Kubectl, injecting: Injecting, providers: dict[str, str], tmp_path: Path
):
    namespace = injecting.labelled
    kubectl.apply(yaml.safe_dump_all(example_documents(providers)), namespace=namespace)
    wait_for_table_version(kubectl, namespace, "semantic", timeout=60)
    pod = sidecar_pod(kubectl, namespace)
    with InjectedSidecar(kubectl, pod, tmp_path, image_env=image_env()) as sidecar:
        assert ask(sidecar, "My Python script throws KeyError, how do I fix it?") == (
            "coding",
            "anthropic",
            "claude-sonnet-4-5",
        )
        assert ask(sidecar, "Solve x^2 - 5x + 6 = 0") == ("math", "openai", "o3-mini")
        assert ask(sidecar, "Write a short poem about the sea") == (
            "default",
            "openai",
            "gpt-4o-mini",
        )


def test_a_sidecar_without_the_model_refuses_the_tier_and_the_status_counts_it(
    kubectl: Kubectl, injecting: Injecting, providers: dict[str, str], tmp_path: Path
):
    namespace = injecting.plain  # a namespace of its own: one policy, one sidecar
    lexical = example_documents(providers, tier="Lexical")
    kubectl.apply(yaml.safe_dump_all(lexical), namespace=namespace)
    first = wait_for_table_version(kubectl, namespace, "semantic", timeout=60)
    pod = create_pod(
        kubectl,
        namespace,
        labels={"app": "chat", "routemesh.dev/inject": "enabled"},
        annotations={
            "routemesh.dev/sidecar-port": str(free_port()),
            "routemesh.dev/sidecar-admin-port": str(free_port()),
        },
    )
    with InjectedSidecar(kubectl, pod, tmp_path) as sidecar:  # the image without the extra
        assert ask(sidecar, "Write a short poem about the sea")[0] == "default"
        static = copy.deepcopy(lexical)
        for doc in static:
            if doc["kind"] == "RoutingPolicy":
                doc["spec"]["categoryMatching"]["tier"] = "Static"
        kubectl.apply(yaml.safe_dump_all(static), namespace=namespace)
        status = poll_until(
            lambda: kubectl.get("routingpolicy", "semantic", namespace=namespace)["status"],
            lambda s: (
                s.get("routeTableVersion") != first
                and (s.get("sidecars") or {}).get("rejected") == 1
            ),
            timeout=60,
        )
        assert status["sidecars"]["rejected"] == 1, status
        events = kubectl.run(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=semantic"
        ).stdout
        assert "tier Static needs its distilled model file" in events, events
        # It keeps the table it had, and keeps answering with it.
        assert ask(sidecar, "Write a short poem about the sea")[0] == "default"
