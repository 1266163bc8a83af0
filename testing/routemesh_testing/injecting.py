"""A running operator with its webhook registered for a few fresh namespaces of one test module.

`injecting_operator` makes a labelled namespace, a plain one and one for the operator, registers a
webhook configuration (`clientConfig.url` on 127.0.0.1, selecting only these namespaces) and runs
the operator with its webhook and distribution server on 127.0.0.1; on the way out it deletes the
configuration (never leaving a webhook that points at nothing) and the namespaces. The injection
tests and the semantic-routing tests use it. Test support only.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from routemesh_testing.controlplane import LocalControlPlane, free_port
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import injection_webhook, wait_for_ca_bundle
from routemesh_testing.operator import injecting_settings, running_operator
from routemesh_testing.pods import make_namespace
from routemesh_testing.pytest_plugin import TEST_NAMESPACE_LABEL


@dataclass
class Injecting:
    """What the module set up: namespaces, ports and the operator's own namespace."""

    labelled: str
    plain: str
    operator_namespace: str
    webhook_port: int
    distribution_port: int
    configuration: str


@contextmanager
def injecting_operator(
    plane: LocalControlPlane,
    kubectl: Kubectl,
    workdir: Path,
    *,
    tls: bool = False,
    otlp_endpoint: str | None = None,
    otlp_headers_secret: str | None = None,
    **overrides: Any,
) -> Iterator[Injecting]:
    """The operator, injecting into this module's namespaces, until the block ends.

    `otlp_endpoint` and `otlp_headers_secret` are the injected sidecars' trace export, as the
    chart's sidecar.otlpEndpoint and sidecar.otlpHeadersSecret set it.
    """
    suffix = secrets.token_hex(3)
    setup = Injecting(
        labelled=f"t-inj-{suffix}",
        plain=f"t-plain-{suffix}",
        operator_namespace=f"t-ops-{suffix}",
        webhook_port=free_port(),
        distribution_port=free_port(),
        configuration=f"routemesh-injector-{suffix}",
    )
    make_namespace(kubectl, setup.labelled, {"routemesh.dev/inject": "enabled"})
    make_namespace(kubectl, setup.plain, {})
    make_namespace(kubectl, setup.operator_namespace, {})
    namespaces = [setup.labelled, setup.plain, setup.operator_namespace]
    kubectl.apply(
        yaml.safe_dump(
            injection_webhook(
                setup.configuration,
                setup.webhook_port,
                namespaces,
                labels={TEST_NAMESPACE_LABEL: "true"},
            )
        )
    )
    try:
        settings = injecting_settings(
            namespace=setup.operator_namespace,
            webhook_configuration=setup.configuration,
            webhook_port=setup.webhook_port,
            distribution_port=setup.distribution_port,
            cert_dir=workdir,
            tls=tls,
            otlp_endpoint=otlp_endpoint,
            otlp_headers_secret=otlp_headers_secret,
        )
        with running_operator(plane, **(settings | overrides)):
            wait_for_ca_bundle(kubectl, setup.configuration)
            yield setup
    finally:
        # Never leave a Fail webhook pointing at a port nobody serves.
        kubectl.run("delete", "mutatingwebhookconfiguration", setup.configuration, check=False)
        for namespace in namespaces:
            kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)
