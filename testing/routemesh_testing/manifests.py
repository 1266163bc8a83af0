"""Small, complete setups that tests apply with kubectl, and a wait for the table they compile to.

`chat_setup` is the smallest RoutingPolicy that resolves: a Secret, one ModelBackend (`provider`,
serving `small` and `big`) and the policy `chat` over one of them. Tests change what they need
(the model, the selector, where the provider is) by argument. Test support only.
"""

from __future__ import annotations

from typing import Any

import yaml

from routemesh_testing.controlplane import REPO_ROOT
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.waiting import poll_until


def key_secret(name: str, api_key: str) -> dict[str, Any]:
    """A Secret holding a provider's API key under `api-key`, as backends name it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"api-key": api_key},
    }


def model_spec(name: str, context_window: int) -> dict[str, Any]:
    """One served model of a hosted backend: $1 and $2 per million tokens, Standard quality."""
    return {
        "name": name,
        "contextWindow": context_window,
        "pricing": {"inputPerMillion": "1", "outputPerMillion": "2"},
        "qualityTier": "Standard",
    }


def hosted_backend(
    name: str,
    url: str,
    models: list[dict[str, Any]],
    *,
    provider: str = "OpenAICompatible",
    secret: str = "provider-key",  # noqa: S107 (the Secret's name)
) -> dict[str, Any]:
    """A ModelBackend for a provider at `url`, its key in `secret`, serving `models`."""
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": name},
        "spec": {
            "provider": provider,
            "endpoint": {"url": url},
            "credentials": {"secretRef": {"name": secret, "key": "api-key"}},
            "models": models,
        },
    }


def chat_setup(
    model: str = "small",
    *,
    selector: dict[str, str] | None = None,
    url: str = "http://127.0.0.1:9/v1",
    provider: str = "OpenAI",
    secret: str = "provider-key",  # noqa: S107 (the Secret's name)
    api_key: str = "k",
    service_account: str | None = None,
) -> list[dict[str, Any]]:
    """A Secret, the backend `provider`, and the policy `chat` routing to `model` on it.

    The selector defaults to `app: chat`; a ServiceAccount comes first when one is named (for
    the sidecars' tokens).
    """
    docs: list[dict[str, Any]] = []
    if service_account is not None:
        docs.append(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": service_account}}
        )
    models = [model_spec(name, context_window=8000) for name in ("small", "big")]
    docs += [
        key_secret(secret, api_key),
        hosted_backend("provider", url, models, provider=provider, secret=secret),
        {
            "apiVersion": "routemesh.dev/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": "chat"},
            "spec": {
                "selector": {"matchLabels": {"app": "chat"} if selector is None else selector},
                "routes": [
                    {
                        "name": "r",
                        "strategy": {"type": "Fallback"},
                        "targets": [{"backend": "provider", "model": model}],
                    }
                ],
            },
        },
    ]
    return docs


def table_version(kubectl: Kubectl, namespace: str, policy: str = "chat") -> str | None:
    """The route-table version the policy's status shows, if any yet."""
    status = kubectl.get("routingpolicy", policy, namespace=namespace).get("status", {})
    found: str | None = status.get("routeTableVersion")
    return found


def wait_for_table_version(
    kubectl: Kubectl, namespace: str, policy: str = "chat", timeout: float = 30
) -> str:
    """The policy's route-table version, once its status has one; AssertionError otherwise."""
    found = poll_until(lambda: table_version(kubectl, namespace, policy), bool, timeout=timeout)
    if not found:
        raise AssertionError(f"RoutingPolicy {namespace}/{policy} never got a route table")
    return found


def endpoint_slice(
    service: str, port: int, addresses: list[tuple[str, str | None]], *, ready: bool = True
) -> dict[str, Any]:
    """The EndpointSlice a real cluster's controller would write for a Service's pods.

    Each address comes with its zone (None: no zone). There is no such controller here.
    """
    endpoints: list[dict[str, Any]] = []
    for ip, zone in addresses:
        endpoint: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": ready}}
        if zone is not None:
            endpoint["zone"] = zone
        endpoints.append(endpoint)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-abc", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def self_hosted_example(address: str) -> list[dict[str, Any]]:
    """examples/self-hosted-vllm.yaml with what it needs to resolve.

    That is the OpenAI key's Secret, and one ready vLLM pod behind the Service the operator
    creates for `llama-8b`.
    """
    example = REPO_ROOT / "examples" / "self-hosted-vllm.yaml"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "openai-api-key"},
        "stringData": {"api-key": "k"},
    }
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    return [secret, endpoint_slice("llama-8b", 8000, [(address, None)]), *docs]


def wait_for_ca_bundle(kubectl: Kubectl, name: str, timeout: float = 60) -> str:
    """The webhook configuration's caBundle, once the operator has patched it in."""

    def bundle() -> str:
        found = kubectl.get("mutatingwebhookconfiguration", name)
        return str(found["webhooks"][0]["clientConfig"].get("caBundle") or "")

    found: str = poll_until(bundle, bool, timeout=timeout)
    if not found:
        raise AssertionError(f"the operator never patched the caBundle of {name}")
    return found


def injection_webhook(
    name: str, port: int, namespaces: list[str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The chart's webhook configuration, calling the operator on 127.0.0.1.

    There is no Service here. It sends only `namespaces` to the webhook, so that it never
    intercepts another test's Pods.
    """
    selector = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": labels or {}},
        "webhooks": [
            {
                "name": "inject.routemesh.dev",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate-pods"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
                "namespaceSelector": {"matchExpressions": [selector]},
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }
        ],
    }
