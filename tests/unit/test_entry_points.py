"""Every entry point answers --help and --version and exits, without starting anything.

Found when tried as a new user would: `routemesh-operator --help` started the operator against
the current kubeconfig. Run as the installed console scripts, as a user runs them.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from routemesh_operator import __version__ as operator_version
from routemesh_sidecar import __version__ as sidecar_version

pytestmark = pytest.mark.timeout(60)

SCRIPTS = Path(sys.executable).parent
ENTRY_POINTS = [
    ("routemesh-operator", operator_version),
    ("routemesh-sidecar", sidecar_version),
    ("routemesh", operator_version),
    ("kubectl-routemesh", operator_version),
]


@pytest.mark.parametrize(("script", "version"), ENTRY_POINTS)
def test_version_prints_the_version_and_exits(script: str, version: str):
    done = subprocess.run(
        [str(SCRIPTS / script), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{script} {version}"


@pytest.mark.parametrize(("script", "version"), ENTRY_POINTS)
def test_help_prints_the_usage_and_exits(script: str, version: str):
    done = subprocess.run(
        [str(SCRIPTS / script), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent"},  # nothing to connect to
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script}")
    assert "--version" in done.stdout
    assert done.stderr == "", "it started nothing, so it logged nothing"
