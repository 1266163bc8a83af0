"""Pytest fixtures for tests that run against the real local control plane and trace backend.

Loaded by `pyproject.toml` (`-p routemesh_testing.pytest_plugin`). One control plane serves the
whole session; every test that asks for `namespace` gets a fresh namespace of its own, deleted
afterwards.

A test that needs the control plane (or the trace backend) **fails** when the binaries (or
Phoenix) are missing. It never skips: a green run must mean the tests against the real API server
and the real backend ran.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from routemesh_testing.controlplane import (
    REPO_ROOT,
    Binaries,
    BinariesMissing,
    ControlPlaneSettings,
    LocalControlPlane,
)
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.phoenix import PhoenixServer

TEST_NAMESPACE_LABEL = "routemesh.dev/test-namespace"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that need the control plane or the trace backend, so `-m` can leave them out."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "control_plane" in fixtures:
            item.add_marker(pytest.mark.controlplane)
        if "trace_backend" in fixtures:
            item.add_marker(pytest.mark.tracebackend)


@pytest.fixture(scope="session")
def control_plane_crds() -> list[Path]:
    """CRD files installed before the controller manager starts. Override to add test CRDs."""
    return sorted((REPO_ROOT / "crds").glob("*.yaml"))


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, control_plane_crds: list[Path]
) -> Iterator[LocalControlPlane]:
    """Start etcd, kube-apiserver and kube-controller-manager once for the session."""
    settings = ControlPlaneSettings()
    try:
        binaries = Binaries.locate(settings)
    except BinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    plane = LocalControlPlane(binaries, tmp_path_factory.mktemp("controlplane"), settings)
    plane.start(crds=control_plane_crds)
    try:
        yield plane
    finally:
        _delete_test_webhooks(plane.kubectl())
        plane.stop()


@pytest.fixture(scope="session")
def trace_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhoenixServer]:
    """The real OTel backend (Phoenix) for the session, its spans told apart by project or trace."""
    try:
        executable = PhoenixServer.locate()
    except BinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with PhoenixServer(executable, tmp_path_factory.mktemp("phoenix")) as server:
        yield server


@pytest.fixture(scope="session")
def kubectl(control_plane: LocalControlPlane) -> Kubectl:
    """The real kubectl, pointed at the session's control plane."""
    return control_plane.kubectl()


@pytest.fixture(scope="session")
def kube_api_client(control_plane: LocalControlPlane) -> Iterator[Any]:
    """The official Python client (`kubernetes.client.ApiClient`) for the control plane."""
    from kubernetes import config  # noqa: PLC0415  (only tests against the cluster need it)

    # The client library leaves this function unannotated.
    client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(control_plane.kubeconfig)
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace for this test alone, with its `default` ServiceAccount in place."""
    name = _namespace_name(request.node.name)
    kubectl.apply(
        f"""
apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  labels:
    {TEST_NAMESPACE_LABEL}: "true"
"""
    )
    kubectl.wait_for_default_service_account(name)
    try:
        yield name
    finally:
        kubectl.run("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].rstrip("-")
    return f"t-{stem}-{secrets.token_hex(3)}"


def _delete_test_webhooks(kubectl: Kubectl) -> None:
    # A webhook left pointing at a dead 127.0.0.1 port would block every later Pod create.
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        kubectl.run("delete", kind, "-l", TEST_NAMESPACE_LABEL, "--ignore-not-found", check=False)
