"""Fixtures of the reliability suite: the whole system, every part a real process, per scenario.

A scenario gets the local control plane and the trace backend (Phoenix), both the session's,
and its own namespace, fake providers, operator process, webhook and app Pod with its injected
sidecar (see `routemesh_testing.system`). The sidecar exports its spans to Phoenix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from routemesh_testing.controlplane import LocalControlPlane, free_port
from routemesh_testing.fakes import OPENAI_KEY
from routemesh_testing.faultproxy import FaultyUpstream
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import (
    injection_webhook,
    wait_for_ca_bundle,
    wait_for_table_version,
)
from routemesh_testing.operator import OperatorProcess, injecting_settings
from routemesh_testing.phoenix import PhoenixServer
from routemesh_testing.podrun import InjectedSidecar
from routemesh_testing.system import OPERATOR_NAMESPACE, System, setup_documents


def _namespaces(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("label", "namespace", namespace, "routemesh.dev/inject=enabled", "--overwrite")
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}
    kubectl.apply(yaml.safe_dump(body))


@pytest.fixture
def system(
    control_plane: LocalControlPlane,
    kubectl: Kubectl,
    namespace: str,
    trace_backend: PhoenixServer,
    tmp_path: Path,
) -> Iterator[System]:
    with ExitStack() as stack:
        primary = stack.enter_context(FaultyUpstream("primary", OPENAI_KEY))
        spare = stack.enter_context(FaultyUpstream("spare", OPENAI_KEY))
        _namespaces(kubectl, namespace)
        webhook = f"e2e-{namespace}"[:63]
        webhook_port, distribution_port = free_port(), free_port()
        kubectl.apply(yaml.safe_dump(injection_webhook(webhook, webhook_port, [namespace])))
        stack.callback(kubectl.run, "delete", "mutatingwebhookconfiguration", webhook, check=False)
        operator = OperatorProcess(
            control_plane,
            tmp_path / "operator.log",
            **injecting_settings(
                namespace=OPERATOR_NAMESPACE,
                webhook_configuration=webhook,
                webhook_port=webhook_port,
                distribution_port=distribution_port,
                cert_dir=tmp_path / "webhook",
                otlp_endpoint=trace_backend.otlp_endpoint,
            ),
        )
        stack.enter_context(operator)
        wait_for_ca_bundle(kubectl, webhook)
        docs = setup_documents(primary.url, spare.url)
        kubectl.apply(yaml.safe_dump_all(docs), namespace=namespace)
        wait_for_table_version(kubectl, namespace, timeout=60)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "chat-app",
                "labels": {"app": "chat"},
                "annotations": {
                    "routemesh.dev/sidecar-port": str(free_port()),
                    "routemesh.dev/sidecar-admin-port": str(free_port()),
                },
            },
            "spec": {"containers": [{"name": "app", "image": "example/chat:1"}]},
        }
        kubectl.apply(yaml.safe_dump(pod), namespace=namespace)
        stored = kubectl.get("pod", "chat-app", namespace=namespace)
        sidecar = stack.enter_context(InjectedSidecar(kubectl, stored, tmp_path / "pod"))
        yield System(
            control_plane, kubectl, namespace, operator, sidecar, primary, spare, trace_backend
        )
