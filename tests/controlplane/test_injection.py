"""Sidecar injection end to end: the real kube-apiserver calls the operator's webhook over TLS.

The operator runs in-process with its webhook on 127.0.0.1; it issues its own CA and serving
certificate, keeps them in a Secret and patches the caBundle of a webhook configuration this
module creates (with `clientConfig.url`, and a namespace selector that only lets this module's
namespaces through). Each case creates a Pod with the real kubectl and checks the stored Pod
field by field. No kubelet runs, so the last test starts the sidecar as a process with exactly
the environment and files the stored Pod describes.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from routemesh_testing.controlplane import LocalControlPlane, free_port
from routemesh_testing.fakes import OPENAI_KEY, FakeOpenAI
from routemesh_testing.injecting import Injecting, injecting_operator
from routemesh_testing.kubectl import Kubectl, KubectlError
from routemesh_testing.manifests import (
    chat_setup,
    wait_for_table_version,
)
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.podrun import InjectedSidecar
from routemesh_testing.pods import SIDECAR, create_pod, sidecar_of
from routemesh_testing.serving import ServerThread
from routemesh_testing.sidecar import metric_samples
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(240)

BASE_URL_VARS = ("OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_BASE_URL")


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or ()}


def assert_not_injected(pod: dict[str, Any]) -> None:
    assert sidecar_of(pod) is None
    assert "routemesh.dev/injected" not in (pod["metadata"].get("annotations") or {})
    app = pod["spec"]["containers"][0]
    assert not set(env_of(app)) & set(BASE_URL_VARS)


def assert_injected(pod: dict[str, Any], port: int = 4000) -> dict[str, Any]:
    init = pod["spec"]["initContainers"]
    sidecar = init[0]  # first: it starts before the app and any other init container
    assert sidecar["name"] == SIDECAR
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar
    assert pod["metadata"]["annotations"]["routemesh.dev/injected"]
    app_env = env_of(pod["spec"]["containers"][0])
    assert app_env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{port}/v1"
    assert app_env["OPENAI_API_BASE"] == f"http://127.0.0.1:{port}/v1"
    assert app_env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sidecar_env = env_of(sidecar)
    assert sidecar_env["ROUTEMESH_SIDECAR_LISTEN_PORT"] == str(port)
    assert "k8s.pod.name=" in sidecar_env["OTEL_RESOURCE_ATTRIBUTES"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    # Not the API-access token the ServiceAccount admission plugin adds: ours, for RouteMesh.
    token = next(
        v
        for n, v in volumes.items()
        if n.startswith("routemesh-") and "projected" in v and _has_token(v)
    )
    source = next(s for s in token["projected"]["sources"] if "serviceAccountToken" in s)
    assert source["serviceAccountToken"]["audience"] == "routemesh"
    return sidecar


def _has_token(volume: dict[str, Any]) -> bool:
    return any("serviceAccountToken" in s for s in volume["projected"]["sources"])


def test_a_pod_in_a_labelled_namespace_is_injected(kubectl: Kubectl, injecting: Injecting):
    pod = create_pod(kubectl, injecting.labelled)
    sidecar = assert_injected(pod)
    assert env_of(sidecar)["ROUTEMESH_SIDECAR_DISCOVERY_URL"] == (
        f"http://127.0.0.1:{injecting.distribution_port}"
    )


def test_a_labelled_pod_in_an_unlabelled_namespace_is_injected(
    kubectl: Kubectl, injecting: Injecting
):
    # A label, not an annotation: the chart's webhook selectors can only see labels.
    assert_injected(
        create_pod(kubectl, injecting.plain, labels={"routemesh.dev/inject": "enabled"})
    )
    assert_not_injected(create_pod(kubectl, injecting.plain))


def test_an_opted_out_pod_is_left_alone(kubectl: Kubectl, injecting: Injecting):
    opted_out = create_pod(
        kubectl, injecting.labelled, annotations={"routemesh.dev/inject": "disabled"}
    )
    assert_not_injected(opted_out)


def test_system_and_operator_namespaces_are_never_touched(kubectl: Kubectl, injecting: Injecting):
    # The operator's own namespace reaches the webhook here (the chart never sends it), and the
    # webhook still leaves it alone.
    own = create_pod(
        kubectl, injecting.operator_namespace, annotations={"routemesh.dev/inject": "enabled"}
    )
    assert_not_injected(own)
    system = create_pod(kubectl, "kube-system", annotations={"routemesh.dev/inject": "enabled"})
    try:
        assert_not_injected(system)
    finally:
        kubectl.run("delete", "pod", system["metadata"]["name"], "-n", "kube-system", check=False)


def test_a_pod_that_sets_its_own_base_url_keeps_it(kubectl: Kubectl, injecting: Injecting):
    own = [{"name": "OPENAI_BASE_URL", "value": "https://proxy.internal/v1"}]
    pod = create_pod(kubectl, injecting.labelled, env=own)
    assert sidecar_of(pod) is not None
    app_env = env_of(pod["spec"]["containers"][0])
    assert app_env["OPENAI_BASE_URL"] == "https://proxy.internal/v1"
    assert app_env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:4000"
    assert [e["name"] for e in pod["spec"]["containers"][0]["env"]].count("OPENAI_BASE_URL") == 1


def test_an_injected_pod_is_not_injected_again(kubectl: Kubectl, injecting: Injecting):
    first = create_pod(kubectl, injecting.labelled)
    again: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": first["metadata"]["name"] + "-again",
            "annotations": first["metadata"]["annotations"],
        },
        "spec": {key: first["spec"][key] for key in ("containers", "initContainers", "volumes")},
    }
    kubectl.apply(yaml.safe_dump(again), namespace=injecting.labelled)
    stored = kubectl.get("pod", again["metadata"]["name"], namespace=injecting.labelled)
    assert [c["name"] for c in stored["spec"]["initContainers"]] == [SIDECAR]
    assert stored["spec"]["containers"][0]["env"] == first["spec"]["containers"][0]["env"]
    ours = [v["name"] for v in stored["spec"]["volumes"] if v["name"].startswith("routemesh-")]
    assert sorted(ours) == sorted(set(ours))


def test_annotations_override_the_port_resources_and_log_level(
    kubectl: Kubectl, injecting: Injecting
):
    pod = create_pod(
        kubectl,
        injecting.labelled,
        annotations={
            "routemesh.dev/sidecar-port": "4100",
            "routemesh.dev/sidecar-log-level": "debug",
            "routemesh.dev/sidecar-memory-limit": "256Mi",
            "routemesh.dev/sidecar-cpu-request": "50m",
        },
    )
    sidecar = assert_injected(pod, port=4100)
    assert env_of(sidecar)["ROUTEMESH_SIDECAR_LOG_LEVEL"] == "debug"
    assert sidecar["resources"]["limits"]["memory"] == "256Mi"
    assert sidecar["resources"]["requests"]["cpu"] == "50m"


def test_a_nonsense_override_refuses_the_pod_with_the_reason(
    kubectl: Kubectl, injecting: Injecting
):
    with pytest.raises(KubectlError, match=r"routemesh\.dev/sidecar-port"):
        create_pod(kubectl, injecting.labelled, annotations={"routemesh.dev/sidecar-port": "http"})


def policy_docs(secret: str, provider_url: str) -> list[dict[str, Any]]:
    return chat_setup(
        url=provider_url, provider="OpenAICompatible", secret=secret, api_key=OPENAI_KEY
    )


def programmed(kubectl: Kubectl, namespace: str) -> None:
    wait_for_table_version(kubectl, namespace)


def test_the_app_container_never_sees_the_provider_secret(kubectl: Kubectl, injecting: Injecting):
    secret = f"key-{secrets.token_hex(3)}"
    kubectl.apply(
        yaml.safe_dump_all(policy_docs(secret, "http://127.0.0.1:9/v1")),
        namespace=injecting.labelled,
    )
    programmed(kubectl, injecting.labelled)
    pod = create_pod(kubectl, injecting.labelled, labels={"app": "chat"})
    sidecar = assert_injected(pod)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    holding = {
        name
        for name, volume in volumes.items()
        if secret in json.dumps(volume)  # the volume that projects the provider's Secret
    }
    assert holding, "the sidecar gets the Secret"
    assert holding <= {m["name"] for m in sidecar["volumeMounts"]}
    app = pod["spec"]["containers"][0]
    assert not holding & {m["name"] for m in app.get("volumeMounts") or ()}
    assert secret not in json.dumps(app)
    assert not app.get("envFrom")


def served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_rotated_certificate_keeps_the_webhook_working(
    control_plane: LocalControlPlane, kubectl: Kubectl, tmp_path: Path
):
    # A serving certificate of 40 s, renewed 30 s before it ends: one rotation every ~10 s.
    day = 86400.0
    with injecting_operator(
        control_plane,
        kubectl,
        tmp_path,
        webhook_serving_validity_days=40 / day,
        webhook_rotate_before_days=30 / day,
    ) as setup:
        assert_injected(create_pod(kubectl, setup.labelled))
        before = served_certificate(setup.webhook_port)
        after = poll_until(
            lambda: served_certificate(setup.webhook_port), lambda der: der != before, timeout=60
        )
        assert after != before, "the certificate never rotated"
        stored = kubectl.get(
            "secret", "routemesh-webhook-certs", namespace=setup.operator_namespace
        )
        assert after in _ders(base64.b64decode(stored["data"]["tls.crt"]))
        # The API server still trusts the webhook: the same CA signed the new certificate.
        assert_injected(create_pod(kubectl, setup.labelled))


def _ders(pem: bytes) -> list[bytes]:
    blocks = pem.decode().split("-----END CERTIFICATE-----")
    return [
        ssl.PEM_cert_to_DER_cert(block + "-----END CERTIFICATE-----\n")
        for block in blocks
        if "BEGIN CERTIFICATE" in block
    ]


def test_the_injected_sidecar_runs_as_a_process_loads_its_table_and_answers(
    kubectl: Kubectl, injecting: Injecting, tmp_path: Path
):
    with ServerThread(FakeOpenAI(name="upstream", api_key=OPENAI_KEY).app) as provider:
        secret = f"key-{secrets.token_hex(3)}"
        kubectl.apply(
            yaml.safe_dump_all(policy_docs(secret, provider.url + "/v1")),
            namespace=injecting.labelled,
        )
        programmed(kubectl, injecting.labelled)
        port, admin = free_port(), free_port()
        pod = create_pod(
            kubectl,
            injecting.labelled,
            labels={"app": "chat"},
            annotations={
                "routemesh.dev/sidecar-port": str(port),
                "routemesh.dev/sidecar-admin-port": str(admin),
            },
        )
        with InjectedSidecar(kubectl, pod, tmp_path) as sidecar:
            with openai.OpenAI(
                base_url=sidecar.app_env()["OPENAI_BASE_URL"],
                api_key="app",
                max_retries=0,
                timeout=20,
            ) as client:
                raw = client.chat.completions.with_raw_response.create(
                    model="small", messages=[{"role": "user", "content": "hi"}]
                )
            answer = raw.parse()
            assert "upstream" in (answer.choices[0].message.content or "")
            assert raw.headers["x-routemesh-backend"] == "provider"
            with urllib.request.urlopen(f"{sidecar.admin_url}/config_dump", timeout=5) as response:  # noqa: S310
                dump = json.loads(response.read())
            status = kubectl.get("routingpolicy", "chat", namespace=injecting.labelled)["status"]
            assert dump["route_table"]["version"] == status["routeTableVersion"]
            assert sidecar.admin_url == f"http://127.0.0.1:{admin}"
            assert sidecar.app_env()["OPENAI_BASE_URL"] == f"http://127.0.0.1:{port}/v1"


def test_over_tls_the_injected_sidecar_trusts_the_ca_the_operator_published(
    control_plane: LocalControlPlane, kubectl: Kubectl, tmp_path: Path
):
    with (
        injecting_operator(control_plane, kubectl, tmp_path / "operator", tls=True) as setup,
        ServerThread(FakeOpenAI(name="upstream", api_key=OPENAI_KEY).app) as provider,
    ):
        kubectl.apply(
            yaml.safe_dump_all(policy_docs("provider-key", provider.url + "/v1")),
            namespace=setup.labelled,
        )
        programmed(kubectl, setup.labelled)
        published = poll_until(
            lambda: kubectl.run(
                "get", "configmap", "routemesh-ca", "-n", setup.labelled, "-o", "json", check=False
            ),
            lambda result: result.returncode == 0,
            timeout=30,
        )
        assert published.returncode == 0, "the CA was never published in the namespace"
        ca = json.loads(published.stdout)["data"]["ca.crt"]
        secret = kubectl.get(
            "secret", "routemesh-webhook-certs", namespace=setup.operator_namespace
        )
        assert ca == base64.b64decode(secret["data"]["ca-bundle.crt"]).decode()
        # Without the CA, the operator's certificate is not trusted.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(
                f"https://127.0.0.1:{setup.distribution_port}/healthz", timeout=5
            )
        pod = create_pod(
            kubectl,
            setup.labelled,
            labels={"app": "chat"},
            annotations={
                "routemesh.dev/sidecar-port": str(free_port()),
                "routemesh.dev/sidecar-admin-port": str(free_port()),
            },
        )
        sidecar_env = env_of(pod["spec"]["initContainers"][0])
        assert sidecar_env["ROUTEMESH_SIDECAR_DISCOVERY_URL"].startswith("https://")
        assert "ROUTEMESH_SIDECAR_DISCOVERY_CA_PATH" in sidecar_env
        with InjectedSidecar(kubectl, pod, tmp_path / "pod") as running:
            with openai.OpenAI(
                base_url=running.app_env()["OPENAI_BASE_URL"],
                api_key="app",
                max_retries=0,
                timeout=20,
            ) as client:
                answer = client.chat.completions.create(
                    model="small", messages=[{"role": "user", "content": "hi"}]
                )
            assert "upstream" in (answer.choices[0].message.content or "")
            with urllib.request.urlopen(f"{running.admin_url}/config_dump", timeout=5) as response:  # noqa: S310
                dump = json.loads(response.read())
            status = kubectl.get("routingpolicy", "chat", namespace=setup.labelled)["status"]
            assert dump["route_table"]["version"] == status["routeTableVersion"]


def dropped_exports(admin_url: str) -> float:
    """routemesh_spans_dropped_total{reason="export_failed"} of a running sidecar."""
    return sum(metric_samples(admin_url, "routemesh_spans_dropped_total", reason="export_failed"))


def ask(sidecar: InjectedSidecar) -> None:
    with openai.OpenAI(
        base_url=sidecar.app_env()["OPENAI_BASE_URL"], api_key="app", max_retries=0, timeout=20
    ) as client:
        client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}])


def test_the_sidecar_exports_with_the_headers_of_its_namespaces_secret_and_starts_without_it(
    control_plane: LocalControlPlane, kubectl: Kubectl, tmp_path: Path
):
    api_key = f"otlp-{secrets.token_hex(8)}"
    receiver = OTLPReceiver(required_headers={"x-api-key": api_key})  # as a hosted collector
    with (
        ServerThread(receiver.app) as collector,
        ServerThread(FakeOpenAI(name="upstream", api_key=OPENAI_KEY).app) as provider,
        injecting_operator(
            control_plane,
            kubectl,
            tmp_path / "operator",
            otlp_endpoint=collector.url,
            otlp_headers_secret="otlp-auth",
        ) as setup,
    ):
        receiver.bind(collector)
        kubectl.apply(
            yaml.safe_dump_all(policy_docs("provider-key", provider.url + "/v1")),
            namespace=setup.labelled,
        )
        programmed(kubectl, setup.labelled)
        annotations = {
            "routemesh.dev/sidecar-port": str(free_port()),
            "routemesh.dev/sidecar-admin-port": str(free_port()),
        }
        # No Secret yet: the pod is still injected and its sidecar still serves the app.
        unauthorised = create_pod(
            kubectl, setup.labelled, labels={"app": "chat"}, annotations=annotations
        )
        sidecar = sidecar_of(unauthorised)
        assert sidecar is not None
        assert env_of(sidecar)["OTEL_EXPORTER_OTLP_HEADERS"] == {
            "secretKeyRef": {"name": "otlp-auth", "key": "headers", "optional": True}
        }
        with InjectedSidecar(kubectl, unauthorised, tmp_path / "without") as running:
            assert "OTEL_EXPORTER_OTLP_HEADERS" not in running.env
            ask(running)
            # The collector refuses the batch; the sidecar counts the spans it lost.
            poll_until(lambda: dropped_exports(running.admin_url), lambda n: n >= 2, timeout=20)
        assert receiver.refused >= 1
        assert receiver.spans == []
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "otlp-auth"},
            "stringData": {"headers": f"x-api-key={api_key}"},
        }
        kubectl.apply(yaml.safe_dump(secret), namespace=setup.labelled)
        annotations = {
            "routemesh.dev/sidecar-port": str(free_port()),
            "routemesh.dev/sidecar-admin-port": str(free_port()),
        }
        pod = create_pod(kubectl, setup.labelled, labels={"app": "chat"}, annotations=annotations)
        assert api_key not in json.dumps(pod), "the key stays in the Secret"
        with InjectedSidecar(kubectl, pod, tmp_path / "with") as running:
            ask(running)
            [route] = receiver.wait_for(lambda s: s.name == "routemesh.route", timeout=20)
            assert route.resource["k8s.pod.name"] == pod["metadata"]["name"]
            assert dropped_exports(running.admin_url) == 0
