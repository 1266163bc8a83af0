"""Shared fixtures for RouteMesh's tests.

The control-plane fixtures come from `routemesh_testing.pytest_plugin`; this file adds the
test-only CRDs to what it installs.
"""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def control_plane_crds() -> list[Path]:
    repo_crds = sorted((Path(__file__).parents[1] / "crds").glob("*.yaml"))
    return repo_crds + sorted((FIXTURES / "crds").glob("*.yaml"))
