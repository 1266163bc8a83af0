"""Fixtures shared by the tests against the local control plane.

`injecting` is the operator with its webhook, served with real TLS and registered with the API
server, that the injection and semantic-routing tests create pods under. It is module-scoped: each
module gets an operator of its own, so one module's pods and policies never meet another's.
"""

from collections.abc import Iterator

import pytest

from routemesh_testing.controlplane import LocalControlPlane
from routemesh_testing.injecting import Injecting, injecting_operator
from routemesh_testing.kubectl import Kubectl


@pytest.fixture(scope="module")
def injecting(
    control_plane: LocalControlPlane, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Injecting]:
    with injecting_operator(control_plane, kubectl, tmp_path_factory.mktemp("webhook")) as setup:
        yield setup
